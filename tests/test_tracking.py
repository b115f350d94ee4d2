"""Topology-consistent tracking (sdk.tracking): the ARAP operators against vertex-by-vertex
references, recovery of known motions, honest flags, clear errors, and the outputs that carry
one topology (sequence.glb morph targets read back by pygltflib, trimesh and our own parser; USD
with one topology; per-frame files with one face list)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import trimesh
from typer.testing import CliRunner

from sdk.data.synthetic import random_sequence
from sdk.outputs.gltf import build_glb, topology_segments
from sdk.outputs.meshseq import MeshSequence
from sdk.tracking import TrackingError, TrackingOptions, topology, track_meshes
from sdk.tracking.arap import (ArapSystem, energy_reference, global_step_reference, refine_rotations,
                               rotations_reference, unique_edges)
from sdk.tracking.rigid import similarity_transform

from test_watchable import parse_glb


def random_rotation(rng, scale=np.pi):
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(rng.normal(size=3) / np.sqrt(3) * scale).as_matrix()


def small_mesh(seed=0):
    """A lumpy closed mesh (an icosphere with random radii): not symmetric, fresh each seed."""
    rng = np.random.default_rng(seed)
    m = trimesh.creation.icosphere(subdivisions=1)
    v = m.vertices * rng.uniform(0.7, 1.3, (len(m.vertices), 1)) * np.array([1.0, 0.6, 0.4])
    return v, np.asarray(m.faces)


def shuffled(vertices, faces, rng):
    """The same surface with its vertices and faces in a new order: an independent topology."""
    perm = rng.permutation(len(vertices))
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    return trimesh.Trimesh(vertices[perm], inv[faces][rng.permutation(len(faces))], process=False)


# ------------------------------------------------------------------------------------------------
# ARAP operators against their references
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", ["uniform", "cotangent"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_arap_operators_match_references(weights, seed):
    rng = np.random.default_rng(seed)
    rest, faces = small_mesh(seed)
    system = ArapSystem(rest, faces, weights)
    current = rest @ random_rotation(rng).T + rng.normal(scale=0.05, size=rest.shape)
    rot = system.rotations(current)
    np.testing.assert_allclose(rot, rotations_reference(system, current), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-9)
    np.testing.assert_allclose(system.energy(current, rot), energy_reference(system, current, rot), rtol=1e-9,
                               atol=1e-12)
    for lam in (0.3, 4.0):
        targets = current + rng.normal(scale=0.1, size=rest.shape)
        np.testing.assert_allclose(system.global_step(rot, targets, lam),
                                   global_step_reference(system, rot, targets, lam), atol=1e-8)


def test_warm_started_rotations_converge_to_the_exact_ones():
    rng = np.random.default_rng(3)
    rest, faces = small_mesh(3)
    system = ArapSystem(rest, faces)
    current = rest @ random_rotation(rng, 0.5).T + rng.normal(scale=0.02, size=rest.shape)
    exact = system.rotations(current)
    start = np.stack([random_rotation(rng, 0.3) @ r for r in exact])
    np.testing.assert_allclose(system.rotations(current, start, iterations=400), exact, atol=1e-6)
    flat = np.zeros((4, 3, 3))
    flat[:, :2, :2] = np.eye(2)  # rank 2 (a vertex in a flat region): stays a rotation, no NaN
    out = refine_rotations(flat, np.broadcast_to(np.eye(3), (4, 3, 3)), 5)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.det(out), 1.0, atol=1e-9)


def test_unique_edges_and_topology():
    box = trimesh.creation.box()
    assert len(unique_edges(box.faces)) == len(box.edges_unique)
    torus = trimesh.creation.torus(0.5, 0.2)
    two = trimesh.util.concatenate([box, trimesh.creation.icosphere().apply_translation([3, 0, 0])])
    assert topology(box.vertices, box.faces).genera == (0,)
    assert topology(torus.vertices, torus.faces).genera == (1,)
    assert topology(two.vertices, two.faces).components == 2


@pytest.mark.parametrize("scale", [False, True])
def test_similarity_transform_recovers_a_known_motion(scale):
    rng = np.random.default_rng(4)
    src = rng.normal(size=(50, 3))
    rot, t, s = random_rotation(rng), rng.normal(size=3), (1.7 if scale else 1.0)
    a, b = similarity_transform(src, s * src @ rot.T + t, scale=scale)
    np.testing.assert_allclose(a, s * rot, atol=1e-10)
    np.testing.assert_allclose(b, t, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# Tracking known motions
# ------------------------------------------------------------------------------------------------

def test_exact_recovery_of_a_rigid_motion():
    """Each frame: the template's surface moved rigidly, its vertices and faces in a new order."""
    rng = np.random.default_rng(5)
    v, f = small_mesh(5)
    v = trimesh.remesh.subdivide(v, f)
    v, f = v
    truth, meshes = [], []
    rot, shift = np.eye(3), np.zeros(3)
    for t in range(6):
        truth.append(v @ rot.T + shift)
        meshes.append(trimesh.Trimesh(v, f, process=False) if t == 0 else shuffled(truth[-1], f, rng))
        rot = random_rotation(rng, 0.25) @ rot
        shift = shift + rng.normal(scale=0.08, size=3)
    tracked = track_meshes(meshes)
    assert tracked.flagged == [] and len(tracked.segments) == 1
    for t in range(6):
        np.testing.assert_allclose(tracked.vertices[t], truth[t], atol=2e-4)
        assert tracked.frames[t].fit < 1e-4
        assert tracked.frames[t].distortion < 1e-3
    meshes_out = tracked.meshes()
    assert all(np.array_equal(m.faces, meshes_out[0].faces) for m in meshes_out)


