"""Field decoding on the fixed world box: the grid, chunking, hierarchical vs dense on analytic
fields and on a small random ShapeVAE, the once-per-frame K/V cache, and argument checks."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from sdk.models.config import VAEConfig
from sdk.generation.decode import (DecodeStats, decode_field_dense, decode_field_hierarchical, decode_frame,
                        default_coarse_resolution, grid_points, resolve_chunk_size, vae_query_fn)
from sdk.generation.mcubes import WorldBox, grid_to_world, marching_cubes
from sdk.models.vae import ShapeVAE

BOX = WorldBox()


# --------------------------------------------------------------------------------------------
# Analytic fields, scaled to a realistic magnitude (10 * -sdf: |v| = 0.95 is ~0.1 world units)
# --------------------------------------------------------------------------------------------

def sphere(p: torch.Tensor) -> torch.Tensor:
    return 10.0 * (0.6 - (p - torch.tensor([0.05, -0.03, 0.02])).norm(dim=-1))


def torus(p: torch.Tensor) -> torch.Tensor:
    ring = torch.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2) - 0.55
    return 10.0 * (0.22 - torch.sqrt(ring ** 2 + p[:, 2] ** 2))


BOX_A = (torch.tensor([-0.31, -0.12, 0.03]), torch.tensor([0.41, 0.29, 0.26]))
BOX_B = (torch.tensor([0.33, 0.18, 0.07]), torch.tensor([0.3, 0.37, 0.41]))


def _box_distance(p: torch.Tensor, center: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    # Max-norm box distance: the exact SDF inside, a 1-Lipschitz lower bound outside, same zero
    # set, and much cheaper than the Euclidean form.
    return ((p - center).abs_() - half).amax(dim=-1)


def two_boxes(p: torch.Tensor) -> torch.Tensor:
    return -10.0 * torch.minimum(_box_distance(p, *BOX_A), _box_distance(p, *BOX_B))


SHAPES = {"sphere": sphere, "torus": torus, "two_boxes": two_boxes}


class Counting:
    """Wraps a query function; records every call's size and the points it saw."""

    def __init__(self, fn, keep_points: bool = False) -> None:
        self.fn = fn
        self.sizes: list[int] = []
        self.keep_points = keep_points
        self.points: list[torch.Tensor] = []

    def __call__(self, xyz: torch.Tensor) -> torch.Tensor:
        assert xyz.dim() == 2 and xyz.shape[1] == 3 and xyz.dtype == torch.float32
        assert not torch.is_grad_enabled()
        self.sizes.append(xyz.shape[0])
        if self.keep_points:
            self.points.append(xyz.clone())
        return self.fn(xyz)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a & b).sum().item() / max(1, (a | b).sum().item())


@functools.lru_cache(maxsize=None)
def decoded_pair(name: str, resolution: int):
    dense, dense_stats = decode_field_dense(SHAPES[name], resolution)
    counter = Counting(SHAPES[name])
    hier, hier_stats = decode_field_hierarchical(counter, resolution)
    assert sum(counter.sizes) == hier_stats.num_queries
    return dense, dense_stats, hier, hier_stats


# --------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------

def test_grid_points_layout_and_values():
    box = WorldBox(-2.0, 3.0)
    r = 6
    pts = grid_points(r, box)
    assert pts.shape == ((r + 1) ** 3, 3) and pts.dtype == torch.float32
    axis = grid_to_world(np.arange(r + 1), r, box).astype(np.float32)
    i, j, k = 2, 5, 1
    row = (i * (r + 1) + j) * (r + 1) + k
    assert pts[row].tolist() == [axis[i], axis[j], axis[k]]  # x-major, ij indexing, exact
    assert pts.min() == box.min and pts.max() == box.max
    assert grid_points(4, dtype=torch.float64).dtype == torch.float64


def test_dense_is_the_field_on_grid_points():
    field, stats = decode_field_dense(torus, 24)
    assert field.shape == (25, 25, 25) and field.dtype == torch.float32
    assert torch.equal(field.reshape(-1), torus(grid_points(24)))
    assert stats == DecodeStats(resolution=24, method="dense", num_queries=25 ** 3, dense_queries=25 ** 3,
                                seconds=stats.seconds)
    assert stats.seconds >= 0 and stats.query_fraction == 1.0


