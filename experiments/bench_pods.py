"""What multi-host running costs and changes, measured with the real command line on
this machine (issue 10's table in experiments/README.md):

  JAX_PLATFORMS=cpu python experiments/bench_pods.py --part=cache   # digits, cifar10_ddpm
  JAX_PLATFORMS=cpu python experiments/bench_pods.py --part=save
  JAX_PLATFORMS=cpu python experiments/bench_pods.py --part=split
  python experiments/bench_pods.py --part=check --topologies=v5e:4x4,v4:2x2x1   # libtpu

- cache: time to the first step of a resumed run (process start to the "first step" line,
  and the first step itself) with the persistent compilation cache off and on, from the
  same checkpoint, alternating, `--rounds` each. cifar10_ddpm runs at a global batch of 8
  on a fake `cifar10` of random images (this CPU takes minutes per step at 128).
- save: steps/s of the digits run while asynchronous checkpoints are written every 10
  steps, against synchronous ones and none (rates between logs, step 10 onwards).
- split: the same digits run on 2 processes x 4 devices and on 1 process x 8 devices
  (simulated CPU devices, local processes): per-step loss and final parameter
  differences.
- check: `launch check`'s report for cifar10_ddpm at its batch (128) on TPU topologies,
  compiled ahead of time with libtpu on this CPU, and the compile's wall and CPU time.

Each line printed is a JSON record, also appended to experiments/results/bench_pods.jsonl
with the CPU model. A benchmark that prints numbers, never a test.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "experiments", "results", "bench_pods.jsonl")
CHECK = r"""
import dataclasses, json, resource, sys, time
from diffusion_jax.config import files
from diffusion_jax.launch import check
t0 = time.perf_counter()
report = check.compile_report(files.load(sys.argv[1]), sys.argv[2])
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({**dataclasses.asdict(report), "total": report.total, "fits": report.fits,
                  "compile_wall_s": round(time.perf_counter() - t0, 1),
                  "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                  "max_rss_gib": round(usage.ru_maxrss / 2**20, 2)}))
"""


def cpu_model() -> str:
  for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
      return line.split(":", 1)[1].strip()
  return "unknown"


def emit(record: dict) -> None:
  record = {**record, "cpu": cpu_model(), "nproc": os.cpu_count()}
  print(json.dumps(record), flush=True)
  with open(OUT, "a") as f:
    f.write(json.dumps(record) + "\n")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(argv: list[str], env: dict, processes: int = 1, devices: int = 1,
           wait_for: str | None = None):
  """Runs `python -m diffusion_jax.main ARGV` on `processes` local processes; returns
  (seconds until process 0 printed `wait_for` or None, total seconds, process 0's stdout)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
         "PYTHONUNBUFFERED": "1", "JAX_NUM_CPU_DEVICES": str(devices), **env}
  port = free_port()
  logs = tempfile.mkdtemp(prefix="bench_pods_logs_")
  t0 = time.perf_counter()
  procs = []
  for i in range(processes):
    flags = list(argv)
    if processes > 1:
      flags += [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
                f"--process_id={i}"]
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "diffusion_jax.main", *flags], cwd=ROOT, env=env,
        stdout=open(os.path.join(logs, f"{i}.out"), "w"),
        stderr=open(os.path.join(logs, f"{i}.err"), "w")))
  seen = None
  while any(p.poll() is None for p in procs):
    if wait_for and seen is None and wait_for in open(os.path.join(logs, "0.out")).read():
      seen = time.perf_counter() - t0
    time.sleep(0.05)
  total = time.perf_counter() - t0
  out = open(os.path.join(logs, "0.out")).read()
  for i, p in enumerate(procs):
    if p.returncode:
      sys.exit(f"process {i} failed ({p.returncode}): {' '.join(argv)}\n"
               f"{open(os.path.join(logs, f'{i}.err')).read()[-3000:]}")
  if wait_for and seen is None and wait_for in out:
    seen = total
  shutil.rmtree(logs)
  return seen, total, out


def overrides(**kv) -> list[str]:
  return [f"--config.{k}={v}" for k, v in kv.items()]


def first_step_s(out: str) -> float:
  return float(re.search(r"first step \(with compilation\) took ([\d.]+)s", out).group(1))


CACHE_CONFIGS = {
    "digits": ("configs/digits.py", {}),
    "cifar10_ddpm": ("configs/cifar10_ddpm.py", {"training.batch_size": 8}),
}


def part_cache(args, scratch: str) -> None:
  from tests.data.fake_datasets import prepare_cifar10
  data_dir = os.path.join(scratch, "tfds")
  prepare_cifar10(data_dir, train=64, test=16)
  env = {"TFDS_DATA_DIR": data_dir}
  for name in args.configs.split(","):
    config, extra = CACHE_CONFIGS[name]
    base = [f"--config={config}"] + overrides(
        **extra, **{"training.sample_at_end": False, "training.log_every": 1,
                    "training.checkpoint_every": 1, "eval.every_steps": 0})
    # One step, checkpointed, with the cache filled; then resume to step 2 from copies.
    seed = os.path.join(scratch, f"{name}_seed")
    cache = os.path.join(scratch, f"{name}_cache")
    launch([*base, f"--workdir={seed}", *overrides(**{"training.num_steps": 1,
            "training.compilation_cache_dir": cache})], env)
    for r in range(args.rounds):
      for cached in (False, True):
        wd = os.path.join(scratch, f"{name}_{r}_{cached}")
        shutil.copytree(seed, wd, ignore=shutil.ignore_patterns("lock.json"))
        seen, total, out = launch(
            [*base, f"--workdir={wd}", *overrides(**{
                "training.num_steps": 2,
                "training.compilation_cache_dir": cache if cached else "none"})],
            env, wait_for="first step (with compilation)")
        assert "resumed from" in out or "restored" in out or "step 1" in out, out[-2000:]
        emit({"bench": "pods_cache", "config": name, "batch": extra.get(
            "training.batch_size", 64), "cache": cached, "round": r,
            "to_first_step_s": round(seen, 1), "first_step_s": first_step_s(out),
            "process_s": round(total, 1)})
        shutil.rmtree(wd)


