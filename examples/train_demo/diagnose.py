"""Diagnostics of the demo training designs on the validation split (no sampling, minutes on CPU).

    python examples/train_demo/diagnose.py retrieval --features features
    python examples/train_demo/diagnose.py conditioning design_frozen --features features

``retrieval`` replaces each validation frame's shape by the shape of the training frame nearest to
it in pixels or in a frozen encoder's features: a per-frame lookup baseline. It is NOT scored the
way ``evaluate.py`` scores a model (video through the whole pipeline, VAE decode, marching cubes,
50k mesh samples, mean ± std over sequences): here the symmetric Chamfer
(``sdk.evaluation.metrics.chamfer_distance``) compares the 2048 stored surface samples of the two
frames (a quarter of them on sharp edges), nothing is decoded (the VAE alone costs about 0.023),
and the std is over frames, which are correlated within a sequence. Read it as the order of
magnitude a lookup reaches. ``conditioning`` compares a ``dit-frozen`` result's validation
flow-matching loss with the right image features, with none (the unconditional branch, trained on
10% of steps) and with another clip's features.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import typer

import train  # noqa: E402  (next to this file; puts the repository on sys.path)
from sdk.evaluation.metrics import chamfer_distance  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0])
WORK = Path(__file__).parent / "work"


def nearest(queries: torch.Tensor, keys: torch.Tensor, chunk: int = 64) -> np.ndarray:
    """Index of the nearest row of ``keys [K, D]`` (Euclidean) for each row of ``queries [Q, D]``."""
    key_norms = (keys * keys).sum(1)
    out = [((key_norms[None] - 2 * queries[i:i + chunk] @ keys.T)).argmin(1) for i in range(0, len(queries), chunk)]
    return torch.cat(out).numpy()


@app.command()
def retrieval(work: Path = WORK, features: list[str] = typer.Option(
        ["features"], help="features caches (work/<name>.pt) to retrieve by, besides pixels"),
        out: Path = typer.Option(None, help="JSON with the results")) -> None:
    """Chamfer of nearest-training-frame retrieval (pixels; each features cache's tokens) and of a
    random training frame, mean ± std over the validation frames."""
    torch.set_num_threads(1)
    train_split = train.load_split(work, "train", ("images", "surface"))
    val_split = train.load_split(work, "validation", ("images", "surface"))
    train_pts = train_split["surface"].reshape(-1, *train_split["surface"].shape[2:])[..., :3]
    val_pts = val_split["surface"].reshape(-1, *val_split["surface"].shape[2:])[..., :3]

    def score(index: np.ndarray) -> list[float]:
        return [chamfer_distance(val_pts[i], train_pts[j]) for i, j in enumerate(index)]

    results = {"pixels": score(nearest(torch.from_numpy(val_split["images"]).flatten(0, 1).float().flatten(1),
                                       torch.from_numpy(train_split["images"]).flatten(0, 1).float().flatten(1)))}
    for name in features:
        cache = torch.load(work / f"{name}.pt", weights_only=True)
        results[f"{name} (all tokens)"] = score(nearest(cache["validation"].float().flatten(0, 1).flatten(1),
                                                        cache["train"].float().flatten(0, 1).flatten(1)))
    rng = np.random.default_rng(0)
    results["a random training frame"] = score(rng.integers(len(train_pts), size=len(val_pts)))
    summary = {k: {"chamfer": round(float(np.mean(v)), 4), "std": round(float(np.std(v)), 4)} for k, v in results.items()}
    print(f"validation frames: {len(val_pts)}, training frames: {len(train_pts)}, "
          f"{val_pts.shape[1]} surface samples each")
    for k, v in summary.items():
        print(f"  nearest by {k:30s} Chamfer {v['chamfer']:.4f} ± {v['std']:.4f}")
    if out:
        out.write_text(json.dumps(summary, indent=1) + "\n")


@app.command()
def conditioning(results: list[str] = typer.Argument(..., help="dit-frozen results (work/<name>.pt)"),
                 work: Path = WORK, features: str = typer.Option("features", help="their features cache")) -> None:
    """Validation flow-matching loss of each result with the right features, none, another clip's."""
    from sdk.models import Sculpt4DDiT

    torch.set_num_threads(1)
    scale = float(torch.load(work / "latents.pt", weights_only=True, mmap=True)["scale_factor"])
    val = train.validation_set(work, scale)
    context = torch.load(work / f"{features}.pt", weights_only=True)["validation"]
    shifted = context[torch.roll(torch.arange(len(context)), 1)]
    for name in results:
        state = torch.load(work / f"{name}.pt", weights_only=True)
        model = Sculpt4DDiT(train.configs()[0])
        model.load_state_dict(state["dit"])
        losses = [train.validation_loss(model, None, val, context=c)
                  for c in (context, torch.zeros_like(context), shifted)]
        if "validation_loss" in state and abs(losses[0] - state["validation_loss"]) > 1e-3 * state["validation_loss"]:
            raise typer.BadParameter(f"{name} was not trained on the features {features!r} (its validation loss was "
                                     f"{state['validation_loss']:.4f}, {losses[0]:.4f} with them); pass --features")
        print(f"{name} (step {state['step']}): right image {losses[0]:.4f}, none {losses[1]:.4f}, "
              f"another clip's {losses[2]:.4f}")


if __name__ == "__main__":
    app()
