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
import stat
import tempfile
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, List

from ..generation.settings import RunSettings
from .storage import answered_within, child_uri, local_path, open_remote, remote_output_state, scheme_of

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
    # requested files that could not be written (a preview that failed; the meshes are there)
    not_written: dict | None = None
    # the input as planned (path, size, mtime): what the manifest records, taken before the work
    identity: dict | None = None
    # topology of the output; for a consistent one, the flagged frames and mean fit (manifest: the rest)
    tracking: dict | None = None
    # what the manifest names as the source (default: the input itself); s4d-serve gives the client's
    # file name, not the path of the upload on the server
    label: str | None = None


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
    from ..inputs.frames import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, broken_link_reason, special_file_reason

    path = Path(raw)
    link = broken_link_reason(path) or special_file_reason(path)
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
    for child in children:  # unresolvable links and FIFOs, sockets, devices are reported, not skipped silently
        link = broken_link_reason(child) or (special_file_reason(child)
                                             if child.suffix.lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS else None)
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


def expand_inputs(inputs: List[str], connect_timeout: float = 30.0) -> List[Item]:
    """Globs, directories of videos (one item per video), directories of frames (one item), plain
    files, ``file://`` URIs and object-store URIs (one video or a prefix of videos; an object store
    that does not answer within ``connect_timeout`` seconds fails that argument). Unusable
    arguments become failed items, so the batch still runs."""
    items: List[Item] = []
    for raw in inputs:
        try:
            path = local_path(raw)
            if path is None:
                items.extend(answered_within(lambda: _classify_remote(raw), connect_timeout, raw))
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
    assign_output_names(items)
    return items


def canonical_input(raw: str) -> str:
    """What identifies an input across arguments and runs: the real absolute path of a local file or
    directory (``a.mp4``, ``./a.mp4`` and a link to it are one input), the URI of a remote one."""
    try:
        path = local_path(raw)
    except ValueError:
        return raw
    return raw if path is None else os.path.realpath(path)


def _name_key(name: str) -> str:
    # case-insensitive and NFC-normalised: "A" and "a", "é" composed and decomposed, are one
    # directory on macOS, Windows and in most object stores
    return unicodedata.normalize("NFC", name).casefold()


_REPEAT = "the same input as"


def existing_owners(outdir: str, items: List[Item]) -> dict[str, str | None]:
    """Names in ``outdir`` that the items' names could take (their own names, with or without a
    ``-N`` suffix) -> the real path of the input each one's manifest names (None: none, or unreadable).
    Outputs from before inputs were recorded count by their ``source`` when it is an absolute path."""
    from ..core.jsonfile import loads_limited, read_json

    wanted = {_name_key(_own_name(i)) for i in items if i.status == "pending" or (i.error or "").startswith(_REPEAT)}

    def relevant(name: str) -> bool:
        key = _name_key(name)
        head, _, tail = key.rpartition("-")
        return key in wanted or (tail.isdigit() and head in wanted)

    def owner(manifest: Any) -> str | None:
        path = _recorded_input(manifest) if isinstance(manifest, dict) else None
        return path if isinstance(path, str) else None

    found: dict[str, str | None] = {}
    path = local_path(outdir)
    if path is not None:
        try:
            entries = [e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False) and relevant(e.name)]
        except OSError:
            return found
        for name in entries:
            try:
                found[name] = owner(read_json(path / name / "manifest.json"))
            except (OSError, ValueError):
                found[name] = None
        return found
    from pyarrow.fs import FileSelector, FileType

    root = open_remote(outdir)
    infos = root.fs.get_file_info(FileSelector(root.path, allow_not_found=True))
    for info in infos:
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type == FileType.Directory and relevant(name):
            try:
                found[name] = owner(loads_limited(root.child(name).read_bytes("manifest.json"), f"{outdir}/{name}"))
            except (OSError, ValueError):
                found[name] = None
    return found


def _own_name(item: Item) -> str:
    """The name an input asks for: the stem of its real path (so ``zz.mp4 -> a.mp4`` and ``a.mp4``
    ask for the same), the directory's real name for a frame directory, the URI's stem otherwise."""
    key = canonical_input(item.input)
    if scheme_of(key) is None and os.path.isabs(key):
        real = Path(key)
        return safe_output_name(real.name if real.is_dir() else real.stem or real.name)
    return safe_output_name(item.name)


