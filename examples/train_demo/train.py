"""Train the embedded demo model on synthetic 4D data, on CPU.

    python examples/train_demo/train.py all          # every stage below, in order, resuming
    python examples/train_demo/train.py data         # synthetic sequences -> work/data
    python examples/train_demo/train.py vae          # ShapeVAE on occupancy
    python examples/train_demo/train.py latents      # shared-noise encodings of every sequence
    python examples/train_demo/train.py dit          # 4D DiT + image encoder, sculpt4d schedule
    python examples/train_demo/train.py package      # fp16 safetensors into sdk/weights/demo

Every stage is seeded, writes into ``--work`` (default ``examples/train_demo/work``), saves a
resumable checkpoint as it goes and is skipped when its output exists. The models are the
SDK's own classes with the ``demo()`` configs of ``sdk.config``: the same code as the full-size
model at small widths. See README.md next to this file for the recipe and timings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import typer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sdk.config import ConditionerConfig, DiTConfig, VAEConfig, to_dict  # noqa: E402
from sdk.data.synthetic import MOTIONS, build_example, export_sequence, random_sequence  # noqa: E402

PACKAGE_DIR = ROOT / "sdk" / "weights" / "demo"
SAMPLES_DIR = ROOT / "examples" / "data"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the result. Seeds of the three splits never overlap."""

    frames: int = 16
    train_sequences: int = 120
    heldout_sequences: int = 10
    sample_videos: int = 5
    train_seed: int = 0
    heldout_seed: int = 100_000
    sample_seed: int = 200_000
    # VAE
    vae_steps: int = 4500
    vae_batch: int = 8
    vae_queries: int = 1024  # occupancy points per frame and step (drawn from the stored 3072)
    vae_lr: float = 1e-3
    kl_weight: float = 1e-4
    encodings_per_sequence: int = 4  # shared-noise encodings (different noise / FPS start) per sequence
    # DiT
    dit_steps: int = 3400
    dit_lr: float = 5e-4
    warmup: int = 150
    ema: float = 0.998
    cfg_dropout: float = 0.1  # unconditional (zero context) share, for classifier-free guidance
    shared_noise: float = 0.75  # share of steps that use one noise tensor for all frames
    short_clips_from: int = 1000  # see _clip_shape
    checkpoint_every: int = 200
    # What `Generator.default()` runs with unless told otherwise.
    default_steps: int = 16
    default_guidance: float = 3.0
    default_resolution: int = 96


RECIPE = Recipe()
app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0])


def configs() -> tuple[DiTConfig, VAEConfig, ConditionerConfig]:
    return DiTConfig.demo(), VAEConfig.demo(), ConditionerConfig.demo()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

def split_seeds(split: str) -> list[int]:
    r = RECIPE
    if split == "train":
        return list(range(r.train_seed, r.train_seed + r.train_sequences))
    if split == "heldout":
        return list(range(r.heldout_seed, r.heldout_seed + r.heldout_sequences))
    return list(range(r.sample_seed, r.sample_seed + r.sample_videos))


def _motion(seed: int) -> str:
    return MOTIONS[seed % len(MOTIONS)]  # balanced motions in every split


def _make_one(job: tuple[str, int, str]) -> str:
    split, seed, out_dir = job
    torch.set_num_threads(1)
    _, vae_cfg, cond_cfg = configs()
    seq = random_sequence(seed, _motion(seed), RECIPE.frames)
    target = Path(out_dir) / f"{seq.name}.npz"
    if target.exists():
        return seq.name
    ex = build_example(seq, vae_cfg.pc_size, vae_cfg.pc_sharpedge_size, cond_cfg.image_size, seed=seed)
    frames = ex.pop("frames")
    if split != "train":  # evaluation needs the GT meshes and the video the pipeline reads
        video = (SAMPLES_DIR / f"{seq.name}.mp4") if split == "samples" else (Path(out_dir) / f"{seq.name}.mp4")
        export_sequence(seq, Path(out_dir) / seq.name, 128, frames, video)
    tmp = target.with_suffix(".partial.npz")
    np.savez(tmp, **ex)
    tmp.rename(target)
    return seq.name


