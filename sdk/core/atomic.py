"""Atomic, ownership-checked outputs: nothing half-written is ever left at a target path, and
nothing this tool did not write is ever deleted or replaced. This module is the one home of that
logic (mesh sequences, checkpoints, ONNX exports, engine files).

Publishing a directory (:func:`atomic_directory`):

1. Work happens in a temporary sibling ``.NAME.partial-<pid>-<random>`` (same filesystem) that
   carries a marker file (:data:`PARTIAL_TAG`) naming the owning process.
2. On success the marker is removed and the directory is renamed onto the target with an atomic
   no-replace rename (Linux ``renameat2(RENAME_NOREPLACE)``). If the target appeared meanwhile
   (a concurrent run), the publish fails with "appeared meanwhile" instead of silently discarding
   either result.
3. With ``overwrite`` an existing target is replaced only if ``owned(target)`` proves that this
   tool wrote it (a format tag of ours and only files we list; an empty directory also qualifies,
   since removing it loses nothing). The swap is atomic (``RENAME_EXCHANGE``); the old directory
   is deleted only after it proved to be ours once more (else it is swapped back).

Where ``renameat2`` is unavailable (other kernels, some filesystems) the fallback refuses an
existing target before a plain ``rename``; a plain rename cannot replace a non-empty directory,
so at worst an empty directory created in that instant is replaced.

Stale partials: a process killed mid-write (SIGKILL, power loss) leaves its partial behind. Every
write first removes, in the same parent directory, the partials that carry our marker AND whose
process is gone (:func:`clean_stale_partials`). Nothing else is ever removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .jsonfile import JSONFileError, read_json

# Read once at import (os.umask can only be read by setting it, which is process-wide).
_UMASK = os.umask(0o022)
os.umask(_UMASK)

PARTIAL_TAG = ".sculpt4d-partial.json"
PARTIAL_FORMAT = "sculpt4d-partial"
_PARTIAL_INFIX = ".partial-"

#: ``owned(path)`` returns None when ``path`` provably holds an output of ours, else the reason why not.
Ownership = Callable[[Path], "str | None"]

_RENAME_NOREPLACE, _RENAME_EXCHANGE, _AT_FDCWD = 1, 2, -100
_use_renameat2 = True  # tests switch this off to exercise the portable fallback


# --------------------------------------------------------------------------------------------
# Ownership proofs
# --------------------------------------------------------------------------------------------


def written_by_us(directory: Path, manifest: str, format_tag: str,
                  listed: Callable[[dict], Iterable[str]]) -> str | None:
    """None when ``directory`` provably holds an output of ours: ``manifest`` inside it is a JSON
    object whose ``"format"`` is ``format_tag``, and every file under the directory is the
    manifest or one of ``listed(manifest)`` (relative paths). Otherwise the reason why not."""
    directory = Path(directory)
    if directory.is_symlink() or not directory.is_dir():
        return f"{directory} is not a directory"
    try:
        data = read_json(directory / manifest)
    except FileNotFoundError:
        return f"{directory} has no {manifest}"
    except JSONFileError as exc:
        return f"{directory / manifest} is unreadable: {str(exc).removeprefix(f'{directory / manifest}: ')}"
    except OSError as exc:
        return f"{directory / manifest} is unreadable ({type(exc).__name__})"
    if not isinstance(data, dict) or data.get("format") != format_tag:
        return f"{directory / manifest} is not a {format_tag!r} manifest"
    try:
        known = {manifest, *(str(f) for f in listed(data))}
    except (TypeError, AttributeError, KeyError):
        return f"{directory / manifest} does not list its files"
    foreign = []
    for root, dirs, files in os.walk(directory):
        rel_root = Path(root).relative_to(directory)
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            rel = (rel_root / name).as_posix()
            if rel not in known:
                foreign.append(rel)
    if foreign:
        shown = ", ".join(sorted(foreign)[:5]) + (", ..." if len(foreign) > 5 else "")
        return f"{directory} holds files this tool did not write ({shown})"
    return None


def _replaceable(target: Path, owned: Ownership | None) -> str | None:
    """None if an existing ``target`` may be replaced (ours, or an empty directory)."""
    if target.is_dir() and not target.is_symlink():
        with contextlib.suppress(OSError):
            if not any(target.iterdir()):
                return None
    if owned is None:
        return f"{target} exists and nothing proves this tool wrote it"
    return owned(target)


def check_target(target: str | os.PathLike, overwrite: bool, owned: Ownership | None = None,
                 exists_error: type[Exception] = FileExistsError) -> None:
    """Fail early (before any work) if publishing to ``target`` cannot succeed: a dangerous name,
    an existing target without ``overwrite``, or one that is not provably ours. The final word is
    spoken atomically at publish time; this only saves the work."""
    target = Path(target)
    _refuse_dangerous_target(target)
    if not os.path.lexists(target):
        return
    if not overwrite:
        raise exists_error(f"{target} already exists (pass overwrite to replace it)")
    reason = _replaceable(target, owned)
    if reason is not None:
        raise exists_error(f"refusing to replace {target}: {reason}; move it away or choose another output")


def _refuse_dangerous_target(target: Path) -> None:
    """Never let a target be '.', '..', '/', or a directory that contains the current directory."""
    if target.name in ("", ".", ".."):
        raise ValueError(f"refusing to write to {str(target)!r}: name a new directory")
    try:
        resolved = target.resolve()
        cwd = Path.cwd().resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop on the way
        raise ValueError(f"refusing to write to {str(target)!r}: the path cannot be resolved ({exc})") from None
    if resolved == Path(resolved.anchor) or resolved == cwd or resolved in cwd.parents:
        raise ValueError(f"refusing to replace {resolved}: it is the current directory or one of its parents")


def files_in(directory: str | os.PathLike) -> list[str]:
    """Relative paths (posix) of the files under ``directory``, without our partial marker: what
    a manifest lists so that :func:`written_by_us` can later prove the directory is ours."""
    out = []
    for root, _dirs, files in os.walk(directory):
        rel_root = Path(root).relative_to(directory)
        out += [(rel_root / f).as_posix() for f in files if not (rel_root == Path(".") and f == PARTIAL_TAG)]
    return sorted(out)


# --------------------------------------------------------------------------------------------
# Renames
# --------------------------------------------------------------------------------------------


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``: True when done, False when this system cannot do it (the
    caller falls back); any other failure raises ``OSError``."""
    func = _libc_renameat2() if _use_renameat2 else None
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


