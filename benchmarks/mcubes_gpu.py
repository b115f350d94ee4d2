"""GPU marching cubes (cpp_ext/cuda/marching_cubes.cu) vs scikit-image (the CPU backend).

    python benchmarks/mcubes_gpu.py                    # R = 256, 384, 512, a random smooth field
    python benchmarks/mcubes_gpu.py --resolutions 256,512 --repeats 10

Needs a CUDA GPU; prints a markdown table. GPU times are wall-clock medians of whole calls
(extraction + output allocation + the host synchronisations that size the output), the field
already on the GPU; "sparse" passes the sign-change cells (dilated by 1), as hierarchical decoding
would. scikit-image runs on the same field copied to the host (copy not timed), through
sdk.generation.mcubes' CPU backend (Lewiner), once per resolution unless --cpu-repeats says otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import sdk  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdk.kernels.cuda import cuda_kernels_available, cuda_kernels_unavailable_reason, marching_cubes_cuda
from sdk.generation.mcubes import BACKENDS, WorldBox, grid_to_world


def smooth_field(R: int, device, seed: int = 0, bumps: int = 24) -> torch.Tensor:
    """A decoded-like field: sum of Gaussian bumps minus a threshold, on the fixed world box."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    centers = (torch.rand(bumps, 3, generator=g) * 1.2 - 0.6).to(device)
    widths = (torch.rand(bumps, generator=g) * 0.2 + 0.08).to(device)
    axis = grid_to_world(torch.arange(R + 1, device=device), R, WorldBox(), dtype=torch.float32)
    field = torch.full((R + 1,) * 3, -0.5, device=device)
    for c, w in zip(centers, widths):
        dx = (axis - c[0]) ** 2
        dy = (axis - c[1]) ** 2
        dz = (axis - c[2]) ** 2
        field += torch.exp(-(dx[:, None, None] + dy[None, :, None] + dz[None, None, :]) / (2 * w * w))
    return field


def active_cells(field: torch.Tensor) -> torch.Tensor:
    inside = field > 0
    R = field.shape[0] - 1
    corners = [inside[i:i + R, j:j + R, k:k + R] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    any_in = torch.stack(corners).any(0)
    all_in = torch.stack(corners).all(0)
    active = (any_in & ~all_in).float()[None, None]
    active = torch.nn.functional.max_pool3d(active, 3, stride=1, padding=1)[0, 0] > 0
    return active.reshape(-1).nonzero().squeeze(1)


def wall_ms(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolutions", default="256,384,512")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--cpu-repeats", type=int, default=1)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("mcubes_gpu: no CUDA device; nothing to measure", file=sys.stderr)
        return 1
    if not cuda_kernels_available():
        print(f"mcubes_gpu: CUDA kernels unavailable: {cuda_kernels_unavailable_reason()}", file=sys.stderr)
        return 1
    device = torch.device("cuda")
    print(f"# Marching cubes on {torch.cuda.get_device_name()} vs scikit-image (Lewiner, CPU)\n")
    print("| R | vertices | faces | GPU dense ms | GPU sparse ms | active cells | skimage ms | speed-up (dense) "
          "| vertex count vs skimage |")
    print("|---|---|---|---|---|---|---|---|---|")
    for R in (int(r) for r in args.resolutions.split(",")):
        field = smooth_field(R, device)
        cells = active_cells(field)
        verts, faces = marching_cubes_cuda(field)
        t_dense = wall_ms(lambda: marching_cubes_cuda(field), args.repeats)
        t_sparse = wall_ms(lambda: marching_cubes_cuda(field, active_cells=cells), args.repeats)
        host = field.cpu().numpy()
        cpu_times = []
        cpu_v = None
        for _ in range(max(1, args.cpu_repeats)):
            t0 = time.perf_counter()
            cpu_v, _cpu_f = BACKENDS["cpu"](host, 0.0, WorldBox())
            cpu_times.append((time.perf_counter() - t0) * 1e3)
        t_cpu = statistics.median(cpu_times)
        diff = (len(verts) - len(cpu_v)) / max(1, len(cpu_v))
        print(f"| {R} | {len(verts)} | {len(faces)} | {t_dense:.2f} | {t_sparse:.2f} | {len(cells)} | {t_cpu:.1f} "
              f"| {t_cpu / t_dense:.1f}x | {diff:+.4%} |")
        field = cells = verts = faces = None  # free before the next size
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
