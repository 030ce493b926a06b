"""Sample sets: labels, batched data-parallel sampling, and the files written.

A set is `samples/step_<step>.npz` (images uint8 N x H x W x C, labels int N) and
`samples/step_<step>.png` (a grid, one row per class). Existing files are never
overwritten: a second set at the same step gets a `-1`, `-2`, ... suffix.
"""

import os
from typing import Callable

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
from PIL import Image

from diffusion_jax import diffusion, parallel, samplers
from diffusion_jax.models.unet import Cond, UNet


def balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
  """Equal numbers of each class (as equal as num_samples allows), grouped by class."""
  if not num_classes:
    return np.zeros((num_samples,), np.int32)
  return np.sort(np.arange(num_samples) % num_classes).astype(np.int32)


def sampler_config(sample_cfg) -> samplers.SamplerConfig:
  c = sample_cfg
  return samplers.SamplerConfig(
      name=c.sampler, num_steps=c.num_steps, eta=c.eta, guidance_scale=c.guidance_scale,
      clip_denoised=c.clip_denoised, grid=c.grid, rho=c.rho, t_min=c.t_min, t_max=c.t_max,
      lambda_max=c.lambda_max, churn=c.churn, churn_min=c.churn_min, churn_max=c.churn_max,
      churn_noise=c.churn_noise, corrector_steps=c.corrector_steps, snr=c.corrector_snr)


def to_uint8(x) -> np.ndarray:
  return np.asarray(jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255)).astype(np.uint8)


def make_sample_fn(model: UNet, diff: diffusion.Diffusion,
                   cfg: samplers.SamplerConfig, image_shape: tuple, mesh
                   ) -> Callable[[object, jax.Array, jax.Array], jax.Array]:
  """A compiled fn(params, key, labels) -> images in [-1, 1], sharded over `data`."""
  num_classes = model.config.num_classes

  def apply(params):
    return lambda x, t, cond: model.apply({"params": params}, x, t, cond)

  def fn(params, key, labels):
    denoise = diffusion.make_denoiser(apply(params), diff)
    if num_classes:
      denoise = samplers.guided(denoise, cfg.guidance_scale, num_classes)
    cond = Cond(labels=labels if num_classes else None)
    return samplers.sample(denoise, diff.schedule, cfg, (labels.shape[0],) + image_shape, cond,
                           key)

  repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
  return jax.jit(fn, in_shardings=(repl, repl, data), out_shardings=data)


def generate(sample_fn, params, labels: np.ndarray, batch_size: int, seed: int,
             mesh) -> np.ndarray:
  """Samples one image per label, in batches of batch_size; returns uint8 images."""
  key = jax.random.key(seed)
  per_process = batch_size // jax.process_count()
  lo = jax.process_index() * per_process
  out = []
  for i, start in enumerate(range(0, len(labels), batch_size)):
    chunk = labels[start:start + batch_size]
    padded = np.concatenate([chunk, np.zeros(batch_size - len(chunk), np.int32)])
    # Every process holds all labels and feeds its own slice of the global batch.
    lab = parallel.global_batch(padded[lo:lo + per_process], mesh)
    images = sample_fn(params, jax.random.fold_in(key, i), lab)
    if jax.process_count() > 1:
      images = multihost_utils.process_allgather(images, tiled=True)
    out.append(to_uint8(images)[:len(chunk)])
  return np.concatenate(out)


def grid(images: np.ndarray, labels: np.ndarray, num_classes: int, max_cols: int = 16,
         min_size: int = 32) -> np.ndarray:
  """One row per class (a single row if unconditional), upscaled to >= min_size px."""
  rows = range(num_classes) if num_classes else [0]
  n, h, w, c = images.shape
  cells = [images[labels == r][:max_cols] if num_classes else images[:max_cols] for r in rows]
  cols = max(1, max(len(x) for x in cells))
  pad = 1
  canvas = np.zeros((len(cells) * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
  for r, row in enumerate(cells):
    for j, img in enumerate(row):
      y, x = pad + r * (h + pad), pad + j * (w + pad)
      canvas[y:y + h, x:x + w] = img
  scale = max(1, -(-min_size // h))
  return canvas.repeat(scale, 0).repeat(scale, 1)


def _free_stem(directory: str, stem: str) -> str:
  candidate, k = stem, 0
  while any(os.path.exists(os.path.join(directory, candidate + ext)) for ext in (".npz", ".png")):
    k += 1
    candidate = f"{stem}-{k}"
  return os.path.join(directory, candidate)


def write_samples(workdir: str, step: int, images: np.ndarray, labels: np.ndarray,
                  num_classes: int) -> str:
  """Writes the .npz and the .png grid; returns the .npz path."""
  directory = os.path.join(workdir, "samples")
  os.makedirs(directory, exist_ok=True)
  stem = _free_stem(directory, f"step_{step}")
  np.savez(stem + ".npz", images=images, labels=labels.astype(np.int64))
  g = grid(images, labels, num_classes)
  Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).save(stem + ".png")
  return stem + ".npz"