def assign_output_names(items: List[Item], existing: dict[str, str | None] | None = None) -> None:
    """Give every item its output directory name: ONE deterministic, collision-free mapping from
    the whole input set (and, with ``existing``, from what the output directory already holds),
    independent of argument order.

    - The same input named twice (``a.mp4``, ``./a.mp4``, a link to it) converts once; the repeat is
      ``skipped``. An input's own name is its real path's stem.
    - ``existing`` maps each name already in the output directory to the real path of the input its
      manifest names (None when it names none). An input whose earlier output is there keeps that
      name, so reruns and growing batches land where they did before.
    - Otherwise a name shared by several inputs (``a.mp4``, ``a.mkv``, ``dir/a.mp4``) goes to the
      first of them in path order and the others get ``-2``, ``-3``, ...; a name is never one that
      another input of the run has as its own (``a-2.mkv``), nor one that exists for another input,
      in any spelling of case or Unicode normalisation.
    """
    existing = {_name_key(name): (name, owner) for name, owner in (existing or {}).items()}
    first_of: dict[str, Item] = {}
    repeats: list[tuple[Item, Item]] = []
    for item in items:
        item.name = safe_output_name(item.name)
        if item.status == "skipped" and (item.error or "").startswith(_REPEAT):  # named again below
            item.status, item.error = "pending", None
        if item.status != "pending":  # failed while expanding: no output
            continue
        key = canonical_input(item.input)
        if key in first_of:
            repeats.append((item, first_of[key]))
            item.status, item.error = "skipped", f"{_REPEAT} {first_of[key].input!r}"
        else:
            first_of[key] = item
    own = {key: _own_name(item) for key, item in first_of.items()}
    taken = {_name_key(name) for name in own.values()}  # every input's own name is reserved for it
    assigned: set[str] = set()
    claimed = {}  # an earlier output of an input of this run keeps its name
    for name_key, (name, owner) in sorted(existing.items()):
        if owner in first_of and owner not in claimed:
            claimed[owner] = name
            assigned.add(name_key)
    groups: dict[str, list[str]] = {}
    for key, name in own.items():
        groups.setdefault(_name_key(name), []).append(key)
    for group in sorted(groups):
        for key in sorted(groups[group]):
            item = first_of[key]
            if key in claimed:
                item.name = claimed[key]
                continue
            base, n = own[key], 1
            candidate = base
            while True:
                ck = _name_key(candidate)
                held = existing.get(ck)
                # a name that exists for ANOTHER known input is passed over; one whose owner is unknown
                # (user files, no manifest) is kept and refused or replaced by plan_items as ever
                if ck not in assigned and (ck == group or ck not in taken) and (held is None or held[1] in (None, key)):
                    break
                n += 1
                candidate = f"{base}-{n}"
            item.name = candidate
            assigned.add(_name_key(candidate))
    for repeat, first in repeats:
        repeat.name = first.name


# --------------------------------------------------------------------------------------------
# 2. plan
# --------------------------------------------------------------------------------------------


def input_identity(raw: str) -> dict[str, Any]:
    """What the manifest records about the input it was made from: ``path`` (see
    :func:`canonical_input`) and, for a local input, its size in bytes (a frame directory: of its
    files) and modification time."""
    identity: dict[str, Any] = {"path": canonical_input(raw)}
    path = local_path(raw) if scheme_of(raw) in (None, "file") else None
    try:
        info = os.stat(path) if path is not None else None
        if info is not None and stat.S_ISDIR(info.st_mode):
            sizes = [e.stat().st_size for e in os.scandir(path) if e.is_file()]
            identity.update(size=sum(sizes), files=len(sizes), mtime_ns=info.st_mtime_ns)
        elif info is not None:
            identity.update(size=info.st_size, mtime_ns=info.st_mtime_ns)
    except OSError:
        pass
    return identity


def _recorded_input(manifest: dict) -> Any:
    """The input an output's manifest names: ``input.path``; for outputs from before inputs were
    recorded, their ``source`` when it is absolute (a relative one names a path only from where
    that run was started); None when it names none."""
    recorded = manifest.get("input")
    if isinstance(recorded, dict):
        return recorded.get("path")
    source = manifest.get("source")
    return canonical_input(source) if isinstance(source, str) and (os.path.isabs(source) or scheme_of(source)) else None


