"""Track one template mesh through a sequence of independent per-frame meshes.

For each frame, starting from the previous frame's tracked vertices:

1. global alignment: trimmed two-way ICP gives the rigid (or similarity) motion of the whole
   shape (:mod:`.rigid`);
2. non-rigid fit: as-rigid-as-possible deformation of the template (:mod:`.arap`) pulled onto
   the frame's surface by two-way closest points (each tracked vertex to its closest point on the
   frame, each frame sample to its closest tracked vertex), over a schedule of data weights from
   stiff to loose, so the shape moves as a whole first and fits details last;
3. honest quality (:mod:`.quality`): fit, coverage, distortion and topology; a frame that fails
   is flagged with its reasons, never passed off as tracked.

After a flagged frame, ``on_failure`` decides: ``continue`` (default) keeps deforming the same
template, so the output stays one mesh with flagged frames marked; ``retemplate`` starts a new
segment whose template is the flagged frame's own mesh (outputs then hold one mesh per segment).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from scipy.spatial import cKDTree

from .arap import ArapSystem, unique_edges
from .closest import SurfaceIndex
from .quality import Topology, box_diagonal, edge_distortion, topology, vertex_normals
from .rigid import icp, similarity_transform

ON_FAILURE = ("continue", "retemplate")
MAX_FIRST_TURN = 1.0    # radians ICP may turn the shape in a frame with no motion history
MAX_TURN_CHANGE = 0.25  # radians ICP's turn may differ from the last one (plus half the last one)
ALIGNMENTS = ("rigid", "similarity", "none")


class TrackingError(ValueError):
    """The meshes cannot be tracked (no frames, an empty template, a bad option)."""


@dataclass(frozen=True)
class TrackingOptions:
    """How a sequence is tracked (defaults: what the benchmark in ``benchmarks/tracking.py`` chose)."""

    template: int = 0                  # frame whose mesh is deformed through the sequence
    alignment: str = "similarity"      # per-frame global motion: similarity (rigid + one scale), rigid or none
    rigid_threshold: float = 0.2       # ICP's motion is taken when it leaves at most this share of the mismatch
    icp_iterations: int = 20
    icp_samples: int = 1000            # template points the ICP uses (a random, fixed subset)
    data_weights: tuple[float, ...] = (1.0, 8.0)  # lam per stage, stiff -> loose
    iterations_per_weight: int = 3
    reverse_weight: float = 1.0        # frame -> tracked pairs, against tracked -> frame ones
    tangential_weight: float = 0.02    # data weight along the surface, against across it (1: point-to-point)
    cg_iterations: int = 4             # conjugate-gradient steps of a point-to-plane global step
    extrapolate: float = 1.0           # also try each frame from the previous motion continued (predict); 0: not
    target_samples: int = 20000        # frame surface points for the reverse pairs (its vertices, thinned)
    normal_agreement: float = 0.0      # pairs whose normals' cosine is below this are dropped
    max_fit: float = 0.01              # flag a frame whose fit exceeds this share of the template's box diagonal
    max_uncovered: float = 0.02        # ... or whose surface is this share farther than 2 max_fit away
    check_topology: bool = True        # ... or whose components / genera differ from the template's
    on_failure: str = "continue"
    weights: str = "uniform"
    seed: int = 0

    def check(self, num_frames: int) -> None:
        """``TrackingError`` naming the first option out of range."""
        if not -num_frames <= self.template < num_frames:
            raise TrackingError(f"template frame {self.template} is not one of the {num_frames} frames")
        if self.alignment not in ALIGNMENTS:
            raise TrackingError(f"alignment must be one of {ALIGNMENTS}, got {self.alignment!r}")
        if self.weights not in ("uniform", "cotangent"):
            raise TrackingError(f"weights must be uniform or cotangent, got {self.weights!r}")
        if not (np.isfinite(self.normal_agreement) and -1 <= self.normal_agreement <= 1):
            raise TrackingError(f"normal_agreement must be a cosine in [-1, 1], got {self.normal_agreement}")
        if self.on_failure not in ON_FAILURE:
            raise TrackingError(f"on_failure must be one of {ON_FAILURE}, got {self.on_failure!r}")
        if not self.data_weights or not all(np.isfinite(w) and w > 0 for w in self.data_weights):
            raise TrackingError(f"data_weights must be positive numbers, got {self.data_weights}")
        for name in ("icp_iterations", "icp_samples", "iterations_per_weight", "target_samples", "cg_iterations"):
            if getattr(self, name) < 1:
                raise TrackingError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (np.isfinite(self.tangential_weight) and 0 < self.tangential_weight <= 1):
            raise TrackingError(f"tangential_weight must be in (0, 1], got {self.tangential_weight}")
        for name in ("reverse_weight", "max_fit", "max_uncovered", "extrapolate", "rigid_threshold"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise TrackingError(f"{name} must be a finite number >= 0, got {value}")


@dataclass
class FrameTracking:
    """What tracking did to one frame and how well it went (distances in world units)."""

    frame: int
    segment: int
    fit: float | None              # mean of the two one-sided mean surface distances
    fit_to_frame: float | None     # tracked vertices -> the frame's surface
    fit_from_frame: float | None   # the frame's vertices -> the tracked surface
    uncovered: float | None        # share of the frame's vertices not reached by the tracked surface
    distortion: float | None       # mean |edge length / template edge length - 1|
    arap_energy: float | None      # relative to the template's sum of w |e|^2
    topology: str
    flagged: bool
    reasons: list[str]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, numbers rounded."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, float):
                out[k] = round(v, 6)
        return out


@dataclass
class Segment:
    """Frames ``start..end`` (inclusive) deformed from frame ``template``'s mesh; one face list."""

    template: int
    start: int
    end: int
    faces: np.ndarray


