"""The outputs people can watch, written by ``MeshSequence.save`` next to the meshes (each on by
default, each with an opt-out): ``sequence.glb`` (``sdk.outputs.gltf``: one animated glTF that standard
viewers play), ``preview.mp4`` (``sdk.outputs.preview``: conditioning frame | rendered mesh, at the
clip's frame rate) and ``viewer.html`` (``sdk.outputs.viewer``: a self-contained page that plays the
sequence with play/pause, a frame slider and orbit controls).

Like the contact sheet they are previews: one that fails is reported with a warning, left out
and named in the manifest's ``stats["not_written"]``, and the meshes are still written. A failure
of the disk itself (full, read-only, I/O error) is not a preview problem: it propagates, so the
whole save fails and nothing half-written is published.
"""

from __future__ import annotations

import errno
import warnings
from pathlib import Path

WATCHABLE_FILES = {"animated_glb": "sequence.glb", "preview": "preview.mp4", "viewer": "viewer.html"}


def write_watchables(seq, directory: Path, animated_glb: bool = True, preview: bool = True,
                     viewer: bool = True) -> list[str]:
    """Write the requested files of ``seq`` (a ``MeshSequence``) into ``directory``; returns
    the names written."""
    from .gltf import write_animated_glb
    from .preview import write_preview
    from .viewer import write_viewer

    if not len(seq.meshes):
        return []
    title = f"Sculpt4D: {Path(seq.source).stem}" if isinstance(seq.source, str) and seq.source else "Sculpt4D sequence"
    writers = {
        "animated_glb": lambda path: write_animated_glb(seq.meshes, path, seq.frame_times),
        "preview": lambda path: write_preview(seq.meshes, path, seq.conditioning_images, seq.frame_times),
        "viewer": lambda path: write_viewer(seq.meshes, path, seq.frame_times, title=title),
    }
    wanted = {"animated_glb": animated_glb, "preview": preview, "viewer": viewer}
    written = []
    for key, name in WATCHABLE_FILES.items():
        if not wanted[key]:
            continue
        try:
            writers[key](Path(directory) / name)
            written.append(name)
        except Exception as exc:  # a preview must never cost the user the meshes
            (Path(directory) / name).unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
                raise
            reason = f"{type(exc).__name__}: {exc}"
            seq.stats.setdefault("not_written", {})[name] = reason
            warnings.warn(f"{name} not written: {reason}", stacklevel=3)
    return written


# errors of the disk, not of a preview: the save fails as a whole (nothing is published)
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}
