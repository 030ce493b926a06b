"""Peak memory of the DDPM CIFAR-10 U-Net's train step (35.7M parameters) under
rematerialisation, bf16 compute, gradient accumulation and a train state split over
devices (mesh.fsdp), from the compiled program's memory analysis (nothing is run: the
step is lowered on abstract inputs).

  JAX_PLATFORMS=cpu python experiments/bench_memory.py --batch=32
  python experiments/bench_memory.py --batch=128 --topology=v5e:2x2  # TPU, compiled here
  JAX_PLATFORMS=cpu python experiments/bench_memory.py --probe  # Does remat save here?
  # The state split 8 ways, on 8 simulated CPU devices (the baseline on the same 8):
  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
      python experiments/bench_memory.py --batch=64 --devices=8 --variants=baseline,fsdp=8

Prints one JSON line per variant: the compiled step's temporary buffers, its
arguments and outputs, and their sum (the peak the program needs besides code), per
device: of this machine's first device, or (--topology, needs libtpu) of a device of
a TPU topology the step is compiled for ahead of time on this machine, with no TPU.
"""

import argparse
import json
import os
import sys
import time

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax import config as config_lib  # noqa: E402
from diffusion_jax.launch import check  # noqa: E402
from diffusion_jax.run import build, spec as spec_lib  # noqa: E402
from diffusion_jax.training import mesh as mesh_lib  # noqa: E402
from experiments import machine  # noqa: E402

# (name, overrides of the config): each variant changes one knob from the baseline.
VARIANTS = {
    "baseline": {},
    "remat=block": {"model.remat": "block"},
    "remat=dots_saveable": {"model.remat": "dots_saveable"},
    "dtype=bfloat16": {"model.dtype": "bfloat16"},
    "microbatches=4": {"training.microbatches": 4},
    # Need --devices (or a --topology) of a multiple of 4 / 8 devices.
    "fsdp=4": {"mesh.fsdp": 4},
    "fsdp=8": {"mesh.fsdp": 8},
}


def memory(batch: int, overrides: dict, topology: str = "",
           config_file: str = "configs/cifar10_ddpm.py", devices: int = 1) -> dict:
  config = config_lib.load(os.path.join(ROOT, config_file))
  config.training.batch_size = batch
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  t0 = time.perf_counter()
  if topology:
    r = check.compile_report(config, topology)
    sizes = (r.temporaries, r.arguments, r.outputs, r.aliased)
  else:
    spec = spec_lib.parse(config, devices)
    mesh = mesh_lib.make_mesh(devices, fsdp=spec.mesh.fsdp)
    net, tx = build.model(spec), build.optimizer_of(spec)
    _, _, state = build.init_fns(spec, net, tx, mesh)
    batch_spec = check.abstract_batch(spec, net, mesh)
    compiled = build.jitted_train_step(spec, net, tx, mesh, state).lower(
        state, batch_spec).compile()
    m = compiled.memory_analysis()
    sizes = (m.temp_size_in_bytes, m.argument_size_in_bytes, m.output_size_in_bytes,
             m.alias_size_in_bytes)
  seconds = time.perf_counter() - t0
  temp, arguments, outputs, aliased = sizes
  gib = lambda b: round(b / 2**30, 3)
  return {"temp_gib": gib(temp), "argument_gib": gib(arguments), "output_gib": gib(outputs),
          "alias_gib": gib(aliased), "peak_gib": gib(temp + arguments + outputs - aliased),
          "compile_s": round(seconds, 1)}


def remat_probe() -> list[dict]:
  """Does XLA on this backend turn jax.checkpoint into less memory? A chain of 12
  layers (8192 x 512 activations), differentiated with and without checkpointing each
  layer: the compiled program's recomputed ops and its temporaries."""
  import jax.numpy as jnp

  def loss(ws, x, remat):
    layer = lambda w, h: jnp.tanh(jnp.sin(h @ w) * 2.0 + 1.0)
    layer = jax.checkpoint(layer) if remat else layer
    for w in ws:
      x = layer(w, x)
    return jnp.sum(x ** 2)

  ws = [jnp.full((512, 512), 0.01) for _ in range(12)]
  x = jnp.ones((8192, 512))
  rows = []
  for remat in (False, True):
    compiled = jax.jit(jax.grad(lambda w: loss(w, x, remat))).lower(ws).compile()
    rows.append({"probe": f"12-layer chain, jax.checkpoint={remat}",
                 "sine_ops": compiled.as_text().count(" sine("),
                 "temp_mib": round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 1)})
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--config", default="configs/cifar10_ddpm.py",
                      help="the experiment whose network is measured")
  parser.add_argument("--topology", default="",
                      help="a TPU topology (libtpu's names: v5e:2x2, v4:2x2x1, ...); "
                      "the batch is global, split over its devices")
  parser.add_argument("--devices", type=int, default=1,
                      help="local devices the batch and state are split over (no --topology)")
  parser.add_argument("--variants", default=",".join(v for v in VARIANTS if "fsdp" not in v),
                      help=f"comma-separated, of {list(VARIANTS)}")
  parser.add_argument("--probe", action="store_true",
                      help="only the jax.checkpoint probe of this backend (remat_probe)")
  args = parser.parse_args()
  if args.probe:
    for row in remat_probe():
      print(json.dumps({"target": jax.default_backend(), **row}), flush=True)
    return
  print(json.dumps({"cpu": machine.cpu_model(),
                    "target": args.topology or jax.default_backend(),
                    "config": args.config, "jax": jax.__version__, "batch": args.batch,
                    "devices": args.devices}),
                   flush=True)
  for name in args.variants.split(","):
    row = memory(args.batch, VARIANTS[name], args.topology, args.config, args.devices)
    print(json.dumps({"variant": name, **row}), flush=True)


if __name__ == "__main__":
  main()
