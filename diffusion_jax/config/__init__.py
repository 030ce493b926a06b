"""Configuration: the error type every section's parser raises, loading config files
by path, and the defaults of every field (`defaults.get_config`)."""

from diffusion_jax.config.errors import ConfigError, Problems, choice, finite, require, section_values
from diffusion_jax.config.files import import_sibling, load, load_module, parse_spec

__all__ = ["ConfigError", "Problems", "choice", "finite", "import_sibling", "load",
           "load_module", "parse_spec", "require", "section_values"]
