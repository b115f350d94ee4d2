"""Closest points on a triangle mesh, exact (libigl's AABB tree), queried in chunks so that memory
stays flat for meshes of any size."""

from __future__ import annotations

import numpy as np

CHUNK = 65536  # query points per call into the tree


class SurfaceIndex:
    """A triangle mesh prepared for closest-point queries (the tree is built once)."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        import igl

        self.vertices = np.ascontiguousarray(vertices, np.float64).reshape(-1, 3)
        self.faces = np.ascontiguousarray(faces, np.int64).reshape(-1, 3)
        if len(self.faces) == 0:
            raise ValueError("a closest-point index needs at least one triangle")
        self._tree = igl.AABB()
        self._tree.init(self.vertices, self.faces)
        corners = self.vertices[self.faces]
        normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        self.face_normals = np.where(length > 0, normals / np.maximum(length, 1e-300), 0.0)

    def query(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(distance [N], face [N], closest point [N, 3])`` of each point."""
        points = np.ascontiguousarray(points, np.float64).reshape(-1, 3)
        dist = np.empty(len(points))
        face = np.empty(len(points), np.int64)
        closest = np.empty((len(points), 3))
        for lo in range(0, len(points), CHUNK):
            hi = min(lo + CHUNK, len(points))
            d2, f, c = self._tree.squared_distance(self.vertices, self.faces, points[lo:hi])
            dist[lo:hi] = np.sqrt(np.maximum(d2, 0.0))
            face[lo:hi] = f
            closest[lo:hi] = c
        return dist, face, closest

    def closest(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(distance [N], closest point [N, 3])`` of each point."""
        dist, _, closest = self.query(points)
        return dist, closest
