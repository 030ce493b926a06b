"""Compile time and step time of a config's train step under XLA:CPU compiler options,
each variant in a fresh process (no compilation cache), variants interleaved.

  python experiments/bench_compile.py --config=configs/cifar10_ddpm.py --batch=8 --rounds=2
  python experiments/bench_compile.py --config=configs/digits.py --batch=128 --rounds=2

Variants: XLA's default, and backend (LLVM) optimisation levels 1 and 0. Printed per
run: tracing and lowering, compiling the train step and the initialiser, and the mean
of --steps train steps after the first. A benchmark that prints numbers, never a test.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import machine  # noqa: E402

VARIANTS = {"default": {}, "O1": {"xla_backend_optimization_level": 1},
            "O0": {"xla_backend_optimization_level": 0}}


def one(config_path: str, batch: int, steps: int, options: dict) -> dict:
  """In this process: the run's initialiser and train step, compiled with `options`."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from diffusion_jax.config import files
  from diffusion_jax.core import diffusion
  from diffusion_jax.models.unet import UNet, UNetConfig
  from diffusion_jax.training import optimizer, state as state_lib
  from diffusion_jax.training.step import make_train_step
  config = files.load(config_path)
  d = config.data
  net = UNet(UNetConfig.from_config(config.model))
  tx = optimizer.make_optimizer(optimizer.OptimConfig.from_config(config.optim),
                                config.training.num_steps)
  out = {}
  t0 = time.perf_counter()
  init = jax.jit(lambda k: state_lib.create_train_state(k, net, tx, d.image_size, d.channels)
                 ).lower(jax.random.key(0)).compile(options)
  out["init_compile_s"] = time.perf_counter() - t0
  state = init(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch_data = {"image": jnp.asarray(rng.uniform(-1, 1, (batch, d.image_size, d.image_size,
                                                         d.channels)), jnp.float32)}
  if d.num_classes:
    batch_data["label"] = jnp.asarray(rng.integers(0, d.num_classes, (batch,)), jnp.int32)
  step = make_train_step(net, tx, diffusion.from_config(config.diffusion),
                         config.training.ema_decay, {})
  t0 = time.perf_counter()
  lowered = jax.jit(step, donate_argnums=(0,)).lower(state, batch_data)
  out["lower_s"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile(options)
  out["train_step_compile_s"] = time.perf_counter() - t0
  state, m = compiled(state, batch_data)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, batch_data)
  jax.block_until_ready(m)
  out["step_s"] = (time.perf_counter() - t0) / steps
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default=os.path.join(ROOT, "configs", "cifar10_ddpm.py"))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results",
                                               "bench_compile_cpu.jsonl"))
  p.add_argument("--one", help=argparse.SUPPRESS)  # A variant, run in this process.
  args = p.parse_args()
  if args.one:
    print(json.dumps(one(args.config, args.batch, args.steps, VARIANTS[args.one])))
    return
  names = args.variants.split(",")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  runs = {n: [] for n in names}
  for r in range(args.rounds):
    for n in (names if r % 2 == 0 else names[::-1]):
      proc = subprocess.run([sys.executable, __file__, f"--one={n}", f"--config={args.config}",
                             f"--batch={args.batch}", f"--steps={args.steps}"],
                            capture_output=True, text=True, env=env, check=True)
      res = json.loads(proc.stdout.strip().splitlines()[-1])
      runs[n].append(res)
      print(json.dumps({"variant": n, "round": r, **{k: round(v, 3) for k, v in res.items()}}),
            flush=True)
  for n in names:
    summary = {k: statistics.median(x[k] for x in runs[n]) for k in runs[n][0]}
    machine.emit({"bench": "compile", "config": os.path.relpath(args.config, ROOT),
                  "batch": args.batch, "variant": n, "options": VARIANTS[n],
                  "rounds": args.rounds, "cpu": machine.cpu_model(),
                  **{k: round(v, 3) for k, v in summary.items()}}, args.out)


if __name__ == "__main__":
  main()
