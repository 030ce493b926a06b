"""Throughput of the DDPM CIFAR-10 U-Net (35.7M params): a train step and an eval
forward pass, in diffusion_jax, optionally interleaved with the PyTorch peer.

  python experiments/bench_unet.py --batch=8 --steps=5 --rounds=2 \
      --peer-python=/tmp/peer/bin/python --peer-script=../shared/bench/peer_torch_bench.py

Prints one JSON line per measurement and a summary with the JAX / peer ratios
(medians over rounds; the machine is noisy, so compare within one run).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax import config as config_lib  # noqa: E402
from diffusion_jax.models.unet import Cond  # noqa: E402
from diffusion_jax.run import build, spec as spec_lib  # noqa: E402
from diffusion_jax.training import mesh as mesh_lib  # noqa: E402
from diffusion_jax.training.step import make_train_step  # noqa: E402


class JaxBench:
  """The CIFAR-10 DDPM network's compiled train step and forward pass."""

  def __init__(self, batch: int):
    config = config_lib.load(os.path.join(ROOT, "configs", "cifar10_ddpm.py"))
    config.training.batch_size = batch
    mesh = mesh_lib.make_mesh()
    spec = spec_lib.parse(config, mesh.devices.size)
    model, diff, tx = build.model(spec), spec.diffusion, build.optimizer_of(spec)
    init, key, _ = build.init_fns(spec, model, tx, mesh)
    self.batch = batch
    self.state = init(key)
    self.params = sum(v.size for v in jax.tree.leaves(self.state.params))
    self.step = jax.jit(make_train_step(model, tx, diff, 0.9999, {}),
                        donate_argnums=(0,))
    self.fwd = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t, Cond()))
    rng = np.random.default_rng(0)
    self.data = {"image": jnp.asarray(rng.uniform(-1, 1, (batch, 32, 32, 3)), jnp.float32)}
    self.t = jnp.zeros((batch,), jnp.float32)

  def warm_up(self) -> None:
    self.state, m = self.step(self.state, self.data)
    jax.block_until_ready((m, self.fwd(self.state.params, self.data["image"], self.t)))

  def measure(self, steps: int) -> dict:
    t0 = time.perf_counter()
    for _ in range(steps):
      self.state, m = self.step(self.state, self.data)
    jax.block_until_ready(m)
    train_dt = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    for _ in range(steps):
      out = self.fwd(self.state.params, self.data["image"], self.t)
    jax.block_until_ready(out)
    fwd_dt = (time.perf_counter() - t0) / steps
    return {"impl": "diffusion_jax", "params": int(self.params), "batch": self.batch,
            "train_img_per_s": self.batch / train_dt, "eval_fwd_img_per_s": self.batch / fwd_dt}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--peer-python", default="")
  p.add_argument("--peer-script", default=os.path.join(ROOT, "..", "shared", "bench",
                                                       "peer_torch_bench.py"))
  args = p.parse_args()
  if args.peer_python and not os.path.exists(args.peer_script):
    sys.exit(f"error: peer script {args.peer_script} not found")

  t0 = time.perf_counter()
  bench = JaxBench(args.batch)
  bench.warm_up()
  print(json.dumps({"impl": "diffusion_jax", "compile_and_first_step_s": time.perf_counter() - t0,
                    "devices": jax.device_count(), "backend": jax.default_backend()}), flush=True)
  ours, peer = [], []
  for _ in range(args.rounds):
    ours.append(bench.measure(args.steps))
    print(json.dumps(ours[-1]), flush=True)
    if args.peer_python:
      out = subprocess.run([args.peer_python, args.peer_script, str(args.batch), str(args.steps)],
                           capture_output=True, text=True, check=True)
      peer.append(json.loads(out.stdout.strip().splitlines()[-1]))
      print(json.dumps(peer[-1]), flush=True)
  summary = {k: statistics.median(r[k] for r in ours)
             for k in ("train_img_per_s", "eval_fwd_img_per_s")}
  if peer:
    for k in ("train_img_per_s", "eval_fwd_img_per_s"):
      summary["peer_" + k] = statistics.median(r[k] for r in peer)
      summary["ratio_" + k] = statistics.median(a[k] / b[k] for a, b in zip(ours, peer))
  print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
  main()
