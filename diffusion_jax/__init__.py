"""diffusion_jax: conditional diffusion models in JAX/Flax."""

from diffusion_jax import diffusion, samplers, schedules
from diffusion_jax.diffusion import denoising_loss, make_denoiser, q_sample
from diffusion_jax.models.unet import Cond, UNet, UNetConfig
from diffusion_jax.schedules import Schedule

__version__ = "0.1.0"
__all__ = ["Cond", "Schedule", "UNet", "UNetConfig", "denoising_loss", "diffusion",
           "make_denoiser", "q_sample", "samplers", "schedules"]
