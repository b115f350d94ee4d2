"""Training data for Sculpt4D: temporally consistent surface samples, the shared-noise VAE
encoding of a sequence (``surface``) and a synthetic 4D generator built from primitives
(``synthetic``). The headless RGBA renderer it draws its videos with is
:mod:`sdk.outputs.render` (``Camera`` and ``render_rgba`` are re-exported here).

``surface`` works on any sequence of meshes with one fixed topology (a rigged or simulated
asset exported per frame) plus each frame's watertight surface, so it serves real datasets too.
"""

from ..outputs.render import Camera, render_rgba
from .surface import (Normalization, SurfaceSamples, closest_points, consistent_surface, encode_sequence,
                      sample_surface_points, sequence_normalization)

__all__ = ["Camera", "Normalization", "SurfaceSamples", "closest_points", "consistent_surface",
           "encode_sequence", "render_rgba", "sample_surface_points", "sequence_normalization"]


def __getattr__(name: str):
    if name == "render":  # the renderer's old home; sdk.core.moved warns and hands out sdk.outputs.render
        import importlib

        return importlib.import_module("sdk.data.render")
    raise AttributeError(f"module 'sdk.data' has no attribute {name!r}")
