"""How well a tracked frame matches that frame's own mesh, and what its shape is made of.

* fit: the mean of the two one-sided mean surface distances (tracked -> frame, frame -> tracked);
* uncovered: the share of the frame's surface farther than a tolerance from the tracked surface
  (a part appeared, split off, or the fit failed there), and the reverse share (a part vanished);
* distortion: mean relative change of edge lengths against the template, and the ARAP energy
  relative to the template's own ``sum w |e|^2``;
* topology: the connected components that carry a real share of the area, and each one's genus
  (from the Euler characteristic). One template deformed can never change these, so a frame whose
  own mesh has different ones is a topology change (parts merging or splitting, a hole opening).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .arap import unique_edges

MIN_COMPONENT_AREA = 0.01  # share of the total area below which a component is noise, not a part


@dataclass(frozen=True)
class Topology:
    """The significant components of a mesh: how many, and their genera in decreasing order."""

    genera: tuple[int, ...]

    @property
    def components(self) -> int:
        """Number of significant connected components."""
        return len(self.genera)

    def describe(self) -> str:
        """E.g. ``2 parts (genus 0, 0)``."""
        n = self.components
        return f"{n} part{'s' if n != 1 else ''} (genus {', '.join(map(str, self.genera)) or '-'})"


def topology(vertices: np.ndarray, faces: np.ndarray, min_area: float = MIN_COMPONENT_AREA) -> Topology:
    """The :class:`Topology` of a closed triangle mesh (open or non-manifold parts count as they are)."""
    v = np.asarray(vertices, np.float64).reshape(-1, 3)
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]  # no repeated corners
    if len(f) == 0:
        return Topology(())
    n = len(v)
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    graph = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    face_label = label[f[:, 0]]
    corners = v[f]
    area = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    total = area.sum()
    edges = unique_edges(f)
    used = np.unique(f)
    n_comp = label.max() + 1
    n_faces = np.bincount(face_label, minlength=n_comp)
    n_edges = np.bincount(label[edges[:, 0]], minlength=n_comp)
    n_verts = np.bincount(label[used], minlength=n_comp)
    comp_area = np.bincount(face_label, weights=area, minlength=n_comp)
    genera = []
    for c in np.flatnonzero(comp_area >= min_area * total if total > 0 else n_faces > 0):
        euler = int(n_verts[c] - n_edges[c] + n_faces[c])
        genera.append(max(0, (2 - euler) // 2))
    return Topology(tuple(sorted(genera, reverse=True)))


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (zero for a vertex on no face)."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    corners = v[f]
    fn = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    idx = f.ravel()
    out = np.stack([np.bincount(idx, np.repeat(fn[:, k], 3), len(v)) for k in range(3)], 1)
    length = np.linalg.norm(out, axis=1, keepdims=True)
    return np.where(length > 0, out / np.maximum(length, 1e-300), 0.0)


def edge_distortion(rest: np.ndarray, current: np.ndarray, edges: np.ndarray) -> float:
    """``sum |l - l0| / sum l0`` over the edges: the relative change of edge length, weighted by
    length so that marching cubes' sliver edges do not dominate (0 for a rigid motion)."""
    l0 = np.linalg.norm(rest[edges[:, 0]] - rest[edges[:, 1]], axis=1)
    l1 = np.linalg.norm(current[edges[:, 0]] - current[edges[:, 1]], axis=1)
    total = float(l0.sum())
    return float(np.abs(l1 - l0).sum() / total) if total > 0 else 0.0


def box_diagonal(vertices: np.ndarray) -> float:
    """Length of the axis-aligned bounding box's diagonal."""
    v = np.asarray(vertices, np.float64).reshape(-1, 3)
    return float(np.linalg.norm(v.max(0) - v.min(0))) if len(v) else 0.0
