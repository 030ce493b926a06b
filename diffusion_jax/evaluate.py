"""--mode=eval: negative log-likelihood (bits/dim) of a data split under the latest
checkpoint's EMA parameters, written to WORKDIR/eval/step_<step>_<method>.json."""

import json
import os

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from diffusion_jax import diffusion, likelihood, parallel, train, validate
from diffusion_jax.data import pipeline
from diffusion_jax.models.unet import Cond


def make_nll_fn(model, diff: diffusion.Diffusion, eval_cfg, mesh):
  """A compiled fn(params, images_u8, labels, key) -> bits/dim per example."""
  num_classes = model.config.num_classes

  def fn(params, images, labels, key):
    apply = lambda x, t, cond: model.apply({"params": params}, x, t, cond)
    denoise = diffusion.make_denoiser(apply, diff)
    cond = Cond(labels=labels if num_classes else None)
    if eval_cfg.method == "vlb":
      x = images.astype(jnp.float32) / 127.5 - 1.0
      return likelihood.vlb_nll(denoise, diff.schedule, x, cond, key)
    return likelihood.ode_nll(denoise, diff.schedule, images, cond, key,
                              steps=eval_cfg.ode_steps, t_min=eval_cfg.t_min,
                              t_max=eval_cfg.t_max, lambda_max=eval_cfg.lambda_max,
                              probes=eval_cfg.hutchinson_probes)

  repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
  return jax.jit(fn, in_shardings=(repl, data, data, repl), out_shardings=data)


def _pad(a: np.ndarray, size: int) -> np.ndarray:
  """Pads a batch to `size` by repeating its last example (results are trimmed)."""
  return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def _free_path(directory: str, stem: str) -> str:
  path, k = os.path.join(directory, stem + ".json"), 0
  while os.path.exists(path):
    k += 1
    path = os.path.join(directory, f"{stem}-{k}.json")
  return path


def evaluate_likelihood(config, workdir: str, mesh=None) -> dict:
  mesh = mesh or parallel.make_mesh()
  validate.check_all(config, workdir, "eval", mesh.devices.size)
  ecfg, dcfg = config.eval, config.data
  data = pipeline.load_split_numpy(dcfg, ecfg.split, ecfg.num_examples or None)
  images = data["image"]
  want = (dcfg.image_size, dcfg.image_size, dcfg.channels)
  if images.shape[1:] != want:
    raise validate.ConfigError(f"eval: split {ecfg.split!r} has images {images.shape[1:]}, "
                               f"the model takes {want}")
  labels = data.get("label", np.zeros(len(images), np.int64)).astype(np.int32)
  state = train.load_state(config, workdir, mesh)
  model, diff, _ = train.build(config)
  fn = make_nll_fn(model, diff, ecfg, mesh)
  bs, key = ecfg.batch_size, jax.random.key(ecfg.seed)
  per = jax.process_count()
  lo = jax.process_index() * (bs // per)
  out = []
  for i, start in enumerate(range(0, len(images), bs)):
    chunk = slice(start, start + bs)
    n = len(images[chunk])
    x, y = (_pad(a[chunk], bs) for a in (images, labels))
    bpd = fn(state.ema_params, parallel.global_batch(x[lo:lo + bs // per], mesh),
             parallel.global_batch(y[lo:lo + bs // per], mesh), jax.random.fold_in(key, i))
    out.append(np.asarray(multihost_utils.process_allgather(bpd, tiled=True)
                          if per > 1 else bpd)[:n])
  bpd = np.concatenate(out)
  result = {
      "step": int(state.step), "method": ecfg.method, "split": ecfg.split,
      "num_examples": int(len(bpd)), "bits_per_dim": float(bpd.mean()),
      "bits_per_dim_stderr": float(bpd.std(ddof=1) / np.sqrt(len(bpd))) if len(bpd) > 1 else 0.0,
      "conditional_on_labels": bool(config.data.num_classes),
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