def _drift(seq, tracked):
    v0 = tracked.vertices[0]
    diag = np.linalg.norm(v0.max(0) - v0.min(0))
    drift = [np.linalg.norm(tracked.vertices[t] - seq.carry(v0, 0, t), axis=1).mean() / diag
             for t in range(1, seq.num_frames)]
    base = [np.linalg.norm(v0 - seq.carry(v0, 0, t), axis=1).mean() / diag for t in range(1, seq.num_frames)]
    return float(np.mean(drift)), float(np.mean(base))


@pytest.mark.parametrize("seed", [4, 5])
def test_a_bending_bar_is_followed(seed):
    seq = random_sequence(seed, "bend_twist", 12)  # a box or cylinder bar that bends (and twists)
    meshes = [seq.watertight_mesh(t, 40) for t in range(12)]
    tracked = track_meshes(meshes)
    drift, base = _drift(seq, tracked)
    assert tracked.flagged == []
    assert drift < 0.4 * base and drift < 0.025, (drift, base)
    assert max(f.fit for f in tracked.frames) < 0.01


def test_parts_merging_are_flagged_not_passed_off():
    seq = random_sequence(7, "merge_split", 6)  # two blobs that meet around frame 3
    meshes = [seq.watertight_mesh(t, 40) for t in range(6)]
    tracked = track_meshes(meshes)
    assert tracked.frames[0].flagged is False
    assert tracked.flagged and tracked.flagged[-1] == 5
    reasons = " ".join(r for f in tracked.frames for r in f.reasons)
    assert "topology changed" in reasons and "2 parts" in reasons
    report = tracked.report()
    assert report["flagged"] == tracked.flagged and json.dumps(report)
    # retemplate: a new segment starts at the first flagged frame, with that frame's own mesh
    again = track_meshes(meshes, TrackingOptions(on_failure="retemplate"))
    assert len(again.segments) == 2 and again.segments[1].start == tracked.flagged[0]
    assert topology_segments(again.meshes()) == [(s.start, s.end) for s in again.segments]


def test_template_in_the_middle_tracks_both_ways():
    rng = np.random.default_rng(6)
    v, f = small_mesh(6)
    meshes = [shuffled(v + [0.05 * t, 0, 0], f, rng) for t in range(5)]
    tracked = track_meshes(meshes, TrackingOptions(template=2))
    assert tracked.segments[0].template == 2 and tracked.flagged == []
    for t in range(5):
        assert tracked.frames[t].fit < 1e-4


