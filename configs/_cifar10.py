"""Shared parts of the CIFAR-10 configs (not an experiment by itself)."""

from diffusion_jax.config import defaults as default


def base(num_classes: int = 0, random_flip: bool = True):
  """The defaults with CIFAR-10 as the data (needs cifar10 prepared as ArrayRecord in data_dir: docs/datasets.md)."""
  c = default.get_config()
  d = c.data
  d.name = "cifar10"
  d.image_size = 32
  d.channels = 3
  d.num_classes = num_classes
  d.random_flip = random_flip
  return c