_LIBC_RENAMEAT2: list = []


def _libc_renameat2():
    if not _LIBC_RENAMEAT2:
        func = None
        with contextlib.suppress(OSError, AttributeError):
            func = ctypes.CDLL(None, use_errno=True).renameat2
            func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            func.restype = ctypes.c_int
        _LIBC_RENAMEAT2.append(func)
    return _LIBC_RENAMEAT2[0]


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; ``FileExistsError`` if ``dst`` exists (never replaces it)."""
    try:
        if _renameat2(src, dst, _RENAME_NOREPLACE):
            return
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "target exists", str(dst))
        if src.is_dir():
            os.rename(src, dst)  # cannot replace a non-empty directory (ENOTEMPTY) or a file (ENOTDIR)
        else:
            os.link(src, dst)  # a hard link never replaces
            os.unlink(src)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise FileExistsError(errno.EEXIST, "target exists", str(dst)) from None
        raise


# --------------------------------------------------------------------------------------------
# Partials and their cleanup
# --------------------------------------------------------------------------------------------


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), to tell a reused pid from its owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 (starttime), counted after "comm"


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    except OverflowError:
        return False
    if started is not None:
        now = _process_start(pid)
        return now is None or now == started
    return True


def _make_partial(parent: Path, name: str) -> Path:
    pid = os.getpid()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}{_PARTIAL_INFIX}{pid}-", dir=parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; the result is an ordinary directory
    _tag_partial(tmp, name)
    return tmp


def _tag_partial(path: Path, name: str) -> None:
    pid = os.getpid()
    (path / PARTIAL_TAG).write_text(json.dumps({"format": PARTIAL_FORMAT, "pid": pid, "host": socket.gethostname(),
                                                "started": _process_start(pid), "target": name}))


def clean_stale_partials(parent: str | os.PathLike) -> list[Path]:
    """Remove the partials in ``parent`` left by processes that are gone; returns what was removed.

    A partial is removed only if its name is ``.NAME.partial-<pid>-<random>``, it is a real
    directory holding our marker, the marker names the same pid and this host, and that process
    no longer runs (or the pid now belongs to a process started later)."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    host = socket.gethostname()
    for entry in entries:
        name = entry.name
        if not name.startswith(".") or _PARTIAL_INFIX not in name:
            continue
        pid_text = name.rsplit(_PARTIAL_INFIX, 1)[1].split("-", 1)[0]
        if not pid_text.isdigit() or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            tag = read_json(Path(entry.path) / PARTIAL_TAG)
        except (OSError, ValueError):
            continue
        if (not isinstance(tag, dict) or tag.get("format") != PARTIAL_FORMAT or tag.get("pid") != int(pid_text)
                or tag.get("host") != host or _alive(int(pid_text), tag.get("started"))):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


