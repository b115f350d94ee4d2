"""As-rigid-as-possible deformation (Sorkine & Alexa 2007) with a data term, for tracking.

Energy of deformed vertices ``v`` against the rest shape ``p`` (the template) with per-vertex
rotations ``R``, over the undirected edges ``(i, j)`` with weights ``w_ij``::

    E(v, R) = sum_ij w_ij (|v_i - v_j - R_i (p_i - p_j)|^2 + |v_j - v_i - R_j (p_j - p_i)|^2)
              + lam * sum_i |v_i - c_i|^2

where ``c_i`` is where the data says vertex ``i`` belongs. Alternating minimisation: the local
step takes each ``R_i`` as the rotation closest to ``S_i = sum_j w_ij (p_i - p_j)(v_i - v_j)^T``
(a batched 3x3 SVD); the global step solves ``(2 L + lam I) v = D^T r + lam c`` for all three
coordinates at once, where ``L`` is the weighted graph Laplacian, ``D`` the edge incidence matrix
and ``r_ij = w_ij (R_i + R_j)(p_i - p_j)``. ``L`` depends only on the template, so the matrix is
factorised once per ``lam`` and every iteration of every frame is a back-substitution.

Edge weights are uniform: cotangent weights are the textbook choice, but marching-cubes meshes
have sliver triangles whose cotangents are huge or negative, and the tracker then follows the
slivers, not the shape (``weights="cotangent"`` keeps them, clamped, for clean meshes).

``rotations_reference`` and ``energy_reference`` are the same formulas written vertex by vertex;
the tests hold the vectorised ones to them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

WEIGHTS = ("uniform", "cotangent")
ROTATION_CHUNK = 262144  # vertices per batched SVD


def unique_edges(faces: np.ndarray) -> np.ndarray:
    """The undirected edges ``[E, 2]`` (``i < j``) of a triangle list."""
    faces = np.asarray(faces, np.int64).reshape(-1, 3)
    if len(faces) == 0:
        return np.zeros((0, 2), np.int64)
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    lo, hi = e.min(1), e.max(1)
    span = int(hi.max()) + 1
    key = np.unique(lo * span + hi)  # one integer per edge: far cheaper than unique rows
    return np.stack([key // span, key % span], 1)


def cotangent_edge_weights(vertices: np.ndarray, faces: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Half the sum of the cotangents opposite each edge, clamped to ``[1e-3, 1e3]`` times the mean."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    n = len(v)
    acc = np.zeros(len(edges))
    key = edges[:, 0] * n + edges[:, 1]
    order = np.argsort(key)
    for a, b, c in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):  # the angle at c is opposite edge (a, b)
        u, w = v[f[:, a]] - v[f[:, c]], v[f[:, b]] - v[f[:, c]]
        cot = (u * w).sum(1) / np.maximum(np.linalg.norm(np.cross(u, w), axis=1), 1e-20)
        lo, hi = np.minimum(f[:, a], f[:, b]), np.maximum(f[:, a], f[:, b])
        idx = order[np.searchsorted(key[order], lo * n + hi)]
        np.add.at(acc, idx, 0.5 * cot)
    mean = np.mean(np.abs(acc)) or 1.0
    return np.clip(acc, 1e-3 * mean, 1e3 * mean)


class ArapSystem:
    """The template's ARAP operators and the factorised global-step matrices."""

    def __init__(self, rest: np.ndarray, faces: np.ndarray, weights: str = "uniform"):
        if weights not in WEIGHTS:
            raise ValueError(f"unknown ARAP edge weights {weights!r}; expected one of {WEIGHTS}")
        self.rest = np.asarray(rest, np.float64).reshape(-1, 3)
        self.faces = np.asarray(faces, np.int64).reshape(-1, 3)
        self.edges = unique_edges(self.faces)
        n, m = len(self.rest), len(self.edges)
        self.weights = (np.ones(m) if weights == "uniform"
                        else cotangent_edge_weights(self.rest, self.faces, self.edges))
        rows = np.repeat(np.arange(m), 2)
        self.incidence = sp.csr_matrix((np.tile([1.0, -1.0], m), (rows, self.edges.ravel())), shape=(m, n))
        self.laplacian = (self.incidence.T @ sp.diags(self.weights) @ self.incidence).tocsc()
        self.ends = abs(self.incidence.T).tocsr()  # vertex x edge, 1 at both ends
        self.rest_edges = self.rest[self.edges[:, 0]] - self.rest[self.edges[:, 1]]  # p_i - p_j
        self._solvers: dict[float, object] = {}

    @property
    def num_vertices(self) -> int:
        """Vertices of the template."""
        return len(self.rest)

    def covariances(self, current: np.ndarray) -> np.ndarray:
        """``S_i = sum_j w_ij (p_i - p_j)(v_i - v_j)^T`` for every vertex, ``[N, 3, 3]``."""
        cur = np.asarray(current, np.float64)
        deformed = cur[self.edges[:, 0]] - cur[self.edges[:, 1]]
        outer = self.weights[:, None, None] * self.rest_edges[:, :, None] * deformed[:, None, :]
        # both ends of an edge see the same outer product (the two differences flip sign together)
        return (self.ends @ outer.reshape(-1, 9)).reshape(-1, 3, 3)

    def rotations(self, current: np.ndarray, start: np.ndarray | None = None, iterations: int = 3) -> np.ndarray:
        """The local step: ``R [N, 3, 3]``, each the rotation closest to ``S_i^T``. Without ``start``,
        exactly (batched SVD); with ``start`` (the previous step's rotations), by ``iterations`` of
        the warm-started fixed point of :func:`refine_rotations`, several times cheaper and
        robust where ``S_i`` is rank-deficient (a vertex in a flat region)."""
        cov = self.covariances(current)
        if start is not None:
            return refine_rotations(np.transpose(cov, (0, 2, 1)), start, iterations)
        n = self.num_vertices
        rot = np.empty((n, 3, 3))
        for lo in range(0, n, ROTATION_CHUNK):
            hi = min(lo + ROTATION_CHUNK, n)
            u, _, vt = np.linalg.svd(cov[lo:hi])
            r = np.transpose(vt, (0, 2, 1)) @ np.transpose(u, (0, 2, 1))  # V U^T
            flip = np.linalg.det(r) < 0
            if flip.any():  # reflection: negate the column of V with the smallest singular value
                u2 = u[flip].copy()
                u2[:, :, 2] *= -1
                r[flip] = np.transpose(vt[flip], (0, 2, 1)) @ np.transpose(u2, (0, 2, 1))
            rot[lo:hi] = r
        return rot

    def solver(self, lam: float):
        """The sparse LU factors of ``2 L + lam I`` (factorised once per ``lam``)."""
        key = float(lam)
        if key not in self._solvers:
            a = (2.0 * self.laplacian + key * sp.identity(self.num_vertices, format="csc")).tocsc()
            self._solvers[key] = spla.splu(a)
        return self._solvers[key]

    def global_step(self, rotations: np.ndarray, targets: np.ndarray, lam: float,
                    normals: np.ndarray | None = None, tangential: float = 0.1, start: np.ndarray | None = None,
                    iterations: int = 8, rest_scale: float = 1.0) -> np.ndarray:
        """The vertices minimising the energy for fixed ``rotations`` and data ``targets``.

        With ``normals`` (unit, per vertex), the data term is point-to-plane: ``lam`` weighs the
        offset along the normal and ``tangential * lam`` the rest, so vertices may slide along the
        surface where the shape wants them; solved by conjugate gradients from ``start``
        preconditioned with the factorised point-to-point matrix (``iterations`` steps).
        ``rest_scale`` scales the rest shape (a sequence whose object grows as a whole)."""
        r_sum = rotations[self.edges[:, 0]] + rotations[self.edges[:, 1]]
        r = (rest_scale * self.weights)[:, None] * np.einsum("eab,eb->ea", r_sum, self.rest_edges)
        targets = np.asarray(targets, np.float64)
        if normals is None:
            rhs = self.incidence.T @ r + lam * targets
            return self.solver(lam).solve(np.asfortranarray(rhs))
        lt, ln = tangential * lam, (1.0 - tangential) * lam

        def apply(x):
            return 2.0 * (self.laplacian @ x) + lt * x + ln * normals * (normals * x).sum(1, keepdims=True)

        rhs = self.incidence.T @ r + lt * targets + ln * normals * (normals * targets).sum(1, keepdims=True)
        lu = self.solver(lam)
        x = np.array(start if start is not None else targets, np.float64)
        res = rhs - apply(x)
        z = lu.solve(np.asfortranarray(res))
        p = z.copy()
        rz = float((res * z).sum())
        for _ in range(iterations):
            ap = apply(p)
            alpha = rz / max(float((p * ap).sum()), 1e-300)
            x += alpha * p
            res -= alpha * ap
            z = lu.solve(np.asfortranarray(res))
            rz_new = float((res * z).sum())
            if rz_new <= 1e-20 * max(abs(rz), 1e-300):
                break
            p = z + (rz_new / rz) * p
            rz = rz_new
        return x

    def energy(self, current: np.ndarray, rotations: np.ndarray, rest_scale: float = 1.0) -> np.ndarray:
        """Each vertex's share of the ARAP energy (its outgoing half-edges), ``[N]``, against the
        rest shape scaled by ``rest_scale``."""
        cur = np.asarray(current, np.float64)
        deformed = cur[self.edges[:, 0]] - cur[self.edges[:, 1]]
        rest = rest_scale * self.rest_edges
        res_i = deformed - np.einsum("eab,eb->ea", rotations[self.edges[:, 0]], rest)
        res_j = -deformed + np.einsum("eab,eb->ea", rotations[self.edges[:, 1]], rest)
        out = np.zeros(self.num_vertices)
        np.add.at(out, self.edges[:, 0], self.weights * (res_i ** 2).sum(1))
        np.add.at(out, self.edges[:, 1], self.weights * (res_j ** 2).sum(1))
        return out


