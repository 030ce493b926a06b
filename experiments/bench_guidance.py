"""Guided sampling on simulated CPU devices: the compiled sampler's collective
operations and its time per step (issue 14, item 8), for one or more checkouts of the
project, alternating:

  python experiments/bench_guidance.py                        # this checkout
  python experiments/bench_guidance.py --checkouts=OLD,.      # OLD: another checkout

Each checkout's diffusion_jax samples the digits config (guidance 1.5 on the labels,
DDIM) on `--devices` simulated CPU devices in a subprocess; a line per run is printed
and appended to experiments/results/bench_guidance.jsonl with the CPU model. A
benchmark that prints numbers, never a test.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "experiments", "results", "bench_guidance.jsonl")
RUN = r"""
import json, re, sys, time
import jax, numpy as np
import diffusion_jax
from diffusion_jax.config import files
from diffusion_jax.run import build, spec as spec_lib
from diffusion_jax.sampling import generate
from diffusion_jax.training import mesh as mesh_lib

batch, steps, calls = (int(v) for v in sys.argv[2:5])
config = files.load(sys.argv[1])
config.sample.num_steps, config.sample.batch_size = steps, batch
spec = spec_lib.parse(config, jax.device_count())
mesh = mesh_lib.make_mesh(jax.device_count())
net = build.model(spec)
init, key, _ = build.init_fns(spec, net, build.optimizer_of(spec), mesh)
params = init(key).ema_params
fn = generate.make_sample_fn(net, spec.diffusion, spec.sampler, spec.image_shape, mesh,
                             scales={"labels": config.sample.guidance_scale})
inputs = mesh_lib.global_batch({"label": np.arange(batch, dtype=np.int32) % 10}, mesh)
t0 = time.perf_counter()
compiled = fn.lower(params, jax.random.key(0), inputs).compile()
compile_s = time.perf_counter() - t0
ops = re.findall(r"\b(all-to-all|all-gather|all-reduce|collective-permute|reduce-scatter)"
                 r"(?:-start)?\(", compiled.as_text())
jax.block_until_ready(compiled(params, jax.random.key(0), inputs))
times = []
for i in range(calls):
  t0 = time.perf_counter()
  jax.block_until_ready(compiled(params, jax.random.key(i), inputs))
  times.append(time.perf_counter() - t0)
print(json.dumps({"package": diffusion_jax.__file__, "collectives": {k: ops.count(k) for k in sorted(set(ops))},
                  "compile_s": round(compile_s, 2),
                  "ms_per_step": round(1000 * min(times) / steps, 2),
                  "ms_per_step_median": round(1000 * sorted(times)[len(times) // 2] / steps, 2)}))
"""


def cpu_model() -> str:
  for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
      return line.split(":", 1)[1].strip()
  return "unknown"


def run_one(checkout: str, args) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(args.devices),
             PYTHONPATH=os.path.abspath(checkout), TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-c", RUN, args.config, str(args.batch),
                        str(args.steps), str(args.calls)],
                       env=env, capture_output=True, text=True,
                       cwd=os.path.abspath(checkout))  # -c puts the cwd first on sys.path.
  if out.returncode:
    raise SystemExit(f"{checkout}: {out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--checkouts", default=".", help="comma-separated project checkouts")
  p.add_argument("--config", default=os.path.join(ROOT, "configs", "digits.py"))
  p.add_argument("--devices", type=int, default=8)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--calls", type=int, default=3)
  p.add_argument("--rounds", type=int, default=2)
  args = p.parse_args()
  for r in range(args.rounds):
    for checkout in args.checkouts.split(","):
      record = {"round": r, "checkout": checkout, "devices": args.devices,
                "batch": args.batch, "sampler_steps": args.steps,
                **run_one(checkout, args), "cpu": cpu_model(), "nproc": os.cpu_count()}
      print(json.dumps(record), flush=True)
      with open(OUT, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
  main()