# --------------------------------------------------------------------------------------------
# Atomic directory and file
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False,
                     exists_error: type[Exception] = FileExistsError,
                     owned: Ownership | None = None) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``target`` when the block ends without error.

    Without ``overwrite`` an existing target (also one that appears while the block runs) is an
    ``exists_error``. With it, the target is replaced atomically, but only if ``owned(target)``
    returns None (or it is an empty directory); otherwise ``exists_error``, target untouched."""
    target = Path(target)
    check_target(target, overwrite, owned, exists_error)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(target.parent)
    tmp = _make_partial(target.parent, target.name)
    try:
        yield tmp
        (tmp / PARTIAL_TAG).unlink()
        _publish(tmp, target, overwrite, owned, exists_error)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, target: Path, overwrite: bool, owned: Ownership | None,
             exists_error: type[Exception]) -> None:
    for _attempt in range(8):
        try:
            rename_noreplace(tmp, target)
            return
        except FileExistsError:
            pass
        if not overwrite:
            raise exists_error(f"{target} appeared meanwhile (another run wrote it); nothing was replaced "
                               "(pass overwrite to replace it)")
        reason = _replaceable(target, owned)
        if reason is not None:
            raise exists_error(f"refusing to replace {target}: {reason}; move it away or choose another output")
        if target.is_dir() and not target.is_symlink():
            with contextlib.suppress(OSError):
                os.rmdir(target)  # an empty directory: nothing to lose; fails if it filled meanwhile
                continue
        if _renameat2(tmp, target, _RENAME_EXCHANGE):
            old = tmp  # the exchange left the previous target here
            if _replaceable(old, owned) is not None:  # changed between the check and the swap
                _renameat2(old, target, _RENAME_EXCHANGE)
                raise exists_error(f"{target} changed while it was being replaced; it was left as it is")
            _tag_partial(old, target.name)  # if killed now, the next run removes it
            shutil.rmtree(old, ignore_errors=True)
            return
        aside = _make_partial(target.parent, target.name + ".old")  # portable path: move the old one aside
        try:
            os.rename(target, aside / "old")
        except FileNotFoundError:
            shutil.rmtree(aside, ignore_errors=True)
            continue
        if _replaceable(aside / "old", owned) is not None:
            rename_noreplace(aside / "old", target)
            shutil.rmtree(aside, ignore_errors=True)
            raise exists_error(f"{target} changed while it was being replaced; it was left as it is")
        try:
            rename_noreplace(tmp, target)
        finally:
            shutil.rmtree(aside, ignore_errors=True)
        return
    raise exists_error(f"{target} kept changing while it was being replaced; giving up")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file path (a fresh file name with ``path``'s suffix, in a marked partial
    directory beside ``path``) that is renamed to ``path`` on success. Without ``overwrite`` an
    existing ``path`` (also one that appears meanwhile) is a ``FileExistsError``."""
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{path} already exists (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(path.parent)
    tmpdir = _make_partial(path.parent, path.name)
    tmp = tmpdir / f"payload{path.suffix}"
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                rename_noreplace(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path} appeared meanwhile; nothing was replaced") from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