def step_rates(out: str, after: int) -> list[float]:
  return [float(m.group(2)) for m in re.finditer(r"step (\d+)/\d+ .*?\| ([\d.]+) steps/s", out)
          if int(m.group(1)) > after]


def part_save(args, scratch: str) -> None:
  variants = {"none": {"training.checkpoint_every": 10_000},
              "async every 10": {"training.checkpoint_every": 10,
                                 "training.async_checkpoints": True},
              "sync every 10": {"training.checkpoint_every": 10,
                                "training.async_checkpoints": False}}
  for r in range(args.rounds):
    for name, extra in variants.items():
      wd = os.path.join(scratch, f"save_{r}_{name.replace(' ', '_')}")
      _, total, out = launch(["--config=configs/digits.py", f"--workdir={wd}", *overrides(
          **extra, **{"training.num_steps": args.save_steps, "training.log_every": 10,
                      "training.sample_at_end": False, "eval.every_steps": 0,
                      "training.keep_checkpoints": 2})], {})
      rates = step_rates(out, after=10)
      emit({"bench": "pods_save", "variant": name, "round": r, "steps": args.save_steps,
            "steps_per_s_mean": round(sum(rates) / len(rates), 3),
            "steps_per_s_min": round(min(rates), 3), "process_s": round(total, 1)})
      shutil.rmtree(wd)


def part_split(args, scratch: str) -> None:
  import jax
  import numpy as np
  runs = {}
  for processes, devices in ((1, 8), (2, 4)):
    wd = os.path.join(scratch, f"split_{processes}x{devices}")
    _, total, _ = launch(["--config=configs/digits.py", f"--workdir={wd}", *overrides(**{
        "training.num_steps": args.split_steps, "training.log_every": 1,
        "training.checkpoint_every": args.split_steps, "training.sample_at_end": False,
        "eval.every_steps": 0, "sample.batch_size": 64})], {}, processes=processes,
        devices=devices)
    runs[(processes, devices)] = (wd, total)
  # Readers of a run's files (imported after the runs: the tests' conftest sets the
  # tests' XLA flags and compilation cache for processes started later).
  from tests.run.test_pods import final_state, losses
  runs = {k: (losses(wd), final_state(wd), total) for k, (wd, total) in runs.items()}
  (la, sa, ta), (lb, sb, tb) = runs[(1, 8)], runs[(2, 4)]
  steps = sorted(la)
  rel = [abs(la[k] - lb[k]) / abs(la[k]) for k in steps]
  diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                          for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  emit({"bench": "pods_split", "steps": args.split_steps, "batch": 64,
        "loss_rel_diff_max": float(f"{max(rel):.3g}"),
        "loss_rel_diff_last": float(f"{rel[-1]:.3g}"),
        "params_abs_diff_max": float(f"{diff(sa.params, sb.params):.3g}"),
        "ema_abs_diff_max": float(f"{diff(sa.ema_params, sb.ema_params):.3g}"),
        "process_s_1x8": round(ta, 1), "process_s_2x4": round(tb, 1)})


def part_check(args, scratch: str) -> None:
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # libtpu's topology.
  for topology in args.topologies.split(","):
    r = subprocess.run([sys.executable, "-c", CHECK, "configs/cifar10_ddpm.py", topology],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode:
      sys.exit(f"check on {topology} failed:\n{r.stderr[-3000:]}")
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    mib = lambda b: round(b / 2**20, 1)
    emit({"bench": "pods_check", "config": "cifar10_ddpm", "topology": topology,
          "device_kind": rep["device_kind"], "devices": rep["num_devices"],
          "hosts": rep["num_hosts"], "batch": rep["batch_size"],
          "per_device_batch": rep["batch_size"] // rep["num_devices"],
          "arguments_mib": mib(rep["arguments"]), "temporaries_mib": mib(rep["temporaries"]),
          "code_mib": mib(rep["code"]), "total_mib": mib(rep["total"]),
          "hbm_gib": rep["capacity"] / 2**30 if rep["capacity"] else None,
          "fits": rep["fits"], "compile_wall_s": rep["compile_wall_s"], "cpu_s": rep["cpu_s"],
          "max_rss_gib": rep["max_rss_gib"]})


PARTS = {"cache": part_cache, "check": part_check, "save": part_save, "split": part_split}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--part", choices=sorted(PARTS), required=True)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--configs", default="digits,cifar10_ddpm")
  p.add_argument("--save_steps", type=int, default=100)
  p.add_argument("--split_steps", type=int, default=20)
  p.add_argument("--topologies", default="v5e:4x4,v4:2x2x1")
  args = p.parse_args()
  sys.path.insert(0, ROOT)
  scratch = tempfile.mkdtemp(prefix="bench_pods_")
  try:
    PARTS[args.part](args, scratch)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  main()
