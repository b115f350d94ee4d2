"""Inputs and outputs named by URI: ``file://``, ``s3://``, ``gs://`` (anything ``pyarrow.fs`` opens).

A cluster's workers rarely share a disk with the machine that submits the job, so
``s4d-convert --ray`` accepts URIs for ``-o`` and for inputs:

- A plain path or a ``file://`` URI is a local (or shared, e.g. NFS) filesystem: outputs are
  published with the same atomic rename as ever (``sdk.core.atomic``).
- Any other scheme is an object store, where nothing renames atomically. A clip is written to a
  local temporary directory, then copied under ``OUT/<name>/`` in this order: an upload marker
  (``.s4d-upload.json``, our format tag and the files about to be copied), the files,
  ``manifest.json`` last, then the marker is removed. ``manifest.json`` is the completion mark:
  ``--skip-existing`` skips a clip only when it is there, and a clip directory that holds our
  marker and nothing it does not list is a killed upload of ours, replaced on the next run.
  Nothing else under an output URI is ever deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import quote, unquote, urlparse

from ..core.atomic import files_in
from ..core.jsonfile import loads_limited

T = TypeVar("T")
ABANDONED = 0  # object-store calls given up on (still blocked in their threads)

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
UPLOAD_MARKER = ".s4d-upload.json"
UPLOAD_FORMAT = "sculpt4d-upload"
SEQUENCE_MANIFEST = "manifest.json"


def child_uri(uri: str, name: str) -> str:
    """``uri/<name>`` with ``name`` percent-encoded (one segment)."""
    return f"{uri.rstrip('/')}/{quote(name, safe='')}"


def uri_stem(uri: str) -> str:
    """The decoded file stem a URI names: ``s3://b/in/take%232.mp4?x=1`` -> ``take#2``."""
    return Path(unquote(urlparse(uri).path.rstrip("/"))).stem


def scheme_of(name: str) -> str | None:
    """``"s3"`` for ``s3://b/k``; None for a plain path."""
    match = _SCHEME.match(str(name))
    return match.group(1).lower() if match else None


def local_path(name: str | os.PathLike) -> Path | None:
    """The local path a plain path or ``file://`` URI names; None for an object-store URI."""
    scheme = scheme_of(str(name))
    if scheme is None:
        path = Path(name)
    elif scheme != "file":
        return None
    else:
        parsed = urlparse(str(name))
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{name}: a file:// URI names a path on this machine (file:///abs/path), "
                             f"not on host {parsed.netloc!r}")
        path = Path(unquote(parsed.path))
    if "\x00" in str(path):  # no filesystem call accepts it; say so instead of failing deep inside
        raise ValueError(f"{str(name)!r} contains a NUL byte (from %00 in a URI?); not a usable path")
    return path


