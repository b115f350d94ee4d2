"""Analytic checks of sdk.evaluation.metrics and the s4d-eval CLI (seeded: each test's seed is fixed and in
its failure message, so a failure reproduces)."""

import json
import zlib

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from sdk.cli.evaluate import app
from sdk.evaluation.metrics import (Registration, chamfer_distance, evaluate_sequence, fscore, register, sample_surface,
                         temporal_jitter, voxel_iou, voxelize)


@pytest.fixture
def seed(request):
    """A fixed seed per test (derived from its name): reproducible runs, different data per test."""
    return zlib.crc32(request.node.name.encode())


def sphere(radius=0.5, center=(0, 0, 0)):
    m = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    m.apply_translation(center)
    return m


def lopsided():
    """An asymmetric shape (no rotational symmetry), so a registration is unique."""
    a = trimesh.creation.box((0.8, 0.5, 0.3))
    b = trimesh.creation.box((0.2, 0.2, 0.2))
    b.apply_translation((0.35, 0.3, 0.2))
    return trimesh.util.concatenate([a, b])


def test_sample_surface_deterministic_and_on_surface(seed):
    m = sphere(0.7)
    a, b = sample_surface(m, 2000, seed), sample_surface(m, 2000, seed)
    assert a.shape == (2000, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, sample_surface(m, 2000, seed + 1))
    r = np.linalg.norm(a, axis=1)
    assert np.all(r <= 0.7 + 1e-9) and np.all(r > 0.69), seed
    # area weighting: a box of 1 x 1 x 0.01 puts ~all points on the two big faces
    thin = sample_surface(trimesh.creation.box((1, 1, 0.01)), 4000, seed)
    assert np.mean(np.abs(np.abs(thin[:, 2]) - 0.005) < 1e-9) > 0.95, seed
    with pytest.raises(ValueError, match="without \\(finite\\) surface area"):
        sample_surface(trimesh.Trimesh(), 10, seed)


def test_chamfer_identity_and_concentric_spheres(seed):
    rng = np.random.default_rng(seed)
    r1 = rng.uniform(0.3, 0.6)
    r2 = r1 + rng.uniform(0.05, 0.3)
    n = 20_000
    s1 = sample_surface(sphere(r1), n, rng)
    assert chamfer_distance(s1, s1) == 0.0
    # the same sphere sampled independently: only the sampling floor ~0.5*sqrt(area/n) remains
    floor = 0.5 * np.sqrt(4 * np.pi * r1 ** 2 / n)
    assert chamfer_distance(s1, sample_surface(sphere(r1), n, rng)) < 1.5 * floor, seed
    cd = chamfer_distance(s1, sample_surface(sphere(r2), n, rng))
    assert abs(cd - (r2 - r1)) < 0.005, (seed, cd, r2 - r1)  # tolerance: facets + sampling
    sq = chamfer_distance(s1, sample_surface(sphere(r2), n, rng), squared=True)
    assert abs(sq - (r2 - r1) ** 2) < 0.005 * 2 * (r2 - r1) + 1e-4, seed


def test_fscore_identical_and_far(seed):
    rng = np.random.default_rng(seed)
    pts = sample_surface(sphere(0.5), 5000, rng)
    assert fscore(pts, pts) == (1.0, 1.0, 1.0)
    far = pts + np.array([2.0, 0.0, 0.0])  # spheres of radius 0.5, 1.0 apart
    assert fscore(pts, far, threshold=0.01) == (0.0, 0.0, 0.0)
    # one-sided: a prediction covering half the GT is precise but has recall ~0.5
    half = pts[pts[:, 0] > 0]
    p, r, f = fscore(half, pts)
    assert p == 1.0 and 0.4 < r < 0.6 and abs(f - 2 * p * r / (p + r)) < 1e-12, seed
    with pytest.raises(ValueError, match="threshold must be > 0"):
        fscore(pts, pts, threshold=0)


