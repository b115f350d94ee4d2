"""Temporally consistent surface sampling and the shared-noise VAE encoding of a sequence.

The paper's recipe (SPEC section 3), which makes latent token k mean the same surface point in
every frame:

1. Sample points ONCE on the rest pose (frame 0): uniform points (area weighted) plus points on
   sharp edges, each stored as a face index + barycentric coordinates.
2. Propagate them to every frame by evaluating the same (face, barycentric) pair on that
   frame's vertices (the animated mesh keeps one topology).
3. Project each propagated point onto the frame's WATERTIGHT surface (the animated mesh may
   self-intersect or be open; the VAE is trained on watertight surfaces) and take that
   surface's normal there.
4. Normalise every frame with ONE box for the whole sequence (no per-frame re-centring).
5. Encode with frame 0's point selection and ONE posterior noise tensor for all frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

# Extent of a normalised sequence: the longest side of the union box maps to [-NORMALIZED_HALF,
# +NORMALIZED_HALF], inside the decoder's [-1.01, 1.01] world box with a small margin.
NORMALIZED_HALF = 0.95
SHARP_ANGLE_DEGREES = 30.0  # dihedral angle above which an edge counts as sharp


@dataclass(frozen=True)
class SurfaceSamples:
    """Points on a mesh as ``face_index [N]`` + ``barycentric [N, 3]``; ``sharp [N]`` marks
    sharp-edge points (they follow the uniform ones)."""

    face_index: np.ndarray
    barycentric: np.ndarray
    sharp: np.ndarray

    def __len__(self) -> int:
        return len(self.face_index)

    def points(self, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """The samples on a mesh with these vertices (same topology as the rest pose)."""
        corners = np.asarray(vertices, np.float64)[np.asarray(faces)[self.face_index]]  # [N, 3, 3]
        return np.einsum("nk,nkd->nd", self.barycentric, corners)


def _random_barycentric(rng: np.random.Generator, n: int) -> np.ndarray:
    # Uniform on a triangle: the square-root trick.
    r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
    return np.stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2], axis=1)


def sample_surface_points(mesh: trimesh.Trimesh, n_uniform: int, n_sharp: int, seed: int | np.random.Generator = 0,
                          sharp_angle_degrees: float = SHARP_ANGLE_DEGREES) -> SurfaceSamples:
    """Area-uniform points plus points along sharp edges of ``mesh`` (the rest pose).

    Sharp-edge points are drawn along edges whose dihedral angle exceeds
    ``sharp_angle_degrees``, weighted by edge length, and expressed on one of the edge's two
    faces (one barycentric coordinate is zero). A mesh without sharp edges gets uniform points
    in their place, flagged as not sharp.
    """
    if n_uniform < 0 or n_sharp < 0:
        raise ValueError(f"point counts must be >= 0, got n_uniform={n_uniform}, n_sharp={n_sharp}")
    if len(mesh.faces) == 0:
        raise ValueError("cannot sample the surface of a mesh with no faces")
    rng = np.random.default_rng(seed)
    areas = np.asarray(mesh.area_faces, np.float64)
    if not areas.sum() > 0:
        raise ValueError("cannot sample the surface of a mesh with zero area")
    prob = areas / areas.sum()
    faces = rng.choice(len(areas), size=n_uniform, p=prob)
    bary = _random_barycentric(rng, n_uniform)
    sharp = np.zeros(n_uniform, bool)

    if n_sharp:
        angles = np.asarray(mesh.face_adjacency_angles) if len(mesh.faces) > 1 else np.zeros(0)
        is_sharp = angles > math.radians(sharp_angle_degrees)
        if is_sharp.any():
            edges = np.asarray(mesh.face_adjacency_edges)[is_sharp]
            owner = np.asarray(mesh.face_adjacency)[is_sharp, 0]
            lengths = np.linalg.norm(mesh.vertices[edges[:, 0]] - mesh.vertices[edges[:, 1]], axis=1)
            pick = rng.choice(len(edges), size=n_sharp, p=lengths / lengths.sum())
            t = rng.random(n_sharp)
            face_verts = np.asarray(mesh.faces)[owner[pick]]  # [n, 3]
            b = np.zeros((n_sharp, 3))
            # Put weight (1 - t) on the corner holding the edge's first vertex and t on the second.
            b[face_verts == edges[pick, 0:1]] = 1.0 - t
            b[face_verts == edges[pick, 1:2]] += t
            faces = np.concatenate([faces, owner[pick]])
            bary = np.concatenate([bary, b])
            sharp = np.concatenate([sharp, np.ones(n_sharp, bool)])
        else:
            faces = np.concatenate([faces, rng.choice(len(areas), size=n_sharp, p=prob)])
            bary = np.concatenate([bary, _random_barycentric(rng, n_sharp)])
            sharp = np.concatenate([sharp, np.zeros(n_sharp, bool)])
    return SurfaceSamples(face_index=faces.astype(np.int64), barycentric=bary, sharp=sharp)


# ----------------------------------------------------------------------------------------------
# Closest points on a triangle mesh
# ----------------------------------------------------------------------------------------------

def closest_point_on_triangles(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Closest point of triangle ``triangles[i] [3, 3]`` to ``points[i]``, for every i (the
    Voronoi-region case analysis of Ericson, Real-Time Collision Detection 5.1.5)."""
    p = np.asarray(points, np.float64)
    a, b, c = (np.asarray(triangles, np.float64)[:, k] for k in range(3))
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = np.einsum("ij,ij->i", ab, ap), np.einsum("ij,ij->i", ac, ap)
    bp = p - b
    d3, d4 = np.einsum("ij,ij->i", ab, bp), np.einsum("ij,ij->i", ac, bp)
    cp = p - c
    d5, d6 = np.einsum("ij,ij->i", ab, cp), np.einsum("ij,ij->i", ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2

    def ratio(num, den):
        return num / np.where(den == 0, 1.0, den)

    # Interior by default, then overwrite region by region. For a non-degenerate triangle the
    # regions only meet on their boundaries, where the formulas agree, so the order is free.
    denom = va + vb + vc
    v, w = ratio(vb, denom), ratio(vc, denom)
    out = a + ab * v[:, None] + ac * w[:, None]
    regions = [
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0),  # edge BC
         lambda: b + (c - b) * ratio(d4 - d3, (d4 - d3) + (d5 - d6))[:, None]),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), lambda: a + ac * ratio(d2, d2 - d6)[:, None]),  # edge AC
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), lambda: a + ab * ratio(d1, d1 - d3)[:, None]),  # edge AB
        ((d6 >= 0) & (d5 <= d6), lambda: c),  # vertex C
        ((d3 >= 0) & (d4 <= d3), lambda: b),  # vertex B
        ((d1 <= 0) & (d2 <= 0), lambda: a),  # vertex A
    ]
    for mask, value in regions:
        if mask.any():
            out[mask] = value()[mask]
    # Degenerate (zero-area) triangles: the region tests do not apply; take the nearest of the
    # three edge segments.
    flat = np.linalg.norm(np.cross(ab, ac), axis=1) <= 1e-12 * np.maximum(1.0, (ab * ab).sum(1) + (ac * ac).sum(1))
    if flat.any():
        best = None
        for s0, s1 in ((a, b), (b, c), (a, c)):
            seg, q = s1[flat] - s0[flat], p[flat] - s0[flat]
            t = np.clip(np.einsum("ij,ij->i", q, seg) / np.maximum(np.einsum("ij,ij->i", seg, seg), 1e-300), 0, 1)
            cand = s0[flat] + seg * t[:, None]
            if best is None:
                best = cand
            else:
                closer = ((cand - p[flat]) ** 2).sum(1) < ((best - p[flat]) ** 2).sum(1)
                best[closer] = cand[closer]
        out[flat] = best
    return out


