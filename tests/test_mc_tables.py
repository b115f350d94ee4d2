"""The marching-cubes tables of the CUDA kernels: regenerated and compared with the committed header,
sanity checks, and watertight meshes on random fields through a NumPy model of the kernels.
"""

from __future__ import annotations



import numpy as np
import pytest
import trimesh

from sdk.generation.mcubes import WorldBox, grid_to_world, marching_cubes

from cuda_support import (
    CUDA_DIR,
    FIELDS,
    GEN,
    TABLES,
    _active_cells,
    _ambiguous_faces,
    _canonical,
    assert_same_surface_as_cpu,
    blob_field,
    chamfer,
    host_mc,
    numpy_mc,
    random_noise_field,
    sphere_field,
)


def test_table_generator_matches_committed_header(tmp_path):
    out = tmp_path / "mc_tables.h"
    assert GEN.main(["--output", str(out)]) == 0
    assert out.read_text() == (CUDA_DIR / "mc_tables.h").read_text(), \
        "cpp_ext/cuda/mc_tables.h differs from gen_mc_tables.py output; rerun the generator"
    assert GEN.main(["--check"]) == 0

def test_table_geometry_codes():
    for e, (a, b) in enumerate(GEN.EDGES):
        code = (TABLES["edge_codes"] >> (5 * e)) & 31
        lower, axis = GEN.edge_geometry(e)
        assert code == lower[0] | (lower[1] << 1) | (lower[2] << 2) | (axis << 3)
        pa, pb = np.array(GEN.CORNERS[a]), np.array(GEN.CORNERS[b])
        assert np.abs(pa - pb).sum() == 1  # edges join neighbouring corners
        assert tuple(np.minimum(pa, pb)) == lower
    for d in range(3):
        assert all(((TABLES["corner_bits"][d] >> c) & 1) == GEN.CORNERS[c][d] for c in range(8))
    # every face is a 4-cycle of cube edges, counter-clockwise seen from outside
    for face in GEN.FACES:
        pts = np.array([GEN.CORNERS[c] for c in face], dtype=float)
        normal = np.cross(pts[1] - pts[0], pts[2] - pts[1])
        outward = pts.mean(axis=0) - 0.5
        assert np.dot(normal, outward) > 0
        for t in range(4):
            GEN.edge_of(face[t], face[(t + 1) % 4])

def test_tables_sanity():
    tris, masks = TABLES["triangles"], TABLES["edge_mask"]
    assert len(tris) == 256 and len(masks) == 256
    assert tris[0] == [] and tris[255] == []
    assert TABLES["max_triangles"] <= 5
    for case in range(256):
        crossed = {e for e in range(12) if masks[case] >> e & 1}
        assert crossed == {e for e, (a, b) in enumerate(GEN.EDGES) if (case >> a & 1) != (case >> b & 1)}
        used = {e for t in tris[case] for e in t}
        assert used == crossed, f"case {case}: triangles use {sorted(used)}, crossed {sorted(crossed)}"
        for t in tris[case]:
            assert len(set(t)) == 3
        # inside one cell, every triangle edge is shared by two triangles (in opposite
        # directions) or lies on a cube face (the cell's boundary loop)
        directed = {}
        for t in tris[case]:
            for i in range(3):
                directed[(t[i], t[(i + 1) % 3])] = directed.get((t[i], t[(i + 1) % 3]), 0) + 1
        for (a, b), count in directed.items():
            assert count == 1, f"case {case}: edge {a}->{b} used twice in one direction"
            if (b, a) not in directed:
                assert GEN._faces_of_edge(a) & GEN._faces_of_edge(b), f"case {case}: open edge {a}-{b} inside the cube"

def test_tables_complementary_cases():
    tris = TABLES["triangles"]
    for case in range(256):
        comp = 255 - case
        assert TABLES["edge_mask"][case] == TABLES["edge_mask"][comp]
        if _ambiguous_faces(case) == 0:
            # the complement is the same surface, every triangle reversed
            mine = sorted(_canonical(list(t)) for t in tris[case])
            flipped = sorted(_canonical([t[0], t[2], t[1]]) for t in tris[comp])
            assert mine == flipped, f"case {case} vs {comp}"

def test_tables_orientation_single_corner():
    """Case 'only corner c inside': one triangle whose normal points away from corner c."""
    for c in range(8):
        (tri,) = TABLES["triangles"][1 << c]
        pts = []
        for e in tri:
            a, b = GEN.EDGES[e]
            pts.append((np.array(GEN.CORNERS[a]) + np.array(GEN.CORNERS[b])) / 2)
        normal = np.cross(pts[1] - pts[0], pts[2] - pts[0])
        assert np.dot(normal, np.mean(pts, axis=0) - np.array(GEN.CORNERS[c])) > 0