def test_dense_field_feeds_marching_cubes_in_world_coordinates():
    field, _ = decode_field_dense(sphere, 48)
    mesh = marching_cubes(field)
    distance = (np.linalg.norm(mesh.vertices - [0.05, -0.03, 0.02], axis=1) - 0.6).max()
    assert mesh.is_watertight and mesh.volume > 0 and abs(distance) < 0.05 * BOX.size / 48


# --------------------------------------------------------------------------------------------
# Chunking
# --------------------------------------------------------------------------------------------

def test_results_independent_of_chunk_size():
    reference, _ = decode_field_dense(two_boxes, 40)
    ref_hier, ref_stats = decode_field_hierarchical(two_boxes, 40)
    for chunk in (1, 777, 4096, 10 ** 7):
        if chunk == 1:
            counter = Counting(two_boxes)
            dense, _ = decode_field_dense(counter, 8, chunk_size=1)
            assert set(counter.sizes) == {1} and torch.equal(dense, decode_field_dense(two_boxes, 8)[0])
            continue
        counter = Counting(two_boxes)
        dense, _ = decode_field_dense(counter, 40, chunk_size=chunk)
        assert max(counter.sizes) <= chunk
        assert torch.equal(dense, reference)
        counter = Counting(two_boxes)
        hier, stats = decode_field_hierarchical(counter, 40, chunk_size=chunk)
        assert max(counter.sizes) <= chunk
        assert torch.equal(hier, ref_hier) and stats.num_queries == ref_stats.num_queries


def test_default_chunk_size_from_memory_cap():
    assert resolve_chunk_size(sphere, None) == 2 ** 18  # 1 GiB / 4 KiB per point

    def fn(x):
        return sphere(x)

    fn.bytes_per_point = 1000
    assert resolve_chunk_size(fn, None, max_chunk_bytes=10 ** 6) == 1000
    assert resolve_chunk_size(fn, 123) == 123
    counter = Counting(sphere)
    decode_field_dense(counter, 20, max_chunk_bytes=4096 * 1000)
    assert max(counter.sizes) == 1000 and sum(counter.sizes) == 21 ** 3


