"""``sequence.glb``: the whole mesh sequence as ONE animated glTF 2.0 binary that standard viewers
play (three.js / ``<model-viewer>``, Blender's glTF importer, Babylon, Windows 3D Viewer).

Frames have different topology, so the file uses the usual technique: one mesh and one node per
frame under a root node ``Sculpt4D``, and one animation (``sequence``) whose STEP samplers drive
each frame node's ``scale``: ``(1, 1, 1)`` at its own frame time, ``(0, 0, 0)`` at every other
one. Without the animation (a viewer that does not play it) only frame 0 is visible.

Layout, written by hand (a JSON chunk and a BIN chunk; no extension is required):

* per frame: ``POSITION`` float32 (with the ``min``/``max`` the spec requires), ``NORMAL`` float32
  (smooth vertex normals; ``normals=False`` leaves them out and viewers shade flat), indices
  ``uint16`` when the frame has fewer than 65535 vertices, else ``uint32``;
* one shared keyframe-times accessor (every sampler's ``input``) and one shared bufferView of
  ``2T - 1`` scale rows (``0 ... 0 1 0 ... 0``): frame ``i``'s output accessor is the window of
  ``T`` rows that puts the ``1`` at row ``i``, so the animation costs O(T) bytes, not O(T^2);
* a frame with no surface is a node without a mesh (glTF meshes need at least one triangle).

Keyframe times (``animation_times``) are the clip's frame times in seconds (``manifest.json``'s
``frame_times``) when all are known and strictly increasing; otherwise ``index / fps`` with the
sequence's sample rate, which is 24 fps when the times are unknown (as for ``sequence.usda``).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

GLB_MAGIC = 0x46546C67  # "glTF"
CHUNK_JSON = 0x4E4F534A  # "JSON"
CHUNK_BIN = 0x004E4942  # "BIN\0"
FLOAT, UINT16, UINT32 = 5126, 5123, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
BASE_COLOR = (0.72, 0.72, 0.75)  # sdk.outputs.render's default grey (sRGB), converted to linear below


def animation_times(frame_times: Sequence[float | None], n: int) -> list[float]:
    """Seconds of each frame: the frame times when all are known and strictly increasing,
    else ``index / fps`` (``fps`` = the sequence's sample rate, 24 when times are unknown)."""
    times = list(frame_times)
    if len(times) == n and all(t is not None for t in times) and \
            all(b > a for a, b in zip(times, times[1:])):
        return [float(t) for t in times]
    fps = clip_fps(times, n)
    return [i / fps for i in range(n)]


def clip_fps(frame_times: Sequence[float | None], n: int) -> float:
    """Frames per second of the sampled clip (24 when the times are unknown)."""
    times = list(frame_times)
    return sample_rate(times if len(times) == n else [], n)


def sample_rate(times: Sequence[float | None], n: int) -> float:
    """Frames per second of ``n`` frames at ``times`` (24 unless all n are known and increase
    overall); the USD writer's time codes use it too."""
    known = [t for t in times if t is not None]
    if n > 1 and len(known) == n and known[-1] > known[0]:
        return (n - 1) / (known[-1] - known[0])
    return 24.0


class _Bin:
    """The BIN chunk being built: bufferViews are 4-byte aligned slices of one buffer."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.size = 0
        self.views: list[dict] = []

    def add(self, data: bytes, target: int | None = None) -> int:
        pad = -self.size % 4
        if pad:
            self.parts.append(b"\0" * pad)
            self.size += pad
        view = {"buffer": 0, "byteOffset": self.size, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        self.parts.append(data)
        self.size += len(data)
        self.views.append(view)
        return len(self.views) - 1

    def blob(self) -> bytes:
        return b"".join(self.parts) + b"\0" * (-self.size % 4)


def _unit_normals(mesh) -> np.ndarray:
    normals = np.asarray(mesh.vertex_normals, np.float64).reshape(-1, 3)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    ok = np.isfinite(length[:, 0]) & (length[:, 0] > 1e-8)
    out = np.tile(np.array([0.0, 1.0, 0.0]), (len(normals), 1))  # isolated vertices: any unit vector
    out[ok] = normals[ok] / length[ok]
    return out.astype(np.float32)


def build_glb(meshes: Sequence, frame_times: Sequence[float | None] = (), normals: bool = True,
              generator: str = "sculpt4d-sdk") -> bytes:
    """The bytes of the animated GLB (see the module docstring)."""
    n = len(meshes)
    if n == 0:
        raise ValueError("an animated glTF needs at least one frame")
    times = np.asarray(animation_times(frame_times, n), np.float32)
    buf = _Bin()
    accessors: list[dict] = []

    def accessor(view: int, component: int, count: int, kind: str, offset: int = 0, **extra) -> int:
        acc = {"bufferView": view, "componentType": component, "count": int(count), "type": kind, **extra}
        if offset:
            acc["byteOffset"] = offset
        accessors.append(acc)
        return len(accessors) - 1

    linear = [round(float(c) ** 2.2, 4) for c in BASE_COLOR]
    gltf: dict = {
        "asset": {"version": "2.0", "generator": generator},
        "scene": 0,
        "scenes": [{"name": "Sculpt4D", "nodes": [0]}],
        "nodes": [{"name": "Sculpt4D", "children": list(range(1, n + 1))}],
        "meshes": [],
        "materials": [{"name": "sculpt4d", "pbrMetallicRoughness": {
            "baseColorFactor": linear + [1.0], "metallicFactor": 0.0, "roughnessFactor": 0.7}}],
    }
    for i, mesh in enumerate(meshes):
        node = {"name": f"frame_{i:04d}", "scale": [1.0, 1.0, 1.0] if i == 0 else [0.0, 0.0, 0.0]}
        faces = np.asarray(mesh.faces, np.int64).reshape(-1, 3)
        if len(faces):
            verts = np.ascontiguousarray(np.asarray(mesh.vertices, np.float32).reshape(-1, 3))
            pos = accessor(buf.add(verts.tobytes(), ARRAY_BUFFER), FLOAT, len(verts), "VEC3",
                           min=[float(x) for x in verts.min(0)], max=[float(x) for x in verts.max(0)])
            attributes = {"POSITION": pos}
            if normals:
                attributes["NORMAL"] = accessor(buf.add(_unit_normals(mesh).tobytes(), ARRAY_BUFFER), FLOAT,
                                                len(verts), "VEC3")
            # 65535 is the primitive-restart value of uint16 indices, which glTF forbids
            itype, dtype = (UINT16, np.uint16) if len(verts) < 65535 else (UINT32, np.uint32)
            idx = accessor(buf.add(faces.astype(dtype).tobytes(), ELEMENT_ARRAY_BUFFER), itype, faces.size,
                           "SCALAR")
            gltf["meshes"].append({"name": f"frame_{i:04d}", "primitives": [
                {"attributes": attributes, "indices": idx, "material": 0, "mode": 4}]})
            node["mesh"] = len(gltf["meshes"]) - 1
        gltf["nodes"].append(node)
    if not gltf["meshes"]:
        del gltf["meshes"]
    time_acc = accessor(buf.add(times.tobytes()), FLOAT, n, "SCALAR", min=[float(times.min())],
                        max=[float(times.max())])
    rows = np.zeros((2 * n - 1, 3), np.float32)
    rows[n - 1] = 1.0
    rows_view = buf.add(rows.tobytes())
    samplers, channels = [], []
    for i in range(n):  # rows n-1-i .. 2n-2-i: the 1 lands on keyframe i
        out = accessor(rows_view, FLOAT, n, "VEC3", offset=(n - 1 - i) * 12)
        samplers.append({"input": time_acc, "output": out, "interpolation": "STEP"})
        channels.append({"sampler": i, "target": {"node": i + 1, "path": "scale"}})
    gltf["animations"] = [{"name": "sequence", "samplers": samplers, "channels": channels}]
    gltf["accessors"] = accessors
    gltf["bufferViews"] = buf.views
    blob = buf.blob()
    gltf["buffers"] = [{"byteLength": len(blob)}]
    return _pack(gltf, blob)


def _pack(gltf: dict, blob: bytes) -> bytes:
    text = json.dumps(gltf, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(blob)
    return b"".join([struct.pack("<III", GLB_MAGIC, 2, total), struct.pack("<II", len(text), CHUNK_JSON), text,
                     struct.pack("<II", len(blob), CHUNK_BIN), blob])


def write_animated_glb(meshes: Sequence, path: str | os.PathLike, frame_times: Sequence[float | None] = (),
                       normals: bool = True) -> Path:
    """Write ``sequence.glb`` (see the module docstring); returns the path."""
    from ..core.version import __version__

    path = Path(path)
    path.write_bytes(build_glb(meshes, frame_times, normals, generator=f"sculpt4d-sdk {__version__}"))
    return path
