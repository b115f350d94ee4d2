"""Reading JSON that arrives from outside (manifests, configs, safetensors headers) without letting
it hang or exhaust the process.

- Only regular files are read: the file is opened non-blocking and checked with ``fstat``, so a
  FIFO, socket or device in a manifest's place fails at once instead of blocking forever.
- Size is bounded before anything is parsed, and so is nesting depth (a manifest nested 200 000
  levels deep would otherwise end in a ``RecursionError`` inside ``json``).

Every refusal is a :class:`JSONFileError` (a ``ValueError``) naming the file and the limit.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

__all__ = ["JSONFileError", "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "json_depth", "loads_limited", "read_json",
           "regular_file_problem", "special_file_reason"]

MAX_JSON_BYTES = 16 << 20  # manifests and configs are kilobytes; 16 MiB is far beyond any of ours
MAX_JSON_DEPTH = 64  # ours nest 4 levels at most

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


class JSONFileError(ValueError):
    """A JSON input that is not a regular file, too large, too deeply nested or not JSON."""


def regular_file_problem(mode: int) -> str | None:
    """Why a file of this ``st_mode`` is not a regular file we may read, or None."""
    if stat.S_ISREG(mode):
        return None
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")
    return kind


def special_file_reason(path: str | os.PathLike) -> str | None:
    """``"a FIFO (named pipe)"``, ``"a socket"`` or ``"a device"`` when ``path`` (followed) is one
    of those, which reading could block on forever; None for regular files, directories and
    anything that does not exist."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return regular_file_problem(mode)


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text`` (strings skipped), without parsing."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub('""', text)):
        depth += 1 if match.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def loads_limited(data: bytes | str, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` of untrusted ``data`` (``what`` names it in errors) with a nesting limit."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError as exc:
        raise JSONFileError(f"{what}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if json_depth(text) > max_depth:
        raise JSONFileError(f"{what}: JSON nested deeper than {max_depth} levels; not a file this tool wrote")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise JSONFileError(f"{what}: not valid JSON ({exc})") from None


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value in the regular file ``path``. ``FileNotFoundError`` (and other ``OSError``)
    pass through; anything else that is wrong is a :class:`JSONFileError` naming ``path``."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)  # non-blocking: opening a FIFO with no writer returns at once
    try:
        info = os.fstat(fd)
        problem = regular_file_problem(info.st_mode)
        if problem:
            raise JSONFileError(f"{path}: is {problem}; expected a JSON file")
        if info.st_size > max_bytes:
            raise JSONFileError(f"{path}: {info.st_size} bytes, over the {max_bytes}-byte limit for a JSON file")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise JSONFileError(f"{path}: over the {max_bytes}-byte limit for a JSON file")
    return loads_limited(data, str(Path(path)), max_depth)
