"""Counts the U-Net parameters of a config, without allocating them (jax.eval_shape).

  python experiments/count_params.py --config=configs/cifar10_ddpm.py --out=params.json

A latent config's U-Net takes the autoencoder's latents; where the autoencoder's weights
are not at hand, --latent_shape=H,W,C gives that shape directly (SD's VAE on 512x512
images: 64,64,4), and the count is of the U-Net on it.
"""

import argparse
import dataclasses
import json
import os
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax import config as config_lib  # noqa: E402
from diffusion_jax.run import build, spec as spec_lib  # noqa: E402
from diffusion_jax.training import state as state_lib  # noqa: E402


def count(config, latent_shape: tuple[int, int, int] | None = None) -> int:
  """The parameters of the config's U-Net, from eval_shape (nothing allocated)."""
  # The count does not depend on the devices: parse for as many as mesh.fsdp needs.
  spec = spec_lib.parse(config, max(1, int(config.mesh.fsdp)))
  size, channels = spec.data.image_size, spec.data.channels
  if latent_shape is not None:
    size, _, channels = latent_shape
    spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, out_channels=channels))
  net = build.model(spec)
  x, t, cond = state_lib.dummy_inputs(net, 1, size, channels)
  shapes = jax.eval_shape(net.init, jax.random.key(0), x, t, cond)["params"]
  return int(sum(np.prod(s.shape) for s in jax.tree.leaves(shapes)))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True)
  p.add_argument("--out", required=True, help="JSON to write (must not exist)")
  p.add_argument("--latent_shape", default="", help="H,W,C of a latent config's U-Net input")
  args = p.parse_args()
  latent = tuple(int(v) for v in args.latent_shape.split(",")) if args.latent_shape else None
  result = {"config": args.config, "parameters": count(config_lib.load(args.config), latent)}
  if latent:
    result["latent_shape"] = list(latent)
  with open(args.out, "x") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
