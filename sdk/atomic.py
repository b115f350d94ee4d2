"""Atomic outputs: nothing half-written is ever left at a target path.

Work happens in a temporary sibling (same filesystem), renamed into place only on success; any
failure or interruption removes the temporary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

# Read once at import (os.umask can only be read by setting it, which is process-wide).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False,
                     exists_error: type[Exception] = FileExistsError) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` when the block ends without error."""
    target = Path(target)
    _refuse_dangerous_target(target)
    if target.exists() and not overwrite:
        raise exists_error(f"{target} already exists (pass overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; the result is an ordinary directory
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _refuse_dangerous_target(target: Path) -> None:
    """A replaced target is deleted first: never let that be '.', '..', '/', or a directory that
    contains the current working directory."""
    if target.name in ("", ".", ".."):
        raise ValueError(f"refusing to write to {str(target)!r}: name a new directory")
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if resolved == Path(resolved.anchor) or resolved == cwd or resolved in cwd.parents:
        raise ValueError(f"refusing to replace {resolved}: it is the current directory or one of its parents")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file path (same directory, same suffix) renamed to ``path`` on success."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.partial-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
