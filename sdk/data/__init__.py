"""Training data for Sculpt4D: temporally consistent surface samples, the shared-noise VAE
encoding of a sequence (``surface``), a synthetic 4D generator built from primitives
(``synthetic``) and a headless RGBA renderer for conditioning videos (``render``).

``surface`` works on any sequence of meshes with one fixed topology (a rigged or simulated
asset exported per frame) plus each frame's watertight surface, so it serves real datasets too.
"""

from .render import Camera, render_rgba
from .surface import (Normalization, SurfaceSamples, closest_points, consistent_surface, encode_sequence,
                      sample_surface_points, sequence_normalization)

__all__ = ["Camera", "Normalization", "SurfaceSamples", "closest_points", "consistent_surface",
           "encode_sequence", "render_rgba", "sample_surface_points", "sequence_normalization"]