@app.command()
def data(work: Path = Path(__file__).parent / "work", workers: int = 2) -> None:
    """Generate the synthetic splits (train / heldout / samples)."""
    jobs = []
    for split in ("train", "heldout", "samples"):
        out = work / "data" / split
        out.mkdir(parents=True, exist_ok=True)
        jobs += [(split, s, str(out)) for s in split_seeds(split)]
    t0 = time.time()
    with mp.get_context("spawn").Pool(workers) as pool:
        for i, name in enumerate(pool.imap_unordered(_make_one, jobs), 1):
            if i % 20 == 0 or i == len(jobs):
                log(f"data {i}/{len(jobs)} ({name}) {time.time() - t0:.0f}s")


def load_split(work: Path, split: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    files = sorted((work / "data" / split).glob("*.npz"))
    if not files:
        raise SystemExit(f"no {split} data in {work / 'data' / split}; run the 'data' stage first")
    out: dict[str, list] = {k: [] for k in keys}
    for f in files:
        with np.load(f) as z:
            for k in keys:
                out[k].append(z[k])
    return {k: np.stack(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# VAE
# ----------------------------------------------------------------------------------------------

def _save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".partial")
    torch.save(obj, tmp)
    tmp.rename(path)


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@app.command()
def vae(work: Path = Path(__file__).parent / "work") -> None:
    """Train the ShapeVAE: occupancy BCE on near-surface + uniform points, small KL."""
    from sdk.models import ShapeVAE

    r = RECIPE
    final = work / "vae.pt"
    if final.exists():
        log("vae: done already")
        return
    torch.manual_seed(r.train_seed)
    _, vae_cfg, _ = configs()
    model = ShapeVAE(vae_cfg)
    with torch.no_grad():
        # Start with a narrow posterior (std ~0.05): with unit noise the decoder cannot see the
        # shape at first and the weak KL term gives no reason to shrink it, so training stalls.
        model.pre_kl.bias[vae_cfg.embed_dim:].fill_(-6.0)
    opt = torch.optim.AdamW(model.parameters(), lr=r.vae_lr, weight_decay=0.0)
    ckpt_path, step = work / "vae_train.pt", 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        log(f"vae: resuming at step {step}")
    d = load_split(work, "train", ("surface", "queries", "occupancy"))
    surface = torch.from_numpy(d["surface"]).flatten(0, 1)  # [frames, N, 7]
    queries = torch.from_numpy(d["queries"]).flatten(0, 1)
    labels = torch.from_numpy(d["occupancy"]).flatten(0, 1).float()
    n = len(surface)
    t0, running = time.time(), []
    model.train()
    while step < r.vae_steps:
        gen = torch.Generator().manual_seed(r.train_seed * 1_000_003 + step)  # resume-exact randomness
        idx = torch.randint(n, (r.vae_batch,), generator=gen)
        batch = surface[idx]
        selection = model.encoder.select_points(batch, generator=gen)
        mean, logvar = model.posterior(batch, selection)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
        pick = torch.randint(queries.shape[1], (r.vae_batch, r.vae_queries), generator=gen)
        q = torch.gather(queries[idx], 1, pick[..., None].expand(-1, -1, 3))
        target = torch.gather(labels[idx], 1, pick)
        logits = model.query(model.decode(z), q)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
        loss = bce + r.kl_weight * kl
        for g in opt.param_groups:
            g["lr"] = _lr(step, r.vae_steps, r.vae_lr, 100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        with torch.no_grad():
            acc = ((logits > 0).float() == target).float().mean()
        running.append((bce.item(), kl.item(), acc.item()))
        if step % 50 == 0:
            b, k, a = np.mean(running, axis=0)
            running.clear()
            log(f"vae step {step}/{r.vae_steps} bce {b:.4f} kl {k:.3f} acc {a:.4f} ({time.time() - t0:.0f}s)")
        if step % r.checkpoint_every == 0 or step == r.vae_steps:
            _save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt_path)
    _save({"model": model.state_dict()}, final)
    log("vae: done")


def load_vae(work: Path):
    from sdk.models import ShapeVAE

    model = ShapeVAE(configs()[1])
    model.load_state_dict(torch.load(work / "vae.pt", weights_only=True)["model"])
    return model.eval()


# ----------------------------------------------------------------------------------------------
# latents
# ----------------------------------------------------------------------------------------------

@app.command()
def latents(work: Path = Path(__file__).parent / "work") -> None:
    """Encode every training sequence with frame 0's selection and one shared noise tensor."""
    from sdk.data import encode_sequence

    out = work / "latents.pt"
    if out.exists():
        log("latents: done already")
        return
    vae_model = load_vae(work)
    d = load_split(work, "train", ("surface", "images"))
    lat = []
    for i, surface in enumerate(d["surface"]):
        lat.append(torch.stack([encode_sequence(vae_model, surface, seed=1000 * i + k)
                                for k in range(RECIPE.encodings_per_sequence)]))
    lat = torch.stack(lat)  # [S, K, T, P, C] unscaled
    scale = float(1.0 / lat.std())
    log(f"latents: {tuple(lat.shape)}, std {lat.std():.4f} -> scale_factor {scale:.4f}")
    _save({"latents": lat, "scale_factor": scale, "images": torch.from_numpy(d["images"])}, out)


# ----------------------------------------------------------------------------------------------
# DiT
# ----------------------------------------------------------------------------------------------

def _frame_window(rng: np.random.Generator, total: int, frames: int) -> np.ndarray:
    """Contiguous or strided frame subsets, so the model sees several frame rates."""
    stride = int(rng.integers(1, total // frames + 1))
    start = int(rng.integers(0, total - (frames - 1) * stride))
    return start + stride * np.arange(frames)


def _clip_shape(step: int, T: int) -> tuple[int, int]:
    """(clips, frames per clip) of a step; every step holds T frames, so costs about the same.

    Until ``Recipe.short_clips_from``: one T-frame clip and two T/2-frame clips alternate. After
    it, four T/4-frame clips twice, then two T/2, then one T: more sequences and noise levels per
    step, which the image -> shape mapping needed to start learning within the CPU budget (the
    shipped model was trained with this switch at step 1000; the long clips keep the temporal
    module trained at the paper's 16 frames).
    """
    if step < RECIPE.short_clips_from:
        return (1, T) if step % 2 == 0 else (2, T // 2)
    return ((4, T // 4), (4, T // 4), (2, T // 2), (1, T))[step % 4]


@app.command()
def dit(work: Path = Path(__file__).parent / "work") -> None:
    """Train the 4D DiT (sculpt4d block-sparse schedule, anchor on) and the image encoder
    together with flow matching, classifier-free-guidance dropout and an EMA of the weights."""
    from sdk.models import ImageConditioner, Sculpt4DDiT

    r = RECIPE
    final = work / "dit.pt"
    if final.exists():
        log("dit: done already")
        return
    dit_cfg, _, cond_cfg = configs()
    torch.manual_seed(r.train_seed + 1)
    model, cond = Sculpt4DDiT(dit_cfg), ImageConditioner(cond_cfg)
    cond.main_image_encoder.model.requires_grad_(True)
    params = list(model.parameters()) + list(cond.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=r.dit_lr, weight_decay=0.01)
    ckpt_path, step = work / "dit_train.pt", 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(state["dit"])
        cond.load_state_dict(state["cond"])
        opt.load_state_dict(state["opt"])
        ema = state["ema"]
        step = state["step"]
        log(f"dit: resuming at step {step}")
    data_ = torch.load(work / "latents.pt", weights_only=True)
    lat = data_["latents"] * data_["scale_factor"]
    images = data_["images"]  # [S, T, 3, H, W] fp16, ready for the encoder
    S, K, T = lat.shape[:3]
    model.train()
    cond.train()
    t0, running = time.time(), []
    while step < r.dit_steps:
        rng = np.random.default_rng([r.train_seed, step])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        batch, frames = _clip_shape(step, T)
        seqs = rng.integers(S, size=batch)
        wins = [_frame_window(rng, T, frames) for _ in range(batch)]
        x1 = torch.stack([lat[s, rng.integers(K)][w] for s, w in zip(seqs, wins)])  # [B, F, P, C]
        imgs = torch.stack([images[s][w] for s, w in zip(seqs, wins)]).float()
        B, Fr, P, C = x1.shape
        if rng.random() < r.shared_noise:
            noise = torch.randn((B, 1, P, C), generator=gen).expand(B, Fr, P, C)
        else:
            noise = torch.randn((B, Fr, P, C), generator=gen)
        t = torch.rand(B, generator=gen)
        xt = t.view(B, 1, 1, 1) * x1 + (1 - t.view(B, 1, 1, 1)) * noise
        context = cond(imgs.flatten(0, 1)).view(B, Fr, -1, cond_cfg.hidden_size)
        keep = (torch.rand(B, generator=gen) >= r.cfg_dropout).float().view(B, 1, 1, 1)
        pred = model(xt, t, context * keep)
        loss = F.mse_loss(pred, x1 - noise)
        for g in opt.param_groups:
            g["lr"] = _lr(step, r.dit_steps, r.dit_lr, r.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        with torch.no_grad():
            decay = min(r.ema, (1 + step) / (10 + step))
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        running.append(loss.item())
        if step % 25 == 0:
            log(f"dit step {step}/{r.dit_steps} loss {np.mean(running):.4f} ({time.time() - t0:.0f}s)")
            running.clear()
        if step % r.checkpoint_every == 0 or step == r.dit_steps:
            _save({"dit": model.state_dict(), "cond": cond.state_dict(), "opt": opt.state_dict(), "ema": ema,
                   "step": step}, ckpt_path)
    # The EMA weights are the ones we ship.
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    _save({"dit": model.state_dict(), "cond": cond.state_dict(), "scale_factor": data_["scale_factor"]}, final)
    log("dit: done")


def load_trained(work: Path):
    from sdk.models import ImageConditioner, Sculpt4DDiT, ShapeVAE

    dit_cfg, vae_cfg, cond_cfg = configs()
    state = torch.load(work / "dit.pt", weights_only=True)
    vae_cfg = dataclasses.replace(vae_cfg, scale_factor=state["scale_factor"])
    model, cond, vae_model = Sculpt4DDiT(dit_cfg), ImageConditioner(cond_cfg), ShapeVAE(vae_cfg)
    model.load_state_dict(state["dit"])
    cond.load_state_dict(state["cond"])
    vae_model.load_state_dict(torch.load(work / "vae.pt", weights_only=True)["model"])
    return model.eval(), vae_model.eval(), cond.eval()


@app.command()
def package(work: Path = Path(__file__).parent / "work", out: Path = PACKAGE_DIR) -> None:
    """Write the trained weights (fp16 safetensors + sculpt4d.json) into the SDK package."""
    from sdk.checkpoint import save_checkpoint

    r = RECIPE
    model, vae_model, cond = load_trained(work)
    metadata = {
        "name": "sculpt4d-demo",
        "description": "Small Sculpt4D trained on synthetic 4D primitives (examples/train_demo). "
                       "Knows only that world: coloured primitives on a plain background.",
        "recipe": to_dict(r),
        # The demo saw border-keyed frames in training: use the same matting by default.
        "defaults": {"steps": r.default_steps, "guidance": r.default_guidance,
                     "resolution": r.default_resolution, "num_frames": r.frames, "matting": "border"},
    }
    save_checkpoint(out, model.half(), vae_model.half(), cond.half(), metadata=metadata, overwrite=True)
    for f in out.iterdir():  # ship ordinary permissions whatever wrote the files
        f.chmod(0o644)
    size = sum(f.stat().st_size for f in out.iterdir())
    log(f"package: {out} ({size / 1e6:.1f} MB)")


@app.command("all")
def run_all(work: Path = Path(__file__).parent / "work") -> None:
    """Every stage in order; finished stages are skipped, interrupted ones resume."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "recipe.json").write_text(json.dumps(to_dict(RECIPE), indent=2))
    data(work)
    vae(work)
    latents(work)
    dit(work)
    package(work)


if __name__ == "__main__":
    app()