def output_owner(manifest: Any, item: Item) -> tuple[str, str]:
    """Whose conversion an existing output is, from its manifest: ``("this", "")`` (this input,
    unchanged since), ``("changed", why)`` (this input, modified since), ``("other", input)`` (another
    input) or ``("unknown", why)``. Outputs from before inputs were recorded name their ``source``."""
    if not isinstance(manifest, dict):
        return "unknown", "its manifest is not a JSON object"
    recorded = manifest.get("input")
    path = _recorded_input(manifest)
    if path is None and not isinstance(recorded, dict):
        return "unknown", "its manifest does not name its input"
    if path != canonical_input(item.input):
        return "other", str(path)
    if not isinstance(recorded, dict):  # an older output: only the source path is known
        return "this", ""
    now = input_identity(item.input)
    changed = [k for k in ("size", "files", "mtime_ns") if k in recorded and recorded.get(k) != now.get(k)]
    if changed:
        return "changed", f"the input changed since ({', '.join(changed)} differ)"
    return "this", ""


def _existing_owner(item: Item, read_manifest: Callable[[], Any]) -> tuple[str, str]:
    try:
        return output_owner(read_manifest(), item)
    except FileNotFoundError:
        return "unknown", "it has no manifest.json"
    except (OSError, ValueError) as exc:
        return "unknown", f"its manifest is unreadable ({exc})"


def _settle_existing(item: Item, owner: tuple[str, str], options: OutputOptions) -> None:
    """Skip, refuse or (``--overwrite``) replace an output that exists, by whose it is."""
    kind, detail = owner
    if kind == "other":
        item.status, item.error = "failed", (
            f"output {item.output} holds the conversion of another input ({detail}); nothing was replaced "
            "(choose another -o, or move one of the two)")
    elif options.skip_existing and kind == "this":
        item.status = "skipped"
    elif options.skip_existing and not options.overwrite:
        item.status, item.error = "failed", (
            f"output {item.output} exists but is not an up-to-date conversion of this input: {detail} "
            "(--overwrite redoes it, if it is an earlier s4d-convert output)")
    elif not options.overwrite:
        item.status, item.error = "failed", f"output {item.output} exists (use --overwrite or --skip-existing)"


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


def plan_items(items: List[Item], outdir: str, inputs: List[str], options: OutputOptions,
               connect_timeout: float = 30.0) -> None:
    """Set each pending item's output and settle what can be settled before any model loads:
    ``skipped`` (``--skip-existing``), ``failed`` (the output exists and may not be replaced, or it
    overlaps an input). Items left ``pending`` are to be converted."""
    from ..core.atomic import check_target
    from ..core.jsonfile import loads_limited, read_json
    from ..outputs.meshseq import OutputExistsError, written_sequence

    def existing_local(raw: str) -> str | None:
        try:
            path = local_path(raw)
        except ValueError:  # already a failed item of expand_inputs
            return None
        return str(path) if path is not None and os.path.lexists(path) else None

    # the final names: the whole input set, and what the output directory already holds
    scan = lambda: existing_owners(outdir, items)  # noqa: E731
    assign_output_names(items, scan() if local_path(outdir) is not None else
                        answered_within(scan, connect_timeout, f"listing {outdir}"))
    local_inputs = [path for path in map(existing_local, inputs) if path is not None]
    local_inputs += [i.input for i in items if i.status != "failed" and scheme_of(i.input) is None]
    frame_dirs = [i.input for i in items if i.status != "failed" and scheme_of(i.input) is None and Path(i.input).is_dir()]
    root = open_remote(outdir) if local_path(outdir) is None else None  # one connection for every item
    for item in items:
        if item.status == "skipped" and not item.output:  # a repeat of another argument: its output
            item.output = output_location(outdir, item.name)
        if item.status != "pending":
            continue
        item.output = output_location(outdir, item.name)
        target = local_path(item.output)
        if root is not None:  # an object store: manifest.json is the completion mark
            remote = root.child(item.name)
            state, why = remote_output_state(remote)
            if state == "foreign":
                item.status, item.error = "failed", f"refusing to write {item.output}: {why}"
            elif state == "complete":
                manifest = lambda: loads_limited(remote.read_bytes("manifest.json"), f"{item.output}/manifest.json")
                _settle_existing(item, _existing_owner(item, manifest), options)
            continue  # "partial": a killed upload of ours, redone
        overlap = overlapping_input(target, local_inputs, frame_dirs)
        if overlap:
            item.status, item.error = "failed", f"refusing to write output {target}: {overlap}; choose another -o"
            continue
        if os.path.lexists(target):
            _settle_existing(item, _existing_owner(item, lambda: read_json(target / "manifest.json")), options)
        if item.status == "pending" and options.overwrite:
            try:  # fail now, not after minutes of work, if the target is not ours to replace
                check_target(target, True, written_sequence, OutputExistsError)
            except ValueError as exc:
                item.status, item.error = "failed", str(exc)
            except OutputExistsError as exc:
                item.status, item.error = "failed", f"{exc} (--overwrite replaces only earlier s4d-convert outputs)"
    for item in items:  # what the manifest will record, taken now (and on this machine, not a worker)
        if item.status == "pending":
            item.identity = input_identity(item.input)