def closest_points(mesh: trimesh.Trimesh, points: np.ndarray, candidates: int = 16
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Closest points on ``mesh`` and their face indices.

    Each point is tested against the ``candidates`` triangles whose centroids are nearest
    (a KD-tree): a heuristic that finds the true closest triangle on the fine, even triangles of
    a marching-cubes surface (checked against ``closest_points_bruteforce``, the every-triangle
    reference, in the tests); long thin triangles may need more candidates.
    """
    points = np.asarray(points, np.float64)
    tris = np.asarray(mesh.triangles, np.float64)
    k = min(candidates, len(tris))
    _, idx = cKDTree(tris.mean(axis=1)).query(points, k=k)
    idx = idx.reshape(len(points), k)
    rep = np.repeat(points, k, axis=0)
    cand = closest_point_on_triangles(rep, tris[idx.reshape(-1)]).reshape(len(points), k, 3)
    best = np.argmin(((cand - points[:, None]) ** 2).sum(-1), axis=1)
    rows = np.arange(len(points))
    return cand[rows, best], idx[rows, best]


def closest_points_bruteforce(mesh: trimesh.Trimesh, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference for :func:`closest_points`: every point against every triangle."""
    points = np.asarray(points, np.float64)
    tris = np.asarray(mesh.triangles, np.float64)
    out, face = np.empty_like(points), np.empty(len(points), np.int64)
    for i, p in enumerate(points):
        cand = closest_point_on_triangles(np.repeat(p[None], len(tris), 0), tris)
        j = int(np.argmin(((cand - p) ** 2).sum(-1)))
        out[i], face[i] = cand[j], j
    return out, face


# ----------------------------------------------------------------------------------------------
# One normalisation per sequence
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Normalization:
    """``normalized = (x - center) * scale``: one box for every frame of a sequence."""

    center: tuple[float, float, float]
    scale: float

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Points in the original frame -> the normalised frame (centre, then scale)."""
        return (np.asarray(points, np.float64) - np.asarray(self.center)) * self.scale

    def invert(self, points: np.ndarray) -> np.ndarray:
        """Normalised points -> the original frame; the inverse of :meth:`apply`."""
        return np.asarray(points, np.float64) / self.scale + np.asarray(self.center)

    def apply_mesh(self, mesh: trimesh.Trimesh) -> trimesh.Trimesh:
        """A copy of ``mesh`` with normalised vertices (same faces)."""
        return trimesh.Trimesh(self.apply(mesh.vertices), np.asarray(mesh.faces), process=False)


def sequence_normalization(frames: Sequence, half_extent: float = NORMALIZED_HALF) -> Normalization:
    """The box of ALL frames together (meshes or ``[V, 3]`` arrays), centred, longest side
    scaled to ``[-half_extent, half_extent]``."""
    pts = [np.asarray(f.vertices if hasattr(f, "vertices") else f, np.float64).reshape(-1, 3) for f in frames]
    pts = [p for p in pts if len(p)]
    if not pts:
        raise ValueError("cannot normalise a sequence with no vertices")
    lo = np.min([p.min(0) for p in pts], axis=0)
    hi = np.max([p.max(0) for p in pts], axis=0)
    longest = float((hi - lo).max())
    if not longest > 0:
        raise ValueError("cannot normalise a sequence whose vertices all coincide")
    return Normalization(center=tuple(float(x) for x in (lo + hi) / 2), scale=2.0 * half_extent / longest)


# ----------------------------------------------------------------------------------------------
# The consistent surface of a sequence and its encoding
# ----------------------------------------------------------------------------------------------

def consistent_surface(samples: SurfaceSamples, faces: np.ndarray, frame_vertices: Sequence[np.ndarray],
                       watertight: Sequence[trimesh.Trimesh]) -> np.ndarray:
    """Encoder input for every frame: ``[T, N, 7]`` = xyz, normal, sharp flag.

    ``faces`` and ``frame_vertices[t]`` are the animated mesh (one topology; ``samples`` were
    drawn on frame 0); ``watertight[t]`` is frame t's watertight surface in the same
    coordinates. Points are propagated, then projected onto the watertight surface.
    """
    if len(frame_vertices) != len(watertight):
        raise ValueError(f"{len(frame_vertices)} animated frames but {len(watertight)} watertight surfaces")
    out = np.empty((len(watertight), len(samples), 7), np.float32)
    flag = samples.sharp.astype(np.float32)
    for t, (verts, surface) in enumerate(zip(frame_vertices, watertight)):
        if len(surface.faces) == 0:
            raise ValueError(f"frame {t}: the watertight surface is empty")
        projected, face = closest_points(surface, samples.points(verts, faces))
        out[t, :, :3] = projected
        out[t, :, 3:6] = np.asarray(surface.face_normals)[face]
        out[t, :, 6] = flag
    return out


@torch.no_grad()
def encode_sequence(vae, surface: torch.Tensor | np.ndarray, seed: int = 0, sample_posterior: bool = True) -> torch.Tensor:
    """Unscaled latents ``[T, P, C]`` of a consistent surface ``[T, N, 3 + point_feats]``.

    Frame 0 chooses the encoder's input subset and FPS queries; every frame reuses those point
    indices (the points correspond across frames) and ONE posterior noise tensor, so token k
    of every frame describes the same surface point and differs only by real motion.
    """
    surface = torch.as_tensor(surface, dtype=torch.float32)
    if surface.dim() != 3:
        raise ValueError(f"surface must be [T, N, 3 + point_feats], got {tuple(surface.shape)}")
    param = next(vae.parameters())
    surface = surface.to(param.device, param.dtype)
    gen = torch.Generator().manual_seed(int(seed))
    selection = vae.encoder.select_points(surface[:1].cpu().float(), generator=gen)
    selection = type(selection)(selection.input_index.to(param.device), selection.query_index.to(param.device))
    cfg = vae.config
    noise = torch.randn((1, cfg.num_latents, cfg.embed_dim), generator=gen)
    return vae.encode(surface, sample_posterior=sample_posterior, selection=selection,
                      noise=noise.to(param.device, param.dtype))