def test_bad_inputs_give_clear_errors():
    v, f = small_mesh(0)
    mesh = trimesh.Trimesh(v, f, process=False)
    with pytest.raises(TrackingError, match="no frames"):
        track_meshes([])
    with pytest.raises(TrackingError, match="at least 2 frames"):
        track_meshes([mesh])
    with pytest.raises(TrackingError, match="template frame 0 has no surface"):
        track_meshes([trimesh.Trimesh(), mesh])
    with pytest.raises(TrackingError, match="template frame 5"):
        track_meshes([mesh, mesh], TrackingOptions(template=5))
    with pytest.raises(TrackingError, match="frame 1: face indices"):
        track_meshes([mesh, (v[:5], f)])
    with pytest.raises(TrackingError, match="frame 1: vertices are not all finite"):
        track_meshes([mesh, (np.full_like(v, np.nan), f)])
    with pytest.raises(TrackingError, match="alignment"):
        track_meshes([mesh, mesh], TrackingOptions(alignment="affine"))
    with pytest.raises(TrackingError, match="not a triangle mesh"):
        track_meshes([mesh, "frame.ply"])
    # a later frame with no surface is flagged (the sequence still comes out)
    tracked = track_meshes([mesh, trimesh.Trimesh(), mesh])
    assert tracked.flagged == [1] and tracked.frames[1].reasons == ["the frame has no surface"]


# ------------------------------------------------------------------------------------------------
# Outputs with one topology
# ------------------------------------------------------------------------------------------------

def tracked_sequence(T=4, seed=8):
    rng = np.random.default_rng(seed)
    v, f = small_mesh(seed)
    meshes = [shuffled(v * (1 + 0.1 * t) + [0.05 * t, 0, 0], f, rng) for t in range(T)]
    images = [np.full((16, 16, 3), 40 * t, np.uint8) for t in range(T)]
    seq = MeshSequence(meshes, list(range(T)), [0.1 * t for t in range(T)], images, source="walk.mp4")
    return seq.track()


def test_sequence_glb_is_one_mesh_with_morph_targets(tmp_path):
    seq = tracked_sequence(T=5)
    data = build_glb(seq.meshes, seq.frame_times)
    gltf, arrays = parse_glb(data)
    root = gltf["nodes"][gltf["scenes"][0]["nodes"][0]]
    assert root["children"] == [1] and len(gltf["meshes"]) == 1
    node = gltf["nodes"][1]
    assert "scale" not in node  # one segment: always visible
    prim = gltf["meshes"][node["mesh"]]["primitives"][0]
    base = arrays[prim["attributes"]["POSITION"]]
    np.testing.assert_array_equal(base, np.asarray(seq.meshes[0].vertices, np.float32))
    assert len(prim["targets"]) == 4 and gltf["meshes"][0]["weights"] == [0.0] * 4
    for k, target in enumerate(prim["targets"]):
        acc = gltf["accessors"][target["POSITION"]]
        delta = arrays[target["POSITION"]]
        assert acc["count"] == len(base)  # same vertex count as the base
        assert acc["min"] == pytest.approx(delta.min(0).tolist()) and acc["max"] == pytest.approx(delta.max(0).tolist())
        np.testing.assert_allclose(base + delta, seq.meshes[k + 1].vertices, atol=1e-6)
        assert gltf["accessors"][target["NORMAL"]]["count"] == len(base)
    (anim,) = gltf["animations"]
    (channel,) = anim["channels"]
    sampler = anim["samplers"][channel["sampler"]]
    assert channel["target"] == {"node": 1, "path": "weights"} and sampler["interpolation"] == "LINEAR"
    np.testing.assert_allclose(arrays[sampler["input"]].ravel(), seq.frame_times, rtol=1e-6)
    weights = arrays[sampler["output"]].reshape(5, 4)
    np.testing.assert_array_equal(weights, np.vstack([np.zeros(4), np.eye(4)]))

    # an independent reader: pygltflib sees the same structure
    pygltflib = pytest.importorskip("pygltflib")
    path = tmp_path / "sequence.glb"
    path.write_bytes(data)
    doc = pygltflib.GLTF2().load(str(path))
    prim2 = doc.meshes[0].primitives[0]
    assert len(prim2.targets) == 4 and doc.animations[0].channels[0].target.path == "weights"
    assert doc.accessors[prim2.targets[0]["POSITION"]].count == len(base)
    # trimesh reads the base mesh
    scene = trimesh.load(path)
    (geometry,) = scene.geometry.values()
    np.testing.assert_allclose(geometry.vertices, seq.meshes[0].vertices, atol=1e-6)


