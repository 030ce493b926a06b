"""Throughput of the DDPM CIFAR-10 U-Net (35.7M params) against the PyTorch peer, in one
invocation, interleaved.

  python experiments/bench_unet.py --batch=8 --peer-python=/tmp/peer/bin/python
  python experiments/bench_unet.py --batch=128 --dtype=bfloat16 --peer-python=python3   # GPU
  python experiments/bench_unet.py --batch=32 --conv-impl=xla,auto --peer-python=python3

diffusion_jax side: configs/cifar10_ddpm.py's network, its compiled train step (Adam,
EMA, dropout, the config's loss; with training's compiler options, -O1 on the CPU) and
eval forward pass, and DDIM sampling at --sample-nfe network evaluations. It is built
from the config's sections (models, core, training) with nothing of the data layer, so
it runs wherever JAX, flax, optax and ml_collections do. Also printed: compile times,
the compiled train step's FLOPs (XLA cost analysis) and its FLOP rate against a large
matmul timed in the same run (and MFU against --peak-tflops where given), the
compiled memory, and the peak resident (host) memory of this process (which hands back
what compiling freed, as training does) and of the peer's.

Peer side: diffusers' UNet2DModel of the same layout, stepped as
../shared/bench/peer_torch_bench.py does, in a worker process of --peer-python that
stays up, on CUDA when torch sees a GPU (bf16 autocast when --dtype=bfloat16). Each
round times both sides, JAX first in even rounds and the peer first in odd ones; a
ratio is taken within a round, then the median over rounds. A benchmark that prints
numbers, never a test: machines are shared and noisy.

--conv-impl=a,b,... builds the network once per `model.conv_impl` (models.conv.CONV_IMPLS)
and times each in every round, beside the peer; the summary has each one's img/s and
ratio to the peer (keys suffixed _<impl> after the first), and the sampler is timed
with the first.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax.config import files  # noqa: E402
from diffusion_jax.core import diffusion, samplers  # noqa: E402
from diffusion_jax.models.unet import Cond, UNet, UNetConfig  # noqa: E402
from diffusion_jax.training import host_memory, mesh as mesh_lib, optimizer  # noqa: E402
from diffusion_jax.training import state as state_lib  # noqa: E402
from diffusion_jax.training.step import make_train_step  # noqa: E402
from experiments import machine  # noqa: E402

# The peer, as ../shared/bench/peer_torch_bench.py builds and steps it, served block by
# block: a line "train N" or "eval N" -> seconds per step.
PEER_WORKER = r"""
import contextlib, json, resource, sys, time
import torch
from diffusers import UNet2DModel

