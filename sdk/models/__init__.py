"""PyTorch models: the Sculpt4D DiT, the ShapeVAE and the DINOv2 image conditioner."""

from .conditioner import ImageConditioner
from .dit import Sculpt4DDiT
from .vae import ShapeVAE

__all__ = ["ImageConditioner", "Sculpt4DDiT", "ShapeVAE"]
