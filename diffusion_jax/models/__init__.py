"""Denoising networks."""
from diffusion_jax.models.unet import Cond, UNet, UNetConfig

__all__ = ["Cond", "UNet", "UNetConfig"]
