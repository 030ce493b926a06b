"""--mode=eval: negative log-likelihood (bits/dim) of a data split under the latest
checkpoint's EMA parameters, written to WORKDIR/eval/step_<step>_<method>.json."""

import json
import os

import jax
import numpy as np

from diffusion_jax.data import pipeline
from diffusion_jax.evaluation import likelihood
from diffusion_jax.run import build
from diffusion_jax.training import mesh as mesh_lib


def _free_path(directory: str, stem: str) -> str:
  path, k = os.path.join(directory, stem + ".json"), 0
  while os.path.exists(path):
    k += 1
    path = os.path.join(directory, f"{stem}-{k}.json")
  return path


def evaluate_likelihood(config, workdir: str, mesh=None) -> dict:
  mesh = mesh or mesh_lib.make_mesh()
  spec, step, _ = build.checked(config, workdir, "eval", mesh.devices.size)
  ecfg, dcfg = spec.eval, spec.data
  data = pipeline.load_split_numpy(dcfg, ecfg.split, ecfg.num_examples or None)
  images = data["image"]
  labels = data.get("label", np.zeros(len(images), np.int64)).astype(np.int32)
  state = build.load_state(spec, workdir, step, mesh)
  fn = likelihood.make_nll_fn(build.model(spec), spec.diffusion, ecfg, mesh)
  bpd = likelihood.bits_per_dim(fn, state.ema_params, images, labels, ecfg, mesh)
  result = {
      "step": int(state.step), "method": ecfg.method, "split": ecfg.split,
      "num_examples": int(len(bpd)), "bits_per_dim": float(bpd.mean()),
      "bits_per_dim_stderr": float(bpd.std(ddof=1) / np.sqrt(len(bpd))) if len(bpd) > 1 else 0.0,
      "conditional_on_labels": bool(dcfg.num_classes),
  }
  if ecfg.method == "ode":
    result.update(ode_steps=ecfg.ode_steps, hutchinson_probes=ecfg.hutchinson_probes)
  if jax.process_index() == 0:
    directory = os.path.join(workdir, "eval")
    os.makedirs(directory, exist_ok=True)
    path = _free_path(directory, f"step_{result['step']}_{ecfg.method}")
    with open(path, "x") as f:
      json.dump(result, f, indent=2)
    result["path"] = path
    print(json.dumps(result), flush=True)
  return result
