"""Compile time of the tests' tiny train step under XLA flag sets, each in a fresh
process with the compilation cache off: why tests/conftest.py sets its XLA_FLAGS.

  JAX_PLATFORMS=cpu python experiments/bench_test_compile.py --rounds=2
  JAX_PLATFORMS=cpu python experiments/bench_test_compile.py --rounds=4 --sets=2,3

Prints, per flag set and round, the compile's CPU and wall seconds, the CPU seconds of
3 steps and the last loss (equal across sets: the flags change no result here). A
benchmark that prints numbers, never a test.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
FLAG_SETS = {"default": "", "no llvm opt": BASE,
             "no llvm opt, no fusion emitters": BASE + " --xla_cpu_use_fusion_emitters=false",
             "no llvm opt, no fusion emitters, one codegen part":
                 BASE + " --xla_cpu_use_fusion_emitters=false"
                 " --xla_cpu_parallel_codegen_split_count=1"}

WORKER = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from tests.conftest import apply_overrides, tiny_overrides
from tests.training.test_train_step import fake_batch
os.environ["XLA_FLAGS"] = sys.argv[2]  # Importing the tests' conftest set its own.
import jax
jax.config.update("jax_enable_compilation_cache", False)
from diffusion_jax.config import defaults
from diffusion_jax.run import build, spec as spec_lib
from diffusion_jax.training import mesh as mesh_lib
mesh = mesh_lib.make_mesh(1)
spec = spec_lib.parse(apply_overrides(defaults.get_config(), tiny_overrides()), 1)
net, tx = build.model(spec), build.optimizer_of(spec)
init, key, abstract = build.init_fns(spec, net, tx, mesh)
state, batch = init(key), mesh_lib.global_batch(fake_batch(16), mesh)
step = build.jitted_train_step(spec, net, tx, mesh, abstract)
c0, w0 = time.process_time(), time.perf_counter()
compiled = step.lower(state, batch).compile()
compile_cpu, compile_wall = time.process_time() - c0, time.perf_counter() - w0
c0 = time.process_time()
for _ in range(3):
  state, m = compiled(state, batch)
jax.block_until_ready(m)
print(json.dumps({"compile_cpu_s": round(compile_cpu, 2), "compile_wall_s": round(compile_wall, 2),
                  "steps_cpu_s": round(time.process_time() - c0, 3), "loss": float(m["loss"])}))
"""


def cpu_model() -> str:
  for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
      return line.split(":", 1)[1].strip()
  return "unknown"


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--sets", default="", help="positions in FLAG_SETS to run, e.g. 2,3 (all)")
  args = p.parse_args()
  names = list(FLAG_SETS)
  try:
    chosen = [names[int(i)] for i in args.sets.split(",")] if args.sets else names
  except (ValueError, IndexError):
    raise SystemExit(f"error: --sets={args.sets!r}: give positions 0-{len(names) - 1}, "
                     "comma-separated")
  if args.rounds < 1:
    raise SystemExit(f"error: --rounds={args.rounds} must be at least 1")
  print(json.dumps({"cpu": cpu_model(), "cores": os.cpu_count()}), flush=True)
  for r in range(args.rounds):
    for name in chosen:  # Interleaved: each round runs every set.
      flags = FLAG_SETS[name]
      env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
      env.pop("JAX_COMPILATION_CACHE_DIR", None)
      out = subprocess.run([sys.executable, "-c", WORKER, ROOT, flags], env=env,
                           capture_output=True, text=True, cwd=ROOT)
      if out.returncode:
        raise SystemExit(out.stderr[-3000:])
      print(json.dumps({"round": r, "flags": name, **json.loads(out.stdout.splitlines()[-1])}),
            flush=True)


if __name__ == "__main__":
  main()
