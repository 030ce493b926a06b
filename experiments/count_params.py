"""Counts the U-Net parameters of a config, without allocating them (jax.eval_shape).

  python experiments/count_params.py --config=configs/cifar10_ddpm.py --out=params.json
"""

import argparse
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


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True)
  p.add_argument("--out", required=True, help="JSON to write (must not exist)")
  args = p.parse_args()
  spec = spec_lib.parse(config_lib.load(args.config), 1)
  net = build.model(spec)
  x, t, cond = state_lib.dummy_inputs(net, 1, spec.data.image_size, spec.data.channels)
  shapes = jax.eval_shape(net.init, jax.random.key(0), x, t, cond)["params"]
  result = {"config": args.config,
            "parameters": int(sum(np.prod(s.shape) for s in jax.tree.leaves(shapes)))}
  with open(args.out, "x") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