@dataclass
class TrackedSequence:
    """The tracked vertices of every frame, the segments that own their faces, and per-frame quality."""

    vertices: list[np.ndarray]
    segments: list[Segment]
    frames: list[FrameTracking]
    options: TrackingOptions
    seconds: float = 0.0

    def faces_of(self, frame: int) -> np.ndarray:
        """The face list that frame ``frame``'s tracked vertices use."""
        for seg in self.segments:
            if seg.start <= frame <= seg.end:
                return seg.faces
        raise IndexError(frame)

    def meshes(self) -> list:
        """One ``trimesh.Trimesh`` per frame; frames of a segment share one face array."""
        import trimesh

        return [trimesh.Trimesh(v.copy(), self.faces_of(i).copy(), process=False) for i, v in enumerate(self.vertices)]

    @property
    def flagged(self) -> list[int]:
        """Frames whose tracking failed a check (see each frame's ``reasons``)."""
        return [f.frame for f in self.frames if f.flagged]

    def report(self) -> dict[str, Any]:
        """The ``tracking`` entry of a manifest."""
        fits = [f.fit for f in self.frames if f.fit is not None]
        return {
            "topology": "consistent",
            "template": self.segments[0].template,
            "segments": [{"template": s.template, "start": s.start, "end": s.end, "vertices":
                          int(len(self.vertices[s.start])), "faces": int(len(s.faces))} for s in self.segments],
            "flagged": self.flagged,
            "mean_fit": round(float(np.mean(fits)), 6) if fits else None,
            "seconds": round(self.seconds, 4),
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.options).items()},
            "frames": [f.as_dict() for f in self.frames],
        }