torch.manual_seed(0)
batch, bf16 = int(sys.argv[1]), sys.argv[2] == "bfloat16"
dev = "cuda" if torch.cuda.is_available() else "cpu"
model = UNet2DModel(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    dropout=0.1, norm_num_groups=32, attention_head_dim=None).to(dev)
opt = torch.optim.Adam(model.parameters(), lr=2e-4)
x = torch.randn(batch, 3, 32, 32, device=dev)
amp = (lambda: torch.autocast(dev, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

def train():
  t = torch.randint(0, 1000, (batch,), device=dev)
  noise = torch.randn_like(x)
  with amp():
    pred = model(x + noise, t).sample
  loss = ((pred.float() - noise) ** 2).mean()
  opt.zero_grad(); loss.backward(); opt.step()

def evaluate():
  with torch.no_grad(), amp():
    model(x, torch.zeros(batch, dtype=torch.long, device=dev))

steps = {"train": train, "eval": evaluate}
for fn in steps.values():
  fn(); fn()
sync()
print(json.dumps({"ready": True, "device": torch.cuda.get_device_name() if dev == "cuda"
                  else "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "params": sum(p.numel() for p in model.parameters())}), flush=True)
for line in sys.stdin:
  name, n = line.split()
  model.train(name == "train")
  sync(); t0 = time.perf_counter()
  for _ in range(int(n)):
    steps[name]()
  sync()
  print(json.dumps({"seconds_per_step": (time.perf_counter() - t0) / int(n),
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
        flush=True)
"""


def flops_of(stage) -> float:
  cost = stage.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def matmul_tflops(dtype, n: int = 4096, reps: int = 10) -> float:
  """The FLOP rate of one large matrix product on this device, for scale."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


class JaxBench:
  """The CIFAR-10 DDPM network's compiled train step, forward pass and sampler."""

  def __init__(self, batch: int, dtype: str, sample_nfe: int, conv_impl: str = "auto",
               model_overrides: dict | None = None):
    config = files.load(os.path.join(ROOT, "configs", "cifar10_ddpm.py"))
    config.model.dtype = dtype
    config.model.conv_impl = conv_impl
    config.model.update(model_overrides or {})
    self.batch = batch
    net = UNet(UNetConfig.from_config(config.model))
    diff = diffusion.from_config(config.diffusion)
    tx = optimizer.make_optimizer(optimizer.OptimConfig.from_config(config.optim),
                                  config.training.num_steps)
    timings = {}
    t0 = time.perf_counter()
    init = jax.jit(lambda k: state_lib.create_train_state(k, net, tx, 32, 3))
    self.state = jax.block_until_ready(init(jax.random.key(0)))
    timings["init_s"] = time.perf_counter() - t0
    self.params = sum(v.size for v in jax.tree.leaves(self.state.params))
    rng = np.random.default_rng(0)
    self.data = {"image": jnp.asarray(rng.uniform(-1, 1, (batch, 32, 32, 3)), jnp.float32)}
    self.t = jnp.zeros((batch,), jnp.float32)

    step = make_train_step(net, tx, diff, config.training.ema_decay, {})
    t0 = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0,)).lower(self.state, self.data)
    # Compiled as training compiles it (run/build.py): -O1 on the CPU.
    self.step = lowered.compile(mesh_lib.compiler_options(mesh_lib.make_mesh(1)))
    timings["train_step_compile_s"] = time.perf_counter() - t0
    # From the program before the backend's passes: a GPU's compiled program hides its
    # convolutions in library calls that its cost analysis does not count.
    self.train_flops = flops_of(lowered)
    mem = self.step.memory_analysis()
    self.train_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                        - mem.alias_size_in_bytes + mem.temp_size_in_bytes) if mem else 0

    fwd = jax.jit(lambda p, x, t: net.apply({"params": p}, x, t, Cond()))
    t0 = time.perf_counter()
    self.fwd = fwd.lower(self.state.params, self.data["image"], self.t).compile()
    timings["forward_compile_s"] = time.perf_counter() - t0

    self.sample = None
    if sample_nfe:
      scfg = samplers.SamplerConfig(sampler="ddim", num_steps=sample_nfe)
      sample = jax.jit(lambda p, k: samplers.sample(
          diffusion.make_denoiser(lambda x, t, c: net.apply({"params": p}, x, t, c), diff),
          diff.schedule, scfg, (batch, 32, 32, 3), Cond(), k))
      t0 = time.perf_counter()
      try:
        self.sample = sample.lower(self.state.params, jax.random.key(1)).compile()
        timings["sampler_compile_s"] = time.perf_counter() - t0
      except Exception as e:  # Reported, and the other numbers still taken.
        timings["sampler_compile_error"] = " ".join(str(e).split())[:300]
    self.timings = timings
    host_memory.release_freed()  # As training does once its step is compiled.


def _time(fn, n: int) -> float:
  t0 = time.perf_counter()
  out = None
  for _ in range(n):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / n


class Peer:
  """The peer's worker process: `seconds(name, n)` times n steps of train or eval."""

  def __init__(self, python: str, batch: int, dtype: str):
    self.proc = subprocess.Popen([python, "-c", PEER_WORKER, str(batch), dtype],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = self.proc.stdout.readline()
    if not line:
      sys.exit(f"error: the peer worker ({python}) did not start (its error is above): it "
               "needs torch and diffusers, best in a venv of their own "
               "(../shared/bench/README.md)")
    self.info = json.loads(line)

  def seconds(self, name: str, n: int) -> float:
    self.proc.stdin.write(f"{name} {n}\n")
    self.proc.stdin.flush()
    reply = json.loads(self.proc.stdout.readline())
    self.peak_rss_mib = reply["peak_rss_mib"]
    return reply["seconds_per_step"]

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--steps", type=int, default=5, help="Steps per timed block.")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--sample-nfe", type=int, default=50)
  p.add_argument("--peer-python", default="", help="A Python with torch and diffusers.")
  p.add_argument("--peak-tflops", type=float, default=0.0,
                 help="The device's peak for --dtype (MFU = achieved / peak).")
  p.add_argument("--out", default="", help="Also append the summary line to this file.")
  p.add_argument("--conv-impl", default="auto",
                 help="model.conv_impl values to time, comma-separated (models.conv.CONV_IMPLS).")
  args = p.parse_args()

  device = jax.devices()[0]
  where = {"backend": jax.default_backend(), "device": device.device_kind,
           "cpu": machine.cpu_model(), "jax": jax.__version__, "batch": args.batch,
           "dtype": args.dtype}
  print(json.dumps(where), flush=True)
  # The peer first: a broken peer environment stops the run before minutes of compiling.
  peer = Peer(args.peer_python, args.batch, args.dtype) if args.peer_python else None
  if peer:
    print(json.dumps({"peer": "diffusers-UNet2DModel-torch", **peer.info}), flush=True)
  impls = args.conv_impl.split(",")
  benches = {}
  for i, impl in enumerate(impls):
    bench = benches[impl] = JaxBench(args.batch, args.dtype, args.sample_nfe if i == 0 else 0,
                                     impl)
    print(json.dumps({"impl": "diffusion_jax", "conv_impl": impl, "params": int(bench.params),
                      **bench.timings,
                      "train_step_gflop_per_image": bench.train_flops / args.batch / 1e9,
                      "train_step_compiled_mib": bench.train_bytes / 2**20}), flush=True)

  states = {impl: b.state for impl, b in benches.items()}

  def train(impl):
    states[impl], m = benches[impl].step(states[impl], benches[impl].data)
    return m

  def forward(impl):
    b = benches[impl]
    return b.fwd(states[impl].params, b.data["image"], b.t)

  first = benches[impls[0]]

  def sample():
    return first.sample(states[impls[0]].params, jax.random.key(2))

  suffix = lambda impl: "" if impl == impls[0] else "_" + impl
  for impl in impls:
    train(impl), forward(impl)
  rounds = []
  for r in range(args.rounds):
    row = {}
    sides = impls + ["peer"]
    for side in (sides if r % 2 == 0 else sides[::-1]):
      if side != "peer":
        row["train_img_per_s" + suffix(side)] = args.batch / _time(lambda: train(side), args.steps)
        row["eval_fwd_img_per_s" + suffix(side)] = args.batch / _time(lambda: forward(side),
                                                                      args.steps)
      elif peer:
        row["peer_train_img_per_s"] = args.batch / peer.seconds("train", args.steps)
        row["peer_eval_fwd_img_per_s"] = args.batch / peer.seconds("eval", args.steps)
    rounds.append(row)
    print(json.dumps({"round": r, "batch": args.batch, **row}), flush=True)
  sample_img_per_s = args.batch / _time(sample, 1) if first.sample else None
  mm = matmul_tflops(jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
  summary = {k: statistics.median(row[k] for row in rounds) for k in rounds[0]}
  if peer:
    for impl in impls:
      for k in ("train_img_per_s", "eval_fwd_img_per_s"):
        summary["ratio_" + k + suffix(impl)] = statistics.median(
            row[k + suffix(impl)] / row["peer_" + k] for row in rounds)
    peer.close()
  for impl in impls[1:]:  # Against the first conv_impl, within each round.
    summary["speedup_train_" + impl] = statistics.median(
        row["train_img_per_s" + suffix(impl)] / row["train_img_per_s"] for row in rounds)
  train_tflops = first.train_flops * summary["train_img_per_s"] / args.batch / 1e12
  summary.update({
      "conv_impls": impls,
      f"sample_img_per_s_{args.sample_nfe}nfe": sample_img_per_s,
      "train_tflops": train_tflops, "matmul_tflops": mm,
      "train_fraction_of_matmul": train_tflops / mm if mm else None,
      # Host memory, whole process: every conv_impl's state and programs on this side.
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
  if peer:
    summary["peer_peak_rss_mib"] = peer.peak_rss_mib
  if args.peak_tflops:
    summary["mfu"] = train_tflops / args.peak_tflops
  machine.emit({"summary": summary, **where}, args.out)


if __name__ == "__main__":
  main()
