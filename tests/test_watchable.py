"""The outputs people can watch: sequence.glb (read back by trimesh, a structural check of our own
and, where installed, the Khronos glTF validator), preview.mp4 (decoded with PyAV), viewer.html
(decoded in Python and drawn by a real headless Chromium), and how MeshSequence.save /
s4d-convert write them."""

import base64
import json
import re
import shutil
import struct
import subprocess
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import trimesh
from PIL import Image

from sdk.outputs.gltf import animation_times, build_glb
from sdk.outputs.meshseq import MeshSequence
from sdk.outputs.preview import write_preview
from sdk.outputs.viewer import BACKGROUND, build_viewer, cluster_decimate, dump_dom, find_chromium, screenshot

COMPONENTS = {5126: (np.float32, 4), 5123: (np.uint16, 2), 5125: (np.uint32, 4)}
WIDTH = {"SCALAR": 1, "VEC3": 3}


def make_sequence(T=4, empty_frame=None, times="default", seed=0):
    rng = np.random.default_rng(seed)
    meshes = []
    for i in range(T):
        m = trimesh.creation.icosphere(subdivisions=1 + i % 2, radius=0.3 + 0.1 * i)
        m.apply_scale(rng.uniform(0.6, 1.4, 3))
        m.apply_translation(rng.uniform(-0.2, 0.2, 3))
        meshes.append(trimesh.Trimesh() if i == empty_frame else m)
    images = [np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (24, 24, 3)).copy() for _ in range(T)]
    frame_times = [0.5 + i / 10 for i in range(T)] if times == "default" else times
    return MeshSequence(meshes, list(range(T)), frame_times, images, model={"name": "test"}, source="clips/walk.mp4")


def parse_glb(data: bytes):
    """An independent reader: header, the two chunks, and every accessor as a NumPy array,
    checking the layout rules of the glTF 2.0 spec on the way."""
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (0x46546C67, 2, len(data)) and length % 4 == 0
    json_len, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_len % 4 == 0
    gltf = json.loads(data[20:20 + json_len])
    bin_len, bin_type = struct.unpack_from("<II", data, 20 + json_len)
    assert bin_type == 0x004E4942 and bin_len % 4 == 0
    blob = data[28 + json_len:28 + json_len + bin_len]
    assert 28 + json_len + bin_len == len(data) and gltf["buffers"] == [{"byteLength": bin_len}]
    for view in gltf["bufferViews"]:
        assert view["byteOffset"] % 4 == 0 and view["byteOffset"] + view["byteLength"] <= bin_len
    arrays = []
    for acc in gltf["accessors"]:
        view = gltf["bufferViews"][acc["bufferView"]]
        dtype, size = COMPONENTS[acc["componentType"]]
        offset = acc.get("byteOffset", 0)
        assert offset % size == 0
        nbytes = acc["count"] * WIDTH[acc["type"]] * size
        assert offset + nbytes <= view["byteLength"]
        start = view["byteOffset"] + offset
        arrays.append(np.frombuffer(blob[start:start + nbytes], dtype).reshape(acc["count"], -1))
    return gltf, arrays