# --------------------------------------------------------------------------------------------
# 3. convert
# --------------------------------------------------------------------------------------------


def load_generator(model: str, backend: str = "auto", device: str | None = None, threads: int | None = None):
    """One model instance as ``--model`` names it (``Generator.from_pretrained``); ``threads`` sets
    torch's CPU threads first (the C++ kernel takes torch's count on every call). Used by
    ``s4d-convert``, its Ray workers and ``s4d-serve``."""
    from ..generation.pipeline import Generator

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return Generator.from_pretrained(model, backend=backend, device=device)


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
        if item.label is not None:
            seq.source = item.label
        elif scheme_of(item.input) not in (None, "file"):
            seq.source = item.input  # not the temporary download
        seq.input_identity = item.identity or input_identity(item.input)
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
        item.not_written = seq.stats.get("not_written") or None
        item.tracking = tracking_summary(seq)
    except OutputExistsError as exc:  # it was absent when this item was planned
        item.status, item.error = "failed", str(exc) if options.overwrite else _appeared_meanwhile(item)
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


def _appeared_meanwhile(item: Item) -> str:
    """Why the publish found its target taken: say whose output it is, when the manifest tells."""
    from ..core.jsonfile import read_json

    target = local_path(item.output)
    kind, detail = ("unknown", "") if target is None else _existing_owner(item, lambda: read_json(target / "manifest.json"))
    whose = {"other": f"the conversion of another input ({detail})", "this": "a conversion of this same input"}.get(
        kind, "something")
    return (f"output {item.output} appeared meanwhile, holding {whose}: another run wrote it while this one worked; "
            "nothing was replaced (use --overwrite to replace it)")


# --------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------


def tracking_summary(seq) -> dict:
    """What the summary says of a sequence's topology: ``consistent`` with its flagged frames and
    mean fit, or ``per-frame`` (with why, when tracking was asked for and could not run)."""
    if seq.tracking is None:
        out = {"topology": "per-frame"}
        if seq.stats.get("tracking_skipped"):
            out["skipped"] = seq.stats["tracking_skipped"]
        return out
    return {"topology": "consistent", "flagged": list(seq.tracking["flagged"]),
            "mean_fit": seq.tracking["mean_fit"], "segments": len(seq.tracking["segments"])}


def _tracking_note(tracking: dict | None) -> str:
    if not tracking:
        return ""
    if tracking.get("skipped"):
        return f"; per-frame meshes: not tracked ({tracking['skipped']})"
    if tracking["topology"] != "consistent":
        return ""
    flagged = tracking["flagged"]
    if not flagged:
        return "; one topology, every frame tracked"
    return (f"; one topology, {len(flagged)} frame{'s' if len(flagged) != 1 else ''} FLAGGED "
            f"({', '.join(map(str, flagged))}: see manifest.json tracking)")


def report_line(item: Item) -> str:
    """One line for the terminal: ``ok``, ``skipped`` or ``FAILED`` with the input and what happened."""
    if item.status == "ok":
        missing = "".join(f"; {name} NOT written ({why})" for name, why in (item.not_written or {}).items())
        return (f"ok      {item.input} -> {item.output} ({item.frames} meshes, {item.seconds:.1f} s)"
                f"{_tracking_note(item.tracking)}{missing}")
    if item.status == "skipped":
        return f"skipped {item.input}: {item.error or f'{item.output} exists'}"
    return f"FAILED  {item.input}: {item.error}"


def summarize(items: List[Item], outdir: str, model: str, **extra: Any) -> dict[str, Any]:
    """The ``--json`` summary: every input, its status and why."""
    return {"outdir": str(outdir), "model": model, "items": [asdict(i) for i in items],
            "succeeded": sum(i.status == "ok" for i in items), "skipped": sum(i.status == "skipped" for i in items),
            "failed": sum(i.status == "failed" for i in items), **extra}
