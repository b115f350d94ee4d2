"""sdk.data: consistent surface sampling, projection, normalisation, shared-noise encoding, the
synthetic 4D generator and the renderer, each against a plain reference or an exact property."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from sdk.models.config import VAEConfig
from sdk.data import (Camera, closest_points, consistent_surface, encode_sequence, render_rgba,
                      sample_surface_points, sequence_normalization)
from sdk.outputs.render import contact_sheet
from sdk.data.surface import NORMALIZED_HALF, closest_point_on_triangles, closest_points_bruteforce
from sdk.data.synthetic import (MOTIONS, PRIMITIVES, bend, primitive_mesh, primitive_sdf, random_sequence, twist,
                                unbend)
from sdk.models import ShapeVAE


def _bumpy_sphere(seed: int) -> trimesh.Trimesh:
    rng = np.random.default_rng(seed)
    mesh = trimesh.creation.icosphere(subdivisions=2)
    mesh.vertices = mesh.vertices * (1.0 + 0.15 * rng.random((len(mesh.vertices), 1)))
    return mesh


def _rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


# ----------------------------------------------------------------------------------------------
# closest points
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closest_points_match_bruteforce(seed):
    mesh = _bumpy_sphere(seed)
    pts = np.random.default_rng(seed + 10).normal(size=(200, 3)) * 0.8
    fast, _ = closest_points(mesh, pts)
    slow, _ = closest_points_bruteforce(mesh, pts)
    np.testing.assert_allclose(np.linalg.norm(fast - pts, axis=1), np.linalg.norm(slow - pts, axis=1), atol=1e-12)


def test_closest_point_on_triangle_regions():
    tri = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    cases = {  # query -> expected closest point
        (0.2, 0.2, 0.7): (0.2, 0.2, 0.0),  # interior
        (-1.0, -1.0, 0.3): (0.0, 0.0, 0.0),  # vertex A
        (2.0, -0.5, 0.0): (1.0, 0.0, 0.0),  # vertex B
        (-0.5, 2.0, 0.0): (0.0, 1.0, 0.0),  # vertex C
        (0.5, -1.0, 0.0): (0.5, 0.0, 0.0),  # edge AB
        (-1.0, 0.5, 0.0): (0.0, 0.5, 0.0),  # edge AC
        (1.0, 1.0, 0.0): (0.5, 0.5, 0.0),  # edge BC
    }
    q = np.array(list(cases), float)
    got = closest_point_on_triangles(q, np.repeat(tri[None], len(q), 0))
    np.testing.assert_allclose(got, np.array(list(cases.values())), atol=1e-12)


def test_closest_point_on_degenerate_triangles():
    # Collinear and coincident corners: the nearest point of the segment(s) they span.
    tris = np.array([[[0.0, 0, 0], [1, 0, 0], [2, 0, 0]],  # collinear, a-b-c
                     [[0.0, 0, 0], [2, 0, 0], [1, 0, 0]],  # collinear, c between a and b
                     [[0.5, 0.5, 0.5]] * 3])  # a point
    q = np.array([[3.0, 1.0, 0.0], [1.5, -2.0, 0.0], [0.0, 0.0, 0.0]])
    got = closest_point_on_triangles(q, tris)
    np.testing.assert_allclose(got, [[2.0, 0, 0], [1.5, 0, 0], [0.5, 0.5, 0.5]], atol=1e-12)


# ----------------------------------------------------------------------------------------------
# sampling, propagation, normalisation
# ----------------------------------------------------------------------------------------------

def test_uniform_and_sharp_samples_on_a_box():
    half = np.array([0.3, 0.5, 0.2])
    box = primitive_mesh("box", tuple(half))
    s = sample_surface_points(box, 500, 200, seed=3)
    assert len(s) == 700 and s.sharp.sum() == 200 and not s.sharp[:500].any()
    np.testing.assert_allclose(s.barycentric.sum(1), 1.0, atol=1e-12)
    pts = s.points(box.vertices, box.faces)
    on_face = np.isclose(np.abs(pts), half, atol=1e-9)
    assert on_face.any(1).all()  # every point on some face of the box
    assert (on_face[s.sharp].sum(1) >= 2).all()  # sharp points on edges: two coordinates at the bounds


def test_smooth_mesh_has_no_sharp_points():
    s = sample_surface_points(trimesh.creation.icosphere(subdivisions=3), 100, 50, seed=0)
    assert len(s) == 150 and not s.sharp.any()


def test_sampling_errors():
    with pytest.raises(ValueError, match="no faces"):
        sample_surface_points(trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), int)), 10, 0)
    with pytest.raises(ValueError, match=">= 0"):
        sample_surface_points(_bumpy_sphere(0), -1, 0)


def test_consistent_surface_follows_rigid_motion():
    mesh = _bumpy_sphere(4)
    s = sample_surface_points(mesh, 300, 0, seed=1)
    R, shift = _rotation(5), np.array([0.1, -0.2, 0.05])
    moved = mesh.vertices @ R.T + shift
    watertight = [mesh, trimesh.Trimesh(moved, mesh.faces, process=False)]
    out = consistent_surface(s, mesh.faces, [mesh.vertices, moved], watertight)
    assert out.shape == (2, 300, 7)
    # Same sample, rigidly moved: frame 1 = R frame 0 + t, normals rotate along.
    np.testing.assert_allclose(out[1, :, :3], out[0, :, :3] @ R.T + shift, atol=1e-5)
    np.testing.assert_allclose(out[1, :, 3:6], out[0, :, 3:6] @ R.T, atol=1e-5)
    assert (np.einsum("nd,nd->n", out[0, :, :3], out[0, :, 3:6]) > 0).all()  # outward normals


def test_consistent_surface_projects_onto_watertight_surface():
    # Animated mesh slightly off the watertight surface: samples land on the watertight one.
    sphere = trimesh.creation.icosphere(subdivisions=3)
    s = sample_surface_points(sphere, 200, 0, seed=2)
    out = consistent_surface(s, sphere.faces, [sphere.vertices * 1.05], [sphere])
    radius = np.linalg.norm(out[0, :, :3], axis=1)
    assert radius.max() <= 1.0 + 1e-9 and radius.min() > 0.98


def test_sequence_normalization_uses_one_box():
    rng = np.random.default_rng(0)
    frames = [rng.normal(size=(50, 3)) + [i, 0, 0] for i in range(4)]
    norm = sequence_normalization(frames)
    pts = np.concatenate([norm.apply(f) for f in frames])
    assert np.isclose(np.abs(pts).max(0).max(), NORMALIZED_HALF)
    np.testing.assert_allclose((pts.max(0) + pts.min(0)) / 2, 0.0, atol=1e-12)
    np.testing.assert_allclose(norm.invert(norm.apply(frames[1])), frames[1], atol=1e-12)
    with pytest.raises(ValueError, match="vertices all coincide"):
        sequence_normalization([np.zeros((3, 3))])


def test_encode_sequence_shares_selection_and_noise():
    torch.manual_seed(0)
    cfg = VAEConfig.tiny(pc_size=1024, pc_sharpedge_size=0, point_feats=4)
    vae = ShapeVAE(cfg).eval()
    frame = torch.randn(1, 1024, 7)
    surface = frame.repeat(3, 1, 1)
    lat = encode_sequence(vae, surface, seed=5)
    assert lat.shape == (3, cfg.num_latents, cfg.embed_dim)
    torch.testing.assert_close(lat[0], lat[1])  # identical frames -> identical latents
    torch.testing.assert_close(lat[0], lat[2])
    # Reference: the same selection and noise by hand.
    gen = torch.Generator().manual_seed(5)
    sel = vae.encoder.select_points(surface[:1], generator=gen)
    noise = torch.randn((1, cfg.num_latents, cfg.embed_dim), generator=gen)
    ref = vae.encode(surface, selection=sel, noise=noise)
    torch.testing.assert_close(lat, ref)
    assert not torch.allclose(encode_sequence(vae, surface, seed=6), lat)


# ----------------------------------------------------------------------------------------------
# synthetic generator
# ----------------------------------------------------------------------------------------------

def test_deformations_invert():
    p = np.random.default_rng(0).uniform(-0.3, 0.3, size=(500, 3))
    for k in (-1.2, -0.3, 0.0, 0.4, 1.5):
        np.testing.assert_allclose(unbend(bend(p, k), k), p, atol=1e-10)
    np.testing.assert_allclose(twist(twist(p, 1.3), -1.3), p, atol=1e-12)
    # Bending keeps arc length along the axis: the bent y axis has the same length.
    axis = np.stack([np.zeros(101), np.linspace(-0.5, 0.5, 101), np.zeros(101)], 1)
    arc = np.linalg.norm(np.diff(bend(axis, 1.0), axis=0), axis=1).sum()
    assert arc == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("kind", PRIMITIVES)
def test_template_meshes_lie_on_their_sdf(kind):
    size = {"sphere": (0.3, 0.4, 0.35), "box": (0.3, 0.2, 0.25), "cylinder": (0.2, 0.4),
            "capsule": (0.15, 0.3), "torus": (0.35, 0.1)}[kind]
    mesh = primitive_mesh(kind, size)
    assert mesh.is_watertight and mesh.volume > 0  # closed with outward winding
    d = primitive_sdf(kind, size, mesh.vertices)
    # Flat faces are exact; subdivided curved faces sit slightly inside (chords of the curve).
    assert np.abs(d).max() < (1e-9 if kind == "box" else 0.01 * max(size))


@pytest.mark.parametrize("motion", MOTIONS)
def test_random_sequences(motion):
    seq = random_sequence(11, motion, num_frames=6)
    assert seq.motion == motion and seq.num_frames == 6
    verts = np.concatenate([seq.vertices(t) for t in range(6)])
    assert np.abs(verts).max() == pytest.approx(NORMALIZED_HALF, rel=1e-9)  # one box for all frames
    for t in (0, 5):
        # Every animated vertex is on or inside the union (overlapping parts hide some vertices).
        assert seq.sdf(t, seq.vertices(t)).max() < 1e-6
        wt = seq.watertight_mesh(t, 48)
        assert wt.is_watertight and len(wt.faces) > 100
        # Occupancy labels agree with the watertight surface's side: points pushed along its normals.
        probe = wt.vertices[::7]
        n = wt.vertex_normals[::7]
        assert seq.occupancy(t, probe - 0.03 * n).mean() > 0.95
        assert not seq.occupancy(t, probe + 0.03 * n).mean() > 0.05


def test_merge_split_changes_topology():
    seen = set()
    for seed in (0, 7):  # seed 0 splits, seed 7 merges
        seq = random_sequence(seed, "merge_split", num_frames=8)
        counts = [len(seq.watertight_mesh(t, 48).split(only_watertight=False)) for t in (0, 7)]
        seen.add(tuple(counts))
    assert (2, 1) in seen and (1, 2) in seen  # merging and splitting both occur


def test_random_sequence_is_seeded():
    a, b = random_sequence(3), random_sequence(3)
    np.testing.assert_array_equal(a.vertices(4), b.vertices(4))
    assert not np.array_equal(random_sequence(4).vertices(0)[:10], a.vertices(0)[:10])
    with pytest.raises(ValueError, match="unknown motion"):
        random_sequence(0, "teleport")


# ----------------------------------------------------------------------------------------------
# renderer
# ----------------------------------------------------------------------------------------------

def test_render_square_coverage_and_culling():
    # A square of side 1 facing the camera at distance 3, 40 degree field of view.
    verts = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], float)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    cam = Camera(azimuth=0.0, elevation=0.0, distance=3.0, fov=40.0)
    size = 200
    img = render_rgba(verts, faces, cam, size, supersample=1)
    focal = 0.5 * size / math.tan(math.radians(20))
    expected = (focal / 3.0) ** 2
    assert img[..., 3].astype(bool).sum() == pytest.approx(expected, rel=0.03)
    assert img[0, 0, 3] == 0 and img[size // 2, size // 2, 3] == 255
    back = render_rgba(verts, faces[:, ::-1], cam, size, supersample=1)
    assert back[..., 3].max() == 0  # back faces are culled


def test_render_depth_order_and_colors():
    near = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    far = trimesh.creation.box(extents=(1.5, 1.5, 0.2))
    far.vertices = far.vertices - [0, 0, 1.0]
    verts = np.concatenate([near.vertices, far.vertices])
    faces = np.concatenate([near.faces, far.faces + len(near.vertices)])
    colors = np.concatenate([np.tile([1.0, 0, 0], (len(near.faces), 1)), np.tile([0, 0, 1.0], (len(far.faces), 1))])
    img = render_rgba(verts, faces, Camera(azimuth=0, elevation=0), 128, colors)
    center = img[64, 64]
    assert center[0] > 0 and center[2] == 0  # the near red box hides the far blue one
    assert img[64, 40, 2] > 0 and img[64, 40, 0] == 0


def test_render_chunks_match_one_pass():
    from sdk.outputs.render import _rasterize

    mesh = _bumpy_sphere(1)
    cam = Camera()
    pix, depth = cam.project(mesh.vertices, 96)
    whole = _rasterize(pix, depth, np.asarray(mesh.faces), 96, chunk=10**9)
    chunked = _rasterize(pix, depth, np.asarray(mesh.faces), 96, chunk=37)
    np.testing.assert_array_equal(whole[0], chunked[0])
    np.testing.assert_array_equal(whole[1], chunked[1])


def test_contact_sheet_layout():
    meshes = [trimesh.creation.icosphere(subdivisions=1)] * 10
    images = [np.full((64, 64, 3), 200, np.uint8)] * 10
    sheet = contact_sheet(meshes, images, max_frames=4, tile=32)
    assert sheet.shape == (64, 128, 3)
    assert (sheet[32:] < 250).any()  # something rendered in the mesh row
    assert contact_sheet(meshes, max_frames=3, tile=16).shape == (16, 48, 3)
    assert contact_sheet(meshes, images[:3], max_frames=3, tile=16).shape == (16, 48, 3)  # unpaired: meshes only


def test_write_video_round_trip(tmp_path):
    from sdk.inputs.frames import InputError, load_frames
    from sdk.outputs.video import write_video

    frames = [np.full((32, 48, 3), (40 * i, 100, 200), np.uint8) for i in range(5)]
    path = write_video(frames, tmp_path / "clip.mp4", fps=10)
    back = load_frames(path, 5)
    assert len(back) == 5 and back.frames[0].shape[:2] == (32, 48)
    assert np.abs(back.frames[3][..., :3].astype(int) - frames[3]).mean() < 6
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary left behind
    with pytest.raises(InputError, match="even size"):
        write_video([np.zeros((31, 32, 3), np.uint8)], tmp_path / "odd.mp4")
    assert not (tmp_path / "odd.mp4").exists()


def test_export_sequence_and_moving_camera(tmp_path):
    import json

    from sdk.data.synthetic import export_sequence, render_frames

    seq = random_sequence(2, "articulated", num_frames=3)
    orbit = [Camera(azimuth=a) for a in (0.0, 60.0, 120.0)]
    frames = render_frames(seq, orbit, size=64)
    fixed = render_frames(seq, Camera(azimuth=0.0), size=64)
    assert np.array_equal(frames[0], fixed[0]) and not np.array_equal(frames[2], fixed[2])
    out = export_sequence(seq, tmp_path / "seq", resolution=32, frames=frames)
    info = json.loads((out / "sequence.json").read_text())
    assert info["motion"] == "articulated" and len(info["parts"]) == len(seq.parts)
    for t in range(3):
        assert trimesh.load(out / f"frame_{t:04d}.ply").is_watertight
        animated = trimesh.load(out / f"animated_{t:04d}.ply", process=False)
        np.testing.assert_allclose(animated.vertices, seq.vertices(t), atol=1e-6)
    assert (out / "video.mp4").stat().st_size > 0