def test_sequence_glb_structure_and_animation():
    seq = make_sequence(T=5, empty_frame=3)
    gltf, arrays = parse_glb(build_glb(seq.meshes, seq.frame_times))
    assert gltf["asset"]["version"] == "2.0" and "extensionsRequired" not in gltf
    root = gltf["nodes"][gltf["scenes"][gltf["scene"]]["nodes"][0]]
    assert root["children"] == [1, 2, 3, 4, 5]
    for i, mesh in enumerate(seq.meshes):
        node = gltf["nodes"][1 + i]
        assert node["scale"] == ([1.0] * 3 if i == 0 else [0.0] * 3)  # a still viewer shows frame 0
        if i == 3:
            assert "mesh" not in node  # empty frame: a node without a mesh
            continue
        prim = gltf["meshes"][node["mesh"]]["primitives"][0]
        acc = gltf["accessors"][prim["attributes"]["POSITION"]]
        pos = arrays[prim["attributes"]["POSITION"]]
        np.testing.assert_array_equal(pos, np.asarray(mesh.vertices, np.float32))
        assert acc["min"] == pytest.approx(pos.min(0).tolist()) and acc["max"] == pytest.approx(pos.max(0).tolist())
        np.testing.assert_array_equal(arrays[prim["indices"]].reshape(-1, 3), mesh.faces)
        assert gltf["accessors"][prim["indices"]]["componentType"] == 5123  # few vertices: uint16
        normals = arrays[prim["attributes"]["NORMAL"]]
        np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    (anim,) = gltf["animations"]
    assert len(anim["channels"]) == 5
    for channel in anim["channels"]:
        sampler = anim["samplers"][channel["sampler"]]
        assert sampler["interpolation"] == "STEP" and channel["target"]["path"] == "scale"
        times = arrays[sampler["input"]].reshape(-1)
        np.testing.assert_allclose(times, seq.frame_times, rtol=1e-7)  # the manifest's frame times
        assert gltf["accessors"][sampler["input"]]["min"] == [pytest.approx(0.5)]
        frame = channel["target"]["node"] - 1
        np.testing.assert_array_equal(arrays[sampler["output"]], np.eye(5, dtype=np.float32)[:, [frame] * 3])


def test_sequence_glb_reads_back_with_trimesh(tmp_path):
    seq = make_sequence(T=3)
    out = seq.save(tmp_path / "clip", preview=False, viewer=False)
    scene = trimesh.load(out / "sequence.glb")
    assert isinstance(scene, trimesh.Scene) and len(scene.geometry) == 3
    for i, mesh in enumerate(seq.meshes):
        node_geometry = scene.graph[f"frame_{i:04d}"][1]
        loaded = scene.geometry[node_geometry]
        np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=1e-6)
        np.testing.assert_array_equal(loaded.faces, mesh.faces)
    manifest = json.loads((out / "manifest.json").read_text())
    gltf, arrays = parse_glb((out / "sequence.glb").read_bytes())
    times = arrays[gltf["animations"][0]["samplers"][0]["input"]].reshape(-1)
    np.testing.assert_allclose(times, manifest["frame_times"], rtol=1e-7)


def test_animation_times_fallback():
    assert animation_times([0.0, 0.25, 0.5], 3) == [0.0, 0.25, 0.5]
    assert animation_times([None, None, None], 3) == pytest.approx([0, 1 / 24, 2 / 24])  # unknown: 24 fps
    assert animation_times([], 2) == pytest.approx([0, 1 / 24])
    assert animation_times([0.0, 0.0, 0.5], 3) == pytest.approx([0, 0.25, 0.5])  # not increasing: even spacing
    assert animation_times([3.0], 1) == [3.0]


def test_wide_frames_use_uint32_indices():
    grid = trimesh.creation.box()
    verts = np.random.default_rng(1).normal(size=(70_000, 3))
    faces = np.stack([np.arange(0, 69_999), np.arange(1, 70_000), np.full(69_999, 69_999)], 1)[:2000]
    big = trimesh.Trimesh(verts, faces, process=False)
    gltf, arrays = parse_glb(build_glb([grid, big], [0.0, 0.1], normals=False))
    prims = [m["primitives"][0] for m in gltf["meshes"]]
    assert [gltf["accessors"][p["indices"]]["componentType"] for p in prims] == [5123, 5125]
    assert "NORMAL" not in prims[1]["attributes"]
    np.testing.assert_array_equal(arrays[prims[1]["indices"]].reshape(-1, 3), faces)


def _node_validator():
    node = shutil.which("node")
    if node is None:
        return None
    probe = subprocess.run([node, "-e", "require('gltf-validator')"], capture_output=True)
    return node if probe.returncode == 0 else None