def refine_rotations(target: np.ndarray, start: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Rotations closer to maximising ``trace(R^T A)`` for each ``A`` in ``target [N, 3, 3]``,
    from ``start`` (Mueller et al. 2016, "A Robust Method to Extract the Rotational Part of
    Deformations"): each step turns ``R`` about ``sum_k r_k x a_k / |sum_k r_k . a_k|`` (columns
    ``r_k`` of ``R``, ``a_k`` of ``A``), the torque that aligns the two frames."""
    rot = np.array(start, np.float64, copy=True)
    for _ in range(iterations):
        omega = np.cross(rot, target, axis=1).sum(2)  # sum over columns k of r_k x a_k
        omega /= (np.abs(np.einsum("nij,nij->n", rot, target)) + 1e-12)[:, None]
        angle = np.linalg.norm(omega, axis=1)
        axis = omega / np.maximum(angle, 1e-300)[:, None]
        c, s = np.cos(angle), np.sin(angle)
        x, y, z = axis[:, 0], axis[:, 1], axis[:, 2]
        turn = np.empty_like(rot)  # Rodrigues' formula
        turn[:, 0, 0], turn[:, 0, 1], turn[:, 0, 2] = c + x * x * (1 - c), x * y * (1 - c) - z * s, x * z * (1 - c) + y * s
        turn[:, 1, 0], turn[:, 1, 1], turn[:, 1, 2] = y * x * (1 - c) + z * s, c + y * y * (1 - c), y * z * (1 - c) - x * s
        turn[:, 2, 0], turn[:, 2, 1], turn[:, 2, 2] = z * x * (1 - c) - y * s, z * y * (1 - c) + x * s, c + z * z * (1 - c)
        rot = turn @ rot
    return rot


# ----------------------------------------------------------------------------------------------
# References: the same formulas, one vertex at a time
# ----------------------------------------------------------------------------------------------

def _neighbours(system: ArapSystem) -> list[list[tuple[int, float]]]:
    nbrs: list[list[tuple[int, float]]] = [[] for _ in range(system.num_vertices)]
    for (i, j), w in zip(system.edges.tolist(), system.weights.tolist()):
        nbrs[i].append((j, w))
        nbrs[j].append((i, w))
    return nbrs


def rotations_reference(system: ArapSystem, current: np.ndarray) -> np.ndarray:
    """:meth:`ArapSystem.rotations`, vertex by vertex."""
    p, v = system.rest, np.asarray(current, np.float64)
    out = np.empty((system.num_vertices, 3, 3))
    for i, nbrs in enumerate(_neighbours(system)):
        s = np.zeros((3, 3))
        for j, w in nbrs:
            s += w * np.outer(p[i] - p[j], v[i] - v[j])
        u, _, vt = np.linalg.svd(s)
        r = vt.T @ u.T
        if np.linalg.det(r) < 0:
            u[:, 2] *= -1
            r = vt.T @ u.T
        out[i] = r
    return out


def energy_reference(system: ArapSystem, current: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """:meth:`ArapSystem.energy`, vertex by vertex."""
    p, v = system.rest, np.asarray(current, np.float64)
    out = np.zeros(system.num_vertices)
    for i, nbrs in enumerate(_neighbours(system)):
        for j, w in nbrs:
            out[i] += w * float(np.sum((v[i] - v[j] - rotations[i] @ (p[i] - p[j])) ** 2))
    return out


def global_step_reference(system: ArapSystem, rotations: np.ndarray, targets: np.ndarray, lam: float) -> np.ndarray:
    """:meth:`ArapSystem.global_step` as a dense least-squares problem over the stacked residuals
    (small meshes only)."""
    n = system.num_vertices
    rows, rhs = [], []
    for (i, j), w in zip(system.edges.tolist(), system.weights.tolist()):
        e = system.rest[i] - system.rest[j]
        for a, b, r in ((i, j, rotations[i]), (j, i, rotations[j])):
            row = np.zeros(n)
            row[a], row[b] = np.sqrt(w), -np.sqrt(w)
            rows.append(row)
            rhs.append(np.sqrt(w) * (r @ (e if a == i else -e)))
    for i in range(n):
        row = np.zeros(n)
        row[i] = np.sqrt(lam)
        rows.append(row)
        rhs.append(np.sqrt(lam) * np.asarray(targets[i], np.float64))
    sol, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    return sol