def _as_arrays(mesh) -> tuple[np.ndarray, np.ndarray]:
    v, f = mesh if isinstance(mesh, tuple) else (mesh.vertices, mesh.faces)
    # plain arrays: trimesh's TrackedArray re-hashes on every in-place sort
    v = np.array(v, np.float64).view(np.ndarray)
    f = np.array(f, np.int64).view(np.ndarray)
    if v.size == 0:
        v = v.reshape(0, 3)
    if f.size == 0:
        f = f.reshape(0, 3)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must be [N, 3], got shape {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must be triangles [M, 3], got shape {f.shape}")
    return v, f


def check_meshes(meshes: Sequence) -> list[tuple[np.ndarray, np.ndarray]]:
    """The frames as ``(vertices, faces)`` arrays, or ``TrackingError`` naming what is wrong."""
    if isinstance(meshes, (str, bytes)) or not hasattr(meshes, "__len__"):
        raise TrackingError("meshes must be a sequence of meshes (trimesh.Trimesh or (vertices, faces))")
    if len(meshes) == 0:
        raise TrackingError("no frames to track")
    if len(meshes) == 1:
        raise TrackingError("one frame: tracking needs at least 2 frames")
    out = []
    for i, mesh in enumerate(meshes):
        try:
            v, f = _as_arrays(mesh)
        except (TypeError, ValueError, AttributeError) as exc:
            raise TrackingError(f"frame {i} is not a triangle mesh ({type(mesh).__name__}): {exc}") from None
        if len(f) and (f.min() < 0 or f.max() >= len(v)):
            raise TrackingError(f"frame {i}: face indices outside its {len(v)} vertices")
        if not np.isfinite(v).all():
            raise TrackingError(f"frame {i}: vertices are not all finite")
        out.append((v, f))
    return out


class _Fitter:
    """One template's ARAP system and the per-frame fitting against it."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, options: TrackingOptions):
        self.options = options
        self.faces = faces
        self.rest = vertices
        self.system = ArapSystem(vertices, faces, options.weights)
        self.topology = topology(vertices, faces)
        self.used = np.unique(faces)  # vertices on a face: stray points count in no distance
        self.diagonal = box_diagonal(vertices[self.used])
        rest_len = np.linalg.norm(self.system.rest_edges, axis=1)
        self.edge_length = float(rest_len.mean()) if len(rest_len) else 0.0
        self.rest_norm = float((self.system.weights * rest_len ** 2).sum() * 2) or 1.0
        rng = np.random.default_rng(options.seed)
        self.icp_index = rng.choice(self.used, size=min(len(self.used), options.icp_samples), replace=False)
        self.last_energy = 0.0  # relative ARAP energy of the frame fitted last
        self.scale = 1.0  # of the rest shape in the frame fitted last (similarity alignment)

    def _pairs(self, x: np.ndarray, target: SurfaceIndex, samples: np.ndarray, sample_normals: np.ndarray,
               reject: float) -> tuple[np.ndarray, np.ndarray]:
        """Where each vertex should go: its closest point on the frame blended with the frame samples
        that chose it (pairs too far or facing away dropped; a vertex with none stays put), and the
        frame's normal at each vertex's closest point."""
        opts = self.options
        normals = vertex_normals(x, self.faces)
        dist, face, closest = target.query(x)
        ok = (dist <= reject) & ((normals * target.face_normals[face]).sum(1) >= opts.normal_agreement)
        num = np.where(ok[:, None], closest, x)
        den = np.ones(len(x))
        if opts.reverse_weight > 0:
            d_rev, nearest = cKDTree(x).query(samples)
            ok_r = (d_rev <= reject) & ((normals[nearest] * sample_normals).sum(1) >= opts.normal_agreement)
            chosen = nearest[ok_r]
            for k in range(3):
                num[:, k] += opts.reverse_weight * np.bincount(chosen, samples[ok_r, k], len(x))
            den += opts.reverse_weight * np.bincount(chosen, minlength=len(x))
        return num / den[:, None], target.face_normals[face]

    def fit(self, starts: list[np.ndarray], frame_v: np.ndarray, frame_f: np.ndarray,
            motion: tuple[np.ndarray, np.ndarray] | None = None, rotations: np.ndarray | None = None,
            turn: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, SurfaceIndex]:
        """The template's vertices laid onto this frame. ``starts`` are the previous frame's vertices,
        last, and (first) their prediction (:func:`predict`); the start is the previous vertices
        moved by ICP (from rest, and from ``motion``, the previous frame's global motion) when that
        motion explains the mismatch (``rigid_threshold``), else the first start as it is. Returns
        the vertices, this frame's global motion ``(A, t)``, the vertices' rotations
        (``rotations``: the previous frame's, a warm start) and the frame's closest-point index.
        ``turn`` is the last frame-to-frame rotation: ICP's rotation may not stray far from it."""
        opts = self.options
        target = SurfaceIndex(frame_v, frame_f)
        on_faces = np.unique(frame_f)  # the frame's vertices that lie on its surface
        if len(on_faces) > opts.target_samples:
            on_faces = on_faces[np.random.default_rng(opts.seed).choice(len(on_faces), opts.target_samples,
                                                                          replace=False)]
        samples = frame_v[on_faces]
        sample_normals = vertex_normals(frame_v, frame_f)[on_faces]
        x = starts[0]
        a, t = np.eye(3), np.zeros(3)
        if opts.alignment == "none" and len(starts) > 1:  # the start whose points lie closer to the frame
            x = min(starts, key=lambda s: float(np.mean(target.closest(s[self.icp_index])[0] ** 2)))
        if opts.alignment != "none":
            # the previous frame's motion again (constant velocity) first; from rest too when that
            # guess ends poorly (a change of direction)
            guesses = [(np.eye(3), np.zeros(3))]
            if motion is not None and (np.abs(motion[0] - np.eye(3)).max() > 0.02 or
                                       np.linalg.norm(motion[1]) > self.edge_length):
                guesses.insert(0, motion)  # a real motion: try it first
            # the previous frame's pose moved rigidly (ICP) when that explains nearly all of the
            # mismatch (a rigid motion); else the motion continued (predict) without ICP, which
            # would only turn or slide a shape that deforms in place (squash, bend, swinging limbs)
            best = None
            for guess in guesses:
                a, t, err, before = icp(starts[-1][self.icp_index], target, opts.icp_iterations,
                                        scale=opts.alignment == "similarity", init=guess)
                if best is None or err < best[2]:
                    best = (a, t, err, before)
            a, t, err, before = best
            x = starts[-1] @ a.T + t
            # nor a sudden turn far from the last one: on a near-symmetric shape (a straight bar) a
            # spin about its axis explains the data as well as the small true motion
            allowed = MAX_FIRST_TURN if turn is None else MAX_TURN_CHANGE + 0.5 * rotation_angle(turn)
            if err > opts.rigid_threshold * before or rotation_angle(rotation_part(a) @ (turn if turn is not None
                                                                                       else np.eye(3)).T) > allowed:
                a, t, x = np.eye(3), np.zeros(3), starts[0]
        reject = max(0.1 * self.diagonal, 4 * self.edge_length)
        # the template's size in this frame: the accepted global motions' scales, run along the segment
        scale = self.scale * (float(np.cbrt(abs(np.linalg.det(a)))) if opts.alignment == "similarity" else 1.0)
        rot = None
        if rotations is not None:  # last frame's rotations, turned by this frame's global motion
            rot = rotation_part(a) @ rotations

        def deform(x, rot, scale=scale):
            return self._deform(x, rot, target, samples, sample_normals, reject, scale)

        x, rot = deform(x, rot)
        energy = self.relative_energy(x, rot, scale)
        if not np.allclose(a, np.eye(3)) and energy > 2 * self.last_energy + 1e-4 and len(starts) > 1:
            # the accepted rigid motion bent the shape out of the way: a symmetric shape's false
            # turn (a near-straight bar spun about its axis). Fit from the prediction too; keep
            # the less distorted.
            x2, rot2 = deform(starts[0], rotations, self.scale)
            energy2 = self.relative_energy(x2, rot2, self.scale)
            if energy2 < energy:
                x, rot, energy, a, t, scale = x2, rot2, energy2, np.eye(3), np.zeros(3), self.scale
        self.last_energy, self.scale = energy, scale
        return x, a, t, rot, target

    def _deform(self, x: np.ndarray, rot: np.ndarray | None, target: SurfaceIndex, samples: np.ndarray,
                sample_normals: np.ndarray, reject: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """The as-rigid-as-possible fit from ``x`` (stiff to loose); returns vertices and rotations."""
        opts = self.options
        for lam in opts.data_weights:
            for _ in range(opts.iterations_per_weight):
                goal, normals = self._pairs(x, target, samples, sample_normals, reject)
                rot = self.system.rotations(x, rot, iterations=2)
                if opts.tangential_weight < 1:  # point-to-plane: free to slide where the shape wants
                    x = self.system.global_step(rot, goal, lam, normals, opts.tangential_weight, x,
                                                opts.cg_iterations, scale)
                else:
                    x = self.system.global_step(rot, goal, lam, rest_scale=scale)
        return x, rot

    def relative_energy(self, x: np.ndarray, rot: np.ndarray, scale: float = 1.0) -> float:
        """ARAP energy of ``x`` with rotations ``rot`` against the template scaled by ``scale``,
        relative to the template's ``sum w |e|^2``."""
        return float(self.system.energy(x, rot, scale).sum() / self.rest_norm)

    def assess(self, index: int, segment: int, x: np.ndarray, frame_v: np.ndarray, frame_f: np.ndarray,
               seconds: float, frame_index: SurfaceIndex | None = None,
               rotations: np.ndarray | None = None) -> FrameTracking:
        """Fit, coverage, distortion and topology of tracked vertices ``x`` against the frame."""
        opts = self.options
        frame_topology = topology(frame_v, frame_f)
        reasons = []
        if len(frame_f) == 0:
            return FrameTracking(index, segment, None, None, None, None, edge_distortion(self.rest, x, self.system.edges),
                                 None, frame_topology.describe(), True, ["the frame has no surface"], seconds)
        d_to, _ = (frame_index or SurfaceIndex(frame_v, frame_f)).closest(x[self.used])
        d_from, _ = SurfaceIndex(x, self.faces).closest(frame_v[np.unique(frame_f)])
        fit = 0.5 * (float(d_to.mean()) + float(d_from.mean()))
        tol = opts.max_fit * self.diagonal
        uncovered = float(np.mean(d_from > 2 * tol))
        vanished = float(np.mean(d_to > 2 * tol))
        energy = self.relative_energy(x, self.system.rotations(x, rotations))
        if fit > tol:
            reasons.append(f"fit {fit:.4f} exceeds {tol:.4f} ({opts.max_fit:g} of the template's box diagonal)")
        if uncovered > opts.max_uncovered:
            reasons.append(f"{uncovered:.1%} of the frame's surface is not reached by the tracked mesh "
                           "(a part appeared or split off)")
        if vanished > opts.max_uncovered:
            reasons.append(f"{vanished:.1%} of the tracked mesh lies off the frame's surface "
                           "(a part vanished or merged)")
        if opts.check_topology and frame_topology != self.topology:
            reasons.append(f"topology changed: template {self.topology.describe()}, "
                           f"frame {frame_topology.describe()}")
        return FrameTracking(index, segment, fit, float(d_to.mean()), float(d_from.mean()), uncovered,
                             edge_distortion(self.rest, x, self.system.edges), energy, frame_topology.describe(),
                             bool(reasons), reasons, seconds)


def rotation_part(a: np.ndarray) -> np.ndarray:
    """The rotation of a similarity matrix ``s R`` (the closest rotation, by SVD)."""
    u, _, vt = np.linalg.svd(a)
    return u @ vt


def rotation_angle(rot: np.ndarray) -> float:
    """The angle in radians of a rotation matrix."""
    return float(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0)))


def predict(before: np.ndarray, now: np.ndarray, amount: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Where the vertices go next at constant velocity, in the object's own moving frame: the rigid
    motion from ``before`` to ``now`` once more, plus ``amount`` times the non-rigid change (a bend
    or twist goes on bending), turned with it; and that rigid motion's rotation. Exact for a steady
    rigid turn, where moving each vertex along its own straight line would shrink the shape."""
    a, b = similarity_transform(before, now)
    change = now - (before @ a.T + b)
    return now @ a.T + b + amount * (change @ a.T), a


MAX_VERTICES = 4_000_000  # per template: the sparse factorisations grow past memory beyond this


def check_trackable(meshes: Sequence, options: TrackingOptions = TrackingOptions()) -> list[tuple[np.ndarray, np.ndarray]]:
    """Everything :func:`track_meshes` refuses, checked without tracking: the frames as ``(vertices,
    faces)`` arrays, or ``TrackingError`` naming the problem."""
    frames = check_meshes(meshes)
    options.check(len(frames))
    template = options.template % len(frames)
    if len(frames[template][1]) == 0:
        raise TrackingError(f"the template frame {template} has no surface (no faces); choose another template")
    if len(frames[template][0]) > MAX_VERTICES:
        raise TrackingError(f"the template frame {template} has {len(frames[template][0])} vertices; tracking takes "
                            f"at most {MAX_VERTICES} (decode at a lower resolution)")
    return frames


def track_meshes(meshes: Sequence, options: TrackingOptions = TrackingOptions(),
                 progress: Callable[[int, int], None] | None = None) -> TrackedSequence:
    """Deform one template through ``meshes`` (``trimesh.Trimesh`` or ``(vertices, faces)`` per
    frame) so that every frame has the template's faces. ``progress(done, total)`` after each frame."""
    start_time = time.perf_counter()
    frames = check_trackable(meshes, options)
    n = len(frames)
    template = options.template % n
    vertices: list[np.ndarray | None] = [None] * n
    reports: list[FrameTracking | None] = [None] * n
    segments: list[Segment] = []
    done = 0

    def run(order: list[int], fitter: _Fitter, segment: int, seg: Segment) -> None:
        nonlocal done
        x = fitter.rest
        fitter.last_energy, fitter.scale = 0.0, 1.0  # each run (forward, backward) starts at the template
        motion = index = previous = None
        rot = np.broadcast_to(np.eye(3), (len(x), 3, 3))
        for i in order:
            t0 = time.perf_counter()
            v, f = frames[i]
            if i == seg.template:
                x = fitter.rest.copy()
            elif len(f):
                # also from constant velocity: the motion and the deformation go on as they went
                turn = None
                starts = [x]
                if previous is not None and options.extrapolate:
                    ahead, turn = predict(previous, x, options.extrapolate)
                    starts = [ahead, x]
                previous = x
                x, a, t, rot, index = fitter.fit(starts, v, f, motion, rot, turn)
                motion = (a, t)
            vertices[i] = x.copy() if len(f) == 0 else x  # an empty frame holds the last shape, its own copy
            done += 1
            if pool is not None:  # nothing waits for the verdict: assess on the other core meanwhile
                pending.append((i, pool.submit(fitter.assess, i, segment, x, v, f, time.perf_counter() - t0,
                                               index, rot)))
                if progress is not None:
                    progress(done, n)
                continue
            rep = reports[i] = fitter.assess(i, segment, x, v, f, time.perf_counter() - t0, index, rot)
            if progress is not None:
                progress(done, n)
            if rep.flagged and options.on_failure == "retemplate" and i != seg.template and len(f) and \
                    order[-1] != i and order == sorted(order):
                # the rest of the sequence is tracked from this frame's own mesh
                seg.end = i - 1
                done -= 1  # frame i is done again, as the new segment's template
                new = Segment(i, i, order[-1], f)
                segments.append(new)
                run(order[order.index(i):], _Fitter(v, f, options), len(segments) - 1, new)
                return

    v0, f0 = frames[template]
    first = Segment(template, 0, n - 1, f0)
    segments.append(first)
    fitter = _Fitter(v0, f0, options)
    pending: list = []
    pool = ThreadPoolExecutor(1) if options.on_failure == "continue" else None
    try:
        run(list(range(template, n)), fitter, 0, first)
        if template > 0:  # backwards from the template to frame 0, with the same template
            run(list(range(template - 1, -1, -1)), fitter, 0, first)
        for i, future in pending:
            reports[i] = future.result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    segments.sort(key=lambda s: s.start)
    return TrackedSequence([np.asarray(v) for v in vertices], segments, list(reports), options,
                           time.perf_counter() - start_time)
