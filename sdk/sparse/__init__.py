"""Block-sparse temporal attention: the pattern (mask/schedule) and the attention backends."""

from .attention import (
    BACKENDS,
    block_sparse_attention,
    blocked_block_sparse_attention,
    reference_block_sparse_attention,
)
from .pattern import PRESETS, PatternError, SparsePattern, resolve_schedule, schedule_name

__all__ = [
    "BACKENDS",
    "PRESETS",
    "PatternError",
    "SparsePattern",
    "block_sparse_attention",
    "blocked_block_sparse_attention",
    "reference_block_sparse_attention",
    "resolve_schedule",
    "schedule_name",
]
