"""The pod-sized configs' parameters and each device's share of their train state under
their mesh.fsdp, from jax.eval_shape (nothing allocated or compiled), one JSON line per
config; with --time_log, also the resources of a `launch check` run under
`/usr/bin/time -v`, read from its log.

  python experiments/large_configs.py --out=experiments/results/large_configs_state.jsonl
  python experiments/large_configs.py --time_log=experiments/results/launch_check_imagenet64_adm_v5e_8x8.log \
      --out=experiments/results/launch_check_imagenet64_adm_v5e_8x8.jsonl

With a report in the log, its per-device numbers (MiB) and verdict are read too;
--field=KEY=VALUE adds what the log does not show (e.g. --field=encode_chunks=4).

The latent (EDM2) configs' U-Nets are built on the latent of SD's VAE (its config is
models.autoencoder.AutoencoderConfig's defaults; its weights are not needed).
"""

import argparse
import json
import os
import re
import sys

import jax
import numpy as np
from jax.sharding import AbstractMesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax import config as config_lib  # noqa: E402
from diffusion_jax.models.autoencoder import AutoencoderConfig  # noqa: E402
from diffusion_jax.run import build, latent as latent_lib, spec as spec_lib  # noqa: E402
from diffusion_jax.training import mesh as mesh_lib  # noqa: E402
from experiments import machine  # noqa: E402

# Each config and the chips of the topology its docstring names.
CONFIGS = {"imagenet64_adm.py": ("v5e:8x8", 64), "imagenet512_edm2_s.py": ("v5p:4x4x4", 64),
           "imagenet512_edm2_xl.py": ("v5p:4x4x4", 64)}


def load(name: str):
  return config_lib.load(os.path.join(ROOT, "configs", name))


def model_spec(config, num_devices: int) -> spec_lib.Spec:
  """The parsed spec (the run's checks for num_devices), with the U-Net's input the
  latent of SD's VAE in latent configs (its architecture; no weights needed)."""
  sd_vae = latent_lib.Autoencoder("SD's VAE architecture", AutoencoderConfig(), params=None)
  return build.with_autoencoder(spec_lib.parse(config, num_devices), sd_vae)


def abstract_state(spec: spec_lib.Spec, num_devices: int):
  """The train state's shapes and placement on a data x fsdp mesh of num_devices."""
  fsdp = spec.mesh.fsdp
  mesh = AbstractMesh((num_devices // fsdp, fsdp), mesh_lib.BATCH_AXES)
  net, tx = build.model(spec), build.optimizer_of(spec)
  return build.init_fns(spec, net, tx, mesh)[2]


def state_row(name: str) -> dict:
  topology, devices = CONFIGS[name]
  spec = model_spec(load(name), devices)
  abstract = abstract_state(spec, devices)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  per_device = sum(mesh_lib.bytes_per_device(getattr(abstract, k))
                   for k in ("params", "ema_params", "opt_state"))
  return {"config": name, "topology": topology, "parameters": n, "fsdp": spec.mesh.fsdp,
          "state_gb": round(16 * n / 1e9, 3), "per_device_gb": round(per_device / 1e9, 3)}


def time_row(log: str) -> dict:
  """What `/usr/bin/time -v` reported at the end of log, and the command it timed."""
  with open(log) as f:
    text = f.read()
  row = machine.time_report(text)
  row["report"] = "printed" if "per-device memory of the compiled train step" in text else "none"
  # The report's lines (launch/check.py: Report.text), where it printed one.
  for key in ("arguments", "outputs", "aliased", "temporaries", "code", "total"):
    found = re.search(rf"^  {key} +(-?[\d.]+) MiB", text, re.M)
    if found:
      row[f"{key}_mib"] = float(found.group(1))
  found = re.search(r"HBM: (fits|does NOT fit|capacity unknown)", text)
  if found:
    row["verdict"] = found.group(1)
  return row


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="JSON lines to write (must not exist)")
  p.add_argument("--time_log", default="", help="a `/usr/bin/time -v` log to read instead")
  p.add_argument("--field", action="append", default=[],
                 help="KEY=VALUE added to the --time_log row (what its command line does "
                      "not show, e.g. a config default at that commit); repeatable")
  args = p.parse_args()
  fields = {}
  for field in args.field:
    key, sep, value = field.partition("=")
    if not (args.time_log and sep and key):
      p.error(f"--field={field!r}: give KEY=VALUE, with --time_log")
    fields[key] = value
  rows = [{**time_row(args.time_log), **fields}] if args.time_log else [
      state_row(n) for n in CONFIGS]
  with open(args.out, "x") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
      print(json.dumps(row))


if __name__ == "__main__":
  main()
