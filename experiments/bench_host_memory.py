"""Peak host memory of the training command line, with and without handing back what
compiling the train step freed (training/host_memory.py), in one invocation, alternating.

  JAX_PLATFORMS=cpu python experiments/bench_host_memory.py --batch=8 --rounds=2 \
      --out=experiments/results/bench_host_memory_cpu.jsonl

Each run is `python -m diffusion_jax.main` on configs/cifar10_ddpm.py for --steps steps at
--batch, on a fake `cifar10` of random images (tests/data/fake_datasets.py), ending with a
small sample set; `kept` runs the command as it is, `no_release` with
host_memory.release_freed replaced by a no-op. Printed per run: the process's peak
resident memory (getrusage), the "first step (with compilation)" time and the wall time.
A benchmark that prints numbers, never a test.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import machine  # noqa: E402
from experiments.bench_pods import first_step_s  # noqa: E402

RUN = r"""
import json, resource, sys
if sys.argv[1] == "no_release":
  from diffusion_jax.training import host_memory
  host_memory.release_freed = lambda: False
from diffusion_jax import main
sys.argv = ["diffusion_jax.main", *sys.argv[2:]]
try:
  main.main()
finally:
  print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
VARIANTS = ("kept", "no_release")


def run(variant: str, workdir: str, args, env) -> dict:
  argv = [f"--workdir={workdir}", "--config=configs/cifar10_ddpm.py"] + [
      f"--config.{k}={v}" for k, v in {
          "training.batch_size": args.batch, "training.num_steps": args.steps,
          "training.checkpoint_every": args.steps, "training.log_every": args.steps,
          "sample.num_samples": 8, "sample.batch_size": 8, "sample.num_steps": 2}.items()]
  t0 = time.perf_counter()
  r = subprocess.run([sys.executable, "-c", RUN, variant, *argv], capture_output=True,
                     text=True, cwd=ROOT, env=env)
  wall = time.perf_counter() - t0
  if r.returncode:
    sys.exit(f"error: the {variant} run failed:\n{r.stderr[-3000:]}")
  return {"variant": variant, "batch": args.batch, "wall_s": wall,
          "first_step_s": first_step_s(r.stdout + r.stderr),
          **json.loads(r.stdout.strip().splitlines()[-1])}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=6)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--out", default="", help="Also append the summary line to this file.")
  args = p.parse_args()
  if min(args.batch, args.steps, args.rounds) < 1:
    sys.exit("error: --batch, --steps and --rounds must be at least 1")
  from tests.data.fake_datasets import prepare_cifar10
  with tempfile.TemporaryDirectory() as scratch:
    data_dir = os.path.join(scratch, "tfds")
    prepare_cifar10(data_dir, train=64, test=8)
    env = dict(os.environ, TFDS_DATA_DIR=data_dir)
    rows = []
    for r in range(args.rounds):
      for variant in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
        row = {"round": r, **run(variant, os.path.join(scratch, f"{variant}_{r}"), args, env)}
        rows.append(row)
        machine.emit(row, args.out)
  summary = {}
  for variant in VARIANTS:
    mine = [row for row in rows if row["variant"] == variant]
    for k in ("peak_rss_mib", "first_step_s", "wall_s"):
      summary[f"{k}_{variant}"] = statistics.median(row[k] for row in mine)
  machine.emit({"summary": summary, "cpu": machine.cpu_model(), "batch": args.batch,
                "steps": args.steps}, args.out)


if __name__ == "__main__":
  main()
