"""The Sculpt4D block-sparse temporal attention pattern: the one home of the mask logic.

Tokens are frame-major: token p of frame i sits at index ``i * P + p``. With block size
S_B there are ``Ng = P / S_B`` spatial blocks per frame and ``T * Ng`` blocks in all; the
global block index of (frame i, spatial block u) is ``i * Ng + u``.

Query block (i, u) attends key block (j, v) iff

    (anchor and j == 0)  or  (u mod s) == (v mod s),  s = schedule[min(|i - j|, len(schedule) - 1)]

(SPEC section 3). Every consumer - the PyTorch model, the ONNX exporter, the CPU and CUDA
kernels and the TensorRT plugin - takes its mask from here (the C++ plugin core mirrors
``kv_block_lists`` and a test proves the two equal).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

PRESETS: dict[str, tuple[int, ...]] = {
    "sculpt4d": (1, 1, 2, 4, 8, 16),
    "fixed4": (4,),
    "aggressive": (1, 2, 4, 8, 16, 32),
    "conservative": (1, 1, 2, 2, 4, 4),
    "full": (1,),
}


class PatternError(ValueError):
    """An invalid block-sparse pattern request (bad schedule, frame count or block size)."""


def resolve_schedule(schedule: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """A preset name or an explicit stride list -> a validated stride tuple."""
    if isinstance(schedule, str):
        if schedule not in PRESETS:
            raise PatternError(
                f"unknown schedule {schedule!r}; expected one of {sorted(PRESETS)} "
                "or a list of positive integer strides")
        return PRESETS[schedule]
    try:
        strides = tuple(schedule)
    except TypeError:
        raise PatternError(f"schedule must be a preset name or a list of strides, got {schedule!r}") from None
    if not strides:
        raise PatternError("schedule must contain at least one stride")
    for s in strides:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise PatternError(f"schedule strides must be positive integers, got {list(strides)}")
    return tuple(int(s) for s in strides)


def parse_schedule(text: str) -> tuple[int, ...]:
    """A schedule as typed on a command line - a preset name or comma-separated strides
    (``1,1,2,4``) - as validated strides; ``PatternError`` if it is neither."""
    if text in PRESETS:
        return PRESETS[text]
    try:
        strides = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise PatternError(f"{text!r} is neither a preset ({', '.join(PRESETS)}) nor a list of integers") from None
    return resolve_schedule(strides)


def schedule_name(schedule: tuple[int, ...]) -> str | None:
    """The preset name of a stride tuple, if it is one."""
    for name, strides in PRESETS.items():
        if strides == tuple(schedule):
            return name
    return None


@dataclass(frozen=True)
class SparsePattern:
    """Block-level attention pattern for ``num_frames`` frames of ``blocks_per_frame`` blocks."""

    num_frames: int
    blocks_per_frame: int
    schedule: tuple[int, ...] = PRESETS["sculpt4d"]
    anchor: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", resolve_schedule(self.schedule))
        for name in ("num_frames", "blocks_per_frame"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise PatternError(f"{name} must be a positive integer, got {value!r}")
        object.__setattr__(self, "num_frames", int(self.num_frames))
        object.__setattr__(self, "blocks_per_frame", int(self.blocks_per_frame))

    # -- construction helpers -------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, num_frames: int, blocks_per_frame: int, anchor: bool = True) -> "SparsePattern":
        """The pattern of a named schedule (``sculpt4d``, ``fixed4``, ``aggressive``, ``conservative``, ``full``)."""
        return cls(num_frames, blocks_per_frame, resolve_schedule(name), anchor)

    @classmethod
    def for_tokens(cls, num_frames: int, tokens_per_frame: int, block_size: int,
                   schedule: str | tuple[int, ...] = "sculpt4d", anchor: bool = True) -> "SparsePattern":
        """Pattern for ``tokens_per_frame`` tokens per frame cut into blocks of ``block_size``."""
        if block_size < 1:
            raise PatternError(f"block_size must be a positive integer, got {block_size}")
        if tokens_per_frame < 1 or tokens_per_frame % block_size != 0:
            raise PatternError(
                f"tokens per frame ({tokens_per_frame}) must be a positive multiple of the "
                f"block size ({block_size})")
        return cls(num_frames, tokens_per_frame // block_size, resolve_schedule(schedule), anchor)

    # -- the rule -------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        """Blocks in the whole sequence (frames x blocks per frame)."""
        return self.num_frames * self.blocks_per_frame

    def stride(self, frame_distance: int) -> int:
        """The stride ``s`` for two frames ``frame_distance`` apart (the schedule's last entry beyond its length)."""
        return self.schedule[min(abs(frame_distance), len(self.schedule) - 1)]

    def block_mask(self) -> torch.Tensor:
        """Bool ``[T*Ng, T*Ng]``: entry (query block, key block) is True where attention is kept."""
        import torch  # here, not at import: the CLIs read PRESETS without loading torch

        return torch.from_numpy(self._mask_np().copy())

    def _mask_np(self) -> np.ndarray:
        return _block_mask_np(self.num_frames, self.blocks_per_frame, self.schedule, self.anchor)

    def kv_block_lists(self) -> tuple[torch.Tensor, torch.Tensor]:
        """CSR ``(offsets int32 [T*Ng+1], indices int32 [nnz])``; indices ascend within a row.

        Row r lists the key blocks query block r attends: exactly what a kernel iterates and
        what an engine bakes in for one frame count.
        """
        offsets, indices = _csr_np(self.num_frames, self.blocks_per_frame, self.schedule, self.anchor)
        import torch

        return torch.from_numpy(offsets.copy()), torch.from_numpy(indices.copy())

    def padded_kv_lists(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The CSR rows padded to the longest row: ``index int64 [R, M]`` (padding 0) and
        ``valid bool [R, M]`` - a fixed-shape gather, as the ONNX function body bakes it in."""
        index, valid = _padded_np(self.num_frames, self.blocks_per_frame, self.schedule, self.anchor)
        import torch

        return torch.from_numpy(index.copy()), torch.from_numpy(valid.copy())

    def nnz(self) -> int:
        """How many (query block, key block) pairs are attended."""
        return int(self._mask_np().sum())

    def density(self) -> float:
        """Kept fraction of the ``(T*Ng)^2`` block pairs (closed form, see ``row_counts``)."""
        return float(self.row_counts().sum()) / float(self.num_blocks) ** 2

    def row_counts(self) -> np.ndarray:
        """Key blocks per query block, by counting (no mask materialised).

        For key frame j != anchor: the number of v in [0, Ng) with v = u (mod s) is
        ``(Ng - 1 - (u mod s)) // s + 1``; the anchor frame contributes Ng.
        """
        T, G = self.num_frames, self.blocks_per_frame
        counts = np.zeros((T, G), dtype=np.int64)
        u = np.arange(G)
        for i in range(T):
            for j in range(T):
                if self.anchor and j == 0:
                    counts[i] += G
                else:
                    s = self.stride(i - j)
                    counts[i] += (G - 1 - (u % s)) // s + 1
        return counts.reshape(-1)

    def describe(self) -> str:
        """One line: schedule, anchor, frames, blocks per frame and density."""
        name = schedule_name(self.schedule) or list(self.schedule)
        return (f"{name} schedule={list(self.schedule)} anchor={self.anchor} frames={self.num_frames} "
                f"blocks/frame={self.blocks_per_frame} density={self.density():.4f}")


@functools.lru_cache(maxsize=64)
def _block_mask_np(T: int, G: int, schedule: tuple[int, ...], anchor: bool) -> np.ndarray:
    frame = np.arange(T)
    dist = np.abs(frame[:, None] - frame[None, :])
    strides = np.asarray(schedule)[np.minimum(dist, len(schedule) - 1)]  # [T, T]
    u = np.arange(G)
    # keep[i, j, u, v] = (u mod s_ij) == (v mod s_ij)
    s = strides[:, :, None, None]
    keep = (u[None, None, :, None] % s) == (u[None, None, None, :] % s)
    if anchor:
        keep[:, 0] = True
    mask = keep.transpose(0, 2, 1, 3).reshape(T * G, T * G)
    mask.setflags(write=False)
    return mask


@functools.lru_cache(maxsize=64)
def _csr_np(T: int, G: int, schedule: tuple[int, ...], anchor: bool) -> tuple[np.ndarray, np.ndarray]:
    mask = _block_mask_np(T, G, schedule, anchor)
    counts = mask.sum(axis=1)
    offsets = np.zeros(T * G + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    indices = np.nonzero(mask)[1].astype(np.int32)  # row-major nonzero: ascending per row
    offsets.setflags(write=False)
    indices.setflags(write=False)
    return offsets, indices


@functools.lru_cache(maxsize=64)
def _padded_np(T: int, G: int, schedule: tuple[int, ...], anchor: bool) -> tuple[np.ndarray, np.ndarray]:
    offsets, indices = _csr_np(T, G, schedule, anchor)
    counts = (offsets[1:] - offsets[:-1]).astype(np.int64)
    slot = np.arange(int(counts.max()))
    valid = slot[None, :] < counts[:, None]
    flat = np.minimum(offsets[:-1].astype(np.int64)[:, None] + slot[None, :], max(indices.size - 1, 0))
    index = np.where(valid, indices.astype(np.int64)[flat], 0)
    return index, valid
