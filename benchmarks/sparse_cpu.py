"""CPU block-sparse temporal attention: dense-mask reference vs torch-blocked vs the C++ kernel
vs dense SDPA (no mask), at a Sculpt4D-like size.

    python benchmarks/sparse_cpu.py                       # T=16, P=2048, H=4, D=64, block 128
    python benchmarks/sparse_cpu.py --tokens 4096 --heads 8 --dim 128 --repeats 5

Prints a markdown table (median of --repeats timed runs after a warm-up; the methods are
interleaved run by run so background load hits them alike) and the two targets:
    cpu kernel / SDPA <= 1.25 x density        torch-blocked / cpu kernel <= 3
The dense-mask reference needs O(N^2) memory; it runs on as many heads as fit in
--reference-gb and its time is scaled up to all heads (the table says so), or is skipped.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import sdk  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdk.kernels.cpu import (block_sparse_attention_cpu, cpu_kernel_available, cpu_kernel_info,
                             cpu_kernel_unavailable_reason)
from sdk.sparse.attention import blocked_block_sparse_attention, reference_block_sparse_attention
from sdk.sparse.pattern import SparsePattern, parse_schedule


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16, help="T (default 16)")
    ap.add_argument("--tokens", type=int, default=2048, help="P, tokens per frame (default 2048)")
    ap.add_argument("--heads", type=int, default=4, help="H (default 4); B is 1")
    ap.add_argument("--batch", type=int, default=1, help="B (default 1)")
    ap.add_argument("--dim", type=int, default=64, help="D, head dim (default 64)")
    ap.add_argument("--block-size", type=int, default=128, help="S_B (default 128)")
    ap.add_argument("--schedule", default="sculpt4d", help="preset name or comma-separated strides")
    ap.add_argument("--no-anchor", action="store_true", help="drop the first-frame anchor")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch/kernel threads (default: torch's)")
    ap.add_argument("--skip-reference", action="store_true", help="skip the dense-mask reference")
    ap.add_argument("--skip-blocked", action="store_true", help="skip the torch-blocked backend")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 kernel row")
    ap.add_argument("--reference-gb", type=float, default=4.0,
                    help="memory budget for the dense-mask reference (GB); it runs on fewer heads "
                         "and is scaled up, or is skipped if one head does not fit")
    args = ap.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not cpu_kernel_available():
        print(f"CPU kernel unavailable: {cpu_kernel_unavailable_reason()}", file=sys.stderr)
        return 1

    schedule = parse_schedule(args.schedule)
    pattern = SparsePattern.for_tokens(args.frames, args.tokens, args.block_size, schedule,
                                       anchor=not args.no_anchor)
    density = pattern.density()
    offsets, indices = pattern.kv_block_lists()
    B, H, D, bs = args.batch, args.heads, args.dim, args.block_size
    N = args.frames * args.tokens
    scale = 1.0 / math.sqrt(D)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, generator=gen) for _ in range(3))
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()

    # reference: as many heads as fit (scores + probs + mask, ~ 3 x N^2 x 4 bytes per head)
    ref_heads, skip_note = 0, ""
    if not args.skip_reference:
        per_head = 3 * N * N * 4 + N * N
        ref_heads = int(min(B * H, args.reference_gb * 1e9 // per_head))
        if ref_heads == 0:
            skip_note = (f"dense-mask reference: skipped (one head needs ~{per_head / 1e9:.1f} GB > "
                         f"--reference-gb {args.reference_gb:g})")
    ref_note = ""
    if ref_heads and ref_heads < B * H:
        ref_note = f" (run on {ref_heads} of {B * H} heads, time scaled x{B * H / ref_heads:.1f})"
    ref_factor = B * H / ref_heads if ref_heads else 1.0
    qr, kr, vr = (t.reshape(B * H, 1, N, D)[:ref_heads].transpose(0, 1) for t in (q, k, v))

    # small inputs of the same kind for warm-up (thread pools, library build, caches)
    wp = SparsePattern.for_tokens(2, args.block_size * 2, args.block_size, schedule, not args.no_anchor)
    wo, wi = wp.kv_block_lists()
    wq = torch.randn(1, H, 4 * bs, D)

    methods = []  # (name, dtype, fn, warm, scale factor, note)
    if ref_heads:
        methods.append(("dense-mask reference", "fp32",
                        lambda: reference_block_sparse_attention(qr, kr, vr, pattern, bs, scale),
                        lambda: reference_block_sparse_attention(wq, wq, wq, wp, bs, scale),
                        ref_factor, ref_note))
    if not args.skip_blocked:
        methods.append(("torch-blocked", "fp32",
                        lambda: blocked_block_sparse_attention(q, k, v, pattern, bs, scale),
                        lambda: blocked_block_sparse_attention(wq, wq, wq, wp, bs, scale), 1.0, ""))
    methods.append(("cpu kernel", "fp32",
                    lambda: block_sparse_attention_cpu(q, k, v, offsets, indices, bs, scale),
                    lambda: block_sparse_attention_cpu(wq, wq, wq, wo, wi, bs, scale), 1.0, ""))
    if not args.no_bf16:
        wqb = wq.bfloat16()
        methods.append(("cpu kernel", "bf16",
                        lambda: block_sparse_attention_cpu(qb, kb, vb, offsets, indices, bs, scale),
                        lambda: block_sparse_attention_cpu(wqb, wqb, wqb, wo, wi, bs, scale), 1.0, ""))
    methods.append(("dense SDPA (no mask)", "fp32",
                    lambda: F.scaled_dot_product_attention(q, k, v, scale=scale),
                    lambda: F.scaled_dot_product_attention(wq, wq, wq, scale=scale), 1.0, ""))

    info = cpu_kernel_info()
    threads = torch.get_num_threads()
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{threads} threads; kernel ISA {info['isa']}")
    print(f"shape: B={B} H={H} T={args.frames} P={args.tokens} (N={N}) D={D} block={bs}; "
          f"{pattern.describe()}")
    if skip_note:
        print(skip_note)
    sys.stdout.flush()

    for _, _, _, warm, _, _ in methods:
        warm()
    times: dict[int, list[float]] = {i: [] for i in range(len(methods))}
    outputs = {}
    for rep in range(max(1, args.repeats)):
        for i, (_, _, fn, _, _, _) in enumerate(methods):
            t0 = time.perf_counter()
            out = fn()
            times[i].append(time.perf_counter() - t0)
            if rep == 0 and methods[i][0] in ("cpu kernel", "torch-blocked") and methods[i][1] == "fp32":
                outputs[methods[i][0]] = out
            del out

    ms = {i: statistics.median(ts) * 1e3 * methods[i][4] for i, ts in times.items()}
    sdpa_ms = ms[len(methods) - 1]
    flops_dense = 4.0 * B * H * N * N * D
    print()
    print("| implementation | dtype | ms (median) | x SDPA | density | GFLOP/s (useful) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for i, (name, dtype, _, _, _, note) in enumerate(methods):
        useful = flops_dense * (1.0 if name.startswith("dense SDPA") else density)
        print(f"| {name}{note} | {dtype} | {ms[i]:.1f} | {ms[i] / sdpa_ms:.3f} | {density:.4f} | "
              f"{useful / (ms[i] * 1e-3) / 1e9:.1f} |")
    print()

    cpu_ms = next(ms[i] for i, m in enumerate(methods) if m[0] == "cpu kernel" and m[1] == "fp32")
    ratio = cpu_ms / sdpa_ms
    ok1 = ratio <= 1.25 * density
    print(f"target 1: cpu kernel / SDPA = {ratio:.3f} <= 1.25 x density = {1.25 * density:.3f}: "
          f"{'MET' if ok1 else 'NOT MET'}  (kernel / (SDPA x density) = {ratio / density:.3f})")
    ok2 = True
    if not args.skip_blocked:
        blk_ms = next(ms[i] for i, m in enumerate(methods) if m[0] == "torch-blocked")
        ok2 = blk_ms <= 3 * cpu_ms
        print(f"target 2: torch-blocked / cpu kernel = {blk_ms / cpu_ms:.2f} <= 3: {'MET' if ok2 else 'NOT MET'}")
        diff = (outputs["cpu kernel"] - outputs["torch-blocked"]).abs().max().item()
        print(f"check: max |cpu kernel - torch-blocked| = {diff:.2e}")
    return 0 if (ok1 and ok2) else 2


if __name__ == "__main__":
    sys.exit(main())
