"""Global alignment: the best similarity transform between point pairs (Umeyama 1991) and a
trimmed, two-way ICP that finds one frame's rigid pose from the previous frame's.

Each ICP step pairs every template sample with its closest target vertex and every target sample with its closest template sample, drops the worst pairs
(a part that moved, a part that is not in both) and solves the pairs in closed form.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree



def similarity_transform(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None,
                         scale: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(A [3, 3], t [3])`` minimising ``sum_k w_k |A src_k + t - dst_k|^2`` with ``A`` a rotation
    (times one uniform scale when ``scale``); reflections are excluded."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    if len(src) != len(dst) or len(w) != len(src):
        raise ValueError(f"point pairs must match: {len(src)} sources, {len(dst)} targets, {len(w)} weights")
    total = w.sum()
    if len(src) < 3 or not total > 0:
        return np.eye(3), np.zeros(3)
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
    a = s * rot
    return a, mu_d - a @ mu_s


def trimmed(distances: np.ndarray, keep: float) -> np.ndarray:
    """Mask of the ``keep`` fraction of pairs with the smallest distances (at least 3)."""
    n = len(distances)
    k = min(n, max(3, int(np.ceil(keep * n))))
    if k >= n:
        return np.ones(n, bool)
    cut = np.partition(distances, k - 1)[k - 1]
    return distances <= cut


def icp(template: np.ndarray, target: cKDTree, target_samples: np.ndarray, iterations: int = 30,
        keep: float = 0.9, scale: bool = False, tolerance: float = 1e-6,
        init: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """The transform ``(A, t)`` that best lays the ``template`` points onto the ``target`` points
    (two-way, trimmed point-to-point ICP from ``init``, default the identity), and its final mean
    squared pair distance. ``target`` is a KD-tree of dense points on the target surface (its
    vertices); ``target_samples`` a subset, paired with their closest template point in the reverse
    direction. Point-to-point on dense vertices is as good as point-to-surface for the global
    motion and several times cheaper; the non-rigid fit that follows uses exact closest points."""
    src = np.asarray(template, np.float64)
    tree = cKDTree(src)
    a, t = (np.eye(3), np.zeros(3)) if init is None else (np.asarray(init[0], np.float64), np.asarray(init[1], np.float64))
    previous = err = np.inf
    for _ in range(iterations):
        moved = src @ a.T + t
        d_fwd, nearest_target = target.query(moved)
        closest = target.data[nearest_target]
        # reverse pairs: the template point whose current position is closest to a target sample
        inv = np.linalg.inv(a)
        d_rev, nearest = tree.query((target_samples - t) @ inv.T)
        d_rev = d_rev * abs(np.linalg.det(a)) ** (1 / 3)
        keep_f, keep_r = trimmed(d_fwd, keep), trimmed(d_rev, keep)
        pairs_src = np.concatenate([src[keep_f], src[nearest[keep_r]]])
        pairs_dst = np.concatenate([closest[keep_f], target_samples[keep_r]])
        err = float(np.mean(d_fwd[keep_f] ** 2) + np.mean(d_rev[keep_r] ** 2))
        if previous - err < tolerance * max(previous, 1e-12):
            break
        a, t = similarity_transform(pairs_src, pairs_dst, scale=scale)
        previous = err
    return a, t, err
