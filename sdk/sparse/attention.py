"""Block-sparse attention: the one entry point every caller uses, and its backends.

``block_sparse_attention(q, k, v, pattern, block_size)`` takes ``[B, H, T*P, D]`` tensors
in frame-major token order and returns the same shape.  Backends:

* ``reference`` - dense additive mask, fp32 softmax; O(N^2) memory. The test oracle.
* ``torch``     - gathers each query block's key blocks (CSR lists); O(nnz) memory; any device.
* ``cpu``       - the C++ kernel in ``cpp_ext/cpu`` (online softmax, multi-threaded).
* ``cuda``      - the CUDA kernel in ``cpp_ext/cuda`` (FlashAttention-2 style; fp16/bf16,
  head dim and block size 16, 32, 64 or 128).
* ``auto``      - ``torch.ops.s4d.block_sparse_attention``: the custom op the model, the
  exporter and ``torch.compile`` see; it runs the fastest implementation for the device.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..kernels.limits import cuda_kernel_supports
from .pattern import PatternError, SparsePattern

BACKENDS = ("auto", "reference", "torch", "cpu", "cuda")

# Cap on the temporary score tensor of the torch-blocked backend (elements, fp32).
_BLOCKED_SCORE_BUDGET = 1 << 25


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: SparsePattern,
                  block_size: int) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, H, T*P, D], got shape {tuple(t.shape)}")
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    n = q.shape[2]
    expected = pattern.num_blocks * block_size
    if n != expected:
        raise PatternError(
            f"sequence length {n} does not match the pattern: {pattern.num_frames} frames x "
            f"{pattern.blocks_per_frame} blocks x block size {block_size} = {expected} tokens")


def _default_scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


# --------------------------------------------------------------------------------------
# reference: dense mask, the oracle
# --------------------------------------------------------------------------------------
def reference_block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                     pattern: SparsePattern, block_size: int,
                                     scale: float | None = None) -> torch.Tensor:
    """Dense attention with the block mask expanded to tokens; fp32 math; O(N^2) memory."""
    _check_inputs(q, k, v, pattern, block_size)
    scale = _default_scale(q, scale)
    token_mask = pattern.block_mask().to(q.device)
    token_mask = token_mask.repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~token_mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v.float()).to(q.dtype)


# --------------------------------------------------------------------------------------
# torch: blocked gather over the CSR lists, O(nnz) memory
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _rows_by_count(pattern: SparsePattern) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Query-block rows grouped by their number of key blocks: ``[(rows [g], keys [g, count])]``.

    Within a group every row attends the same number of keys, so each group is one dense
    batched attention with no padding and no mask."""
    offsets, indices = pattern.kv_block_lists()
    counts = (offsets[1:] - offsets[:-1]).long()
    groups = []
    for count in torch.unique(counts).tolist():
        rows = torch.nonzero(counts == count).flatten()
        starts = offsets[:-1].long()[rows]
        keys = indices.long()[starts[:, None] + torch.arange(count)[None, :]]
        groups.append((rows, keys))
    return groups


def blocked_block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                   pattern: SparsePattern, block_size: int,
                                   scale: float | None = None) -> torch.Tensor:
    """Gather each query block's key blocks and attend them with the fused
    ``scaled_dot_product_attention`` kernel; O(nnz) memory; any device; differentiable.

    Rows are grouped by key-block count (``_rows_by_count``) so no padding or mask is needed,
    and each group is processed in chunks that keep the gathered K/V under a fixed budget.
    """
    _check_inputs(q, k, v, pattern, block_size)
    scale = _default_scale(q, scale)
    B, H, N, D = q.shape
    R = pattern.num_blocks
    qb = q.reshape(B, H, R, block_size, D)
    kb = k.reshape(B, H, R, block_size, D)
    vb = v.reshape(B, H, R, block_size, D)
    out = torch.empty_like(qb)
    for rows, keys in _rows_by_count(pattern):
        rows, keys = rows.to(q.device), keys.to(q.device)
        count = keys.shape[1]
        per_row = B * H * count * block_size * block_size  # scores (or gathered K/V) of one row
        chunk = max(1, _BLOCKED_SCORE_BUDGET // max(1, per_row))
        for r0 in range(0, rows.numel(), chunk):
            r, kv = rows[r0:r0 + chunk], keys[r0:r0 + chunk]
            g = r.numel()
            q_rows = qb[:, :, r].reshape(B, H * g, block_size, D)
            k_rows = kb[:, :, kv].reshape(B, H * g, count * block_size, D)
            v_rows = vb[:, :, kv].reshape(B, H * g, count * block_size, D)
            o = F.scaled_dot_product_attention(q_rows, k_rows, v_rows, scale=scale)
            out[:, :, r] = o.reshape(B, H, g, block_size, D)
    return out.reshape(B, H, N, D)


# --------------------------------------------------------------------------------------
# the custom op: one node for the model, torch.compile and the exporter
# --------------------------------------------------------------------------------------
@torch.library.custom_op("s4d::block_sparse_attention", mutates_args=())
def _block_sparse_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int,
                               block_size: int, schedule: Sequence[int], anchor: bool,
                               scale: float) -> torch.Tensor:
    """``s4d::block_sparse_attention(q, k, v, num_frames, block_size, schedule, anchor, scale)``.

    The pattern is given by its parameters (not its CSR lists) so an exporter can write them
    as node attributes and an engine can rebuild the identical lists from them.
    """
    tokens_per_frame = q.shape[2] // num_frames
    if tokens_per_frame * num_frames != q.shape[2]:
        raise PatternError(f"sequence length {q.shape[2]} is not divisible by num_frames={num_frames}")
    pattern = SparsePattern.for_tokens(num_frames, tokens_per_frame, block_size, tuple(schedule), anchor)
    return _fastest_backend(q, block_size)(q, k, v, pattern, block_size, scale)


