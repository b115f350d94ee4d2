"""Marching cubes on the fixed world box: geometry against analytic surfaces, the index -> world
mapping, winding, non-finite samples, empty fields and the backend seam."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from sdk.generation import mcubes
from sdk.generation.mcubes import WorldBox, grid_to_world, marching_cubes

BOX = WorldBox()
R = 64
VOXEL = BOX.size / R


def world_grid(resolution: int = R, box: WorldBox = BOX) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axis = grid_to_world(np.arange(resolution + 1), resolution, box)
    return np.meshgrid(axis, axis, axis, indexing="ij")


# Analytic signed distances (negative inside); fields are -sdf (positive inside).

def sphere_sdf(p: np.ndarray, center=(0.05, -0.03, 0.02), radius=0.6) -> np.ndarray:
    return np.linalg.norm(p - np.asarray(center), axis=-1) - radius


def torus_sdf(p: np.ndarray, major=0.55, minor=0.22) -> np.ndarray:
    ring = np.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2) - major
    return np.sqrt(ring ** 2 + p[..., 2] ** 2) - minor


BOXES = (((-0.31, -0.12, 0.03), (0.41, 0.29, 0.26)), ((0.33, 0.18, 0.07), (0.3, 0.37, 0.41)))


def box_sdf(p: np.ndarray, center, half) -> np.ndarray:
    d = np.abs(p - np.asarray(center)) - np.asarray(half)
    return np.linalg.norm(np.maximum(d, 0.0), axis=-1) + np.minimum(d.max(axis=-1), 0.0)


def boxes_sdf(p: np.ndarray) -> np.ndarray:
    # Exact outside the union; a lower bound of the distance inside it.
    return np.minimum(box_sdf(p, *BOXES[0]), box_sdf(p, *BOXES[1]))


def boxes_volume() -> float:
    c0, h0 = np.asarray(BOXES[0][0]), np.asarray(BOXES[0][1])
    c1, h1 = np.asarray(BOXES[1][0]), np.asarray(BOXES[1][1])
    overlap = np.clip(np.minimum(c0 + h0, c1 + h1) - np.maximum(c0 - h0, c1 - h1), 0.0, None)
    return float(np.prod(2 * h0) + np.prod(2 * h1) - np.prod(overlap))


# name: (sdf, analytic volume, bound on vertex-to-surface distance in voxels). Box edges and
# corners are cut by linear interpolation along grid edges, hence the looser bound there.
SHAPES = {
    "sphere": (sphere_sdf, 4.0 / 3.0 * np.pi * 0.6 ** 3, 0.05),
    "torus": (torus_sdf, 2 * np.pi ** 2 * 0.55 * 0.22 ** 2, 0.05),
    "two_boxes": (boxes_sdf, boxes_volume(), 0.35),
}


def field_of(sdf, resolution: int = R) -> np.ndarray:
    points = np.stack(world_grid(resolution), axis=-1)
    return (-sdf(points)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Analytic shapes
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SHAPES))
def test_analytic_shapes(name):
    sdf, volume, bound = SHAPES[name]
    mesh = marching_cubes(field_of(sdf))
    assert isinstance(mesh, trimesh.Trimesh) and len(mesh.faces) > 1000
    assert mesh.is_watertight and mesh.is_winding_consistent
    # Outward normals for a positive-inside field: positive signed volume, close to analytic.
    assert mesh.volume > 0
    assert abs(mesh.volume - volume) / volume < 0.02, (mesh.volume, volume)
    # Vertices lie on the surface (sphere/torus: exact distance; boxes: |sdf|, exact outside).
    # Measured at R=64: sphere 0.007, torus 0.017, boxes 0.21 voxel.
    distance = np.abs(sdf(mesh.vertices))
    assert distance.max() < bound * VOXEL, (name, distance.max() / VOXEL)
    # Every vertex inside the world box.
    assert mesh.vertices.min() >= BOX.min and mesh.vertices.max() <= BOX.max
    # No duplicate vertices and no degenerate faces.
    assert len(np.unique(mesh.vertices, axis=0)) == len(mesh.vertices)
    assert (mesh.area_faces > 0).all()


def test_sphere_chamfer_and_outward_normals():
    center = np.array([0.05, -0.03, 0.02])
    mesh = marching_cubes(field_of(sphere_sdf))
    # Surface -> mesh: dense analytic samples find a vertex within one voxel (no holes or gaps).
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(20000, 3))
    surface = center + 0.6 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    to_mesh, _ = cKDTree(mesh.vertices).query(surface)
    to_surface = np.abs(sphere_sdf(mesh.vertices))
    chamfer = to_mesh.mean() + to_surface.mean()
    assert to_mesh.max() < VOXEL and chamfer < 0.5 * VOXEL, (to_mesh.max() / VOXEL, chamfer / VOXEL)
    # Every face normal points away from the centre.
    outward = np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center - center)
    assert (outward > 0).all()


def test_torch_and_numpy_inputs_agree_and_are_deterministic():
    field = field_of(torus_sdf, 32)
    a = marching_cubes(field)
    b = marching_cubes(torch.from_numpy(field))
    c = marching_cubes(torch.from_numpy(field).double(), backend="cpu")
    for other in (b, c):
        np.testing.assert_array_equal(a.vertices, other.vertices)
        np.testing.assert_array_equal(a.faces, other.faces)


# --------------------------------------------------------------------------------------------
# The index -> world mapping
# --------------------------------------------------------------------------------------------

def test_grid_to_world_mapping():
    box = WorldBox(-2.0, 3.0)
    idx = np.array([0, 8, 16])
    np.testing.assert_array_equal(grid_to_world(idx, 16, box), [-2.0, 0.5, 3.0])
    t = grid_to_world(torch.arange(17), 16, box)
    assert t.dtype == torch.float32 and t[0] == -2.0 and t[-1] == 3.0
    assert grid_to_world(torch.arange(17), 16, box, dtype=torch.float64)[8] == 0.5
    assert BOX.size == pytest.approx(2.02)
    with pytest.raises(ValueError, match="finite min < max"):
        WorldBox(1.0, -1.0)
    with pytest.raises(ValueError, match="resolution must be a positive integer"):
        grid_to_world(np.arange(3), 0)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("box", [WorldBox(), WorldBox(-2.0, 3.0)], ids=["default", "offset"])
def test_plane_vertices_land_at_world_coordinate(axis, box):
    resolution = 40
    c = box.min + 0.37 * box.size  # between grid planes
    coords = world_grid(resolution, box)
    field = (c - coords[axis]).astype(np.float32)  # inside: coordinate < c
    mesh = marching_cubes(field, box=box)
    assert len(mesh.vertices) > 0
    np.testing.assert_allclose(mesh.vertices[:, axis], c, atol=1e-5 * box.size)
    # The other two coordinates sit exactly on the world grid lines of grid_to_world.
    lines = grid_to_world(np.arange(resolution + 1), resolution, box)
    for other in {0, 1, 2} - {axis}:
        assert np.isin(mesh.vertices[:, other], lines).all()
    # The plane faces +axis: normals point to where the field is negative.
    assert (mesh.face_normals[:, axis] > 0.999).all()


def test_level_parameter():
    field = field_of(sphere_sdf)
    mesh = marching_cubes(field, level=0.1)  # the sphere of radius 0.5
    np.testing.assert_allclose(np.abs(sphere_sdf(mesh.vertices, radius=0.5)).max(), 0.0, atol=0.5 * VOXEL)


def test_exact_zero_samples_stay_watertight():
    # Integer field with many samples exactly at the level (degenerate Lewiner cases).
    i = np.arange(33) - 16
    ii, jj, kk = np.meshgrid(i, i, i, indexing="ij")
    for radius2 in (25, 50, 81):
        field = (radius2 - (ii ** 2 + jj ** 2 + kk ** 2)).astype(np.float32)
        assert (field == 0).sum() > 0
        mesh = marching_cubes(field)
        assert mesh.is_watertight and mesh.volume > 0
        assert len(np.unique(mesh.vertices, axis=0)) == len(mesh.vertices)
        assert (mesh.area_faces > 0).all()


# --------------------------------------------------------------------------------------------
# Non-finite samples and empty results
# --------------------------------------------------------------------------------------------

def test_nonfinite_outside_samples_change_nothing():
    field = field_of(sphere_sdf)
    clean = marching_cubes(field)
    dirty = field.copy()
    dirty[:8] = np.nan          # far outside the sphere
    dirty[-3:, :, :5] = np.inf  # +inf counts as outside too
    dirty[:, -4:] = -np.inf
    mesh = marching_cubes(dirty)
    np.testing.assert_array_equal(mesh.vertices, clean.vertices)
    np.testing.assert_array_equal(mesh.faces, clean.faces)


def test_nonfinite_inside_samples_carve_a_cavity():
    field = field_of(sphere_sdf)
    clean = marching_cubes(field)
    dirty = field.copy()
    dirty[30:34, 30:34, 30:34] = np.nan  # inside the sphere
    mesh = marching_cubes(torch.from_numpy(dirty))
    assert np.isfinite(mesh.vertices).all()
    assert mesh.is_watertight
    assert 0 < mesh.volume < clean.volume
    assert len(mesh.split(only_watertight=False)) == 2  # outer shell + cavity


@pytest.mark.parametrize("value", [-1.0, 1.0, np.nan])
def test_no_crossing_gives_empty_mesh(value):
    mesh = marching_cubes(np.full((17, 17, 17), value, dtype=np.float32))
    assert isinstance(mesh, trimesh.Trimesh)
    assert len(mesh.vertices) == 0 and len(mesh.faces) == 0


def test_level_outside_range_gives_empty_mesh():
    mesh = marching_cubes(field_of(sphere_sdf, 16), level=5.0)
    assert len(mesh.faces) == 0


@pytest.mark.parametrize("shape", [(5, 5), (5, 5, 6), (1, 1, 1)])
def test_bad_shapes(shape):
    with pytest.raises(ValueError, match="R\\+1"):
        marching_cubes(np.ones(shape, dtype=np.float32))


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------

def test_cuda_backend_without_a_gpu_says_why():
    from sdk.kernels.cuda import cuda_kernels_available

    if cuda_kernels_available():
        pytest.skip("CUDA kernels are available here; the GPU tests cover the backend")
    with pytest.raises(RuntimeError, match="GPU marching cubes is unavailable: .+; use backend='cpu'"):
        marching_cubes(field_of(sphere_sdf, 8), backend="cuda")


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown marching-cubes backend"):
        marching_cubes(field_of(sphere_sdf, 8), backend="metal")
    with pytest.raises(ValueError, match="selection rule"):
        mcubes.register_backend("auto", lambda *a: None)


def test_auto_is_cpu():
    field = field_of(sphere_sdf, 16)
    a = marching_cubes(field, backend="auto")
    b = marching_cubes(field, backend="cpu")
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.faces, b.faces)


def test_plugged_backend_gets_cleanup(monkeypatch):
    """A plugged-in backend's output is cleaned: faces on non-finite vertices dropped, exact
    duplicate vertices merged (first-occurrence order), degenerate faces removed."""
    calls = []

    def fake(field, level, box):
        calls.append((field.shape, level, box))
        vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [np.nan, 0, 0],
                             [0, 0, 1], [1, 0, 0]], dtype=np.float64)
        faces = np.array([[0, 1, 2], [0, 3, 1], [0, 2, 4], [0, 4, 5], [1, 5, 2]])
        return vertices, faces

    monkeypatch.setitem(mcubes.BACKENDS, "fake", fake)
    mesh = marching_cubes(np.zeros((3, 3, 3)) - 1.0, level=0.5, backend="fake")
    assert calls == [((3, 3, 3), 0.5, BOX)]
    np.testing.assert_array_equal(mesh.vertices, [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    # [0,3,1] touched NaN; vertex 5 == vertex 1 so [1,5,2] became degenerate.
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3], [0, 3, 1]])
