"""``MeshSequence``: the result of a video -> 4D generation, and how it is written to disk.

Output directory layout (``MeshSequence.save``)::

    frame_0000.glb ...           one mesh per sampled frame, in every requested format (glb, obj, ply);
                                 after ``track()`` every frame has the same faces (one topology)
    sequence.usda                time-sampled points; topology once per topology segment (formats containing "usd")
    conditioning/cond_0000.png   the preprocessed conditioning images
    contact_sheet.png            a few frames: conditioning image above, rendered mesh below
    sequence.glb                 one animated glTF of the whole sequence (sdk.outputs.gltf)
    preview.mp4                  conditioning frame | rendered mesh, at the clip's frame rate (sdk.outputs.preview)
    viewer.html                  a self-contained page that plays the sequence (sdk.outputs.viewer)
    manifest.json                frames, times, seed, model, settings, timings, versions, files, and
                                 ``topology`` (``per-frame`` or ``consistent``) with the ``tracking`` report

Everything is written into a temporary directory beside the target and renamed into place at
the end, so an interrupted run never leaves a half-written output. An existing directory is
replaced (``overwrite``) only if it is an earlier mesh sequence holding nothing but the files its
manifest lists (:func:`written_sequence`); see :mod:`sdk.core.atomic`.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.atomic import atomic_directory, written_by_us
from .gltf import sample_rate

MESH_FORMATS = ("glb", "obj", "ply")
SEQUENCE_FORMATS = ("usda", "usdc")
ALL_FORMATS = MESH_FORMATS + SEQUENCE_FORMATS
MANIFEST_VERSION = 1
SEQUENCE_FORMAT = "sculpt4d-mesh-sequence"
SEQUENCE_MANIFEST = "manifest.json"


class OutputExistsError(FileExistsError):
    """The output directory exists and overwriting was not asked for."""


@dataclass
class MeshSequence:
    """One watertight mesh per sampled frame, all in the same fixed world box."""

    meshes: list  # list[trimesh.Trimesh]
    frame_indices: list[int]
    frame_times: list[float | None]
    conditioning_images: list[np.ndarray]  # uint8 HxWx3, what the model saw (before the 518 resize)
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    # which input this is the conversion of (path or URI, size, mtime), recorded so that a rerun
    # can tell its own earlier output from another input's (s4d-convert --skip-existing)
    input_identity: dict[str, Any] | None = None
    # the tracking report (sdk.tracking.TrackedSequence.report) when the meshes share one topology
    tracking: dict[str, Any] | None = None

    @property
    def topology(self) -> str:
        """``consistent`` when the meshes are one template tracked through the sequence
        (:meth:`track`), else ``per-frame`` (independent meshes, one per frame)."""
        return "consistent" if self.tracking is not None else "per-frame"

    def track(self, options=None, progress=None) -> "MeshSequence":
        """This sequence with topology-consistent meshes: one template (frame 0 unless
        ``options.template``) deformed through every frame (``sdk.tracking.track_meshes``), so every
        frame has the template's faces; the report (per-frame fit, distortion, flags) goes into
        :attr:`tracking` and the manifest. ``options``: a ``sdk.tracking.TrackingOptions``;
        ``progress(done, total)`` after each frame."""
        import dataclasses

        from ..tracking import TrackingOptions, track_meshes

        tracked = track_meshes(self.meshes, options or TrackingOptions(), progress)
        settings = {**self.settings, "topology": "consistent"} if "topology" in self.settings else dict(self.settings)
        return dataclasses.replace(self, meshes=tracked.meshes(), tracking=tracked.report(), settings=settings,
                                   timings={**self.timings, "track": tracked.seconds}, stats=dict(self.stats))

    def __len__(self) -> int:
        return len(self.meshes)

    def __getitem__(self, i: int):
        return self.meshes[i]

    def manifest(self, files: Sequence[str] = ()) -> dict[str, Any]:
        """The ``manifest.json`` contents for this sequence (``files`` lists what was written)."""
        return {
            "format": SEQUENCE_FORMAT,
            "version": MANIFEST_VERSION,
            "source": self.source,
            **({"input": dict(self.input_identity)} if self.input_identity else {}),
            "num_frames": len(self.meshes),
            "frame_indices": list(self.frame_indices),
            "frame_times": list(self.frame_times),
            "meshes": [{"vertices": int(len(m.vertices)), "faces": int(len(m.faces)),
                        "watertight": bool(m.is_watertight) if len(m.faces) else False} for m in self.meshes],
            "topology": self.topology,
            **({"tracking": self.tracking} if self.tracking is not None else {}),
            "seed": self.settings.get("seed"),
            "model": self.model,
            "settings": self.settings,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "stats": self.stats,
            "versions": _versions(),
            "files": sorted(files),
        }

    def save(self, directory: str | os.PathLike, formats: Sequence[str] = ("glb",), overwrite: bool = False,
             contact_sheet: bool = True, animated_glb: bool = True, preview: bool = True,
             viewer: bool = True) -> Path:
        """Write the sequence to ``directory`` atomically; returns the directory. ``contact_sheet``
        adds ``contact_sheet.png`` (a few frames rendered; seconds for million-face meshes);
        ``animated_glb``, ``preview`` and ``viewer`` add ``sequence.glb``, ``preview.mp4`` and
        ``viewer.html`` (``sdk.outputs.watchable``)."""
        formats = check_formats(formats)
        target = Path(directory)
        with atomic_directory(target, overwrite, exists_error=OutputExistsError, owned=written_sequence) as tmp:
            files = []
            for i, mesh in enumerate(self.meshes):
                for fmt in formats:
                    if fmt in MESH_FORMATS:
                        name = f"frame_{i:04d}.{fmt}"
                        _export_mesh(mesh, tmp / name, fmt)
                        files.append(name)
            for fmt in formats:
                if fmt in SEQUENCE_FORMATS:
                    name = f"sequence.{fmt}"
                    write_usd_sequence(self.meshes, tmp / name, self.frame_times)
                    files.append(name)
            if self.conditioning_images:
                (tmp / "conditioning").mkdir()
                from PIL import Image

                for i, img in enumerate(self.conditioning_images):
                    name = f"conditioning/cond_{i:04d}.png"
                    Image.fromarray(img).save(tmp / name)
                    files.append(name)
            if contact_sheet and any(len(m.faces) for m in self.meshes):
                try:
                    from PIL import Image

                    from .render import contact_sheet as render_sheet

                    Image.fromarray(render_sheet(self.meshes, self.conditioning_images)).save(tmp / "contact_sheet.png")
                    files.append("contact_sheet.png")
                except Exception as exc:  # a preview must never cost the user the meshes
                    import warnings

                    warnings.warn(f"contact sheet not written: {type(exc).__name__}: {exc}", stacklevel=2)
            from .watchable import write_watchables

            files += write_watchables(self, tmp, animated_glb=animated_glb, preview=preview, viewer=viewer)
            (tmp / SEQUENCE_MANIFEST).write_text(json.dumps(self.manifest(files + [SEQUENCE_MANIFEST]), indent=2))
        return target


def written_sequence(directory: Path) -> str | None:
    """None if ``directory`` is provably a mesh sequence this tool wrote (its manifest's format tag,
    and no file its manifest does not list), else why not. Only such a directory is ever replaced."""
    return written_by_us(directory, SEQUENCE_MANIFEST, SEQUENCE_FORMAT, lambda m: m["files"])


def check_formats(formats: Sequence[str]) -> list[str]:
    """Normalised, de-duplicated output formats (``usd`` means ``usda``); ``ValueError`` naming an unknown one."""
    out = []
    for fmt in formats:
        fmt = fmt.lower().lstrip(".")
        fmt = {"usd": "usda"}.get(fmt, fmt)
        if fmt not in ALL_FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; expected some of {ALL_FORMATS} (or 'usd')")
        if fmt not in out:
            out.append(fmt)
    if not out:
        raise ValueError("no output format requested")
    return out


def _export_mesh(mesh, path: Path, fmt: str) -> None:
    if len(mesh.faces) == 0:
        # trimesh cannot write an empty glTF; an empty frame is still a file so frame numbering holds
        if fmt == "obj":
            path.write_text("# empty mesh: no surface found in this frame\n")
            return
        if fmt == "ply":
            path.write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                            "property float z\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n")
            return
    data = mesh.export(file_type=fmt)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def write_usd_sequence(meshes: Sequence, path: Path, frame_times: Sequence[float | None] = ()) -> None:
    """One ``UsdGeom.Mesh`` (``/Sculpt4D/mesh``) whose points and extent are time-sampled at time
    codes 0..T-1. ``timeCodesPerSecond`` is the sampled frame rate when the source times are known,
    else 24. The topology (face counts and indices) is written once per topology segment
    (``sdk.outputs.gltf.topology_segments``): one default value for a topology-consistent sequence,
    a time sample at each frame for per-frame meshes (USD holds a sample until the next one;
    Blender's Mesh Sequence Cache and usdview read both)."""
    from pxr import Gf, Usd, UsdGeom, Vt

    from .gltf import topology_segments

    segments = topology_segments(meshes)
    starts = {first for first, _ in segments}

    stage = Usd.Stage.CreateNew(str(path))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    stage.SetStartTimeCode(0)
    stage.SetEndTimeCode(max(len(meshes) - 1, 0))
    fps = sample_rate(frame_times, len(meshes))
    stage.SetTimeCodesPerSecond(fps)
    stage.SetFramesPerSecond(fps)
    root = UsdGeom.Xform.Define(stage, "/Sculpt4D")
    stage.SetDefaultPrim(root.GetPrim())
    prim = UsdGeom.Mesh.Define(stage, "/Sculpt4D/mesh")
    prim.CreateSubdivisionSchemeAttr().Set(UsdGeom.Tokens.none)
    points, counts, indices, extent = (prim.CreatePointsAttr(), prim.CreateFaceVertexCountsAttr(),
                                       prim.CreateFaceVertexIndicesAttr(), prim.CreateExtentAttr())
    for i, mesh in enumerate(meshes):
        verts = np.asarray(mesh.vertices, dtype=np.float32).reshape(-1, 3)
        faces = np.asarray(mesh.faces, dtype=np.int32).reshape(-1, 3)
        points.Set(Vt.Vec3fArray.FromNumpy(verts), i)
        if len(segments) == 1 and i == 0:  # one topology: a plain (untimed) value
            counts.Set(Vt.IntArray.FromNumpy(np.full(len(faces), 3, dtype=np.int32)))
            indices.Set(Vt.IntArray.FromNumpy(faces.reshape(-1)))
        elif len(segments) > 1 and i in starts:
            counts.Set(Vt.IntArray.FromNumpy(np.full(len(faces), 3, dtype=np.int32)), i)
            indices.Set(Vt.IntArray.FromNumpy(faces.reshape(-1)), i)
        lo = verts.min(0) if len(verts) else np.zeros(3, np.float32)
        hi = verts.max(0) if len(verts) else np.zeros(3, np.float32)
        extent.Set(Vt.Vec3fArray([Gf.Vec3f(*map(float, lo)), Gf.Vec3f(*map(float, hi))]), i)
    stage.GetRootLayer().Save()


def _versions() -> dict[str, str]:
    import torch

    from ..core.version import __version__

    versions = {"sculpt4d-sdk": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__}
    try:
        import trimesh

        versions["trimesh"] = trimesh.__version__
    except ImportError:
        pass
    return versions
