"""The U-Net's upsampling layer (nearest-neighbour 2x, then a 3x3 convolution) on XLA:CPU:
resizing first against `models.conv.upsampling_conv` (four 2x2 phase convolutions at the
source resolution), interleaved.

  python experiments/bench_upsample_conv.py --rounds=3 \
      --shapes=8x16x256,32x16x256,8x8x256,8x4x256 \
      --out=experiments/results/bench_upsample_conv_cpu.jsonl

A shape is BATCHxSOURCE_SIZExCHANNELS (NHWC, square; channels in = out, as in the
DDPM U-Net). Both sides use the CPU's kernel gradient (`chunked`), as `auto` does. Each
round times, per shape, the forward pass and the forward pass with both gradients
(input and kernel), each side's time the best of --reps calls, alternating which side
goes first. Printed: one JSON line per round and shape (milliseconds), then the medians
and the median within-round speedups. A benchmark, never a test.
"""

import argparse
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax.models import conv as conv_lib  # noqa: E402
from experiments import machine  # noqa: E402
from experiments.bench_conv import best  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")


def resize_first(x, k):
  b, h, w, c = x.shape
  up = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="nearest")
  return conv_lib.chunked_conv(up, k, (1, 1), "SAME", dimension_numbers=DN)


def phases(x, k):
  return conv_lib.upsampling_conv(conv_lib.chunked_conv)(x, k, (1, 1), "SAME",
                                                         dimension_numbers=DN)


SIDES = {"resize_first": resize_first, "phases": phases}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--shapes", default="8x16x256,32x16x256,8x8x256,8x4x256")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--out", default="", help="Also append the summary line to this file.")
  args = p.parse_args()
  machine.emit({"cpu": machine.cpu_model(), "jax": jax.__version__}, args.out)
  rng = np.random.default_rng(0)
  fns, inputs = {}, {}
  for shape in args.shapes.split(","):
    b, s, c = map(int, shape.split("x"))
    x = jnp.asarray(rng.standard_normal((b, s, s, c)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, c, c)) * 0.05, jnp.float32)
    g = jnp.asarray(rng.standard_normal((b, 2 * s, 2 * s, c)), jnp.float32)
    inputs[shape] = x, k, g
    for name, f in SIDES.items():
      fns[shape, name, "fwd"] = jax.jit(f)
      fns[shape, name, "grads"] = jax.jit(lambda x, k, g, f=f: jax.vjp(f, x, k)[1](g))
  rows = []
  for r in range(args.rounds):
    for shape, (x, k, g) in inputs.items():
      row = {"round": r, "shape": shape}
      order = list(SIDES) if r % 2 == 0 else list(SIDES)[::-1]
      for name in order:
        row[f"{name}_fwd_ms"] = 1e3 * best(fns[shape, name, "fwd"], (x, k), args.reps)
        row[f"{name}_grads_ms"] = 1e3 * best(fns[shape, name, "grads"], (x, k, g), args.reps)
      machine.emit(row, args.out)
      rows.append(row)
  summary = {}
  for shape in inputs:
    mine = [row for row in rows if row["shape"] == shape]
    summary[shape] = {}
    for part in ("fwd", "grads"):
      for name in SIDES:
        summary[shape][f"{name}_{part}_ms"] = statistics.median(
            row[f"{name}_{part}_ms"] for row in mine)
      summary[shape][f"speedup_{part}"] = statistics.median(
          row[f"resize_first_{part}_ms"] / row[f"phases_{part}_ms"] for row in mine)
  machine.emit({"summary": summary}, args.out)


if __name__ == "__main__":
  main()
