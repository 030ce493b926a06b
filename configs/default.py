"""The defaults of every field (the CPU digits demo). The field list, with the meaning
of each, is diffusion_jax/config/defaults.py; experiment configs start from it.

Command:
  python -m diffusion_jax.main --config=configs/default.py --workdir=runs/default
"""

from diffusion_jax.config.defaults import get_config

__all__ = ["get_config"]