@_block_sparse_attention_op.register_fake
def _(q, k, v, num_frames, block_size, schedule, anchor, scale):
    return torch.empty_like(q)


def _fastest_backend(q: torch.Tensor, block_size: int):
    """The fastest backend for these inputs; a fallback from a native kernel warns once."""
    if q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16):
        if _cpu_kernel_ready():
            _used("cpu")
            return _cpu_kernel_attention
        _warn_cpu_fallback()
    if (q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16)
            and cuda_kernel_supports(q.shape[-1], block_size)):
        if _cuda_kernel_ready():
            _used("cuda")
            return _cuda_kernel_attention
        _warn_cuda_fallback()
    _used("torch")
    return blocked_block_sparse_attention


# Which backends the ``auto`` op ran since the last reset: what the output manifest records.
_USED: set[str] = set()
BACKEND_LABELS = {"cpu": "cpp-kernel", "cuda": "cuda-kernel", "torch": "torch-blocked", "reference": "dense-reference"}


def _used(name: str) -> None:
    _USED.add(name)


def backends_used(reset: bool = False) -> list[str]:
    """Labels (``cpp-kernel``, ``cuda-kernel``, ``torch-blocked``) of the backends the ``auto`` op
    chose since the last ``reset=True`` call; ``reset`` starts a new record after reading."""
    used = sorted(BACKEND_LABELS[n] for n in _USED)
    if reset:
        _USED.clear()
    return used


def _warn_cpu_fallback() -> None:
    from ..kernels.cpu import cpu_kernel_unavailable_reason
    from ..core.notices import one_line, warn_once

    warn_once("attention-cpu-kernel",
              f"block-sparse attention falls back from the C++ CPU kernel to the torch-blocked path (about 3x "
              f"slower): {one_line(cpu_kernel_unavailable_reason())}; fix: provide a C++17 compiler (g++ or $CXX) "
              "and the kernel sources (reinstall the package, or set $S4D_CPP_EXT_DIR); details: "
              "sdk.kernels.build_log()")


def _warn_cuda_fallback() -> None:
    from ..kernels.cuda import cuda_kernels_unavailable_reason
    from ..core.notices import one_line, warn_once

    warn_once("attention-cuda-kernel",
              "block-sparse attention falls back from the CUDA kernel to the torch-blocked path: "
              f"{one_line(cuda_kernels_unavailable_reason())}; fix: a CUDA build of torch with nvcc on PATH "
              "(or $CUDA_HOME), and a GPU of compute capability >= 8.0; details: sdk.kernels.cuda.build_log()")


def _cuda_kernel_ready() -> bool:
    from ..kernels.cuda import cuda_kernels_available

    return cuda_kernels_available()


def _cuda_kernel_attention(q, k, v, pattern: SparsePattern, block_size: int, scale: float | None = None):
    from ..kernels.cuda import block_sparse_attention_cuda, cuda_kernels_available, cuda_kernels_unavailable_reason

    _check_inputs(q, k, v, pattern, block_size)
    if not cuda_kernels_available():
        raise RuntimeError(f"the CUDA kernel is unavailable: {cuda_kernels_unavailable_reason()}")
    offsets, indices = _device_lists(pattern, q.device)
    return block_sparse_attention_cuda(q, k, v, offsets, indices, block_size, _default_scale(q, scale),
                                       check_csr=False)  # lists come from SparsePattern: valid by construction


