"""MeshSequence.save: per-frame meshes, the USD sequence, manifest, and atomic writes."""

import json

import numpy as np
import pytest
import trimesh

from sdk.outputs.meshseq import MeshSequence, OutputExistsError


def make_sequence(T=3, empty_frame=None):
    rng = np.random.default_rng(0)
    meshes = []
    for i in range(T):
        m = trimesh.creation.icosphere(subdivisions=1 + i % 2, radius=0.3 + 0.1 * i)
        m.apply_translation(rng.uniform(-0.2, 0.2, 3))
        meshes.append(trimesh.Trimesh() if i == empty_frame else m)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(T)]
    return MeshSequence(meshes, list(range(0, 2 * T, 2)), [i / 12 for i in range(0, 2 * T, 2)], images,
                        timings={"sample": 1.5}, settings={"seed": 7}, model={"name": "test"}, source="clip.mp4")


def test_save_all_formats_and_read_back(tmp_path):
    seq = make_sequence()
    out = seq.save(tmp_path / "clip", formats=("glb", "obj", "ply", "usd"))
    for i in range(3):
        for fmt in ("glb", "obj", "ply"):
            loaded = trimesh.load(out / f"frame_{i:04d}.{fmt}", force="mesh")
            assert len(loaded.faces) == len(seq.meshes[i].faces)
            np.testing.assert_allclose(np.sort(loaded.vertices, axis=0), np.sort(seq.meshes[i].vertices, axis=0),
                                       atol=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_frames"] == 3 and manifest["seed"] == 7 and manifest["frame_indices"] == [0, 2, 4]
    assert "sequence.usda" in manifest["files"] and "conditioning/cond_0002.png" in manifest["files"]
    assert manifest["versions"]["sculpt4d-sdk"] and manifest["timings_s"]["sample"] == 1.5
    assert not list(tmp_path.glob(".clip.partial-*"))


def test_usd_has_one_time_sample_per_frame(tmp_path):
    from pxr import Usd, UsdGeom

    seq = make_sequence(T=4)
    out = seq.save(tmp_path / "clip", formats=("usda",))
    stage = Usd.Stage.Open(str(out / "sequence.usda"))
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/Sculpt4D/mesh"))
    points = mesh.GetPointsAttr()
    assert points.GetTimeSamples() == [0.0, 1.0, 2.0, 3.0]
    assert stage.GetTimeCodesPerSecond() == pytest.approx(6.0)  # frames 2/12 s apart
    for i, m in enumerate(seq.meshes):
        np.testing.assert_allclose(np.array(points.Get(i)), m.vertices, atol=1e-6)
        assert len(mesh.GetFaceVertexIndicesAttr().Get(i)) == 3 * len(m.faces)


def test_empty_frame_still_written(tmp_path):
    out = make_sequence(T=3, empty_frame=1).save(tmp_path / "c", formats=("glb", "obj", "ply", "usda"))
    assert (out / "frame_0001.glb").exists() and (out / "frame_0001.obj").exists()
    assert json.loads((out / "manifest.json").read_text())["meshes"][1]["faces"] == 0


def test_existing_output_and_bad_format(tmp_path):
    seq = make_sequence()
    seq.save(tmp_path / "c")
    with pytest.raises(OutputExistsError, match="already exists"):
        seq.save(tmp_path / "c")
    seq.save(tmp_path / "c", formats=("obj",), overwrite=True)
    assert (tmp_path / "c" / "frame_0000.obj").exists() and not (tmp_path / "c" / "frame_0000.glb").exists()
    with pytest.raises(ValueError, match="unknown output format"):
        seq.save(tmp_path / "d", formats=("fbx",))
    assert not (tmp_path / "d").exists()


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    import sdk.outputs.meshseq as meshseq

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(meshseq, "write_usd_sequence", boom)
    with pytest.raises(KeyboardInterrupt):
        make_sequence().save(tmp_path / "c", formats=("glb", "usda"))
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_dangerous_targets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("user data")
    seq = make_sequence()
    for target in (".", "..", tmp_path, tmp_path.parent):
        with pytest.raises(ValueError, match="refusing"):
            seq.save(target, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "user data"
