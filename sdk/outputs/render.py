"""A headless RGBA renderer for triangle meshes (NumPy z-buffer rasteriser, no display, no GL).

Perspective pinhole camera looking at a target, per-face colours, Lambert shading from a
head-light-ish key light plus ambient, supersampled edges. Good enough to make conditioning
videos of synthetic objects and contact sheets of generated meshes; not a production renderer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_COLOR = (0.72, 0.72, 0.75)


@dataclass(frozen=True)
class Camera:
    """Orbit camera: ``azimuth``/``elevation`` in degrees around ``target`` at ``distance``,
    vertical field of view ``fov`` degrees, y up. Azimuth 0 looks from +z towards -z."""

    azimuth: float = 30.0
    elevation: float = 20.0
    distance: float = 3.2
    fov: float = 40.0
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def eye(self) -> np.ndarray:
        """The camera position in world coordinates (from azimuth, elevation and distance around the target)."""
        az, el = math.radians(self.azimuth), math.radians(self.elevation)
        offset = np.array([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])
        return np.asarray(self.target, np.float64) + self.distance * offset

    def basis(self) -> np.ndarray:
        """Rows: camera right, up, forward (towards the target) in world coordinates."""
        forward = np.asarray(self.target, np.float64) - self.eye
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 1.0, 0.0])
        if np.linalg.norm(right) < 1e-9:  # looking straight up or down
            right = np.array([1.0, 0.0, 0.0])
        right /= np.linalg.norm(right)
        return np.stack([right, np.cross(right, forward), forward])

    def project(self, points: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates ``[N, 2]`` (x right, y down, pixel centres at +0.5) and depth ``[N]``."""
        cam = (np.asarray(points, np.float64) - self.eye) @ self.basis().T
        depth = cam[:, 2]
        focal = 0.5 * size / math.tan(math.radians(self.fov) / 2)
        z = np.where(depth > 1e-6, depth, 1e-6)
        px = 0.5 * size + focal * cam[:, 0] / z
        py = 0.5 * size - focal * cam[:, 1] / z
        return np.stack([px, py], -1), depth


