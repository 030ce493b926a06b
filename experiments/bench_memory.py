"""Peak memory of the DDPM CIFAR-10 U-Net's train step (35.7M parameters) under
rematerialisation, bf16 compute and gradient accumulation, from the compiled
program's memory analysis (nothing is run: the step is lowered on abstract inputs).

  python experiments/bench_memory.py --batch=32

Prints one JSON line per variant: the compiled step's temporary buffers, its
arguments and outputs, and their sum (the peak the program needs besides code), on
the first device of the default backend.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax import config as config_lib  # noqa: E402
from diffusion_jax.run import build, spec as spec_lib  # noqa: E402
from diffusion_jax.training import mesh as mesh_lib  # noqa: E402

# (name, overrides of the config): each variant changes one knob from the baseline.
VARIANTS = {
    "baseline": {},
    "remat=block": {"model.remat": "block"},
    "remat=dots_saveable": {"model.remat": "dots_saveable"},
    "dtype=bfloat16": {"model.dtype": "bfloat16"},
    "microbatches=4": {"training.microbatches": 4},
}


def cpu_model() -> str:
  """lscpu's model name, family, model and widest vector extension."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
  except OSError:
    return platform.processor()
  info = dict(l.split(":", 1) for l in out.splitlines() if ":" in l)
  get = lambda k: info.get(k, "?").strip()
  flags = get("Flags").split()
  vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
  return (f"{get('Model name')} (family {get('CPU family')}, model {get('Model')}, {vector}, "
          f"{os.cpu_count()} cores)")


def memory(batch: int, overrides: dict) -> dict:
  config = config_lib.load(os.path.join(ROOT, "configs", "cifar10_ddpm.py"))
  config.training.batch_size = batch
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  mesh = mesh_lib.make_mesh(1)
  spec = spec_lib.parse(config, 1)
  net, tx = build.model(spec), build.optimizer_of(spec)
  _, _, state = build.init_fns(spec, net, tx, mesh)
  data = mesh_lib.data_sharded(mesh)
  batch_spec = {"image": jax.ShapeDtypeStruct((batch, *spec.image_shape), "float32",
                                              sharding=data)}
  if spec.model.num_classes:
    batch_spec["label"] = jax.ShapeDtypeStruct((batch,), "int32", sharding=data)
  t0 = time.perf_counter()
  compiled = build.jitted_train_step(spec, net, tx, mesh).lower(state, batch_spec).compile()
  seconds = time.perf_counter() - t0
  m = compiled.memory_analysis()
  gib = lambda b: round(b / 2**30, 3)
  return {"temp_gib": gib(m.temp_size_in_bytes), "argument_gib": gib(m.argument_size_in_bytes),
          "output_gib": gib(m.output_size_in_bytes), "alias_gib": gib(m.alias_size_in_bytes),
          "peak_gib": gib(m.temp_size_in_bytes + m.argument_size_in_bytes
                          + m.output_size_in_bytes - m.alias_size_in_bytes),
          "compile_s": round(seconds, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"comma-separated, of {list(VARIANTS)}")
  args = parser.parse_args()
  print(json.dumps({"cpu": cpu_model(), "backend": jax.default_backend(),
                    "jax": jax.__version__, "batch": args.batch}), flush=True)
  for name in args.variants.split(","):
    print(json.dumps({"variant": name, **memory(args.batch, VARIANTS[name])}), flush=True)


if __name__ == "__main__":
  main()
