"""Batch conversion, one clip at a time: what ``s4d-convert`` does locally and each Ray worker does.

Three steps, shared by the local loop (``sdk.cli.convert``) and the cluster (``sdk.batch.distributed``):

1. ``expand_inputs``: arguments (paths, globs, directories, URIs) -> ``Item`` per clip.
2. ``plan_items``: decide each item's output before any model loads (skip, refuse, or convert).
3. ``convert_one``: run the Generator on one item and publish its output directory (atomic rename
   on a filesystem; marker, files, manifest last in an object store, see ``sdk.batch.storage``),
   recording ``ok`` or ``failed: <why>`` on the item. It never raises for a bad clip.
"""

from __future__ import annotations

import ctypes
import glob
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, List

from ..generation.settings import RunSettings
from .storage import child_uri, local_path, open_remote, remote_output_state, scheme_of

RAN_KEYS = ("attention_backend", "mcubes_backend", "matting", "threads", "fallbacks")


@dataclass
class Item:
    """One conversion job: a video file (path or URI) or a directory of frames."""

    input: str
    name: str
    output: str = ""
    status: str = "pending"  # ok | failed | skipped
    error: str | None = None
    frames: int = 0
    seconds: float = 0.0
    # what ran: attention_backend, mcubes_backend, matting, threads, fallbacks (also in the manifest)
    ran: dict | None = None


@dataclass(frozen=True)
class OutputOptions:
    """What to write for each clip and what to do when its output already exists."""

    formats: tuple[str, ...] = ("glb",)
    overwrite: bool = False
    skip_existing: bool = False
    sequence_glb: bool = True
    preview: bool = True
    viewer: bool = True
    timeout: float | None = None  # seconds per clip; None = no limit


# --------------------------------------------------------------------------------------------
# 1. inputs
# --------------------------------------------------------------------------------------------


def safe_output_name(stem: str) -> str:
    """An output name that is always ONE plain child of OUTDIR: no path separators or control
    characters, never empty, '.', '..' or hidden (a leading dot becomes '_'; temporaries are hidden)."""
    name = "".join("_" if c in "/\\" or ord(c) < 32 or ord(c) == 127 else c for c in stem).strip()
    bare = name.lstrip(".")
    if not bare.strip("_ "):
        return "input"
    return (bare if bare == name else "_" + bare)[:200]


def _classify(raw: str) -> List[Item]:
    """One path argument (or glob match) -> items; raises OSError if a directory cannot be listed."""
    from ..inputs.frames import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, broken_link_reason

    path = Path(raw)
    link = broken_link_reason(path)
    if link:
        return [Item(raw, path.stem or raw, status="failed",
                     error=f"{raw!r} is {link}; expected a video file or a directory")]
    if not path.is_dir():
        return [Item(raw, path.stem or raw)]  # missing files fail later with a clear error
    label = Path(os.path.realpath(path)).name or raw  # "..", "." -> the directory's real name
    children = sorted(path.iterdir())
    videos = [p for p in children if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS]
    frames_dir = not videos and any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in children)
    items = [Item(str(v), v.stem) for v in videos]
    if frames_dir:
        items.append(Item(str(path), label))
    for child in children:  # unresolvable links are reported, not skipped silently
        link = broken_link_reason(child)
        if link and not (frames_dir and child.suffix.lower() in IMAGE_EXTENSIONS):  # those fail the frames item
            items.append(Item(str(child), child.stem or child.name, status="failed",
                              error=f"{link} inside input directory {raw!r}; skipped"))
    if not videos and not frames_dir:
        items.append(Item(raw, label, status="failed",
                          error="directory has no videos " f"({', '.join(sorted(VIDEO_EXTENSIONS))}) "
                                f"and no frames ({', '.join(sorted(IMAGE_EXTENSIONS))})"))
    return items


def _classify_remote(uri: str) -> List[Item]:
    """An object-store URI: one video, or a prefix whose videos are the items."""
    from .storage import list_remote_videos, uri_stem
    from ..inputs.frames import VIDEO_EXTENSIONS

    stem = uri_stem(uri) or uri
    videos = list_remote_videos(uri, VIDEO_EXTENSIONS)
    if videos is None:
        return [Item(uri, stem)]
    if not videos:
        return [Item(uri, stem, status="failed", error="no videos under this prefix "
                     f"({', '.join(sorted(VIDEO_EXTENSIONS))}); frame directories must be local")]
    return [Item(v, uri_stem(v)) for v in videos]


