"""One-line warnings for fallbacks from a faster path, each printed once per process.

A fallback (C++ kernel unavailable, kernel without OpenMP, GPU marching cubes unavailable,
rembg failing) keeps the run going but costs speed or quality, so it must not be silent:
:func:`warn_once` prints ``sculpt4d: warning: <what fell back>: <why>; fix: <what to do>`` on
stderr the first time a key is seen, and records it for :func:`fallbacks` (what the manifest lists).
"""

from __future__ import annotations

import sys
import threading

_lock = threading.Lock()
_seen: dict[str, str] = {}


def one_line(text: object, limit: int = 300) -> str:
    """The first non-empty line of ``text``, shortened to ``limit`` characters."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[:limit - 3] + "..."


def warn_once(key: str, message: str) -> bool:
    """Print ``message`` as one warning line unless ``key`` was warned about before; True if printed."""
    message = " ".join(str(message).split())
    with _lock:
        if key in _seen:
            return False
        _seen[key] = message
    print(f"sculpt4d: warning: {message}", file=sys.stderr, flush=True)
    return True


def fallbacks() -> dict[str, str]:
    """The fallbacks warned about in this process so far (key -> message)."""
    with _lock:
        return dict(_seen)


def _reset() -> None:  # tests only
    with _lock:
        _seen.clear()