def _rasterize(pix: np.ndarray, depth: np.ndarray, faces: np.ndarray, size: int,
               chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """Nearest face per pixel (``-1`` for none) and its depth, for front-facing triangles, in
    chunks of faces so memory stays bounded for million-face meshes."""
    face_map = np.full((size, size), -1, np.int64)
    depth_map = np.full((size, size), np.inf)
    for start in range(0, len(faces), chunk):
        f, d = _rasterize_chunk(pix, depth, faces[start:start + chunk], size)
        nearer = d < depth_map
        face_map[nearer] = f[nearer] + start
        depth_map[nearer] = d[nearer]
    return face_map, depth_map


def _rasterize_chunk(pix: np.ndarray, depth: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    tri = pix[faces]  # [F, 3, 2]
    zs = depth[faces]
    # Signed area in pixel space (y down): front faces (counter-clockwise in the world) are negative.
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    lo = np.floor(tri.min(1) - 0.5).astype(np.int64)
    hi = np.ceil(tri.max(1) - 0.5).astype(np.int64)
    keep = (area < -1e-12) & (zs.min(1) > 1e-6) & (hi[:, 0] >= 0) & (hi[:, 1] >= 0) & \
        (lo[:, 0] < size) & (lo[:, 1] < size)
    ids = np.flatnonzero(keep)
    lo, hi = np.clip(lo[ids], 0, size - 1), np.clip(hi[ids], 0, size - 1)
    w, h = hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1
    counts = w * h
    face_of = np.repeat(np.arange(len(ids)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    x = lo[face_of, 0] + local % w[face_of]
    y = lo[face_of, 1] + local // w[face_of]
    t = tri[ids][face_of]
    px, py = x + 0.5, y + 0.5
    # Barycentric coordinates from edge functions (all >= 0 inside, for either winding after the sign flip).
    a = area[ids][face_of]
    b0 = ((t[:, 1, 0] - px) * (t[:, 2, 1] - py) - (t[:, 1, 1] - py) * (t[:, 2, 0] - px)) / a
    b1 = ((t[:, 2, 0] - px) * (t[:, 0, 1] - py) - (t[:, 2, 1] - py) * (t[:, 0, 0] - px)) / a
    b2 = 1.0 - b0 - b1
    inside = (b0 >= 0) & (b1 >= 0) & (b2 >= 0)
    # Perspective-correct depth: 1/z is affine in screen space, z is not.
    z = 1.0 / (np.stack([b0, b1, b2], -1) / zs[ids][face_of]).sum(-1)
    pixel, z, face = (y * size + x)[inside], z[inside], ids[face_of][inside]
    face_map = np.full(size * size, -1, np.int64)
    depth_map = np.full(size * size, np.inf)
    if len(pixel):
        order = np.lexsort((z, pixel))  # by pixel, nearest first
        first = np.ones(len(order), bool)
        first[1:] = pixel[order][1:] != pixel[order][:-1]
        chosen = order[first]
        face_map[pixel[chosen]] = face[chosen]
        depth_map[pixel[chosen]] = z[chosen]
    return face_map.reshape(size, size), depth_map.reshape(size, size)


def render_rgba(vertices: np.ndarray, faces: np.ndarray, camera: Camera = Camera(), size: int = 256,
                face_colors: np.ndarray | None = None, supersample: int = 2) -> np.ndarray:
    """Render a mesh to an ``[size, size, 4]`` uint8 RGBA image (alpha 0 where empty).

    ``face_colors [F, 3]`` in [0, 1] (default a light grey). Faces must wind counter-clockwise
    seen from outside (trimesh's convention); back faces are culled.
    """
    vertices = np.asarray(vertices, np.float64).reshape(-1, 3)
    faces = np.asarray(faces, np.int64).reshape(-1, 3)
    if size < 1 or supersample < 1:
        raise ValueError(f"size and supersample must be >= 1, got {size}, {supersample}")
    big = size * supersample
    rgb = np.zeros((big, big, 3))
    alpha = np.zeros((big, big))
    if len(faces):
        pix, depth = camera.project(vertices, big)
        face_map, _ = _rasterize(pix, depth, faces, big)
        hit = face_map >= 0
        tri = vertices[faces]
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        # Key light from the upper left of the camera, plus ambient.
        right, up, forward = camera.basis()
        light = -forward + 0.6 * up - 0.5 * right
        light /= np.linalg.norm(light)
        shade = 0.35 + 0.65 * np.clip(normals @ light, 0.0, 1.0)
        colors = np.broadcast_to(np.asarray(DEFAULT_COLOR), (len(faces), 3)) if face_colors is None \
            else np.asarray(face_colors, np.float64).reshape(len(faces), 3)
        rgb[hit] = colors[face_map[hit]] * shade[face_map[hit], None]
        alpha[hit] = 1.0
    if supersample > 1:  # box filter: premultiplied colour and coverage
        rgb = rgb.reshape(size, supersample, size, supersample, 3).mean((1, 3))
        alpha = alpha.reshape(size, supersample, size, supersample).mean((1, 3))
        rgb = rgb / np.maximum(alpha, 1e-12)[..., None]
    out = np.empty((size, size, 4), np.uint8)
    out[..., :3] = np.clip(np.round(rgb * 255), 0, 255)
    out[..., 3] = np.clip(np.round(alpha * 255), 0, 255)
    return out


def over_background(rgba: np.ndarray, color: tuple[int, int, int] = (205, 205, 205)) -> np.ndarray:
    """Composite RGBA over a plain colour: what a video of the object would show."""
    a = rgba[..., 3:4].astype(np.float64) / 255.0
    rgb = rgba[..., :3] * a + np.asarray(color, np.float64) * (1.0 - a)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def contact_sheet(meshes, images=(), max_frames: int = 8, tile: int = 192, camera: Camera = Camera()) -> np.ndarray:
    """An RGB sheet of up to ``max_frames`` evenly spaced frames: the conditioning image on top
    (when given) and the mesh rendered from ``camera`` below, on white."""
    from PIL import Image

    n = len(meshes)
    if n == 0:
        raise ValueError("contact_sheet needs at least one mesh")
    if len(images) and len(images) != n:
        images = ()  # unpaired images would mislabel frames: show the meshes only
    picks = sorted({round(i * (n - 1) / max(1, min(n, max_frames) - 1)) for i in range(min(n, max_frames))})
    rows = 2 if len(images) else 1
    sheet = np.full((rows * tile, len(picks) * tile, 3), 255, np.uint8)
    for col, i in enumerate(picks):
        x = col * tile
        if len(images):
            img = Image.fromarray(np.asarray(images[i], np.uint8)).convert("RGB").resize((tile, tile), Image.BILINEAR)
            sheet[:tile, x:x + tile] = np.asarray(img)
        mesh = meshes[i]
        rgba = render_rgba(mesh.vertices, mesh.faces, camera, tile)
        sheet[(rows - 1) * tile:, x:x + tile] = over_background(rgba, (255, 255, 255))
    return sheet