def test_khronos_gltf_validator(tmp_path):
    """The official Khronos validator (npm ``gltf-validator``; not installed by CI: locally
    ``npm install gltf-validator`` and put its node_modules on NODE_PATH)."""
    node = _node_validator()
    if node is None:
        pytest.skip("Khronos gltf-validator not installed (npm install gltf-validator; NODE_PATH=.../node_modules)")
    path = tmp_path / "sequence.glb"
    path.write_bytes(build_glb(make_sequence(T=4, empty_frame=2).meshes, [0.0, 0.1, 0.2, 0.3]))
    script = ("const v=require('gltf-validator');const d=new Uint8Array(require('fs').readFileSync(process.argv[1]));"
              "v.validateBytes(d).then(r=>console.log(JSON.stringify(r.issues)))")
    issues = json.loads(subprocess.run([node, "-e", script, str(path)], capture_output=True, text=True,
                                       check=True).stdout)
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"]


def test_preview_video(tmp_path):
    seq = make_sequence(T=4, empty_frame=1)
    path = write_preview(seq.meshes, tmp_path / "preview.mp4", seq.conditioning_images, seq.frame_times, tile=64)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 10  # frames 0.1 s apart
        frames = [f.to_ndarray(format="rgb24").astype(int) for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (64, 128, 3)
    for i, frame in enumerate(frames):
        cond = np.asarray(Image.fromarray(seq.conditioning_images[i]).resize((64, 64), Image.BILINEAR), int)
        assert np.abs(frame[:, :56] - cond[:, :56]).mean() < 12  # left: the conditioning frame (lossy codec)
        drawn = (np.abs(frame[:, 72:] - 255).max(-1) > 40).mean()
        assert drawn < 0.005 if i == 1 else drawn > 0.02  # right: the mesh, on white (frame 1 is empty)
    without_images = write_preview(seq.meshes, tmp_path / "p2.mp4", (), [None] * 4, tile=32)
    with av.open(str(without_images)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (32, 32, 24)  # renders only, 24 fps default
    odd_rate = write_preview(seq.meshes, tmp_path / "p3.mp4", (), [i / 7.5 for i in range(4)], tile=32)
    with av.open(str(odd_rate)) as container:
        assert container.streams.video[0].average_rate == Fraction(15, 2)


def decode_viewer(page: str):
    """Our own reading of the page's data (the inverse of what the page's script does)."""
    meta = json.loads(re.search(r'<script id="s4d-meta" type="application/json">(.*?)</script>', page, re.S)[1])
    data = zlib.decompress(base64.b64decode(
        re.search(r'<script id="s4d-data" type="application/octet-stream">(.*?)</script>', page, re.S)[1]))
    at, frames = 0, []

    def take(count, dtype):
        nonlocal at
        width = np.dtype(dtype).itemsize
        planes = np.frombuffer(data, np.uint8, count * width, at).reshape(width, count)
        at += count * width
        return np.cumsum(np.ascontiguousarray(planes.T).view(dtype).reshape(-1), dtype=dtype)  # wraps like the writer

    lo, hi = np.array(meta["box"])
    for f in meta["frames"]:
        q = take(3 * f["v"], np.uint16).reshape(3, -1).T
        idx = take(3 * f["f"], np.uint32 if f["i32"] else np.uint16).reshape(-1, 3)
        frames.append((lo + q / 65535 * (hi - lo), idx))
    assert at == len(data)
    return meta, frames


def test_viewer_page_data_round_trip():
    seq = make_sequence(T=3, empty_frame=2)
    page = build_viewer(seq.meshes, seq.frame_times, title="<walk> @DATA@")
    assert "<title>&lt;walk&gt; @DATA@</title>" in page and "http://" not in page and "https://" not in page
    meta, frames = decode_viewer(page)
    assert meta["times"] == pytest.approx(seq.frame_times) and meta["fps"] == pytest.approx(10)
    for (verts, faces), mesh in zip(frames, seq.meshes):
        assert len(faces) == len(mesh.faces)
        if len(faces):
            np.testing.assert_array_equal(faces, mesh.faces)
            np.testing.assert_allclose(verts, mesh.vertices, atol=2e-5)  # 16-bit over the sequence box


def test_viewer_simplifies_big_frames():
    sphere = trimesh.creation.icosphere(subdivisions=5)  # 20480 faces
    verts, faces = cluster_decimate(sphere.vertices, sphere.faces, 2000)
    assert 200 < len(faces) <= 2000 and faces.max() < len(verts)
    np.testing.assert_allclose(np.linalg.norm(verts, axis=1), 1.0, atol=0.08)  # still the unit sphere
    normals = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    assert (np.einsum("ij,ij->i", normals, verts[faces].mean(1)) > 0).mean() > 0.97  # winding kept: outward
    meta, frames = decode_viewer(build_viewer([sphere], max_faces=2000))
    assert meta["frames"][0]["f"] <= 2000 and meta["frames"][0]["source_faces"] == 20480


NEEDS_CHROMIUM = pytest.mark.skipif(find_chromium() is None, reason="Chromium not installed (Debian: apt-get "
                                    "install chromium; .ci/run installs it where apt is available)")


def shoot(page, png, frame, query=""):
    """Screenshot of the page's canvas area (above the control bar) as an int RGB array."""
    return np.asarray(Image.open(screenshot(page, png, frame=frame, size=(480, 400), query=query)).convert("RGB"),
                      int)[:-60]


def changed(a, b):
    """Fraction of pixels that differ clearly between two screenshots (or from a colour)."""
    return (np.abs(a - b).max(-1) > 24).mean()


@NEEDS_CHROMIUM
def test_viewer_draws_in_headless_chromium(tmp_path, ci_evidence):
    seq = make_sequence(T=4)
    page = tmp_path / "viewer.html"
    page.write_text(build_viewer(seq.meshes, seq.frame_times, title="test"))
    shots = [shoot(page, tmp_path / f"frame{frame}.png", frame) for frame in (0, 3)]
    drawn = [changed(shot, np.array(BACKGROUND)) for shot in shots]
    assert min(drawn) > 0.03, f"the object is not drawn ({drawn} of pixels)"
    assert changed(*shots) > 0.01, f"frames 0 and 3 look the same ({changed(*shots):.4f} of pixels differ)"
    turned = shoot(page, tmp_path / "turned.png", 0, query="az=120&el=-30")
    assert changed(turned, shots[0]) > 0.01  # another view of the same frame
    dom = dump_dom(page, frame=2)
    assert re.search(r'<body[^>]*data-state="ready"', dom) and re.search(r'<body[^>]*data-frame="2"', dom)
    assert re.search(r'<button id="play"[^>]*>Play<', dom)  # pinned: paused
    playing = dump_dom(page, budget_ms=1000)  # no ?frame=: plays at the frame times (0.1 s apart)
    draws = int(re.search(r'<body[^>]*data-draws="(\d+)"', playing)[1])
    assert 5 <= draws <= 15 and re.search(r'<button id="play"[^>]*>Pause<', playing)
    ci_evidence(f"viewer.html drawn by headless Chromium: {drawn[1]:.1%} of pixels are the object, "
                f"{changed(*shots):.1%} differ between frames 0 and 3; playback drew {draws} frames in 1 s")


def test_save_writes_watchables_by_default_and_opt_outs(tmp_path):
    seq = make_sequence(T=3)
    out = seq.save(tmp_path / "all")
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("sequence.glb", "preview.mp4", "viewer.html"):
        assert name in manifest["files"] and (out / name).stat().st_size > 0
    out = seq.save(tmp_path / "none", animated_glb=False, preview=False, viewer=False)
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert not {"sequence.glb", "preview.mp4", "viewer.html"} & set(files)
    assert not any((out / n).exists() for n in ("sequence.glb", "preview.mp4", "viewer.html"))


def test_failing_preview_warns_and_keeps_the_meshes(tmp_path, monkeypatch):
    import sdk.outputs.preview

    def boom(*args, **kwargs):
        raise RuntimeError("no encoder")

    monkeypatch.setattr(sdk.outputs.preview, "write_preview", boom)
    with pytest.warns(UserWarning, match="preview.mp4 not written: RuntimeError: no encoder"):
        out = make_sequence(T=2).save(tmp_path / "c")
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert "preview.mp4" not in files and "sequence.glb" in files and "frame_0001.glb" in files


def test_convert_cli_flags(tmp_path):
    from typer.testing import CliRunner

    from sdk.cli.convert import app
    from sdk.outputs.video import write_video

    frames = []
    for i in range(6):  # a dark square moving over a grey background
        img = np.full((64, 64, 3), 200, np.uint8)
        img[20:44, 8 + 3 * i:28 + 3 * i] = (40, 90, 20)
        frames.append(img)
    video = write_video(frames, tmp_path / "clip.mp4", fps=12)
    fast = ["--model", "tiny-random", "--frames", "3", "--steps", "1", "--resolution", "16", "--quiet"]
    runner = CliRunner()
    res = runner.invoke(app, [str(video), "-o", str(tmp_path / "a"), *fast])
    assert res.exit_code == 0, res.output
    files = json.loads((tmp_path / "a" / "clip" / "manifest.json").read_text())["files"]
    assert {"sequence.glb", "preview.mp4", "viewer.html"} <= set(files)
    res = runner.invoke(app, [str(video), "-o", str(tmp_path / "b"), *fast, "--no-sequence-glb", "--no-preview",
                              "--no-viewer"])
    assert res.exit_code == 0, res.output
    files = json.loads((tmp_path / "b" / "clip" / "manifest.json").read_text())["files"]
    assert not {"sequence.glb", "preview.mp4", "viewer.html"} & set(files)


def test_readme_main_command_writes_watchables(tmp_path, ci_evidence):
    """The README's main command (sample clip, embedded demo model, --format glb --format usd),
    with fewer sampler steps and a coarser grid so it stays quick: the three files are written,
    listed, agree with the manifest, and the page draws the demo in Chromium."""
    from typer.testing import CliRunner

    from sdk.cli.convert import app

    clip = Path(__file__).resolve().parents[1] / "examples" / "data" / "bend_twist_200002.mp4"
    res = CliRunner().invoke(app, [str(clip), "-o", str(tmp_path / "out"), "--format", "glb", "--format", "usd",
                                   "--steps", "4", "--resolution", "48", "--quiet"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out" / clip.stem
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"sequence.glb", "preview.mp4", "viewer.html", "sequence.usda"} <= set(manifest["files"])
    gltf, arrays = parse_glb((out / "sequence.glb").read_bytes())
    for sampler in gltf["animations"][0]["samplers"]:
        np.testing.assert_allclose(arrays[sampler["input"]].reshape(-1), manifest["frame_times"], rtol=1e-7)
    with av.open(str(out / "preview.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 12 and sum(1 for _ in container.decode(video=0)) == manifest["num_frames"] == 16
    sizes = {name: (out / name).stat().st_size for name in ("sequence.glb", "preview.mp4", "viewer.html")}
    ci_evidence(f"README main command (4 steps, R=48) wrote {sizes}")
    if find_chromium() is None:
        pytest.skip("Chromium not installed: the files were checked, the page was not drawn")
    shots = [shoot(out / "viewer.html", tmp_path / f"demo{frame}.png", frame) for frame in (0, 10)]
    assert min(changed(shot, np.array(BACKGROUND)) for shot in shots) > 0.02 and changed(*shots) > 0.005
