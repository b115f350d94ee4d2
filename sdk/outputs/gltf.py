"""``sequence.glb``: the whole mesh sequence as ONE animated glTF 2.0 binary that standard viewers
play (three.js / ``<model-viewer>``, Blender's glTF importer, Babylon, Windows 3D Viewer).

The sequence is cut into topology segments: runs of consecutive frames that share one face list
(:func:`topology_segments`). A topology-consistent sequence (``MeshSequence.track``,
``s4d-convert --topology consistent``) is one segment; today's per-frame meshes are one segment
per frame. Under a root node ``Sculpt4D``:

* each segment is one node with one mesh: the segment's first frame is the base ``POSITION``
  (and ``NORMAL``), every later frame of the segment is a morph target holding ``POSITION`` (and
  ``NORMAL``) deltas from it, and an animation channel drives the node's ``weights``: all zero at
  the segment's first frame time, ``1`` for target ``k`` at frame ``k + 1``'s time, ``LINEAR`` so
  that playback moves smoothly from one frame to the next (one mesh that moves);
* with more than one segment, STEP samplers also drive each segment node's ``scale``: ``(1, 1,
  1)`` at the frame times of its own frames, ``(0, 0, 0)`` elsewhere (the flip-book technique for
  meshes whose topology changes). Without the animation (a viewer that does not play it) frame 0
  is what shows.

Layout, written by hand (a JSON chunk and a BIN chunk; no extension is required; the tests read
it back with pygltflib, trimesh and an independent parser of their own):

* ``POSITION`` float32 with the ``min``/``max`` the spec requires (on morph-target deltas too),
  ``NORMAL`` float32 (smooth vertex normals; ``normals=False`` leaves them out and viewers shade
  flat), indices ``uint16`` below 65535 vertices, else ``uint32``;
* one keyframe-times accessor per weights sampler and one shared by the scale samplers; the scale rows of the flip-book are one
  shared bufferView of ``2S - 1`` rows (``0 ... 0 1 0 ... 0``) windowed per segment, O(S) bytes;
* a frame with no surface is a segment node without a mesh (glTF meshes need a triangle).

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


def topology_segments(meshes: Sequence) -> list[tuple[int, int]]:
    """``(first, last)`` frame of each run of consecutive frames with one face list (a frame with
    no faces is a run of its own)."""
    segments: list[tuple[int, int]] = []
    previous = None
    for i, mesh in enumerate(meshes):
        faces = np.asarray(mesh.faces).reshape(-1, 3)
        same = (previous is not None and len(faces) and len(faces) == len(previous) and
                len(mesh.vertices) == len(meshes[i - 1].vertices) and
                (faces is previous or np.array_equal(faces, previous)))
        if same:
            segments[-1] = (segments[-1][0], i)
        else:
            segments.append((i, i))
        previous = faces
    return segments


def build_glb(meshes: Sequence, frame_times: Sequence[float | None] = (), normals: bool = True,
              generator: str = "sculpt4d-sdk") -> bytes:
    """The bytes of the animated GLB (see the module docstring)."""
    n = len(meshes)
    if n == 0:
        raise ValueError("an animated glTF needs at least one frame")
    times = np.asarray(animation_times(frame_times, n), np.float32)
    segments = topology_segments(meshes)
    buf = _Bin()
    accessors: list[dict] = []

    def accessor(view: int, component: int, count: int, kind: str, offset: int = 0, **extra) -> int:
        acc = {"bufferView": view, "componentType": component, "count": int(count), "type": kind, **extra}
        if offset:
            acc["byteOffset"] = offset
        accessors.append(acc)
        return len(accessors) - 1

    def vec3(values: np.ndarray, bounds: bool) -> int:
        values = np.ascontiguousarray(values, np.float32)
        extra = {"min": [float(x) for x in values.min(0)], "max": [float(x) for x in values.max(0)]} if bounds else {}
        return accessor(buf.add(values.tobytes(), ARRAY_BUFFER), FLOAT, len(values), "VEC3", **extra)

    linear = [round(float(c) ** 2.2, 4) for c in BASE_COLOR]
    gltf: dict = {
        "asset": {"version": "2.0", "generator": generator},
        "scene": 0,
        "scenes": [{"name": "Sculpt4D", "nodes": [0]}],
        "nodes": [{"name": "Sculpt4D", "children": list(range(1, len(segments) + 1))}],
        "meshes": [],
        "materials": [{"name": "sculpt4d", "pbrMetallicRoughness": {
            "baseColorFactor": linear + [1.0], "metallicFactor": 0.0, "roughnessFactor": 0.7}}],
    }
    samplers, channels = [], []
    for s, (first, last) in enumerate(segments):
        name = f"frame_{first:04d}" if first == last else ("sequence" if len(segments) == 1
                                                           else f"frames_{first:04d}_{last:04d}")
        node = {"name": name}
        if len(segments) > 1:
            node["scale"] = [1.0, 1.0, 1.0] if first == 0 else [0.0, 0.0, 0.0]
        base = meshes[first]
        faces = np.asarray(base.faces, np.int64).reshape(-1, 3)
        if len(faces):
            verts = np.asarray(base.vertices, np.float32).reshape(-1, 3)
            attributes = {"POSITION": vec3(verts, True)}
            base_normals = _unit_normals(base) if normals else None
            if normals:
                attributes["NORMAL"] = vec3(base_normals, False)
            # 65535 is the primitive-restart value of uint16 indices, which glTF forbids
            itype, dtype = (UINT16, np.uint16) if len(verts) < 65535 else (UINT32, np.uint32)
            idx = accessor(buf.add(faces.astype(dtype).tobytes(), ELEMENT_ARRAY_BUFFER), itype, faces.size,
                           "SCALAR")
            primitive = {"attributes": attributes, "indices": idx, "material": 0, "mode": 4}
            mesh_entry = {"name": name, "primitives": [primitive]}
            if last > first:
                targets = []
                for i in range(first + 1, last + 1):
                    target = {"POSITION": vec3(np.asarray(meshes[i].vertices, np.float32).reshape(-1, 3) - verts,
                                               True)}
                    if normals:
                        target["NORMAL"] = vec3(_unit_normals(meshes[i]) - base_normals, False)
                    targets.append(target)
                primitive["targets"] = targets
                mesh_entry["weights"] = [0.0] * len(targets)
                mesh_entry["extras"] = {"targetNames": [f"frame_{i:04d}" for i in range(first + 1, last + 1)]}
                # weights at the segment's frame times: none at its first frame, target k at frame k + 1
                k = last - first
                weights = np.zeros((k + 1, k), np.float32)
                weights[np.arange(1, k + 1), np.arange(k)] = 1.0
                seg_times = accessor(buf.add(times[first:last + 1].tobytes()), FLOAT, k + 1, "SCALAR",
                                     min=[float(times[first])], max=[float(times[last])])
                out = accessor(buf.add(weights.tobytes()), FLOAT, weights.size, "SCALAR")
                samplers.append({"input": seg_times, "output": out, "interpolation": "LINEAR"})
                channels.append({"sampler": len(samplers) - 1, "target": {"node": s + 1, "path": "weights"}})
            gltf["meshes"].append(mesh_entry)
            node["mesh"] = len(gltf["meshes"]) - 1
        gltf["nodes"].append(node)
    if not gltf["meshes"]:
        del gltf["meshes"]
    if len(segments) > 1:  # flip-book visibility: segment s is shown during its own frames
        rows = np.zeros((2 * n - 1, 3), np.float32)
        rows[n - 1] = 1.0
        visible = np.zeros((len(segments), n), bool)
        for s, (first, last) in enumerate(segments):
            visible[s, first:last + 1] = True
        time_acc = accessor(buf.add(times.tobytes()), FLOAT, n, "SCALAR", min=[float(times.min())],
                            max=[float(times.max())])
        if all(first == last for first, last in segments):  # one frame each: windows of one shared view
            rows_view = buf.add(rows.tobytes())
            outs = [accessor(rows_view, FLOAT, n, "VEC3", offset=(n - 1 - s) * 12) for s in range(n)]
        else:
            outs = [accessor(buf.add(np.repeat(visible[s][:, None], 3, 1).astype(np.float32).tobytes()), FLOAT, n,
                             "VEC3") for s in range(len(segments))]
        for s, out in enumerate(outs):
            samplers.append({"input": time_acc, "output": out, "interpolation": "STEP"})
            channels.append({"sampler": len(samplers) - 1, "target": {"node": s + 1, "path": "scale"}})
    gltf["animations"] = [{"name": "sequence", "samplers": samplers, "channels": channels}]
    if not channels:  # one frame: nothing moves
        del gltf["animations"]
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