@pytest.mark.parametrize("seed", range(4))
def test_tables_watertight_on_random_noise(seed):
    verts, faces = numpy_mc(random_noise_field(12, seed))
    mesh = trimesh.Trimesh(verts, faces, process=False)
    assert len(faces) > 500
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward normals

@pytest.mark.parametrize("name", sorted(FIELDS))
def test_host_mc_matches_numpy_model(host_lib, name):
    field = FIELDS[name](40)
    verts, faces = host_mc(host_lib, field)
    ref_v, ref_f = numpy_mc(field)
    assert np.array_equal(verts, ref_v)  # bit-identical world coordinates
    assert np.array_equal(faces, ref_f)

def test_host_mc_matches_numpy_model_level_box_and_noise(host_lib):
    box = WorldBox(-0.7, 1.3)
    for seed in range(3):
        field = random_noise_field(10, seed)
        for level in (0.0, 0.37, -0.2):
            v, f = host_mc(host_lib, field, level, box)
            rv, rf = numpy_mc(field, level, box)
            assert np.array_equal(v, rv) and np.array_equal(f, rf)

def test_host_mc_vertices_follow_grid_to_world_exactly(host_lib):
    R = 32
    verts, _ = host_mc(host_lib, sphere_field(R))
    axis = grid_to_world(np.arange(R + 1), R)
    on_grid = np.isin(verts, axis)
    # every vertex lies on a grid edge: at least two coordinates are exact grid coordinates
    assert (on_grid.sum(axis=1) >= 2).all()

@pytest.mark.parametrize("name", sorted(FIELDS))
def test_host_mc_agrees_with_scikit_image(host_lib, name):
    R = 64
    field = FIELDS[name](R)
    verts, faces = host_mc(host_lib, field)
    assert_same_surface_as_cpu(field, verts, faces)

def test_host_mc_nonfinite_samples_are_outside(host_lib):
    R = 32
    field = sphere_field(R)
    field[10:14, 12:20, 5:25] = np.nan
    field[20, 20, 20] = np.inf
    field[18, 15, 16] = -np.inf
    verts, faces = host_mc(host_lib, field)
    assert np.isfinite(verts).all()
    ref_v, ref_f = numpy_mc(field)
    assert np.array_equal(verts, ref_v) and np.array_equal(faces, ref_f)
    cpu = marching_cubes(field, backend="cpu")
    assert abs(len(verts) - len(cpu.vertices)) <= 0.001 * len(cpu.vertices) + 2
    assert chamfer(verts, cpu.vertices) < 1e-5
    assert trimesh.Trimesh(verts, faces, process=False).is_watertight

def test_host_mc_empty_fields(host_lib):
    for value in (-1.0, 1.0, np.nan):
        v, f = host_mc(host_lib, np.full((9, 9, 9), value, dtype=np.float32))
        assert v.shape == (0, 3) and f.shape == (0, 3)

def test_host_mc_sparse_equals_dense(host_lib):
    R = 40
    field = blob_field(R, seed=3)
    dense_v, dense_f = host_mc(host_lib, field)
    rng = np.random.default_rng(0)
    cells = _active_cells(field)
    noisy = np.concatenate([cells, cells[:100], [-5, R ** 3, R ** 3 + 7]])  # duplicates, invalid ids
    rng.shuffle(noisy)
    for ids in (cells.astype(np.int64), noisy.astype(np.int64), cells.astype(np.int32)):
        v, f = host_mc(host_lib, field, cells=ids)
        assert np.array_equal(v, dense_v) and np.array_equal(f, dense_f)
    # every cell listed also gives the dense result
    v, f = host_mc(host_lib, field, cells=np.arange(R ** 3, dtype=np.int64))
    assert np.array_equal(v, dense_v) and np.array_equal(f, dense_f)

def test_host_mc_sparse_subset(host_lib):
    R = 24
    field = sphere_field(R)
    cells = _active_cells(field, dilate=0)
    subset = cells[: len(cells) // 3]
    v, f = host_mc(host_lib, field, cells=subset)
    rv, rf = numpy_mc(field, cells=subset)
    assert np.array_equal(v, rv) and np.array_equal(f, rf)
    assert 0 < len(f) < len(host_mc(host_lib, field)[1])
    v, f = host_mc(host_lib, field, cells=np.zeros(0, dtype=np.int64))
    assert len(v) == 0 and len(f) == 0