_DEVICE_LISTS: dict[tuple[SparsePattern, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _device_lists(pattern: SparsePattern, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR lists uploaded once per (pattern, device)."""
    key = (pattern, str(device))
    if key not in _DEVICE_LISTS:
        offsets, indices = pattern.kv_block_lists()
        _DEVICE_LISTS[key] = (offsets.to(device), indices.to(device))
    return _DEVICE_LISTS[key]


def _cpu_kernel_ready() -> bool:
    try:
        from ..kernels.cpu import cpu_kernel_available
    except ImportError:
        return False
    return cpu_kernel_available()


def _op_setup_context(ctx, inputs, output):
    q, k, v, num_frames, block_size, schedule, anchor, scale = inputs
    ctx.save_for_backward(q, k, v)
    ctx.params = (num_frames, block_size, tuple(schedule), anchor, scale)


def _op_backward(ctx, grad_out):
    """Gradients by differentiating the torch-blocked backend (recomputes the forward)."""
    q, k, v = ctx.saved_tensors
    num_frames, block_size, schedule, anchor, scale = ctx.params
    pattern = SparsePattern.for_tokens(num_frames, q.shape[2] // num_frames, block_size, schedule, anchor)
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        out = blocked_block_sparse_attention(*leaves, pattern, block_size, scale)
        grads = torch.autograd.grad(out, leaves, grad_out)
    return (*grads, None, None, None, None, None)


_block_sparse_attention_op.register_autograd(_op_backward, setup_context=_op_setup_context)


def _cpu_kernel_attention(q, k, v, pattern: SparsePattern, block_size: int, scale: float | None = None):
    from ..kernels.cpu import block_sparse_attention_cpu, cpu_kernel_available, cpu_kernel_unavailable_reason

    _check_inputs(q, k, v, pattern, block_size)
    if q.device.type != "cpu":
        raise ValueError(f"backend 'cpu' needs CPU tensors, got {q.device}")
    if not cpu_kernel_available():
        raise RuntimeError(f"the C++ CPU kernel is unavailable: {cpu_kernel_unavailable_reason()}")
    offsets, indices = pattern.kv_block_lists()
    return block_sparse_attention_cpu(q, k, v, offsets, indices, block_size, _default_scale(q, scale))


ONNX_DOMAIN = "s4d"
ONNX_OP = "BlockSparseAttention"
PLUGIN_VERSION = "1"


def onnx_node_attributes(pattern: SparsePattern, block_size: int, num_heads: int, head_dim: int,
                         scale: float) -> dict:
    """The attributes of the ``s4d::BlockSparseAttention`` ONNX node - exactly the fields the
    TensorRT plugin creator reads (it rebuilds the CSR lists from them)."""
    return {
        "num_frames": pattern.num_frames,
        "tokens_per_frame": pattern.blocks_per_frame * block_size,
        "block_size": block_size,
        "schedule": list(pattern.schedule),
        "anchor": int(pattern.anchor),
        "num_heads": num_heads,
        "head_dim": head_dim,
        "scale": float(scale),
        "plugin_version": PLUGIN_VERSION,
        "plugin_namespace": ONNX_DOMAIN,
    }


def onnx_block_sparse_attention_node(q, k, v, pattern: SparsePattern, block_size: int, scale: float):
    """Under ``torch.onnx.export``: one ``s4d::BlockSparseAttention`` node (the exporter later
    attaches a standard-op function body, see ``export.onnx``)."""
    attrs = onnx_node_attributes(pattern, block_size, q.shape[1], q.shape[3], scale)
    return torch.onnx.ops.symbolic(f"{ONNX_DOMAIN}::{ONNX_OP}", (q, k, v), attrs, dtype=q.dtype, shape=q.shape,
                                   version=1)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: SparsePattern,
                           block_size: int, scale: float | None = None,
                           backend: str = "auto") -> torch.Tensor:
    """Sculpt4D block-sparse attention over ``[B, H, T*P, D]`` frame-major tokens.

    ``pattern`` gives frames, blocks per frame, schedule and anchor; ``block_size`` the tokens
    per block (``P = pattern.blocks_per_frame * block_size``). ``scale`` defaults to D^-0.5.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    _check_inputs(q, k, v, pattern, block_size)
    if torch.onnx.is_in_onnx_export():
        return onnx_block_sparse_attention_node(q, k, v, pattern, block_size, _default_scale(q, scale))
    if backend != "auto":
        _used(backend)
    if backend == "reference":
        return reference_block_sparse_attention(q, k, v, pattern, block_size, scale)
    if backend == "torch":
        return blocked_block_sparse_attention(q, k, v, pattern, block_size, scale)
    if backend == "cpu":
        return _cpu_kernel_attention(q, k, v, pattern, block_size, scale)
    if backend == "cuda":
        return _cuda_kernel_attention(q, k, v, pattern, block_size, scale)
    return torch.ops.s4d.block_sparse_attention(q, k, v, pattern.num_frames, block_size,
                                                list(pattern.schedule), pattern.anchor,
                                                _default_scale(q, scale))