def expand_inputs(inputs: List[str]) -> List[Item]:
    """Globs, directories of videos (one item per video), directories of frames (one item), plain
    files, ``file://`` URIs and object-store URIs (one video or a prefix of videos). Unusable
    arguments become failed items, so the batch still runs."""
    items: List[Item] = []
    for raw in inputs:
        try:
            path = local_path(raw)
            if path is None:
                items.extend(_classify_remote(raw))
                continue
            raw = str(path) if scheme_of(raw) else raw  # file:///x/a.mp4 -> /x/a.mp4
            if not os.path.lexists(raw) and any(c in raw for c in "*?["):
                matches = sorted(glob.glob(raw))
                if not matches:
                    items.append(Item(raw, Path(raw).name or raw, status="failed", error="no file matches this pattern"))
                for match in matches:
                    items.extend(_classify(match))
            else:
                items.extend(_classify(raw))
        except (OSError, RuntimeError, ValueError) as exc:  # unreadable directory, a loop, a bad URI
            items.append(Item(raw, Path(raw).name or raw, status="failed",
                              error=f"cannot read {raw!r}: {getattr(exc, 'strerror', None) or exc}"))
    seen: dict[str, int] = {}
    for item in items:  # a.mp4 and a.mov must not share an output directory
        item.name = safe_output_name(item.name)
        count = seen.get(item.name, 0)
        seen[item.name] = count + 1
        if count:
            item.name = f"{item.name}-{count}"
    return items


# --------------------------------------------------------------------------------------------
# 2. plan
# --------------------------------------------------------------------------------------------


def overlapping_input(target: Path, inputs: List[str], frame_dirs: List[str]) -> str | None:
    """Why ``target`` may not be written (it is, contains, or sits inside an input), or None."""
    real = Path(os.path.realpath(target))
    for raw in inputs:
        path = Path(os.path.realpath(raw))
        if path == real:
            return f"it is the input {raw}"
        if path.is_relative_to(real):
            return f"it contains the input {raw}"
    for raw in frame_dirs:
        if real.is_relative_to(os.path.realpath(raw)):
            return f"it is inside the input frame directory {raw}"
    return None


def output_location(outdir: str, name: str) -> str:
    """``OUTDIR/<name>`` for a path, ``file://`` or object-store URI (kept in the user's form; in a
    URI the name is percent-encoded, so parsing it again names the same place)."""
    return child_uri(outdir, name) if scheme_of(outdir) else str(Path(outdir) / name)


def plan_items(items: List[Item], outdir: str, inputs: List[str], options: OutputOptions) -> None:
    """Set each pending item's output and settle what can be settled before any model loads:
    ``skipped`` (``--skip-existing``), ``failed`` (the output exists and may not be replaced, or it
    overlaps an input). Items left ``pending`` are to be converted."""
    from ..core.atomic import check_target
    from ..outputs.meshseq import OutputExistsError, written_sequence

    def existing_local(raw: str) -> str | None:
        try:
            path = local_path(raw)
        except ValueError:  # already a failed item of expand_inputs
            return None
        return str(path) if path is not None and os.path.lexists(path) else None

    local_inputs = [path for path in map(existing_local, inputs) if path is not None]
    local_inputs += [i.input for i in items if i.status != "failed" and scheme_of(i.input) is None]
    frame_dirs = [i.input for i in items if i.status != "failed" and scheme_of(i.input) is None and Path(i.input).is_dir()]
    root = open_remote(outdir) if local_path(outdir) is None else None  # one connection for every item
    for item in items:
        if item.status != "pending":
            continue
        item.output = output_location(outdir, item.name)
        target = local_path(item.output)
        if root is not None:  # an object store: manifest.json is the completion mark
            state, why = remote_output_state(root.child(item.name))
            if state == "foreign":
                item.status, item.error = "failed", f"refusing to write {item.output}: {why}"
            elif state == "complete" and options.skip_existing:
                item.status = "skipped"
            elif state == "complete" and not options.overwrite:
                item.status, item.error = "failed", f"output {item.output} exists (use --overwrite or --skip-existing)"
            continue  # "partial": a killed upload of ours, redone
        overlap = overlapping_input(target, local_inputs, frame_dirs)
        if overlap:
            item.status, item.error = "failed", f"refusing to write output {target}: {overlap}; choose another -o"
        elif os.path.lexists(target) and options.skip_existing:
            item.status = "skipped"
        elif os.path.lexists(target) and not options.overwrite:
            item.status, item.error = "failed", f"output {target} exists (use --overwrite or --skip-existing)"
        elif options.overwrite:
            try:  # fail now, not after minutes of work, if the target is not ours to replace
                check_target(target, True, written_sequence, OutputExistsError)
            except ValueError as exc:
                item.status, item.error = "failed", str(exc)
            except OutputExistsError as exc:
                item.status, item.error = "failed", f"{exc} (--overwrite replaces only earlier s4d-convert outputs)"


# --------------------------------------------------------------------------------------------
# 3. convert
# --------------------------------------------------------------------------------------------


