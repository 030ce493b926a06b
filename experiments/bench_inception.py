"""Feature-extraction throughput of the FID Inception (diffusion_jax.evaluation.inception).

  python experiments/bench_inception.py --batch=32 --size=299 --steps=3 --rounds=3

Jitted forward passes on random images at `size` (299: no resize), random weights unless
--weights names a converted .npz (the speed does not depend on the values). Prints one
JSON line per round and a summary with the median images/s and the CPU model, from
`lscpu`. The machine may be shared: compare numbers from one run.
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax.evaluation import inception  # noqa: E402
from experiments import machine  # noqa: E402


def random_weights() -> inception.InceptionWeights:
  """Flax's default initialisation (BatchNorm statistics 0 and 1)."""
  model = inception.FIDInceptionV3()
  shape = (1, inception.INPUT_SIZE, inception.INPUT_SIZE, 3)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros(shape))
  return inception.InceptionWeights(jax.device_get(variables), "random")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--size", type=int, default=299)
  p.add_argument("--steps", type=int, default=3, help="timed batches per round")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--weights", default="", help="a converted .npz (default: random)")
  args = p.parse_args()

  weights = inception.load_inception(args.weights) if args.weights else random_weights()
  fn = inception.make_inception_fn(weights)
  images = np.random.default_rng(0).uniform(0, 1, (args.batch, args.size, args.size, 3))
  images = jnp.asarray(images, jnp.float32)
  t0 = time.perf_counter()
  jax.block_until_ready(fn(images))
  info = {"cpu": machine.cpu_model(), "cores": os.cpu_count(), "backend": jax.default_backend(),
          "jax": jax.__version__, "batch": args.batch, "size": args.size,
          "weights": weights.sha256[:12], "compile_and_first_batch_s":
          round(time.perf_counter() - t0, 2)}
  print(json.dumps(info), flush=True)
  rates = []
  for r in range(args.rounds):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      out = fn(images)
    jax.block_until_ready(out)
    rates.append(args.batch * args.steps / (time.perf_counter() - t0))
    print(json.dumps({"round": r, "img_per_s": round(rates[-1], 2)}), flush=True)
  print(json.dumps({"summary": {**info, "median_img_per_s": round(statistics.median(rates), 2),
                                "ms_per_img": round(1000 / statistics.median(rates), 1)}}),
        flush=True)


if __name__ == "__main__":
  main()
