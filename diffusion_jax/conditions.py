"""Conditions: what a model is conditioned on, built from a batch, dropped for
classifier-free guidance, and nulled for the guidance's unconditional branches.

A batch (training or sampling) is a dict of arrays. Its conditioning entries are the
user-facing forms of each condition:
  label                 (B,) int32 class ids
  tokens                (B, L) int32 token ids (0 = padding)
  text_emb, text_mask   (B, L, D) float, (B, L) bool: precomputed text embeddings
  lowres                (B, H/f, W/f, C) super-resolution input               [cond.image = "sr"]
  gray                  (B, H, W, 1) luminance, for colourisation             [cond.image = "gray"]
  masked, mask          (B, H, W, C) image with holes zeroed, (B, H, W, 1) 1 = known
                                                                              [cond.image = "inpaint"]
Image conditions are made from clean images by `degrade` (in the train step, on
device, from the step's key) and turned into the U-Net's concatenated input by
`model_image`; sampling takes the same user-facing forms from files or a dataset.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import area_downsample
from diffusion_jax.models.unet import Cond, UNetConfig

__all__ = ["GUIDED", "IMAGE_CONDITIONS", "NO_IMAGE", "area_downsample", "box_masks", "drop",
           "luminance", "make_cond", "null", "upsample"]

Array = jax.Array
GUIDED = ("image", "labels", "text")  # Guidance nests conditions in this order.


def upsample(x: Array, size: int) -> Array:
  """Bicubic upsampling to size x size (the SR model's input, and the baseline)."""
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), method="cubic")


def luminance(x: Array) -> Array:
  """ITU-R BT.601 luma of RGB in [-1, 1] (affine, so it stays in [-1, 1])."""
  return jnp.tensordot(x, jnp.array([0.299, 0.587, 0.114], x.dtype), axes=[[-1], [0]])[..., None]


def box_masks(key: Array, batch: int, size: int, lo: float = 0.3, hi: float = 0.6) -> Array:
  """(B, size, size, 1) masks, 1 = known, each with one random rectangular hole whose
  sides are uniform in [lo, hi] of the image side."""
  k1, k2 = jax.random.split(key)
  sides = jnp.round(jax.random.uniform(k1, (batch, 2), minval=lo, maxval=hi) * size)
  corner = jnp.floor(jax.random.uniform(k2, (batch, 2)) * (size - sides + 1))
  idx = jnp.arange(size)
  inside = lambda lo, n: (idx[None] >= lo[:, None]) & (idx[None] < (lo + n)[:, None])
  rows, cols = inside(corner[:, 0], sides[:, 0]), inside(corner[:, 1], sides[:, 1])
  hole = rows[:, :, None] & cols[:, None, :]
  return (~hole)[..., None].astype(jnp.float32)


class ImageCondition(NamedTuple):
  keys: tuple[str, ...]  # The batch entries holding this condition.
  degrade: Callable  # (x, key, cond_cfg) -> {key: array}, from clean images x.
  model_image: Callable  # ({key: array}, image_size) -> (B, H, W, k).
  channels: Callable  # data channels -> k.
  shapes: Callable  # (image_size, channels, cond_cfg) -> {key: (h, w, c)}.
  # (x, {key: array}, cond_cfg) -> x changed as little as possible to satisfy the
  # condition exactly (sample.project): the nearest consistent image.
  project: Callable


IMAGE_CONDITIONS = {
    "sr": ImageCondition(
        keys=("lowres",),
        degrade=lambda x, key, c: {"lowres": area_downsample(x, c.sr_factor)},
        model_image=lambda b, size: upsample(b["lowres"], size),
        channels=lambda ch: ch,
        shapes=lambda size, ch, c: {"lowres": (size // c.sr_factor, size // c.sr_factor, ch)},
        # Adds the block-constant correction, so area-downsampling gives the input.
        project=lambda x, b, c: x + jnp.repeat(jnp.repeat(
            b["lowres"] - area_downsample(x, c.sr_factor), c.sr_factor, 1), c.sr_factor, 2)),
    "gray": ImageCondition(
        keys=("gray",),
        degrade=lambda x, key, c: {"gray": luminance(x)},
        model_image=lambda b, size: b["gray"],
        channels=lambda ch: 1,
        shapes=lambda size, ch, c: {"gray": (size, size, 1)},
        # The luma weights sum to 1: adding d to R, G and B adds d to the luminance.
        project=lambda x, b, c: x + (b["gray"] - luminance(x))),
    "inpaint": ImageCondition(
        keys=("masked", "mask"),
        degrade=lambda x, key, c: _inpaint_inputs(x, box_masks(
            key, x.shape[0], x.shape[1], c.hole_min, c.hole_max)),
        model_image=lambda b, size: jnp.concatenate([b["masked"] * b["mask"], b["mask"]], -1),
        channels=lambda ch: ch + 1,
        shapes=lambda size, ch, c: {"masked": (size, size, ch), "mask": (size, size, 1)},
        project=lambda x, b, c: b["mask"] * b["masked"] + (1 - b["mask"]) * x),
}


def _inpaint_inputs(x, mask):
  return {"masked": x * mask, "mask": mask}


class _NoImage(NamedTuple):
  image: str = ""


NO_IMAGE = _NoImage()  # A `cond` config section with no image condition.


def make_cond(model_cfg: UNetConfig, cond_cfg, batch: dict, image_size: int) -> Cond:
  """The U-Net's Cond from a batch's user-facing conditions."""
  image = None
  if cond_cfg.image:
    image = IMAGE_CONDITIONS[cond_cfg.image].model_image(batch, image_size)
  return Cond(labels=batch.get("label") if model_cfg.num_classes else None, image=image,
              tokens=batch.get("tokens") if model_cfg.text == "tokens" else None,
              text_emb=batch.get("text_emb") if model_cfg.text == "embeddings" else None,
              text_mask=batch.get("text_mask") if model_cfg.text == "embeddings" else None)


def null(cond: Cond, which: str, null_label: int, where: Array | None = None) -> Cond:
  """`cond` with one condition ("labels", "text" or "image") replaced by its null
  (the null label, the empty prompt, an all-zero image), where `where` (B,) is True
  (everywhere if None)."""
  def sel(null_value, value):
    if where is None:
      return jnp.broadcast_to(null_value, value.shape).astype(value.dtype)
    w = where.reshape(where.shape + (1,) * (value.ndim - 1))
    return jnp.where(w, null_value, value).astype(value.dtype)

  if which == "labels" and cond.labels is not None:
    return cond.replace(labels=sel(null_label, cond.labels))
  if which == "text" and cond.tokens is not None:
    return cond.replace(tokens=sel(0, cond.tokens))
  if which == "text" and cond.text_emb is not None:
    return cond.replace(text_emb=sel(0.0, cond.text_emb), text_mask=sel(False, cond.text_mask))
  if which == "image" and cond.image is not None:
    return cond.replace(image=sel(0.0, cond.image))
  return cond


def drop(cond: Cond, key: Array, rates: dict, null_label: int) -> Cond:
  """Classifier-free guidance training: each condition independently replaced by its
  null with probability rates[name], per example."""
  for i, which in enumerate(GUIDED):
    p = rates.get(which, 0.0)
    if p > 0:
      batch = jax.tree.leaves(cond)[0].shape[0]
      where = jax.random.uniform(jax.random.fold_in(key, i), (batch,)) < p
      cond = null(cond, which, null_label, where)
  return cond
