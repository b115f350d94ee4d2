"""SparsePattern: the mask rule, CSR lists, density and validation."""

import itertools

import numpy as np
import pytest
import torch

from sdk.sparse import PRESETS, PatternError, SparsePattern, resolve_schedule


def rule(i, u, j, v, schedule, anchor):
    """The SPEC section 3 rule, written out for one block pair."""
    if anchor and j == 0:
        return True
    s = schedule[min(abs(i - j), len(schedule) - 1)]
    return u % s == v % s


GRID = [(T, G, name, anchor) for T in (1, 2, 5, 8, 16) for G in (1, 3, 4, 32)
        for name in PRESETS for anchor in (True, False)]


@pytest.mark.parametrize("T,G,name,anchor", GRID)
def test_block_mask_matches_rule(T, G, name, anchor):
    sched = PRESETS[name]
    mask = SparsePattern(T, G, sched, anchor).block_mask()
    assert mask.dtype == torch.bool and mask.shape == (T * G, T * G)
    if T * G > 64:  # spot-check big ones
        rng = np.random.default_rng(T * 1000 + G)
        pairs = rng.integers(0, T * G, size=(500, 2))
    else:
        pairs = itertools.product(range(T * G), repeat=2)
    for r, c in pairs:
        i, u = divmod(int(r), G)
        j, v = divmod(int(c), G)
        assert bool(mask[r, c]) == rule(i, u, j, v, sched, anchor)


@pytest.mark.parametrize("T,G,name,anchor", GRID)
def test_structural_properties(T, G, name, anchor):
    p = SparsePattern(T, G, PRESETS[name], anchor)
    m = p.block_mask().view(T, G, T, G)
    eye = torch.eye(G, dtype=torch.bool)
    sched = PRESETS[name]
    for i in range(T):
        if sched[0] == 1:
            assert m[i, :, i, :].all(), "own frame dense when the distance-0 stride is 1"
        for j in range(T):
            assert (m[i, :, j, :] & eye).sum() == G, "the diagonal u == v is always kept"
    if anchor:
        assert m[:, :, 0, :].all(), "anchor column must be full"
    if sched[min(1, len(sched) - 1)] == 1:
        for i in range(T - 1):
            assert m[i, :, i + 1, :].all() and m[i + 1, :, i, :].all(), "neighbours dense"


@pytest.mark.parametrize("T,G,name,anchor", GRID[::3])
def test_csr_equals_mask_and_density(T, G, name, anchor):
    p = SparsePattern(T, G, PRESETS[name], anchor)
    offsets, indices = p.kv_block_lists()
    assert offsets.dtype == torch.int32 and indices.dtype == torch.int32
    assert offsets.shape == (T * G + 1,) and int(offsets[0]) == 0 and int(offsets[-1]) == indices.numel()
    rebuilt = torch.zeros(T * G, T * G, dtype=torch.bool)
    for r in range(T * G):
        row = indices[offsets[r]:offsets[r + 1]]
        assert torch.all(row[1:] > row[:-1]), "indices ascend within a row"
        rebuilt[r, row.long()] = True
    assert torch.equal(rebuilt, p.block_mask())
    assert p.density() == pytest.approx(p.block_mask().double().mean().item(), abs=1e-12)
    assert np.array_equal(p.row_counts(), p.block_mask().sum(1).numpy())


def test_density_closed_form_for_divisible_strides():
    # T=16, Ng=32, sculpt4d, anchor: count per (i, j) pair = Ng / s (or Ng for the anchor)
    T, G, sched = 16, 32, PRESETS["sculpt4d"]
    kept = 0
    for i in range(T):
        for j in range(T):
            kept += G * G if j == 0 else G * G // sched[min(abs(i - j), len(sched) - 1)]
    assert SparsePattern(T, G).density() == pytest.approx(kept / (T * G) ** 2)
    assert SparsePattern(T, G, "full").density() == 1.0


def test_presets_and_for_tokens():
    assert SparsePattern.preset("aggressive", 4, 2, anchor=False).schedule == (1, 2, 4, 8, 16, 32)
    p = SparsePattern.for_tokens(8, 4096, 128)
    assert p.blocks_per_frame == 32 and p.schedule == (1, 1, 2, 4, 8, 16) and p.anchor


@pytest.mark.parametrize("bad", ["nope", [], [0, 1], [1, -2], [1.5], "fixed5", [True]])
def test_bad_schedules_are_named(bad):
    with pytest.raises(PatternError, match="schedule"):
        resolve_schedule(bad)


def test_bad_sizes():
    with pytest.raises(PatternError, match="multiple of the block size"):
        SparsePattern.for_tokens(4, 100, 32)
    with pytest.raises(PatternError, match="num_frames"):
        SparsePattern(0, 4)
    with pytest.raises(PatternError, match="blocks_per_frame"):
        SparsePattern(2, 0)
