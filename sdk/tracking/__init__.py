"""Topology-consistent 4D output: one template mesh deformed through a sequence of per-frame
meshes (global rigid alignment, then as-rigid-as-possible fitting), with honest per-frame quality.

``track_meshes(meshes)`` works on meshes from any source (``trimesh.Trimesh`` or ``(vertices,
faces)``); ``MeshSequence.track()`` and ``s4d-convert --topology consistent`` use it on the
model's output, ``s4d-track`` on mesh files.
"""

from .quality import Topology, topology
from .register import (ALIGNMENTS, ON_FAILURE, FrameTracking, Segment, TrackedSequence, TrackingError,
                       TrackingOptions, check_meshes, check_trackable, track_meshes)

__all__ = ["ALIGNMENTS", "ON_FAILURE", "FrameTracking", "Segment", "Topology", "TrackedSequence", "TrackingError",
           "TrackingOptions", "check_meshes", "check_trackable", "topology", "track_meshes"]
