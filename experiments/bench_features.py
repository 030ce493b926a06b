"""Feature-extraction throughput of every feature network (evaluation/features.py).

  python experiments/bench_features.py --out=experiments/results/bench_features.json

uint8 random images at each network's input size (the Inception's at 32x32, resized to
299 inside, with random weights: its speed does not depend on the values), through
features.extract in batches of --batch, as the metrics run it. Reports the median
images/s over rounds and the CPU model. The machine may be shared: compare numbers
from one run.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax.evaluation import features  # noqa: E402
from diffusion_jax.run import metadata  # noqa: E402
from experiments.bench_inception import random_weights  # noqa: E402


def extractor(name: str) -> features.Extractor:
  if name != "inception":
    return features.FEATURE_NETS[name].load(name)
  fn = features.inception.make_inception_fn(random_weights())

  def apply(images):
    out = fn(np.asarray(images, np.float32) / 255.0)
    return {"features": out["pool"]}

  return features.Extractor("inception", "random", apply)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--images", type=int, default=1024, help="images per round (inception: /16)")
  p.add_argument("--rounds", type=int, default=3)
  args = p.parse_args()
  rows = []
  for name, net in features.FEATURE_NETS.items():
    size, channels = (32, 3) if name == "inception" else (net.image_size, net.channels)
    n = args.images // 16 if name == "inception" else args.images
    batch = min(args.batch, n)
    ex = extractor(name)
    images = np.random.default_rng(0).integers(0, 256, (n, size, size, channels), np.uint8)
    t0 = time.perf_counter()
    features.extract(ex, images[:batch], batch)
    compile_s = time.perf_counter() - t0
    rates = []
    for _ in range(args.rounds):
      t0 = time.perf_counter()
      features.extract(ex, images, batch)
      rates.append(n / (time.perf_counter() - t0))
    rows.append({"feature_net": name, "input": f"{size}x{size}x{channels}", "batch": batch,
                 "compile_and_first_batch_s": round(compile_s, 2),
                 "images_per_s": round(statistics.median(rates), 1)})
    print(json.dumps(rows[-1]), flush=True)
  hw = metadata.hardware()
  machine = f"{hw['cpu']}, {hw['cpu_count']} cores ({hw['platform']})"
  with open(args.out, "w") as f:
    json.dump([{**row, "machine": machine} for row in rows], f, indent=2)


if __name__ == "__main__":
  main()
