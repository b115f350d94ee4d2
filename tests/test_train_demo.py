"""The demo training recipe's own helpers (examples/train_demo/train.py), on tiny inputs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from sdk.models.conditioner import IMAGENET_MEAN, IMAGENET_STD

TRAIN = Path(__file__).resolve().parents[1] / "examples" / "train_demo" / "train.py"


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_demo_train", TRAIN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _normalised(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_augment_without_shift_permutes_each_frames_channels(train):
    rgb = torch.rand(6, 3, 16, 16)
    out = train.augment_frames(_normalised(rgb), torch.Generator().manual_seed(3), shift=0.0)
    back = out * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    perms = []
    for i in range(len(rgb)):
        match = [next(k for k in range(3) if torch.allclose(back[i, c], rgb[i, k], atol=1e-5)) for c in range(3)]
        assert sorted(match) == [0, 1, 2]
        perms.append(tuple(match))
    assert len(set(perms)) > 1  # drawn per frame, not once per batch


def test_augment_keeps_a_grey_backdrop_and_moves_the_object_a_little(train):
    rgb = torch.full((4, 3, 32, 32), 0.8)
    rgb[:, 0, 12:20, 12:20] = 0.1  # a red-free square on the backdrop
    out = train.augment_frames(_normalised(rgb), torch.Generator().manual_seed(0), shift=0.05)
    back = out * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(back[:, :, :4, :4], torch.full_like(back[:, :, :4, :4], 0.8), atol=1e-5)
    dark = back.min(1).values < 0.5
    assert dark.sum((1, 2)).float().sub(64).abs().max() <= 16  # the square's area, resampled
    moved = []
    for frame in dark:
        ys, xs = torch.nonzero(frame, as_tuple=True)
        offset = max(abs(float(xs.float().mean()) - 15.5), abs(float(ys.float().mean()) - 15.5))
        assert offset <= 0.05 * 32 + 0.5  # at most `shift` of the width (plus resampling)
        moved.append(offset)
    assert max(moved) >= 0.5  # and it does move


def test_nearest_matches_a_plain_distance_table():
    import sys

    sys.path.insert(0, str(TRAIN.parent))
    try:
        from diagnose import nearest
    finally:
        sys.path.remove(str(TRAIN.parent))
    gen = torch.Generator().manual_seed(5)
    queries, keys = torch.randn(70, 40, generator=gen, dtype=torch.float64), torch.randn(300, 40, generator=gen,
                                                                                        dtype=torch.float64)
    assert (nearest(queries, keys, chunk=16) == torch.cdist(queries, keys).argmin(1).numpy()).all()
