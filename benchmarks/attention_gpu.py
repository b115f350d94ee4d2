"""GPU block-sparse temporal attention: our CUDA kernel vs dense SDPA (flash backend) vs
FlexAttention (same block mask) vs ``block_sparse_attn`` (if installed), at Sculpt4D sizes.

    python benchmarks/attention_gpu.py                          # T=8,16,32, P=4096, H=16, D=128, B=2
    python benchmarks/attention_gpu.py --frames 8,16,32,64 --dtypes fp16,bf16 --repeats 30

Needs a CUDA GPU (sm_80+); prints a markdown table. Times are medians of --repeats CUDA-event
timed runs after --warmup runs. FLOP accounting (per the SPEC's compute model, 2 FLOPs per MAC,
QK^T and PV):
    computed-block FLOPs = 4 * nnz * block_size^2 * D * B * H     (nnz = kept (q-block, k-block) pairs)
    dense FLOPs          = 4 * N^2 * D * B * H                     (N = T * P)
"TFLOP/s" of the sparse methods uses computed-block FLOPs, of SDPA the dense FLOPs. The target
checked per row is   t(ours) <= 1.2 * density * t(dense SDPA)   (density = nnz / n_blocks^2).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import sdk  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdk.kernels.cuda import block_sparse_attention_cuda, cuda_kernels_available, cuda_kernels_unavailable_reason
from sdk.sparse.pattern import SparsePattern, parse_schedule

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def cuda_time_ms(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sdpa_flash(q, k, v, scale):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


def make_flex(pattern: SparsePattern, block_size: int, N: int, device):
    """(callable, note): compiled flex_attention with a BlockMask of the same block lists (all
    kept blocks are 'full' blocks, so no mask_mod is evaluated inside them)."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention
    except Exception as exc:  # pragma: no cover - old torch
        return None, f"FlexAttention unavailable: {exc}"
    mask = pattern.block_mask()
    nq = mask.shape[0]
    counts = mask.sum(dim=1).to(torch.int32)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True).to(torch.int32)  # kept blocks first
    full_num = counts.view(1, 1, nq).to(device)
    full_idx = order.view(1, 1, nq, nq).to(device)
    partial_num = torch.zeros_like(full_num)
    partial_idx = torch.zeros_like(full_idx)
    try:
        block_mask = BlockMask.from_kv_blocks(partial_num, partial_idx, full_num, full_idx,
                                              BLOCK_SIZE=block_size, seq_lengths=(N, N))
        compiled = torch.compile(flex_attention, dynamic=False)
    except Exception as exc:
        return None, f"FlexAttention setup failed: {exc}"
    return (lambda q, k, v, scale: compiled(q, k, v, block_mask=block_mask, scale=scale)), ""


