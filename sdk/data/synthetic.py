"""A synthetic 4D dataset: animated objects built from primitives.

Every object is a union of parts. A part is a primitive (sphere/ellipsoid, box, cylinder,
capsule, torus) in its own rest frame, deformed per frame by a twist about its y axis and a
bend in its xy plane, then placed by a per-frame affine matrix (rigid motion, articulation as a
parent's matrix times a hinge rotation, non-uniform scaling). The motions cover the cases the
paper cares about:

    rigid        a compound object turning and travelling
    articulated  a body with limbs on hinges
    bend_twist   a bar that bends and twists
    scaling      squash and stretch
    merge_split  two blobs that meet (two components -> one) or separate (one -> two)

Two representations of each frame, by construction identical surfaces:

* the ANIMATED mesh: the parts' template meshes pushed through the deformation (one topology
  for the whole sequence; what a rig exports; parts interpenetrate), and
* the WATERTIGHT mesh: marching cubes of the union's field, evaluated exactly by mapping a
  point back into each part's rest frame (inverse affine, inverse bend, inverse twist) and
  taking the primitive's signed distance there. The sign is exact (occupancy labels for VAE
  training); the magnitude is a distance only up to the local stretch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from ..generation.mcubes import WorldBox, marching_cubes
from .surface import Normalization, sequence_normalization

MOTIONS = ("rigid", "articulated", "bend_twist", "scaling", "merge_split")
PRIMITIVES = ("sphere", "box", "cylinder", "capsule", "torus")

# Distinct, saturated part colours that stand out from the renderer's grey background.
PALETTE = np.array([(205, 70, 50), (50, 110, 200), (60, 160, 80), (225, 170, 40),
                    (150, 70, 170), (40, 170, 170), (200, 90, 140)], np.float64) / 255.0


# ----------------------------------------------------------------------------------------------
# Primitives: signed distance in the rest frame and a template mesh
# ----------------------------------------------------------------------------------------------

def primitive_sdf(kind: str, size: tuple[float, ...], p: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of a primitive centred at the origin, axis along y."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    if kind == "sphere":  # ellipsoid radii (rx, ry, rz); exact sign, approximate distance
        r = np.asarray(size)
        return (np.linalg.norm(p / r, axis=-1) - 1.0) * r.min()
    if kind == "box":  # half extents
        q = np.abs(p) - np.asarray(size)
        return np.linalg.norm(np.maximum(q, 0.0), axis=-1) + np.minimum(q.max(-1), 0.0)
    if kind == "cylinder":  # (radius, half height)
        radius, half = size
        d = np.stack([np.hypot(x, z) - radius, np.abs(y) - half], -1)
        return np.linalg.norm(np.maximum(d, 0.0), axis=-1) + np.minimum(d.max(-1), 0.0)
    if kind == "capsule":  # (radius, half length of the core segment)
        radius, half = size
        yc = np.clip(y, -half, half)
        return np.sqrt(x * x + (y - yc) ** 2 + z * z) - radius
    if kind == "torus":  # (major radius, minor radius), ring in the xz plane
        major, minor = size
        return np.hypot(np.hypot(x, z) - major, y) - minor
    raise ValueError(f"unknown primitive {kind!r}; expected one of {PRIMITIVES}")


def primitive_mesh(kind: str, size: tuple[float, ...]) -> trimesh.Trimesh:
    """A closed template mesh of the primitive, fine enough to bend smoothly."""
    if kind == "sphere":
        mesh = trimesh.creation.icosphere(subdivisions=3)
        mesh.vertices = mesh.vertices * np.asarray(size)
    elif kind == "box":
        mesh = trimesh.creation.box(extents=2 * np.asarray(size))
        for _ in range(3):
            mesh = mesh.subdivide()
    elif kind == "cylinder":
        radius, half = size
        mesh = trimesh.creation.cylinder(radius=radius, height=2 * half, sections=32)
        mesh.vertices = mesh.vertices[:, [0, 2, 1]] * np.array([1.0, 1.0, -1.0])  # rotate axis z -> y
        for _ in range(2):
            mesh = mesh.subdivide()
    elif kind == "capsule":
        radius, half = size
        mesh = trimesh.creation.capsule(height=2 * half, radius=radius, count=[24, 24])
        mesh.vertices = mesh.vertices[:, [0, 2, 1]] * np.array([1.0, 1.0, -1.0])
    elif kind == "torus":
        major, minor = size
        mesh = trimesh.creation.torus(major_radius=major, minor_radius=minor, major_sections=48, minor_sections=16)
        mesh.vertices = mesh.vertices[:, [0, 2, 1]] * np.array([1.0, 1.0, -1.0])
    else:
        raise ValueError(f"unknown primitive {kind!r}; expected one of {PRIMITIVES}")
    return trimesh.Trimesh(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces), process=False)


# ----------------------------------------------------------------------------------------------
# Deformations (forward and exact inverse)
# ----------------------------------------------------------------------------------------------

def twist(p: np.ndarray, rate: float) -> np.ndarray:
    """Rotate about y by ``rate * y`` radians."""
    a = rate * p[..., 1]
    c, s = np.cos(a), np.sin(a)
    return np.stack([c * p[..., 0] + s * p[..., 2], p[..., 1], -s * p[..., 0] + c * p[..., 2]], -1)


def bend(p: np.ndarray, curvature: float) -> np.ndarray:
    """Bend the y axis into a circular arc of curvature ``curvature`` in the xy plane (arc
    length along y is preserved; positive curvature bends towards +x)."""
    if abs(curvature) < 1e-8:
        return p
    sign, k = math.copysign(1.0, curvature), abs(curvature)
    x = sign * p[..., 0]
    radius = 1.0 / k - x
    theta = k * p[..., 1]
    return np.stack([sign * (1.0 / k - radius * np.cos(theta)), radius * np.sin(theta), p[..., 2]], -1)


def unbend(p: np.ndarray, curvature: float) -> np.ndarray:
    """Inverse of :func:`bend` (for points within half a turn of the arc and with
    ``sign(curvature) * x < 1 / |curvature|``, i.e. on the bar's side of the bending centre)."""
    if abs(curvature) < 1e-8:
        return p
    sign, k = math.copysign(1.0, curvature), abs(curvature)
    X = sign * p[..., 0]
    dx = 1.0 / k - X
    radius = np.hypot(dx, p[..., 1])
    theta = np.arctan2(p[..., 1], dx)
    return np.stack([sign * (1.0 / k - radius), theta / k, p[..., 2]], -1)


# ----------------------------------------------------------------------------------------------
# Parts and sequences
# ----------------------------------------------------------------------------------------------

@dataclass
class Part:
    """A primitive with per-frame ``twist [T]``, ``bend [T]`` and placement ``matrix [T, 4, 4]``."""

    kind: str
    size: tuple[float, ...]
    matrix: np.ndarray
    twist: np.ndarray
    bend: np.ndarray
    color: np.ndarray

    def to_world(self, t: int, local: np.ndarray) -> np.ndarray:
        """Local (rest-pose) points of this part -> world coordinates at frame ``t`` (twist, bend, then the rigid pose)."""
        p = bend(twist(local, self.twist[t]) if self.twist[t] != 0 else local, self.bend[t])
        m = self.matrix[t]
        return p @ m[:3, :3].T + m[:3, 3]

    def to_local(self, t: int, world: np.ndarray) -> np.ndarray:
        """World points at frame ``t`` -> this part's local (rest-pose) coordinates; the inverse of :meth:`to_world`."""
        inv = np.linalg.inv(self.matrix[t])
        p = unbend(world @ inv[:3, :3].T + inv[:3, 3], self.bend[t])
        return twist(p, -self.twist[t]) if self.twist[t] != 0 else p

    def sdf(self, t: int, world: np.ndarray) -> np.ndarray:
        """Approximate signed distance of world points to this part at frame ``t`` (negative inside)."""
        return primitive_sdf(self.kind, self.size, self.to_local(t, world))


@dataclass
class Sequence4D:
    """An animated object: parts over ``num_frames`` frames, in one normalised box."""

    name: str
    motion: str
    parts: list[Part]
    num_frames: int
    normalization: Normalization = field(init=False)  # computed from all frames
    _templates: list[trimesh.Trimesh] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._templates = [primitive_mesh(p.kind, p.size) for p in self.parts]
        self.normalization = sequence_normalization([self.raw_vertices(t) for t in range(self.num_frames)])

    # -- the animated mesh (one topology) ----------------------------------------------------
    @property
    def faces(self) -> np.ndarray:
        """The faces of every part's template, concatenated: the one topology of the sequence."""
        faces, offset = [], 0
        for mesh in self._templates:
            faces.append(np.asarray(mesh.faces) + offset)
            offset += len(mesh.vertices)
        return np.concatenate(faces)

    @property
    def face_colors(self) -> np.ndarray:
        """Each face's part colour (RGB), in :attr:`faces` order."""
        return np.concatenate([np.repeat(p.color[None], len(m.faces), 0) for p, m in zip(self.parts, self._templates)])

    def raw_vertices(self, t: int) -> np.ndarray:
        """Every part's template vertices at frame ``t``, before the sequence's normalisation."""
        return np.concatenate([p.to_world(t, m.vertices) for p, m in zip(self.parts, self._templates)])

    def vertices(self, t: int) -> np.ndarray:
        """Frame ``t`` of the animated mesh in normalised coordinates."""
        return self.normalization.apply(self.raw_vertices(t))

    def animated_mesh(self, t: int) -> trimesh.Trimesh:
        """The fixed-topology mesh at frame ``t`` (every frame shares the faces; not watertight where parts overlap)."""
        return trimesh.Trimesh(self.vertices(t), self.faces, process=False)

    # -- the exact field and the watertight mesh ----------------------------------------------
    def sdf(self, t: int, points: np.ndarray, margin: float = 0.05) -> np.ndarray:
        """Union field at normalised ``points [..., 3]``: negative inside (sign exact).

        Each part is evaluated only inside its box (its animated vertices' box grown by
        ``margin``); elsewhere the field is ``margin``, a safe lower bound of the distance. The
        sign is exact everywhere and values near the surface are the parts' own.
        """
        points = np.asarray(points, np.float64)
        flat = points.reshape(-1, 3)
        out = np.full(len(flat), margin)
        for part, mesh in zip(self.parts, self._templates):
            verts = self.normalization.apply(part.to_world(t, mesh.vertices))
            near = np.all((flat >= verts.min(0) - margin) & (flat <= verts.max(0) + margin), axis=1)
            if near.any():
                d = part.sdf(t, self.normalization.invert(flat[near])) * self.normalization.scale
                out[near] = np.minimum(out[near], d)
        return out.reshape(points.shape[:-1])

    def carry(self, points: np.ndarray, t_from: int, t_to: int) -> np.ndarray:
        """The true positions at frame ``t_to`` of surface ``points [N, 3]`` at frame ``t_from``
        (normalised coordinates): each point belongs to the part whose field is lowest there, and
        moves with that part's rest-pose coordinates. The ground truth of tracking benchmarks."""
        flat = np.asarray(points, np.float64).reshape(-1, 3)
        raw = self.normalization.invert(flat)
        fields = np.stack([part.sdf(t_from, raw) for part in self.parts])
        owner = np.argmin(fields, axis=0)
        out = np.empty_like(raw)
        for k, part in enumerate(self.parts):
            mine = owner == k
            if mine.any():
                out[mine] = part.to_world(t_to, part.to_local(t_from, raw[mine]))
        return self.normalization.apply(out).reshape(np.shape(points))

    def occupancy(self, t: int, points: np.ndarray) -> np.ndarray:
        """Whether each world point lies inside the object at frame ``t``."""
        return self.sdf(t, points) < 0

    def watertight_mesh(self, t: int, resolution: int = 96, box: WorldBox = WorldBox()) -> trimesh.Trimesh:
        """A watertight mesh of frame ``t``: marching cubes of the union's SDF on ``box`` at ``resolution``."""
        axis = np.linspace(box.min, box.max, resolution + 1)
        grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        field_values = -self.sdf(t, grid).reshape((resolution + 1,) * 3)  # positive inside
        return marching_cubes(field_values.astype(np.float32), box=box, backend="cpu")


# ----------------------------------------------------------------------------------------------
# Random sequences
# ----------------------------------------------------------------------------------------------

def _rot(axis: str, angle: float | np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    m = np.zeros(np.shape(angle) + (4, 4))
    m[..., 3, 3] = 1.0
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    k = 3 - i - j
    m[..., k, k] = 1.0
    m[..., i, i], m[..., i, j], m[..., j, i], m[..., j, j] = c, -s, s, c
    return m


def _translate(xyz) -> np.ndarray:
    xyz = np.asarray(xyz, np.float64)
    m = np.zeros(xyz.shape[:-1] + (4, 4))
    m[..., [0, 1, 2, 3], [0, 1, 2, 3]] = 1.0
    m[..., :3, 3] = xyz
    return m


def _scale(sxyz) -> np.ndarray:
    sxyz = np.asarray(sxyz, np.float64)
    m = np.zeros(sxyz.shape[:-1] + (4, 4))
    m[..., 0, 0], m[..., 1, 1], m[..., 2, 2], m[..., 3, 3] = sxyz[..., 0], sxyz[..., 1], sxyz[..., 2], 1.0
    return m


def _random_size(rng: np.random.Generator, kind: str, scale: float = 1.0) -> tuple[float, ...]:
    u = lambda lo, hi: float(rng.uniform(lo, hi)) * scale  # noqa: E731
    return {"sphere": lambda: (u(0.25, 0.45), u(0.25, 0.45), u(0.25, 0.45)),
            "box": lambda: (u(0.15, 0.4), u(0.15, 0.4), u(0.15, 0.4)),
            "cylinder": lambda: (u(0.15, 0.3), u(0.2, 0.45)),
            "capsule": lambda: (u(0.12, 0.22), u(0.15, 0.35)),
            "torus": lambda: (u(0.3, 0.4), u(0.08, 0.14))}[kind]()


def _const(n: int, value: float = 0.0) -> np.ndarray:
    return np.full(n, value, np.float64)


def _phase(rng: np.random.Generator, n: int) -> np.ndarray:
    """Time from 0 over the clip, up to 0.7-1.3 (a random speed, so clips differ in tempo)."""
    return np.linspace(0.0, 1.0, n) * rng.uniform(0.7, 1.3)


def random_sequence(seed: int, motion: str | None = None, num_frames: int = 16) -> Sequence4D:
    """A random animated object; ``motion`` one of :data:`MOTIONS` (random when ``None``)."""
    rng = np.random.default_rng(seed)
    motion = motion or MOTIONS[int(rng.integers(len(MOTIONS)))]
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; expected one of {MOTIONS}")
    colors = PALETTE[rng.permutation(len(PALETTE))]
    T = num_frames
    s = _phase(rng, T)
    zero = _const(T)
    # A random fixed orientation about y, so objects are seen from different sides.
    heading = _rot("y", float(rng.uniform(-math.pi, math.pi)))
    parts: list[Part] = []

    def part(kind, size, matrix, color, tw=zero, bd=zero):
        placed = np.broadcast_to(heading @ matrix, (T, 4, 4)).copy()
        parts.append(Part(kind, size, placed, np.asarray(tw, np.float64), np.asarray(bd, np.float64), color))

    if motion == "rigid":
        turn = _rot("y", float(rng.uniform(0.6, 1.6)) * math.copysign(1, rng.uniform(-1, 1)) * s * math.pi)
        travel = _translate(np.stack([rng.uniform(-0.4, 0.4) * s, 0.25 * np.sin(math.pi * s), zero], -1))
        tilt = _rot("x", float(rng.uniform(-0.4, 0.4)))
        body = travel @ turn @ tilt
        k1 = PRIMITIVES[int(rng.integers(len(PRIMITIVES)))]
        part(k1, _random_size(rng, k1), body, colors[0])
        if rng.random() < 0.7:
            k2 = ("sphere", "box", "capsule", "cylinder")[int(rng.integers(4))]
            offset = _translate([rng.uniform(0.25, 0.45), rng.uniform(-0.1, 0.3), 0.0])
            part(k2, _random_size(rng, k2, 0.6), body @ offset, colors[1])
    elif motion == "articulated":
        hx, hy, hz = rng.uniform(0.25, 0.4), rng.uniform(0.12, 0.22), rng.uniform(0.15, 0.25)
        body = _translate(np.stack([zero, 0.1 * np.sin(2 * math.pi * s), zero], -1))
        part("box", (hx, hy, hz), body, colors[0])
        n_limbs = int(rng.integers(1, 3))
        amplitude, freq = rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.2)
        limb_kind = ("capsule", "box", "cylinder")[int(rng.integers(3))]
        length, radius = rng.uniform(0.25, 0.4), rng.uniform(0.06, 0.1)
        size = (radius, length / 2) if limb_kind != "box" else (radius, length / 2, radius)
        for side in range(n_limbs):
            sx = hx if side == 0 else -hx
            angle = (1 if side == 0 else -1) * (0.6 + amplitude * np.sin(2 * math.pi * freq * s))
            hinge = body @ _translate([sx, hy * 0.5, 0.0]) @ _rot("z", -angle)
            # The limb hangs off the hinge along its own +y.
            part(limb_kind, size, hinge @ _translate([0.0, length / 2, 0.0]), colors[1 + side])
        if rng.random() < 0.5:
            part("sphere", (0.14, 0.14, 0.14), body @ _translate([0.0, hy + 0.12, 0.0]), colors[3])
    elif motion == "bend_twist":
        kind = ("box", "cylinder")[int(rng.integers(2))]
        half = rng.uniform(0.5, 0.7)
        size = (rng.uniform(0.1, 0.18), half, rng.uniform(0.1, 0.18)) if kind == "box" else (rng.uniform(0.1, 0.18), half)
        max_bend = rng.uniform(0.8, 1.6)  # total bend angle in radians over the bar: curvature * length
        bd = max_bend / (2 * half) * np.sin(2 * math.pi * rng.uniform(0.5, 1.0) * s)
        tw = (rng.uniform(0.0, 2.0) if kind == "box" else 0.0) * np.sin(math.pi * s)
        lean = _rot("z", float(rng.uniform(-0.3, 0.3)))
        part(kind, size, lean, colors[0], tw, bd)
        if rng.random() < 0.5:  # a cap that rides on the tip of the bending bar
            cap = PRIMITIVES[int(rng.integers(3))]
            tip = np.stack([bend(np.array([0.0, half, 0.0]), b) for b in bd])
            part(cap, _random_size(rng, cap, 0.45), lean @ _translate(tip), colors[1])
    elif motion == "scaling":
        kind = PRIMITIVES[int(rng.integers(len(PRIMITIVES)))]
        a = rng.uniform(0.2, 0.45)
        wave = np.sin(2 * math.pi * rng.uniform(0.5, 1.2) * s)
        sy = 1.0 + a * wave
        sxz = 1.0 / np.sqrt(sy)
        part(kind, _random_size(rng, kind), _scale(np.stack([sxz, sy, sxz], -1)), colors[0])
    else:  # merge_split
        r1, r2 = rng.uniform(0.25, 0.35), rng.uniform(0.2, 0.32)
        apart, touching = r1 + r2 + rng.uniform(0.25, 0.45), (r1 + r2) * rng.uniform(0.5, 0.75)
        if rng.random() < 0.5:  # merge: far apart -> overlapping
            gap = apart + (touching - apart) * np.clip(s * 1.3, 0, 1)
        else:  # split
            gap = touching + (apart - touching) * np.clip(s * 1.3, 0, 1)
        k1, k2 = ("sphere", "sphere") if rng.random() < 0.6 else ("sphere", "box")
        size1 = (r1, r1, r1) if k1 == "sphere" else (r1 * 0.8,) * 3
        size2 = (r2, r2 * rng.uniform(0.8, 1.2), r2) if k2 == "sphere" else (r2 * 0.8,) * 3
        part(k1, size1, _translate(np.stack([-gap / 2, zero, zero], -1)), colors[0])
        part(k2, size2, _translate(np.stack([gap / 2, 0.05 * np.sin(math.pi * s), zero], -1)), colors[1])
    return Sequence4D(name=f"{motion}_{seed:05d}", motion=motion, parts=parts, num_frames=T)



# ----------------------------------------------------------------------------------------------
# Training examples
# ----------------------------------------------------------------------------------------------

BACKGROUND = (205, 205, 205)  # the plain backdrop of rendered videos (removed by the border key)


def render_frames(seq: Sequence4D, camera=None, size: int = 256) -> list[np.ndarray]:
    """RGB frames of the animated object over a plain background: the conditioning video."""
    from ..outputs.render import Camera, over_background, render_rgba

    camera = camera or Camera()
    cams = camera if isinstance(camera, (list, tuple)) else [camera] * seq.num_frames
    colors = seq.face_colors
    return [over_background(render_rgba(seq.vertices(t), seq.faces, cams[t], size, colors), BACKGROUND)
            for t in range(seq.num_frames)]


def export_sequence(seq: Sequence4D, directory, resolution: int = 128, frames: list[np.ndarray] | None = None,
                    video=None) -> Path:
    """Write a sequence as per-frame meshes: ``frame_XXXX.ply`` (the watertight surface, the
    ground truth for metrics), ``animated_XXXX.ply`` (the one-topology part meshes) and
    ``sequence.json`` (motion, parts); with ``frames``, the video too (``video`` path, default
    ``directory/video.mp4``)."""
    from ..outputs.video import write_video

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for t in range(seq.num_frames):
        seq.watertight_mesh(t, resolution).export(directory / f"frame_{t:04d}.ply")
        seq.animated_mesh(t).export(directory / f"animated_{t:04d}.ply")
    info = {"name": seq.name, "motion": seq.motion, "num_frames": seq.num_frames,
            "normalization": {"center": list(seq.normalization.center), "scale": seq.normalization.scale},
            "parts": [{"kind": p.kind, "size": list(p.size)} for p in seq.parts]}
    (directory / "sequence.json").write_text(json.dumps(info, indent=2))
    if frames is not None:
        write_video(list(frames), video or directory / "video.mp4")
    return directory


def occupancy_queries(seq: Sequence4D, t: int, surface_xyz: np.ndarray, rng: np.random.Generator,
                      n_near: int = 2048, n_uniform: int = 1024,
                      box: WorldBox = WorldBox()) -> tuple[np.ndarray, np.ndarray]:
    """VAE supervision for frame ``t``: points near the surface (two noise scales) and uniform in
    the box, with exact inside/outside labels."""
    pick = rng.integers(len(surface_xyz), size=n_near)
    sigma = np.where(np.arange(n_near) < n_near // 2, 0.01, 0.05)[:, None]
    near = surface_xyz[pick] + rng.normal(size=(n_near, 3)) * sigma
    uniform = rng.uniform(box.min, box.max, size=(n_uniform, 3))
    points = np.concatenate([near, uniform])
    return points.astype(np.float32), seq.occupancy(t, points)


def build_example(seq: Sequence4D, n_uniform: int, n_sharp: int, image_size: int, seed: int = 0,
                  camera=None, render_size: int = 256, resolution: int = 96) -> dict[str, np.ndarray]:
    """Everything training needs from one sequence, as arrays:

    ``surface [T, N, 7]`` (consistent samples: xyz, normal, sharp flag), ``queries [T, M, 3]`` +
    ``occupancy [T, M]`` (VAE supervision), ``images [T, 3, S, S]`` (conditioning images exactly
    as the pipeline prepares them from a video: border-key matting, one crop, ImageNet
    normalisation at the conditioner's size) and ``frames [T, H, W, 3]`` (the rendered video).
    """
    import torch

    from ..models.conditioner import prepare_images
    from ..inputs.conditioning import prepare_sequence
    from .surface import consistent_surface, sample_surface_points

    rng = np.random.default_rng(seed)
    T = seq.num_frames
    samples = sample_surface_points(seq.animated_mesh(0), n_uniform, n_sharp, rng)
    watertight = [seq.watertight_mesh(t, resolution) for t in range(T)]
    surface = consistent_surface(samples, seq.faces, [seq.vertices(t) for t in range(T)], watertight)
    queries, labels = zip(*(occupancy_queries(seq, t, surface[t, :, :3], rng) for t in range(T)))
    frames = render_frames(seq, camera, render_size)
    prepared = prepare_sequence(frames, matting="border")
    images = prepare_images(prepared.images, image_size)
    return {"surface": surface, "queries": np.stack(queries), "occupancy": np.stack(labels),
            "images": images.to(torch.float16).numpy(), "frames": np.stack(frames)}
