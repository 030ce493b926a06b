"""diffusion_jax: conditional diffusion models in JAX/Flax.

The public API (docs/api.md): the pure diffusion core, the U-Net and its conditions,
and the run entry points. Each lives in the subpackage named for its concern.
"""

from diffusion_jax.config.errors import ConfigError
from diffusion_jax.core import diffusion, guidance, likelihood, parameterisation, samplers, schedules
from diffusion_jax.core.diffusion import Diffusion, denoising_loss, make_denoiser
from diffusion_jax.core.parameterisation import q_sample
from diffusion_jax.core.samplers import SamplerConfig, sample
from diffusion_jax.core.schedules import Schedule
from diffusion_jax.models.unet import Cond, UNet, UNetConfig

__version__ = "0.1.0"
__all__ = ["Cond", "ConfigError", "Diffusion", "SamplerConfig", "Schedule", "UNet", "UNetConfig",
           "denoising_loss", "diffusion", "guidance", "likelihood", "make_denoiser",
           "parameterisation", "q_sample", "sample", "samplers", "schedules"]