def test_segments_flip_between_meshes_and_morph_within(tmp_path):
    a = tracked_sequence(T=3, seed=1).meshes
    b = tracked_sequence(T=2, seed=2).meshes
    meshes = a + b
    assert topology_segments(meshes) == [(0, 2), (3, 4)]
    gltf, arrays = parse_glb(build_glb(meshes, [0.1 * t for t in range(5)]))
    assert gltf["nodes"][0]["children"] == [1, 2]
    scale = {c["target"]["node"]: arrays[gltf["animations"][0]["samplers"][c["sampler"]]["output"]]
             for c in gltf["animations"][0]["channels"] if c["target"]["path"] == "scale"}
    np.testing.assert_array_equal(scale[1][:, 0], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(scale[2][:, 0], [0, 0, 0, 1, 1])
    assert [len(m["primitives"][0]["targets"]) for m in gltf["meshes"]] == [2, 1]


def test_saved_tracked_sequence_shares_one_face_list(tmp_path):
    seq = tracked_sequence(T=4)
    out = seq.save(tmp_path / "clip", formats=("ply", "obj", "usda"), preview=False, viewer=False,
                   contact_sheet=False)
    faces = [np.asarray(trimesh.load(out / f"frame_{i:04d}.ply", process=False).faces) for i in range(4)]
    for f in faces[1:]:
        np.testing.assert_array_equal(f, faces[0])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["topology"] == "consistent" and manifest["tracking"]["flagged"] == []
    assert len(manifest["tracking"]["frames"]) == 4 and manifest["timings_s"]["track"] >= 0
    from pxr import Usd, UsdGeom

    stage = Usd.Stage.Open(str(out / "sequence.usda"))
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/Sculpt4D/mesh"))
    assert mesh.GetFaceVertexIndicesAttr().GetNumTimeSamples() == 0  # one topology, written once
    assert len(mesh.GetFaceVertexIndicesAttr().Get()) == faces[0].size
    assert mesh.GetPointsAttr().GetNumTimeSamples() == 4
    per_frame = MeshSequence([seq.meshes[0], trimesh.creation.box()], [0, 1], [0.0, 0.1], [])
    assert per_frame.topology == "per-frame"


def test_tracked_glb_passes_the_khronos_validator(tmp_path):
    from test_watchable import _node_validator

    node = _node_validator()
    if node is None:
        pytest.skip("Khronos gltf-validator not installed (npm install gltf-validator; NODE_PATH=.../node_modules)")
    import subprocess

    path = tmp_path / "sequence.glb"
    path.write_bytes(build_glb(tracked_sequence(T=4).meshes, [0.0, 0.1, 0.2, 0.3]))
    script = ("const v=require('gltf-validator');const d=new Uint8Array(require('fs').readFileSync(process.argv[1]));"
              "v.validateBytes(d).then(r=>console.log(JSON.stringify(r.issues)))")
    issues = json.loads(subprocess.run([node, "-e", script, str(path)], capture_output=True, text=True,
                                       check=True).stdout)
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"]


# ------------------------------------------------------------------------------------------------
# s4d-track
# ------------------------------------------------------------------------------------------------

def write_frames(directory: Path, meshes, ext="ply") -> Path:
    directory.mkdir(parents=True)
    for i, m in enumerate(meshes):  # names that sort wrongly as plain strings: f2 < f10 naturally
        m.export(directory / f"f{i * 5}.{ext}")
    return directory


def test_s4d_track_on_a_directory_of_ply_frames(tmp_path):
    from sdk.cli.track import app

    rng = np.random.default_rng(9)
    v, f = small_mesh(9)
    truth = [v + [0.04 * t, 0.02 * t, 0] for t in range(4)]
    src = write_frames(tmp_path / "run", [shuffled(x, f, rng) for x in truth])
    res = CliRunner().invoke(app, [str(src), "-o", str(tmp_path / "out"), "--format", "ply", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["tracked"] == 1 and summary["items"][0]["flagged"] == []
    out = tmp_path / "out" / "run"
    loaded = [trimesh.load(out / f"frame_{i:04d}.ply", process=False) for i in range(4)]
    for t, m in enumerate(loaded):
        np.testing.assert_array_equal(m.faces, loaded[0].faces)
        np.testing.assert_allclose(m.vertices, truth[t] - truth[0] + loaded[0].vertices, atol=1e-3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["topology"] == "consistent" and "sequence.glb" in manifest["files"]
    # a second run does not replace the output unless asked, and then only its own
    res = CliRunner().invoke(app, [str(src), "-o", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 1 and "exists" in json.loads(res.stdout)["items"][0]["error"]
    res = CliRunner().invoke(app, [str(src), "-o", str(tmp_path / "out"), "--overwrite"])
    assert res.exit_code == 0, res.output


def test_s4d_track_flags_a_merge_with_exit_1(tmp_path):
    from sdk.cli.track import app

    seq = random_sequence(7, "merge_split", 6)
    src = write_frames(tmp_path / "merge", [seq.watertight_mesh(t, 40) for t in range(6)])
    res = CliRunner().invoke(app, [str(src), "-o", str(tmp_path / "out"), "--json", "--no-viewer"])
    assert res.exit_code == 1, res.output
    item = json.loads(res.stdout)["items"][0]
    assert item["status"] == "ok" and item["flagged"]
    manifest = json.loads((tmp_path / "out" / "merge" / "manifest.json").read_text())
    assert manifest["tracking"]["flagged"] == item["flagged"]


def test_s4d_track_bad_inputs_exit_2(tmp_path):
    from sdk.cli.track import app

    v, f = small_mesh(0)
    mesh = trimesh.Trimesh(v, f, process=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    one = write_frames(tmp_path / "one", [mesh])
    garbage = write_frames(tmp_path / "garbage", [mesh, mesh])
    (garbage / "f5.ply").write_bytes(b"ply\nthis is not a mesh\n")
    zero = write_frames(tmp_path / "zero", [mesh, mesh])
    (zero / "f5.ply").write_bytes(b"")
    good = write_frames(tmp_path / "good", [mesh, mesh])
    cases = {str(empty): "holds no mesh files", str(one): "at least 2", str(garbage): "f5.ply",
             str(zero): "empty (0 bytes)", str(tmp_path / "missing"): "not a directory"}
    for path, message in cases.items():
        res = CliRunner().invoke(app, [path, "-o", str(tmp_path / "out")])
        assert res.exit_code == 2 and message in res.output, (path, res.output)
        assert "Traceback" not in res.output
    res = CliRunner().invoke(app, [str(good), "-o", str(tmp_path / "out"), "--template", "7"])
    assert res.exit_code == 2 and "template frame 7" in res.output
    res = CliRunner().invoke(app, [str(good), "-o", str(good / "inside")])
    assert res.exit_code == 1 and "input" in res.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    if hasattr(os, "mkfifo"):
        fifo_dir = write_frames(tmp_path / "fifo", [mesh])
        os.mkfifo(fifo_dir / "f9.ply")
        res = CliRunner().invoke(app, [str(fifo_dir), "-o", str(tmp_path / "out")])
        assert res.exit_code == 2 and "FIFO" in res.output


def test_s4d_track_reads_an_s4d_convert_output(tmp_path):
    from sdk.cli.track import app

    rng = np.random.default_rng(10)
    v, f = small_mesh(10)
    meshes = [shuffled(v + [0.03 * t, 0, 0], f, rng) for t in range(3)]
    images = [np.full((16, 16, 3), 60 * t, np.uint8) for t in range(3)]
    MeshSequence(meshes, [0, 4, 8], [0.0, 0.2, 0.4], images, source="clip.mp4").save(
        tmp_path / "conv" / "clip", formats=("glb", "ply"), preview=False, viewer=False, contact_sheet=False)
    res = CliRunner().invoke(app, [str(tmp_path / "conv" / "clip"), "-o", str(tmp_path / "out"), "--format", "obj",
                                   "--json", "--no-viewer"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "out" / "clip" / "manifest.json").read_text())
    assert manifest["frame_times"] == [0.0, 0.2, 0.4] and manifest["source"] == "clip.mp4"
    assert "preview.mp4" in manifest["files"] and "conditioning/cond_0002.png" in manifest["files"]


def test_s4d_track_flags_an_empty_frame_of_an_s4d_convert_output(tmp_path):
    from sdk.cli.track import app

    v, f = small_mesh(11)
    meshes = [trimesh.Trimesh(v, f, process=False), trimesh.Trimesh(), trimesh.Trimesh(v + 0.01, f, process=False)]
    MeshSequence(meshes, [0, 1, 2], [0.0, 0.1, 0.2], []).save(tmp_path / "conv", formats=("ply",), preview=False,
                                                                viewer=False, contact_sheet=False)
    res = CliRunner().invoke(app, [str(tmp_path / "conv"), "-o", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 1, res.output
    item = json.loads(res.stdout)["items"][0]
    assert item["flagged"] == [1] and item["reasons"]["1"] == ["the frame has no surface"]


def test_s4d_convert_topology_option(tmp_path):
    from sdk.cli.convert import app

    from test_pipeline import CLI_FAST, write_video

    video = write_video(tmp_path / "clip.mp4")
    res = CliRunner().invoke(app, [str(video), "-o", str(tmp_path / "o"), *CLI_FAST, "--topology", "sideways"])
    assert res.exit_code == 2 and "--topology" in res.output
    res = CliRunner().invoke(app, [str(video), "-o", str(tmp_path / "o"), *CLI_FAST, "--topology", "per-frame",
                                   "--json", "--no-preview", "--no-viewer"])
    assert res.exit_code == 0, res.output
    item = json.loads(res.stdout)["items"][0]
    assert item["tracking"] == {"topology": "per-frame"}
    manifest = json.loads((tmp_path / "o" / "clip" / "manifest.json").read_text())
    assert manifest["topology"] == "per-frame" and manifest["settings"]["topology"] == "per-frame"


def test_a_strong_bend_is_not_shrunk():
    """A cylinder bent step by step to a quarter turn: its size does not change, so nothing may
    shrink the template (the fit stays tight, no frame is flagged)."""
    from sdk.data.synthetic import bend

    rng = np.random.default_rng(12)
    cyl = trimesh.creation.cylinder(radius=0.12, height=1.2, sections=24)
    v, f = trimesh.remesh.subdivide_to_size(cyl.vertices[:, [0, 2, 1]], cyl.faces, 0.05)
    curvatures = np.linspace(0.0, (np.pi / 2) / 1.2, 8)
    meshes = [shuffled(bend(v, k), f, rng) for k in curvatures]
    tracked = track_meshes(meshes)
    assert tracked.flagged == [], [f.reasons for f in tracked.frames]
    assert max(f.fit for f in tracked.frames) < 0.005
    truth = bend(np.asarray(meshes[0].vertices), curvatures[-1])  # the template's own vertices, bent
    assert np.linalg.norm(tracked.vertices[-1] - truth, axis=1).mean() < 0.02


def test_s4d_track_refuses_before_writing(tmp_path):
    from sdk.cli.track import app

    v, f = small_mesh(13)
    mesh = trimesh.Trimesh(v, f, process=False)
    good = write_frames(tmp_path / "a_good", [mesh, mesh])
    bad = write_frames(tmp_path / "b_empty_template", [mesh, mesh])
    (bad / "f0.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                                "property float z\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n")
    res = CliRunner().invoke(app, [str(good), str(bad), "-o", str(tmp_path / "out")])
    assert res.exit_code == 2 and "template frame 0 has no surface" in res.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    conv = tmp_path / "conv"
    conv.mkdir()
    (conv / "manifest.json").write_text(json.dumps({"format": "sculpt4d-mesh-sequence", "files": 5,
                                                    "num_frames": 2}))
    res = CliRunner().invoke(app, [str(conv), "-o", str(tmp_path / "out")])
    assert res.exit_code == 2 and "'files' is not a list" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, [str(good), "-o", "s3://bucket/out"])
    assert res.exit_code == 2 and "local directory" in res.output


def test_s4d_track_welds_split_vertices(tmp_path):
    from sdk.cli.track import app

    box = trimesh.creation.box(extents=(1.0, 0.6, 0.4)).subdivide()
    split = trimesh.Trimesh(box.vertices[box.faces].reshape(-1, 3), np.arange(box.faces.size).reshape(-1, 3),
                            process=False)  # every triangle its own three vertices, as flat-shaded OBJ files are
    src = write_frames(tmp_path / "flat", [split, split.copy().apply_translation([0.05, 0, 0])], ext="obj")
    res = CliRunner().invoke(app, [str(src), "-o", str(tmp_path / "out"), "--json", "--no-viewer"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "out" / "flat" / "manifest.json").read_text())
    assert manifest["tracking"]["frames"][1]["topology"] == "1 part (genus 0)"
    assert manifest["meshes"][0]["vertices"] == len(box.vertices)