def test_voxel_iou_sphere_and_half_overlapping_boxes(seed):
    rng = np.random.default_rng(seed)
    s = sphere(rng.uniform(0.3, 0.8), rng.uniform(-0.1, 0.1, 3))
    assert voxel_iou(s, s) == 1.0
    # volume of the voxelised sphere ~ the analytic one
    h = 2.02 / 64
    vol = voxelize(s, 64).sum() * h ** 3
    assert abs(vol / s.volume - 1) < 0.03, seed
    # two unit-ish boxes overlapping by half along x: IoU = 0.5 / 1.5 = 1/3
    e = rng.uniform(0.5, 0.9)
    off = rng.uniform(-0.1, 0.1, 3)
    a = trimesh.creation.box((e, e, e))
    a.apply_translation(off)
    b = a.copy()
    b.apply_translation((e / 2, 0, 0))
    assert abs(voxel_iou(a, b, resolution=64) - 1 / 3) < 0.03, seed
    # disjoint -> 0, empty vs empty -> 1
    c = a.copy()
    c.apply_translation((0, 0, 0.95))
    assert voxel_iou(a, c) == 0.0
    assert voxel_iou(trimesh.Trimesh(), trimesh.Trimesh()) == 1.0


@pytest.mark.parametrize("with_scale", [False, True])
def test_register_recovers_random_similarity(seed, with_scale):
    rng = np.random.default_rng(seed)
    gt = lopsided()
    R = Rotation.random(random_state=int(rng.integers(2 ** 31))).as_matrix()
    t = rng.uniform(-0.3, 0.3, 3)
    s = rng.uniform(0.6, 1.5) if with_scale else 1.0
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = s * R, t
    pred = gt.copy()
    pred.apply_transform(M)  # prediction = GT moved by M; the registration must undo it
    reg = register(sample_surface(pred, 5000, rng), sample_surface(gt, 5000, rng), with_scale=with_scale)
    assert isinstance(reg, Registration)
    composed = reg.matrix @ M
    angle = np.degrees(Rotation.from_matrix(composed[:3, :3] / np.cbrt(np.linalg.det(composed[:3, :3]))).magnitude())
    assert angle < 1.0, (seed, angle)
    assert np.linalg.norm(composed[:3, 3]) < 0.01, seed
    assert abs(reg.scale * s - 1) < 0.01, seed
    if not with_scale:
        assert reg.scale == 1.0


def moving_spheres(jitter_amp, rng, n=7):
    """A sphere moving smoothly along x, optionally with +-jitter_amp alternating along y."""
    out = []
    for i in range(n):
        y = jitter_amp * (1 if i % 2 else -1)
        out.append(sphere(0.4, (-0.4 + 0.1 * i, y, 0)))
    return out


def test_temporal_jitter_smooth_below_jittery(seed):
    rng = np.random.default_rng(seed)
    smooth = temporal_jitter(moving_spheres(0.0, rng), n_points=5000, seed=seed)
    jittery = temporal_jitter(moving_spheres(0.04, rng), n_points=5000, seed=seed)
    static = temporal_jitter([sphere(0.4)] * 5, n_points=5000, seed=seed)
    assert jittery > 4 * smooth, (seed, smooth, jittery)
    assert jittery > 0.02, (seed, jittery)  # a +-0.04 round trip in y every frame
    # the noise floor, from independent samples, is about the Chamfer sampling floor
    floor = 0.5 * np.sqrt(4 * np.pi * 0.4 ** 2 / 5000)
    assert smooth < floor and static < 1.5 * floor, (seed, smooth, static, floor)
    assert np.isnan(temporal_jitter([sphere(0.4)] * 2, n_points=100))
    assert len(temporal_jitter(moving_spheres(0.0, rng, 5), n_points=500, per_frame=True)) == 3


def test_temporal_jitter_dense_targets_lower_the_floor_not_the_signal(seed):
    """``target_points``: queries against a dense cloud of the other frame. The static floor
    falls to about 0.5 * sqrt(area / target_points), a real round trip still scores the same."""
    area = 4 * np.pi * 0.4 ** 2
    static = [sphere(0.4)] * 5
    plain = temporal_jitter(static, n_points=2000, seed=seed)
    dense = temporal_jitter(static, n_points=2000, seed=seed, target_points=50_000)
    assert 0 < dense < plain / 2.5, (seed, plain, dense)
    assert dense < 2 * 0.5 * np.sqrt(area / 50_000), (seed, dense)
    rng = np.random.default_rng(seed)
    jittery = moving_spheres(0.04, rng)
    reference = temporal_jitter(jittery, n_points=40_000, seed=seed)  # plain method, floor ~0.002
    measured = temporal_jitter(jittery, n_points=2000, seed=seed, target_points=50_000)
    assert abs(measured - reference) < 0.15 * reference, (seed, reference, measured)
    smooth = temporal_jitter(moving_spheres(0.0, rng), n_points=2000, seed=seed, target_points=50_000)
    assert smooth < 0.1 * measured, (seed, smooth, measured)
    # Point arrays are their own targets: the same numbers as the plain method.
    clouds = [sample_surface(m, 800, seed + i) for i, m in enumerate(jittery)]
    assert temporal_jitter(clouds, per_frame=True, target_points=10_000) == temporal_jitter(clouds, per_frame=True)


