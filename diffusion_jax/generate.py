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
from PIL import Image, ImageDraw

from diffusion_jax import conditions, diffusion, parallel, samplers
from diffusion_jax.models.unet import UNet


def balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
  """Equal numbers of each class (as equal as num_samples allows), grouped by class."""
  if not num_classes:
    return np.zeros((num_samples,), np.int32)
  return np.sort(np.arange(num_samples) % num_classes).astype(np.int32)


def sampler_config(sample_cfg) -> samplers.SamplerConfig:
  c = sample_cfg
  return samplers.SamplerConfig(
      name=c.sampler, num_steps=c.num_steps, eta=c.eta, guidance_scale=c.guidance_scale,
      text_guidance_scale=c.text_guidance_scale, image_guidance_scale=c.image_guidance_scale,
      clip_denoised=c.clip_denoised, grid=c.grid, rho=c.rho, t_min=c.t_min, t_max=c.t_max,
      lambda_max=c.lambda_max, churn=c.churn, churn_min=c.churn_min, churn_max=c.churn_max,
      churn_noise=c.churn_noise, corrector_steps=c.corrector_steps, snr=c.corrector_snr)


def to_uint8(x) -> np.ndarray:
  return np.asarray(jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255)).astype(np.uint8)


def make_sample_fn(model: UNet, diff: diffusion.Diffusion, cfg: samplers.SamplerConfig,
                   image_shape: tuple, mesh, cond_cfg=conditions.NO_IMAGE,
                   project: bool = False) -> Callable[[object, jax.Array, dict], jax.Array]:
  """A compiled fn(params, key, inputs) -> images in [-1, 1], sharded over `data`.

  `inputs` holds the user-facing conditions (see diffusion_jax.conditions), one row
  per sample; an unconditional model takes {}. With `project`, each sample is moved
  to the nearest image that satisfies its image condition exactly."""
  mcfg = model.config
  null = lambda cond, which: conditions.null(cond, which, mcfg.num_classes)

  def fn(params, key, inputs):
    apply = lambda x, t, cond: model.apply({"params": params}, x, t, cond)
    denoise = samplers.guided(diffusion.make_denoiser(apply, diff),
                              samplers.guidance_scales(cfg), null)
    cond = conditions.make_cond(mcfg, cond_cfg, inputs, image_shape[0])
    batch = jax.tree.leaves(inputs)[0].shape[0]
    x = samplers.sample(denoise, diff.schedule, cfg, (batch,) + image_shape, cond, key)
    if project and cond_cfg.image:
      x = jnp.clip(conditions.IMAGE_CONDITIONS[cond_cfg.image].project(x, inputs, cond_cfg),
                   -1.0, 1.0)
    return x

  repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
  return jax.jit(fn, in_shardings=(repl, repl, data), out_shardings=data)


def generate(sample_fn, params, inputs: dict, batch_size: int, seed: int,
             mesh, num_samples: int | None = None) -> np.ndarray:
  """Samples one image per row of `inputs` (or num_samples for an unconditional
  model), in batches of batch_size; returns uint8 images."""
  n = len(jax.tree.leaves(inputs)[0]) if inputs else num_samples
  if not inputs:  # Unconditional: a dummy row per sample carries the batch size.
    inputs = {"_": np.zeros((n,), np.int32)}
  key = jax.random.key(seed)
  per_process = batch_size // jax.process_count()
  lo = jax.process_index() * per_process
  out = []
  for i, start in enumerate(range(0, n, batch_size)):
    chunk = {k: v[start:start + batch_size] for k, v in inputs.items()}
    count = len(jax.tree.leaves(chunk)[0])
    # Pad with the chunk's first row; every process holds all rows and feeds its slice.
    padded = {k: np.concatenate([v, np.repeat(v[:1], batch_size - count, 0)])
              for k, v in chunk.items()}
    local = {k: v[lo:lo + per_process] for k, v in padded.items()}
    images = sample_fn(params, jax.random.fold_in(key, i), parallel.global_batch(local, mesh))
    if jax.process_count() > 1:
      images = multihost_utils.process_allgather(images, tiled=True)
    out.append(to_uint8(images)[:count])
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


def _as_rgb(x: np.ndarray, size: int) -> np.ndarray:
  """uint8 (N, h, w, c) -> (N, size, size, 3), nearest-upscaled, gray repeated."""
  x = x.repeat(size // x.shape[1], 1).repeat(size // x.shape[2], 2)
  return x.repeat(3, -1) if x.shape[-1] == 1 else x[..., :3]


PANEL_KEYS = ("lowres", "gray", "masked")  # Conditions drawn left of each result.


def panel_grid(images: np.ndarray, record: dict, max_rows: int = 16,
               min_size: int = 64) -> np.ndarray:
  """One row per sample: its image conditions, the result, the reference (if any)
  and its prompt (if any), upscaled to >= min_size px."""
  n, h = images.shape[0], images.shape[1]
  cols = [_as_rgb(record[k], h) for k in PANEL_KEYS if k in record]
  cols.append(_as_rgb(images, h))
  if "reference" in record:
    cols.append(_as_rgb(record["reference"], h))
  rows = min(n, max_rows)
  scale = max(1, -(-min_size // h))
  pad, cell = 2, h * scale
  prompts = record.get("prompts")
  text_w = 8 * max((len(str(p)) for p in prompts[:rows]), default=0) if prompts is not None else 0
  canvas = np.zeros((rows * (cell + pad) + pad, len(cols) * (cell + pad) + pad + text_w, 3),
                    np.uint8)
  for r in range(rows):
    for j, col in enumerate(cols):
      y, x = pad + r * (cell + pad), pad + j * (cell + pad)
      canvas[y:y + cell, x:x + cell] = col[r].repeat(scale, 0).repeat(scale, 1)
  img = Image.fromarray(canvas)
  if prompts is not None:
    draw = ImageDraw.Draw(img)
    for r in range(rows):
      draw.text((len(cols) * (cell + pad) + pad, pad + r * (cell + pad) + cell // 2 - 5),
                str(prompts[r]), fill=(255, 255, 255))
  return np.asarray(img)


def write_samples(workdir: str, step: int, images: np.ndarray, record: dict,
                  num_classes: int) -> str:
  """Writes the .npz (images and the conditions used) and the .png grid; returns
  the .npz path. Class-only sets get one grid row per class, others one row per
  sample with its conditions beside it."""
  directory = os.path.join(workdir, "samples")
  os.makedirs(directory, exist_ok=True)
  stem = _free_stem(directory, f"step_{step}")
  extra = {k: v for k, v in record.items() if k != "count"}
  if "labels" in extra:
    extra["labels"] = extra["labels"].astype(np.int64)
  np.savez(stem + ".npz", images=images, **extra)
  if set(extra) <= {"labels"}:
    labels = extra.get("labels", np.zeros(len(images), np.int64))
    g = grid(images, labels, num_classes)
  else:
    g = panel_grid(images, extra)
  Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).save(stem + ".png")
  return stem + ".npz"