class ClipTimeout(BaseException):
    """Raised inside a clip's conversion when it runs past ``OutputOptions.timeout``. A
    BaseException, so the ``except Exception`` fallbacks inside the pipeline cannot swallow it."""


def call_with_timeout(fn: Callable[[], Any], seconds: float | None) -> Any:
    """``fn()``, interrupted by ``ClipTimeout`` after ``seconds``: the exception is delivered to
    this thread between Python operations (a long native call finishes first). Once this returns
    or raises, no ClipTimeout is pending any more."""
    if not seconds:
        return fn()
    thread_id, lock, armed = threading.get_ident(), threading.Lock(), [True]

    def interrupt() -> None:
        with lock:
            if armed[0]:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(ClipTimeout))

    timer = threading.Timer(seconds, interrupt)
    timer.daemon = True

    def disarm() -> None:
        while True:  # a timeout delivered while disarming is absorbed here, not raised later
            try:
                with lock:
                    armed[0] = False
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
                timer.cancel()
                return
            except ClipTimeout:
                continue

    try:
        timer.start()
        return fn()
    except ClipTimeout:
        disarm()
        raise ClipTimeout(f"timed out after {seconds:g} s (--timeout); nothing was written") from None
    finally:
        disarm()


def convert_one(generator, item: Item, settings: RunSettings, options: OutputOptions, progress=None,
                disposable_process: bool = False) -> Item:
    """Convert one pending item and publish its output; sets status/error/frames/seconds/ran.
    ``settings`` must already be resolved against ``generator.defaults``.

    ``options.timeout`` bounds reading the input and generating the meshes; writing the outputs is
    never interrupted, so a publish is never torn. In a ``disposable_process`` (a Ray worker,
    whose death costs only a retry) a clip still running at twice its timeout + 30 s - stuck in
    native code, or in writing - ends the process instead of hanging the job."""
    from ..outputs.meshseq import OutputExistsError
    from .storage import fetched, upload_directory

    t0 = time.perf_counter()
    backstop = None
    if options.timeout and disposable_process:
        backstop = threading.Timer(2 * options.timeout + 30, os._exit, args=(70,))
        backstop.daemon = True
        backstop.start()

    def generate():
        with fetched(item.input) as source:
            return generator(source, progress=progress, **settings.as_kwargs())

    try:
        seq = call_with_timeout(generate, options.timeout)
        if scheme_of(item.input) not in (None, "file"):
            seq.source = item.input  # not the temporary download
        save = dict(formats=options.formats, animated_glb=options.sequence_glb, preview=options.preview,
                    viewer=options.viewer)
        target = local_path(item.output)
        if target is not None:
            seq.save(target, overwrite=options.overwrite, **save)
        else:  # an object store: finish the clip locally, then copy it up (manifest last)
            with tempfile.TemporaryDirectory(prefix="s4d-clip-") as tmp:
                seq.save(Path(tmp) / "clip", **save)
                upload_directory(Path(tmp) / "clip", open_remote(item.output), overwrite=options.overwrite)
        item.status, item.frames = "ok", len(seq)
        item.ran = {key: seq.settings.get(key) for key in RAN_KEYS}
    except OutputExistsError as exc:  # it was absent when this item was planned
        item.status, item.error = "failed", str(exc) if options.overwrite else (
            f"output {item.output} appeared meanwhile (another run wrote it while this one worked); nothing was "
            "replaced (use --overwrite to replace it)")
    except ClipTimeout as exc:
        item.status, item.error = "failed", str(exc)
    except (ValueError, OSError, RuntimeError) as exc:
        item.status, item.error = "failed", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # keep the batch going; say it is ours
        item.status, item.error = "failed", f"internal error ({type(exc).__name__}): {exc}"
    finally:
        if backstop is not None:
            backstop.cancel()
    item.seconds = round(time.perf_counter() - t0, 3)
    return item


# --------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------


def report_line(item: Item) -> str:
    """One line for the terminal: ``ok``, ``skipped`` or ``FAILED`` with the input and what happened."""
    if item.status == "ok":
        return f"ok      {item.input} -> {item.output} ({item.frames} meshes, {item.seconds:.1f} s)"
    if item.status == "skipped":
        return f"skipped {item.input}: {item.output} exists"
    return f"FAILED  {item.input}: {item.error}"


def summarize(items: List[Item], outdir: str, model: str, **extra: Any) -> dict[str, Any]:
    """The ``--json`` summary: every input, its status and why."""
    return {"outdir": str(outdir), "model": model, "items": [asdict(i) for i in items],
            "succeeded": sum(i.status == "ok" for i in items), "skipped": sum(i.status == "skipped" for i in items),
            "failed": sum(i.status == "failed" for i in items), **extra}