def make_block_sparse_attn(pattern: SparsePattern, block_size: int, B: int, H: int, N: int, device):
    """(callable, note) for MIT-Han-Lab's block_sparse_attn (fixed 128-token blocks), if installed."""
    try:
        from block_sparse_attn import block_sparse_attn_func
    except Exception as exc:
        return None, f"block_sparse_attn not importable ({type(exc).__name__})"
    if block_size != 128:
        return None, "block_sparse_attn needs block size 128"
    cu = torch.arange(0, (B + 1) * N, N, dtype=torch.int32, device=device)
    head_mask_type = torch.ones(H, dtype=torch.int32, device=device)  # every head: blockmask 0
    base = pattern.block_mask().to(device).view(1, 1, *pattern.block_mask().shape).expand(B, 1, -1, -1).contiguous()

    def run(q, k, v, scale):
        # varlen layout [B*N, H, D]
        qv, kv, vv = (t.transpose(1, 2).reshape(B * N, H, -1) for t in (q, k, v))
        return block_sparse_attn_func(qv, kv, vv, cu, cu, head_mask_type, None, base, N, N, 0.0,
                                      deterministic=False, softmax_scale=scale, is_causal=False)

    return run, ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="8,16,32", help="comma-separated T values (default 8,16,32; add 64)")
    ap.add_argument("--tokens", type=int, default=4096, help="P, tokens per frame (default 4096)")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--dtypes", default="fp16,bf16")
    ap.add_argument("--schedule", default="sculpt4d", help="preset name or comma-separated strides")
    ap.add_argument("--no-anchor", action="store_true")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--skip-flex", action="store_true")
    ap.add_argument("--skip-bsa", action="store_true", help="skip block_sparse_attn")
    args = ap.parse_args(argv)

    if not torch.cuda.is_available():
        print("attention_gpu: no CUDA device; nothing to measure", file=sys.stderr)
        return 1
    if not cuda_kernels_available():
        print(f"attention_gpu: CUDA kernels unavailable: {cuda_kernels_unavailable_reason()}", file=sys.stderr)
        return 1
    schedule = parse_schedule(args.schedule)
    device = torch.device("cuda")
    B, H, D, P, bs = args.batch, args.heads, args.dim, args.tokens, args.block_size
    scale = 1.0 / math.sqrt(D)
    print(f"# Block-sparse temporal attention on {torch.cuda.get_device_name()} "
          f"(torch {torch.__version__}, CUDA {torch.version.cuda})\n")
    print(f"B={B} H={H} D={D} P={P} block={bs} schedule={list(schedule)} anchor={not args.no_anchor}; "
          f"median of {args.repeats} runs; ms per call\n")
    print("| T | dtype | density | ours ms | ours TFLOP/s | SDPA ms | SDPA TFLOP/s | ours/SDPA "
          "| target <= 1.2*density | flex ms | flex TFLOP/s | bsa ms | max err vs flex |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    notes, all_ok = set(), True
    for T in (int(t) for t in args.frames.split(",")):
        pattern = SparsePattern.for_tokens(T, P, bs, schedule, not args.no_anchor)
        N = T * P
        nnz = pattern.nnz()
        density = pattern.density()
        sparse_flops = 4.0 * nnz * bs * bs * D * B * H
        dense_flops = 4.0 * N * N * D * B * H
        offsets, indices = (t.to(device) for t in pattern.kv_block_lists())
        flex, note = (None, "FlexAttention skipped") if args.skip_flex else make_flex(pattern, bs, N, device)
        if note:
            notes.add(note)
        bsa, note = (None, "block_sparse_attn skipped") if args.skip_bsa else \
            make_block_sparse_attn(pattern, bs, B, H, N, device)
        if note:
            notes.add(note)
        for name in args.dtypes.split(","):
            dtype = DTYPES[name]
            g = torch.Generator(device=device).manual_seed(T)
            q, k, v = (torch.randn(B, H, N, D, device=device, dtype=dtype, generator=g) for _ in range(3))

            def ours():
                return block_sparse_attention_cuda(q, k, v, offsets, indices, bs, scale, check_csr=False)

            t_ours = cuda_time_ms(ours, args.repeats, args.warmup)
            t_sdpa = cuda_time_ms(lambda: sdpa_flash(q, k, v, scale), max(3, args.repeats // 4), 1)
            t_flex = t_bsa = float("nan")
            err = "n/a"
            if flex is not None:
                try:
                    t_flex = cuda_time_ms(lambda: flex(q, k, v, scale), args.repeats, args.warmup)
                    err = f"{(ours().float() - flex(q, k, v, scale).float()).abs().max().item():.1e}"
                except Exception as exc:
                    notes.add(f"FlexAttention failed: {type(exc).__name__}: {exc}"[:300])
            if bsa is not None:
                try:
                    t_bsa = cuda_time_ms(lambda: bsa(q, k, v, scale), args.repeats, args.warmup)
                except Exception as exc:
                    notes.add(f"block_sparse_attn failed: {type(exc).__name__}: {exc}"[:300])
            target = 1.2 * density * t_sdpa
            ok = t_ours <= target
            all_ok &= ok
            fmt = (lambda x: "n/a" if math.isnan(x) else f"{x:.3f}")
            print(f"| {T} | {name} | {density:.4f} | {t_ours:.3f} | {sparse_flops / t_ours / 1e9:.1f} "
                  f"| {t_sdpa:.3f} | {dense_flops / t_sdpa / 1e9:.1f} | {t_ours / t_sdpa:.3f} "
                  f"| {target:.3f} {'ok' if ok else 'MISS'} | {fmt(t_flex)} "
                  f"| {'n/a' if math.isnan(t_flex) else f'{sparse_flops / t_flex / 1e9:.1f}'} | {fmt(t_bsa)} | {err} |")
            q = k = v = None  # free before the next size
            torch.cuda.empty_cache()
    for note in sorted(notes):
        print(f"\n- {note}")
    print(f"\ntarget t(ours) <= 1.2 x density x t(SDPA): {'met on every row' if all_ok else 'MISSED on some rows'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