@dataclass(frozen=True)
class Remote:
    """A location in an object store: a ``pyarrow.fs`` filesystem and a path inside it."""

    fs: object
    path: str  # "bucket/prefix", no scheme, no trailing slash
    uri: str

    def child(self, name: str) -> "Remote":
        """``name`` is one path segment; the URI percent-encodes it, so parsing it again (pyarrow
        decodes) names the same object even for '#', '?', '%' or spaces."""
        return Remote(self.fs, f"{self.path}/{name}", child_uri(self.uri, name))

    def info(self):
        """``pyarrow.fs.FileInfo`` of this location (type ``NotFound`` when nothing is there)."""
        return self.fs.get_file_info(self.path)

    def list_files(self) -> list[str]:
        """Relative paths of every file below this directory ([] if it does not exist)."""
        from pyarrow.fs import FileSelector, FileType

        infos = self.fs.get_file_info(FileSelector(self.path, recursive=True, allow_not_found=True))
        return sorted(i.path[len(self.path) + 1:] for i in infos if i.type == FileType.File)

    def read_bytes(self, rel: str = "") -> bytes:
        """The bytes of this file, or of ``rel`` below this directory."""
        with self.fs.open_input_stream(f"{self.path}/{rel}" if rel else self.path) as stream:
            return stream.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` below this directory (an object store writes it whole on close)."""
        with self.fs.open_output_stream(f"{self.path}/{rel}") as stream:
            stream.write(data)


def open_remote(uri: str) -> Remote:
    """``s3://bucket/prefix`` -> ``Remote``; a clear error for schemes or stores pyarrow cannot open.
    S3 settings come from the usual AWS environment (``AWS_ENDPOINT_URL``, keys, region) or the
    URI's query (``s3://bucket/prefix?endpoint_override=host:port&scheme=http``)."""
    from ..core.extras import require

    fs_module = require("pyarrow.fs", f"the output/input URI {uri}", "ray")
    try:
        fs, path = fs_module.FileSystem.from_uri(uri)
    except Exception as exc:
        raise ValueError(f"cannot open {uri}: {exc}") from None
    return Remote(fs, path.rstrip("/"), uri)


def answered_within(fn: Callable[[], T], seconds: float, what: str) -> T:
    """``fn()``, or ``ValueError`` when it has not returned within ``seconds``: an object store that
    accepts connections and never answers would otherwise hold the command for minutes (pyarrow's
    own retries). ``fn`` runs in a daemon thread, abandoned on a timeout."""
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="s4d-object-store", daemon=True).start()
    if not done.wait(seconds):
        global ABANDONED
        ABANDONED += 1  # the CLIs end the process at once: pyarrow would wait for the request at exit
        raise ValueError(f"{what}: no answer within {seconds:g} s (raise --connect-timeout for a slow store)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def check_writable(outdir: str, timeout: float = 30.0) -> None:
    """Fail before any clip is converted when ``outdir`` cannot take outputs: a local directory (or
    its nearest existing parent) that cannot be written, an object-store bucket that does not exist,
    cannot be reached, does not answer within ``timeout`` seconds or refuses a write. ``ValueError``
    saying which."""
    path = local_path(outdir)
    if path is not None:
        created = []  # made for the probe and removed again: a run that fails early leaves no trace
        missing = path
        while not os.path.lexists(missing) and missing != missing.parent:
            created.append(missing)
            missing = missing.parent
        try:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ValueError(f"cannot create {path}: {exc.strerror or exc}") from None
            try:  # a real write: os.access says yes to root on a read-only mount's permission bits
                fd, probe = tempfile.mkstemp(prefix=".s4d-write-probe-", dir=path)
                os.close(fd)
                os.unlink(probe)
            except OSError as exc:
                raise ValueError(f"cannot write into {path}: {exc.strerror or exc}") from None
        finally:
            for directory in created:  # deepest first; only what this call made, and only if empty
                try:
                    directory.rmdir()
                except OSError:
                    break
        return
    answered_within(lambda: _check_remote_writable(outdir), timeout, f"the object store of {outdir}")


def _check_remote_writable(outdir: str) -> None:
    from pyarrow.fs import FileType

    target = open_remote(outdir)
    bucket = target.path.split("/", 1)[0]
    try:
        info = target.fs.get_file_info(bucket)
    except OSError as exc:
        raise ValueError(f"cannot reach the object store of {outdir}: {str(exc).splitlines()[0][:300]}") from None
    if info.type == FileType.NotFound:
        raise ValueError(f"the bucket {bucket!r} of {outdir} does not exist (or these credentials cannot see it)")
    probe = f".s4d-write-probe-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        target.write_bytes(probe, b"")
        target.fs.delete_file(f"{target.path}/{probe}")
    except OSError as exc:
        raise ValueError(f"cannot write into {outdir}: {str(exc).splitlines()[0][:300]}") from None


# --------------------------------------------------------------------------------------------
# Outputs in an object store
# --------------------------------------------------------------------------------------------


def _listed(target: Remote, name: str, tag: str) -> set[str] | None:
    """The files a manifest/marker of ours lists, or None if it is not one (unreadable, other tag)."""
    try:
        data = loads_limited(target.read_bytes(name), f"{target.uri}/{name}")
        return {str(f) for f in data["files"]} if data.get("format") == tag else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _inspect(target: Remote) -> tuple[str, str | None, list[str]]:
    """(state, why not ours, the files present); see ``remote_output_state``."""
    from pyarrow.fs import FileType

    files = target.list_files()
    if not files:
        if target.info().type not in (FileType.NotFound, FileType.Directory):
            return "foreign", f"{target.uri} exists and is not a directory", files
        return "absent", None, files
    # The marker first: while it is there the directory is an unfinished upload of ours, whatever
    # state its manifest is in (being replaced, or written by a stream an error closed).
    for name, tag, state in ((UPLOAD_MARKER, UPLOAD_FORMAT, "partial"),
                             (SEQUENCE_MANIFEST, "sculpt4d-mesh-sequence", "complete")):
        if name not in files:
            continue
        listed = _listed(target, name, tag)
        if listed is None:
            return "foreign", f"{target.uri}/{name} is not a {tag!r} file of this tool", files
        foreign = [f for f in files if f not in listed | {UPLOAD_MARKER, SEQUENCE_MANIFEST}]
        if foreign:
            return "foreign", f"{target.uri} holds files this tool did not write ({', '.join(foreign[:5])})", files
        return state, None, files
    return "foreign", f"{target.uri} exists and nothing proves this tool wrote it", files


def remote_output_state(target: Remote) -> tuple[str, str | None]:
    """What is at an output directory in an object store: ``("absent", None)``,
    ``("complete", None)`` (our manifest and nothing it does not list), ``("partial", None)``
    (our upload marker and nothing it does not list: an upload that was killed), or
    ``("foreign", why)``."""
    state, why, _ = _inspect(target)
    return state, why


def upload_directory(local: Path, target: Remote, overwrite: bool = False) -> None:
    """Copy a finished local clip directory to ``target``. Refuses a target that is not absent or
    provably ours (a complete one only with ``overwrite``). Order, so that a kill at any point
    leaves a directory ``remote_output_state`` calls "partial" (redone by the next run) and never
    one it calls "complete" with missing files: the marker (listing the old and the new files),
    the old manifest deleted, the old files the new clip does not have deleted (exactly those the
    inspection proved ours), the new files, the manifest, the marker deleted."""
    state, why, old = _inspect(target)
    if state == "foreign":
        raise FileExistsError(f"refusing to write {target.uri}: {why}")
    if state == "complete" and not overwrite:
        raise FileExistsError(f"output {target.uri} appeared meanwhile (another run wrote it while this one "
                              "worked); nothing was replaced (use --overwrite to replace it)")
    new = files_in(local)
    if SEQUENCE_MANIFEST not in new:
        raise ValueError(f"{local} has no {SEQUENCE_MANIFEST}; not a finished clip")
    listed = sorted((set(old) | set(new)) - {UPLOAD_MARKER})
    target.fs.create_dir(target.path, recursive=True)
    target.write_bytes(UPLOAD_MARKER, json.dumps({"format": UPLOAD_FORMAT, "files": listed}).encode())
    if SEQUENCE_MANIFEST in old:
        target.fs.delete_file(f"{target.path}/{SEQUENCE_MANIFEST}")
    for rel in sorted(set(old) - set(new) - {UPLOAD_MARKER, SEQUENCE_MANIFEST}):
        target.fs.delete_file(f"{target.path}/{rel}")
    for parent in sorted({str(Path(rel).parent) for rel in new} - {"."}):  # stores with real directories
        target.fs.create_dir(f"{target.path}/{parent}", recursive=True)
    for rel in new:
        if rel != SEQUENCE_MANIFEST:
            with open(local / rel, "rb") as src, target.fs.open_output_stream(f"{target.path}/{rel}") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    # from memory in one write: an object store's stream publishes whatever it holds when it is closed,
    # even by an exception (the marker, still there, keeps such a directory "partial")
    target.write_bytes(SEQUENCE_MANIFEST, (local / SEQUENCE_MANIFEST).read_bytes())
    target.fs.delete_file(f"{target.path}/{UPLOAD_MARKER}")


# --------------------------------------------------------------------------------------------
# Inputs in an object store
# --------------------------------------------------------------------------------------------


def list_remote_videos(uri: str, extensions: tuple[str, ...]) -> list[str] | None:
    """The videos directly under a prefix URI (sorted URIs), or None if ``uri`` is one object."""
    from pyarrow.fs import FileSelector, FileType

    remote = open_remote(uri)
    info = remote.info()
    if info.type == FileType.File:
        return None
    if info.type == FileType.NotFound:
        raise FileNotFoundError(f"{uri} does not exist")
    infos = remote.fs.get_file_info(FileSelector(remote.path, recursive=False))
    return sorted(child_uri(uri, i.base_name) for i in infos
                  if i.type == FileType.File and Path(i.base_name).suffix.lower() in extensions)


@contextlib.contextmanager
def fetched(uri: str) -> Iterator[str]:
    """A local path for an input: the path itself for plain paths and ``file://``, else the object
    downloaded to a temporary file (same suffix, so the video reader knows the container) that is
    removed afterwards."""
    path = local_path(uri)
    if path is not None:
        yield str(path)
        return
    remote = open_remote(uri)
    with tempfile.TemporaryDirectory(prefix="s4d-input-") as tmp:
        local = Path(tmp) / (Path(remote.path).name or "input")
        try:
            with remote.fs.open_input_stream(remote.path) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except FileNotFoundError:
            raise FileNotFoundError(f"{uri} does not exist") from None
        yield str(local)