def test_evaluate_sequence_can_leave_jitter_out(seed):
    gt = moving_spheres(0.0, np.random.default_rng(seed), n=3)
    report = evaluate_sequence(gt, gt, n_points=2000, seed=seed, iou_resolution=16, jitter_points=0)
    assert np.isnan(report["jitter"]["pred"]) and np.isnan(report["jitter"]["gt"])
    assert report["mean"]["chamfer"] < 0.02


def test_evaluate_sequence_register_and_keys(seed):
    rng = np.random.default_rng(seed)
    gt = [lopsided() for _ in range(3)]
    for i, m in enumerate(gt):
        m.apply_translation((0.05 * i, 0, 0))
    M = np.eye(4)
    M[:3, :3] = Rotation.from_euler("xyz", rng.uniform(-40, 40, 3), degrees=True).as_matrix()
    M[:3, 3] = rng.uniform(-0.1, 0.1, 3)
    pred = [m.copy().apply_transform(M) for m in gt]
    raw = evaluate_sequence(pred, gt, n_points=5000, seed=seed, iou_resolution=32, jitter_points=2000)
    reg = evaluate_sequence(pred, gt, register=True, n_points=5000, seed=seed, iou_resolution=32,
                            jitter_points=2000)
    assert len(reg["frames"]) == 3 and set(reg["mean"]) >= {"chamfer", "fscore", "iou", "precision", "recall"}
    assert reg["mean"]["chamfer"] < 0.012 < raw["mean"]["chamfer"], seed
    assert reg["mean"]["iou"] > 0.8 and reg["mean"]["fscore"] > 0.5, (seed, reg["mean"])
    assert reg["registration"] is not None and raw["registration"] is None
    assert set(reg["jitter"]) == {"pred", "gt"}
    per_frame = evaluate_sequence(pred, gt, register="frame", n_points=2000, seed=seed, iou_resolution=16,
                                  jitter_points=500)
    assert len(per_frame["registration"]) == 3
    with pytest.raises(ValueError, match="need equally many predicted and GT meshes"):
        evaluate_sequence(pred[:2], gt)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def write_frames(directory, meshes, fmt="ply"):
    directory.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(meshes):
        m.export(directory / f"frame_{i:04d}.{fmt}")


def test_cli_end_to_end(tmp_path):
    gt = [sphere(0.4, (0.05 * i, 0, 0)) for i in range(3)]
    pred = [sphere(0.42, (0.05 * i, 0, 0)) for i in range(3)]
    write_frames(tmp_path / "gt", gt, "ply")
    write_frames(tmp_path / "pred", pred, "glb")
    write_frames(tmp_path / "pred", pred, "obj")  # duplicate formats: glb is read
    common = ["--points", "3000", "--iou-resolution", "24"]
    res = CliRunner().invoke(app, [str(tmp_path / "pred"), str(tmp_path / "gt"), *common, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [f["frame"] for f in out["frames"]] == [0, 1, 2]
    assert abs(out["mean"]["chamfer"] - 0.02) < 0.006
    assert out["settings"]["register"] == "none"
    res = CliRunner().invoke(app, [str(tmp_path / "pred"), str(tmp_path / "gt"), *common, "--register",
                                   "--threshold", "0.05"])
    assert res.exit_code == 0, res.output
    assert "mean" in res.stdout and "jitter" in res.stdout


def test_cli_errors(tmp_path):
    write_frames(tmp_path / "gt", [sphere(0.4)] * 3)
    write_frames(tmp_path / "short", [sphere(0.4)] * 2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no meshes here")
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    for i in (1, 2, 3):
        sphere(0.4).export(shifted / f"frame_{i:04d}.ply")
    bad = tmp_path / "bad"
    write_frames(bad, [sphere(0.4)] * 2)
    (bad / "frame_0002.ply").write_text("not a ply file")
    gt = str(tmp_path / "gt")
    cases = {
        "count": [str(tmp_path / "short"), gt],
        "missing": [str(tmp_path / "nope"), gt],
        "no meshes": [str(tmp_path / "empty"), gt],
        "indices": [str(shifted), gt],
        "unreadable": [str(bad), gt],
        "bad option": [gt, gt, "--points", "0"],
    }
    for name, args in cases.items():
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2, (name, res.output)
        assert "error:" in res.output, name
