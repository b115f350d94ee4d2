"""Sculpt4D SDK: run video -> 4D mesh diffusion transformers fast and faithfully."""

from .config import ConditionerConfig, DiTConfig, TemporalConfig, VAEConfig
from .meshseq import MeshSequence
from .pipeline import Generator, GeneratorError

__version__ = "0.1.0"

__all__ = ["ConditionerConfig", "DiTConfig", "Generator", "GeneratorError", "MeshSequence", "TemporalConfig",
           "VAEConfig", "__version__"]
