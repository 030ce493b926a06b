"""Overhead of a sweep's trial against a plain run of the same config.

  python experiments/sweep_overhead.py --out=experiments/results/sweep_overhead.json

Runs, one after the other, each in a fresh process with its own new compilation cache:
  plain:       `python -m diffusion_jax.main` of configs/digits.py:runlocal, once per
               trial config (the two seeds of its :runlocal sweep);
  sweep cold:  `python -m diffusion_jax.sweep` of configs/digits.py:runlocal (the same
               two trials), with an empty compilation cache;
  sweep warm:  the same sweep in a new DIR, its compilation cache filled by the cold
               sweep (what a re-run or a second sweep of the same programs sees).
and records each command's wall time and, for the sweeps, each trial's own wall time
(result.json), so that start-up shared by the trials shows as the difference.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "digits.py") + ":runlocal"
TRIALS = [{"seed": 0}, {"seed": 1}]  # The :runlocal sweep's grid.


def timed(cmd: list[str], env: dict) -> float:
  t0 = time.perf_counter()
  subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  return time.perf_counter() - t0


def trial_walls(workdir: str) -> list[float]:
  out = []
  for tid in sorted(os.listdir(os.path.join(workdir, "trials"))):
    with open(os.path.join(workdir, "trials", tid, "result.json")) as f:
      out.append(json.load(f)["wall_s"])
  return out


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--out", default="")
  args = p.parse_args()
  scratch = tempfile.mkdtemp(prefix="sweep_overhead_")
  base = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  base.pop("JAX_COMPILATION_CACHE_DIR", None)
  cpu = open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t")
  # One row per command (experiments/README.md generates its table from this file).
  res: dict = {"cpu": cpu, "config": CONFIG}
  for i, trial in enumerate(TRIALS):
    cache = os.path.join(scratch, f"plain_cache_{i}")
    env = dict(base, JAX_COMPILATION_CACHE_DIR=cache)
    cmd = [sys.executable, "-m", "diffusion_jax.main", f"--config={CONFIG}",
           f"--workdir={os.path.join(scratch, f'plain_{i}')}"]
    cmd += [f"--config.{k}={v}" for k, v in trial.items()]
    res[f"plain run, {trial}, empty cache"] = {"command_s": round(timed(cmd, env), 1)}
  for name in ("cold", "warm"):
    wd = os.path.join(scratch, f"sweep_{name}")
    cmd = [sys.executable, "-m", "diffusion_jax.sweep", f"--config={CONFIG}", f"--workdir={wd}"]
    env = dict(base)
    if name == "warm":  # The cold sweep's cache (DIR/compile_cache).
      env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(scratch, "sweep_cold", "compile_cache")
    total = timed(cmd, env)
    walls = trial_walls(wd)
    res[f"sweep of {len(walls)} trials, {name} cache"] = {
        "command_s": round(total, 1), "trial_s": ", ".join(f"{w:.1f}" for w in walls),
        "outside_trials_s": round(total - sum(walls), 1)}
  shutil.rmtree(scratch, ignore_errors=True)
  text = json.dumps(res, indent=2)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
