"""--mode=eval: negative log-likelihood (bits/dim) of a data split under the latest
checkpoint's EMA parameters, written to WORKDIR/eval/step_<step>_<method>.json.
Every process evaluates its slice of each batch; process 0 writes the result."""

import json

import numpy as np
from etils import epath

from diffusion_jax.data import pipeline
from diffusion_jax.evaluation import likelihood
from diffusion_jax.run import build
from diffusion_jax.training import distributed, mesh as mesh_lib


def _free_path(directory: epath.Path, stem: str) -> epath.Path:
  path, k = directory / f"{stem}.json", 0
  while path.exists():
    k += 1
    path = directory / f"{stem}-{k}.json"
  return path


def evaluate_likelihood(config, workdir: str, mesh=None) -> dict:
  mesh = mesh or mesh_lib.make_mesh()
  spec, found, _ = build.checked(config, workdir, "eval", mesh.devices.size)
  build.use_compilation_cache(spec, workdir)
  ecfg, dcfg = spec.eval, spec.data
  data = distributed.checked(pipeline.load_split_numpy, dcfg, ecfg.split,
                             ecfg.num_examples or None)
  images = data["image"]
  labels = data.get("label", np.zeros(len(images), np.int64)).astype(np.int32)
  state = build.load_state(spec, workdir, found, mesh)
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
  if distributed.is_primary():
    directory = epath.Path(workdir) / "eval"
    directory.mkdir(parents=True, exist_ok=True)
    path = _free_path(directory, f"step_{result['step']}_{ecfg.method}")
    path.write_text(json.dumps(result, indent=2))
    result["path"] = str(path)
    print(json.dumps(result), flush=True)
  return result
