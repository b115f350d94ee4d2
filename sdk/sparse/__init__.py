"""Block-sparse temporal attention: the pattern (mask/schedule) and the attention backends.

The pattern names are imported at once (numpy only); the attention backends, which need torch,
on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .pattern import PRESETS, PatternError, SparsePattern, parse_schedule, resolve_schedule, schedule_name

_ATTENTION = ("BACKENDS", "block_sparse_attention", "blocked_block_sparse_attention",
              "reference_block_sparse_attention")

if TYPE_CHECKING:
    from .attention import (BACKENDS, block_sparse_attention, blocked_block_sparse_attention,
                            reference_block_sparse_attention)

__all__ = [
    "BACKENDS",
    "PRESETS",
    "PatternError",
    "SparsePattern",
    "block_sparse_attention",
    "blocked_block_sparse_attention",
    "parse_schedule",
    "reference_block_sparse_attention",
    "resolve_schedule",
    "schedule_name",
]


def __getattr__(name: str) -> Any:
    if name not in _ATTENTION:
        raise AttributeError(f"module 'sdk.sparse' has no attribute {name!r}")
    value = getattr(importlib.import_module(".attention", __name__), name)
    globals()[name] = value
    return value