# --------------------------------------------------------------------------------------------
# Hierarchical vs dense, analytic
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("resolution", [128, 256])
@pytest.mark.parametrize("name", list(SHAPES))
def test_hierarchical_matches_dense_on_analytic_shapes(name, resolution):
    dense, dense_stats, hier, hier_stats = decoded_pair(name, resolution)
    assert hier.shape == dense.shape == (resolution + 1,) * 3
    occupancy_iou = iou(dense > 0, hier > 0)
    fraction = hier_stats.num_queries / dense_stats.num_queries
    print(f"\n{name} R={resolution}: dense {dense_stats.num_queries} queries, hierarchical "
          f"{hier_stats.num_queries} ({100 * fraction:.1f}%), levels {hier_stats.levels}, "
          f"occupancy IoU {occupancy_iou:.6f}")
    assert occupancy_iou >= 0.99
    if resolution == 256:  # docs/decoding.md: 16.6-17.1% of the dense grid at R = 256
        assert 0.1655 <= fraction <= 0.1715, f"{name}: {100 * fraction:.2f}% of the dense grid"
    # The band covers the surface, so the sign is right everywhere and every cell the surface
    # crosses was queried: the meshes are identical.
    assert torch.equal(dense > 0, hier > 0)
    dense_mesh, hier_mesh = marching_cubes(dense), marching_cubes(hier)
    np.testing.assert_array_equal(dense_mesh.vertices, hier_mesh.vertices)
    np.testing.assert_array_equal(dense_mesh.faces, hier_mesh.faces)
    assert hier_mesh.is_watertight and hier_mesh.volume > 0
    # Stats are consistent.
    assert hier_stats.method == "hierarchical" and hier_stats.resolution == resolution
    assert hier_stats.dense_queries == dense_stats.num_queries == (resolution + 1) ** 3
    assert [r for r, _ in hier_stats.levels] == [resolution // 4, resolution // 2, resolution]
    assert hier_stats.levels[0][1] == (resolution // 4 + 1) ** 3
    assert sum(n for _, n in hier_stats.levels) == hier_stats.num_queries
    if resolution == 256:
        assert fraction <= 0.25


def test_hierarchical_queried_values_are_exact_and_never_repeated():
    counter = Counting(sphere, keep_points=True)
    hier, stats = decode_field_hierarchical(counter, 64)
    dense, _ = decode_field_dense(sphere, 64)
    points = torch.cat(counter.points)
    assert len(torch.unique(points, dim=0)) == len(points) == stats.num_queries
    # Each queried point holds exactly the dense value (same world coordinates, bit for bit).
    index = torch.round((points.double() - BOX.min) / BOX.size * 64).long()
    flat = (index[:, 0] * 65 + index[:, 1]) * 65 + index[:, 2]
    assert torch.equal(hier.reshape(-1)[flat], dense.reshape(-1)[flat])
    # Points never queried sit away from the surface, with the correct sign.
    skipped = torch.ones(65 ** 3, dtype=torch.bool)
    skipped[flat] = False
    assert (dense.reshape(-1)[skipped].abs() >= 0.95).all()


def test_band_catches_a_feature_between_coarse_samples():
    # A small sphere in the middle of a coarse cell: no coarse sample is inside it.
    coarse_cell = BOX.size / 16
    center = torch.tensor([BOX.min + 7.5 * coarse_cell] * 3)

    def blob(p):
        return 10.0 * (0.03 - (p - center).norm(dim=-1))

    dense, _ = decode_field_dense(blob, 64)
    assert (dense > 0).sum() > 0
    hier, _ = decode_field_hierarchical(blob, 64, coarse_resolution=16)
    assert torch.equal(hier > 0, dense > 0)
    # Sign changes alone (band 0, no dilation) miss it entirely.
    blind, stats = decode_field_hierarchical(blob, 64, coarse_resolution=16, band=0.0, dilate=0)
    assert (blind > 0).sum() == 0 and stats.num_queries == 17 ** 3


def test_nonfinite_values_are_refined_like_dense():
    def holey(p):
        v = sphere(p)
        return torch.where(p[:, 0] > 0.7, torch.full_like(v, float("nan")), v)

    dense, _ = decode_field_dense(holey, 64)
    hier, _ = decode_field_hierarchical(holey, 64)
    assert torch.equal(torch.isnan(hier), torch.isnan(dense))
    assert torch.equal(hier > 0, dense > 0)


@pytest.mark.parametrize("coarse", [4, 8, 16, 32])
def test_coarse_resolution_choices(coarse):
    dense, _ = decode_field_dense(torus, 32)
    hier, stats = decode_field_hierarchical(torus, 32, coarse_resolution=coarse, dilate=2)
    assert stats.levels[0] == (coarse, (coarse + 1) ** 3)
    assert [r for r, _ in stats.levels] == [coarse * 2 ** i for i in range(len(stats.levels))]
    assert torch.equal(dense > 0, hier > 0)
    if coarse == 32:  # a single level is the dense decode
        assert torch.equal(hier, dense) and stats.num_queries == 33 ** 3


@pytest.mark.parametrize("coarse", [1, 2])
def test_band_covering_everything_is_dense(coarse):
    # With every cell active, each point is queried exactly once, whatever the level count.
    dense, _ = decode_field_dense(torus, 32)
    hier, stats = decode_field_hierarchical(torus, 32, coarse_resolution=coarse, band=1e9)
    assert torch.equal(hier, dense) and stats.num_queries == 33 ** 3


def test_default_coarse_resolution():
    assert default_coarse_resolution(256) == 64
    assert default_coarse_resolution(384) == 96
    assert default_coarse_resolution(6) == 3
    assert default_coarse_resolution(7) == 7


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("resolution", [0, -4, 2.5, True, "64"])
def test_invalid_resolution(resolution):
    with pytest.raises(ValueError, match="resolution"):
        decode_field_dense(sphere, resolution)
    with pytest.raises(ValueError, match="resolution"):
        decode_field_hierarchical(sphere, resolution)
    with pytest.raises(ValueError, match="resolution"):
        grid_points(resolution)


@pytest.mark.parametrize("resolution, coarse", [(128, 48), (96, 32), (64, 128), (64, 0), (64, 16.0)])
def test_invalid_coarse_resolution(resolution, coarse):
    with pytest.raises(ValueError, match="coarse_resolution"):
        decode_field_hierarchical(sphere, resolution, coarse_resolution=coarse)


def test_invalid_hierarchical_settings():
    with pytest.raises(ValueError, match="band"):
        decode_field_hierarchical(sphere, 16, band=-1.0)
    with pytest.raises(ValueError, match="band"):
        decode_field_hierarchical(sphere, 16, band=float("nan"))
    with pytest.raises(ValueError, match="dilate"):
        decode_field_hierarchical(sphere, 16, dilate=-1)
    with pytest.raises(ValueError, match="chunk_size"):
        decode_field_dense(sphere, 16, chunk_size=0)
    with pytest.raises(ValueError, match="query_fn"):
        decode_field_dense(lambda x: x, 4)


# --------------------------------------------------------------------------------------------
# ShapeVAE
# --------------------------------------------------------------------------------------------

def randomized_vae(seed: int = 1) -> ShapeVAE:
    """A tiny ShapeVAE with fresh random values in every parameter (norms included)."""
    vae = ShapeVAE(VAEConfig.tiny())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
    return vae.eval()


@pytest.fixture(scope="module")
def vae_frame():
    vae = randomized_vae()
    g = torch.Generator().manual_seed(101)
    with torch.no_grad():
        decoded = vae.decode(torch.randn(1, vae.config.num_latents, vae.config.embed_dim, generator=g))
    return vae, decoded


def test_vae_query_fn_equals_vae_query(vae_frame):
    vae, decoded = vae_frame
    fn = vae_query_fn(vae, decoded)
    xyz = torch.rand(3000, 3, generator=torch.Generator().manual_seed(5)) * BOX.size + BOX.min
    with torch.no_grad():
        expected = vae.query(decoded, xyz.unsqueeze(0))[0]
    got = fn(xyz)
    assert got.shape == (3000,) and got.std() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert fn.bytes_per_point > 0 and fn.device == decoded.device
    with pytest.raises(ValueError, match="one frame"):
        vae_query_fn(vae, decoded.expand(2, -1, -1))


def test_vae_kv_computed_once(vae_frame, monkeypatch):
    vae, decoded = vae_frame
    calls = []
    original = vae.geo_decoder.precompute_kv

    def counting(data):
        calls.append(data.shape)
        return original(data)

    monkeypatch.setattr(vae.geo_decoder, "precompute_kv", counting)

    def forbidden(*args, **kwargs):
        raise AssertionError("the full geo_decoder forward recomputes K/V")

    monkeypatch.setattr(vae.geo_decoder, "forward", forbidden)
    field, stats = decode_frame(vae, decoded, resolution=16, method="dense", chunk_size=500)
    assert calls == [decoded.shape]  # once, for ceil(17^3 / 500) = 10 chunks
    # The whole frame decode is vae.query on the grid points.
    monkeypatch.undo()
    with torch.no_grad():
        expected = vae.query(decoded, grid_points(16).unsqueeze(0))[0]
    torch.testing.assert_close(field.reshape(-1), expected, rtol=1e-5, atol=1e-5)
    assert stats.method == "dense" and stats.num_queries == 17 ** 3


def test_vae_chunk_size_independence(vae_frame):
    vae, decoded = vae_frame
    a, _ = decode_frame(vae, decoded, resolution=12, method="dense", chunk_size=97)
    b, _ = decode_frame(vae, decoded, resolution=12, method="dense")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="decode method"):
        decode_frame(vae, decoded, resolution=12, method="octree")


def test_vae_hierarchical_matches_dense(vae_frame):
    vae, decoded = vae_frame
    fn = vae_query_fn(vae, decoded)
    # A random VAE's field need not cross 0: centre it on its median so it does.
    coarse, _ = decode_field_dense(fn, 16)
    median = coarse.median()
    assert coarse.min() < median < coarse.max()

    def centred(xyz):
        return fn(xyz) - median

    dense, dense_stats = decode_field_dense(centred, 64)
    assert (dense > 0).any() and (dense <= 0).any()
    dense_mesh = marching_cubes(dense)
    tree = cKDTree(dense_mesh.vertices)
    voxel = BOX.size / 64
    for band in (0.95, 0.1):
        hier, stats = decode_field_hierarchical(centred, 64, band=band)
        occupancy_iou = iou(dense > 0, hier > 0)
        print(f"\nrandom VAE R=64 band={band}: dense {dense_stats.num_queries}, hierarchical "
              f"{stats.num_queries} ({100 * stats.query_fraction:.1f}%), occupancy IoU {occupancy_iou:.6f}")
        assert occupancy_iou >= 0.99
        hier_mesh = marching_cubes(hier)
        to_dense, _ = tree.query(hier_mesh.vertices)
        to_hier, _ = cKDTree(hier_mesh.vertices).query(dense_mesh.vertices)
        assert max(to_dense.max(), to_hier.max()) < 0.1 * voxel
        assert stats.num_queries < dense_stats.num_queries
