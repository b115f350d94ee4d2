"""Global alignment: the best similarity transform between point pairs (Umeyama 1991) and a
trimmed, two-way ICP that finds one frame's rigid pose from the previous frame's.

Each ICP step pairs every template sample with its closest target vertex and every target sample with its closest template sample, drops the worst pairs
(a part that moved, a part that is not in both) and solves the pairs in closed form.
"""

from __future__ import annotations

import numpy as np
from .closest import SurfaceIndex



def similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None,
               scale: bool = False) -> tuple[float, np.ndarray, np.ndarray]:
    """``(s, R, t)`` minimising ``sum_k w_k |s R src_k + t - dst_k|^2`` (Umeyama 1991) with ``R`` a
    rotation (reflections excluded) and ``s`` one uniform scale (1 unless ``scale``)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    if len(src) != len(dst) or len(w) != len(src):
        raise ValueError(f"point pairs must match: {len(src)} sources, {len(dst)} targets, {len(w)} weights")
    total = w.sum()
    if not total > 0:
        return 1.0, np.eye(3), np.zeros(3)
    w = w / total
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    cov = (xd * w[:, None]).T @ xs  # sum_k w_k dst_k src_k^T
    u, sigma, vt = np.linalg.svd(cov)
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0
    rot = (u * d) @ vt
    s = 1.0
    if scale:
        var = (w * (xs * xs).sum(1)).sum()
        s = float((sigma * d).sum() / var) if var > 0 else 1.0
    return s, rot, mu_d - s * rot @ mu_s


def similarity_transform(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None,
                         scale: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """:func:`similarity` as ``(A, t)`` with ``A = s R``: ``A src + t ~ dst``."""
    s, rot, t = similarity(src, dst, weights, scale)
    return s * rot, t


def trimmed(distances: np.ndarray, keep: float) -> np.ndarray:
    """Mask of the ``keep`` fraction of pairs with the smallest distances (at least 3)."""
    n = len(distances)
    k = min(n, max(3, int(np.ceil(keep * n))))
    if k >= n:
        return np.ones(n, bool)
    cut = np.partition(distances, k - 1)[k - 1]
    return distances <= cut


DAMPING = 1e-3  # of the mean diagonal of the normal equations


def rodrigues(omega: np.ndarray) -> np.ndarray:
    """The rotation by ``|omega|`` radians about ``omega``."""
    angle = float(np.linalg.norm(omega))
    if angle < 1e-12:
        return np.eye(3)
    k = omega / angle
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def icp(template: np.ndarray, target: SurfaceIndex, iterations: int = 20, keep: float = 0.9,
        scale: bool = False, tolerance: float = 1e-6,
        init: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The transform ``(A, t)`` that best lays the ``template`` points onto the ``target`` surface,
    and the mean squared distance of ALL the points to the surface at the end and at ``init`` (all,
    not the kept pairs: a fit that is good only because it dropped a part is not good): trimmed point-to-plane
    ICP (Chen & Medioni) from ``init`` (default the identity) on exact closest points, each step
    a linearised least-squares solve for a small rotation, translation (and scale). Unlike pairing
    with the target's vertices it has no floor at the vertex spacing, so a rigid motion is found
    exactly and nothing slides along the surface from frame to frame."""
    src = np.asarray(template, np.float64)
    a, t = (np.eye(3), np.zeros(3)) if init is None else (np.asarray(init[0], np.float64), np.asarray(init[1], np.float64))
    err = first = np.inf
    for _ in range(iterations):
        moved = src @ a.T + t
        dist, face, closest = target.query(moved)
        normals = target.face_normals[face]
        kept = trimmed(dist, keep)
        p, q, n = moved[kept], closest[kept], normals[kept]
        residual = ((q - p) * n).sum(1)
        previous, err = err, float(np.mean(residual ** 2))
        if first == np.inf:
            first = float(np.mean(dist ** 2))
        if previous - err < tolerance * max(previous, 1e-12) and previous < np.inf:
            break
        center = p.mean(0)
        rows = [np.cross(p - center, n), n] + ([((p - center) * n).sum(1, keepdims=True)] if scale else [])
        system = np.concatenate(rows, 1)
        # damped: a motion the surface does not pin down (a sphere's spin, a cylinder's slide along
        # its axis) stays where it is instead of following the noise
        normal = system.T @ system
        normal += DAMPING * np.trace(normal) / len(normal) * np.eye(len(normal))
        step = np.linalg.solve(normal, system.T @ residual)
        rot = rodrigues(step[:3])
        grow = 1.0 + (step[6] if scale else 0.0)
        # p -> grow * rot (p - center) + center + step[3:6]
        a = grow * rot @ a
        t = grow * rot @ (t - center) + center + step[3:6]
    dist, _, _ = target.query(src @ a.T + t)
    return a, t, float(np.mean(dist ** 2)), first
