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

Latent diffusion (docs/latent.md): the user-facing forms stay in pixels and
`latent_image` makes the U-Net's input at the latent's size, as the method requires:
super-resolution resizes the low-resolution image to the latent's size (LDM's SR);
colourisation encodes the gray image (as a gray RGB image) with the autoencoder;
inpainting encodes the masked image and area-downsamples the mask (the fraction of
each latent pixel's f x f pixels that is known; Stable Diffusion's inpainting input).
Encodings are the posterior mean, scaled as the diffusion model's latents.
"""

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax.config.errors import choice, finite, require, section_values
from diffusion_jax.models.layers import area_downsample
from diffusion_jax.models.unet import Cond, UNetConfig

__all__ = ["CondConfig", "GUIDED", "IMAGE_CONDITIONS", "NO_IMAGE", "box_masks",
           "check_guidance", "drop", "dropout_rates", "guidance_scales", "luminance",
           "make_cond", "null", "upsample"]

Array = jax.Array


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
  # (cond_cfg, image_size, channels) -> None; ConfigError for values it can't use.
  check: Callable
  degrade: Callable  # (x, key, cond_cfg) -> {key: array}, from clean images x.
  model_image: Callable  # ({key: array}, image_size) -> (B, H, W, k).
  channels: Callable  # data channels -> k.
  shapes: Callable  # (image_size, channels, cond_cfg) -> {key: (h, w, c)}.
  # (x, {key: array}, cond_cfg) -> x changed as little as possible to satisfy the
  # condition exactly (sample.project): the nearest consistent image.
  project: Callable
  # ({key: array}, latent size, encode) -> (B, h, w, k): the U-Net's input in latent
  # space; encode(images in [-1, 1]) -> the diffusion model's latents.
  latent_image: Callable
  latent_channels: Callable  # (data channels, latent channels) -> k.


IMAGE_CONDITIONS = {
    "sr": ImageCondition(
        keys=("lowres",),
        check=lambda c, size, ch: require(
            c.sr_factor >= 2 and size % c.sr_factor == 0,
            f"cond.sr_factor={c.sr_factor} must be >= 2 and divide data.image_size={size}"),
        degrade=lambda x, key, c: {"lowres": area_downsample(x, c.sr_factor)},
        model_image=lambda b, size: upsample(b["lowres"], size),
        channels=lambda ch: ch,
        shapes=lambda size, ch, c: {"lowres": (size // c.sr_factor, size // c.sr_factor, ch)},
        # Adds the block-constant correction, so area-downsampling gives the input.
        project=lambda x, b, c: x + jnp.repeat(jnp.repeat(
            b["lowres"] - area_downsample(x, c.sr_factor), c.sr_factor, 1), c.sr_factor, 2),
        latent_image=lambda b, size, encode: upsample(b["lowres"], size),
        latent_channels=lambda ch, latent: ch),
    "gray": ImageCondition(
        keys=("gray",),
        check=lambda c, size, ch: require(
            ch == 3, f"cond.image='gray' (colourisation) needs RGB data; data.channels={ch}"),
        degrade=lambda x, key, c: {"gray": luminance(x)},
        model_image=lambda b, size: b["gray"],
        channels=lambda ch: 1,
        shapes=lambda size, ch, c: {"gray": (size, size, 1)},
        # The luma weights sum to 1: adding d to R, G and B adds d to the luminance.
        project=lambda x, b, c: x + (b["gray"] - luminance(x)),
        latent_image=lambda b, size, encode: encode(jnp.repeat(b["gray"], 3, axis=-1)),
        latent_channels=lambda ch, latent: latent),
    "inpaint": ImageCondition(
        keys=("masked", "mask"),
        check=lambda c, size, ch: require(
            0 < c.hole_min <= c.hole_max < 1, "cond: need 0 < hole_min <= hole_max < 1"),
        degrade=lambda x, key, c: _inpaint_inputs(x, box_masks(
            key, x.shape[0], x.shape[1], c.hole_min, c.hole_max)),
        model_image=lambda b, size: jnp.concatenate([b["masked"] * b["mask"], b["mask"]], -1),
        channels=lambda ch: ch + 1,
        shapes=lambda size, ch, c: {"masked": (size, size, ch), "mask": (size, size, 1)},
        project=lambda x, b, c: b["mask"] * b["masked"] + (1 - b["mask"]) * x,
        latent_image=lambda b, size, encode: jnp.concatenate(
            [encode(b["masked"] * b["mask"]),
             area_downsample(b["mask"], b["mask"].shape[1] // size)], -1),
        latent_channels=lambda ch, latent: latent + 1),
}


def _inpaint_inputs(x, mask):
  return {"masked": x * mask, "mask": mask}


@dataclasses.dataclass(frozen=True)
class CondConfig:
  """The `cond` section: which image condition a model takes, and its parameters."""
  image: str = ""  # "" or a name of IMAGE_CONDITIONS.
  sr_factor: int = 4
  hole_min: float = 0.3
  hole_max: float = 0.6

  @classmethod
  def from_config(cls, cond_cfg) -> "CondConfig":
    config = cls(**section_values(cls, cond_cfg, "cond"))
    choice("cond.image", config.image, ("", *IMAGE_CONDITIONS), " ('' = none)")
    return config

  def check_model(self, model_cfg: UNetConfig, image_size: int, channels: int) -> None:
    """The image condition against the data and the U-Net's conditioning input."""
    want = 0
    if self.image:
      spec = IMAGE_CONDITIONS[self.image]
      spec.check(self, image_size, channels)
      want = spec.channels(channels)
    require(model_cfg.cond_image_channels == want,
            f"model.cond_image_channels={model_cfg.cond_image_channels}, but "
            f"cond.image={self.image!r} gives {want} channels")

  def check_latent(self, model_cfg: UNetConfig, image_size: int, channels: int,
                   latent_channels: int) -> None:
    """The image condition against the data and a latent U-Net's conditioning input."""
    want = 0
    if self.image:
      spec = IMAGE_CONDITIONS[self.image]
      spec.check(self, image_size, channels)
      want = spec.latent_channels(channels, latent_channels)
    require(model_cfg.cond_image_channels == want,
            f"model.cond_image_channels={model_cfg.cond_image_channels}, but "
            f"cond.image={self.image!r} gives {want} channels in latent space "
            f"({latent_channels} latent channels; docs/latent.md)")


NO_IMAGE = CondConfig()  # No image condition.


def make_cond(model_cfg: UNetConfig, cond_cfg, batch: dict, image_size: int,
              encode: Callable | None = None) -> Cond:
  """The U-Net's Cond from a batch's user-facing conditions; `image_size` is the
  U-Net's. A latent U-Net's image condition is made with `encode` (images in [-1, 1]
  -> the diffusion model's latents; see the module docstring)."""
  image = None
  if cond_cfg.image and encode is not None:
    image = IMAGE_CONDITIONS[cond_cfg.image].latent_image(batch, image_size, encode)
  elif cond_cfg.image:
    image = IMAGE_CONDITIONS[cond_cfg.image].model_image(batch, image_size)
  return Cond(labels=batch.get("label") if model_cfg.num_classes else None, image=image,
              tokens=batch.get("tokens") if model_cfg.text == "tokens" else None,
              text_emb=batch.get("text_emb") if model_cfg.text == "embeddings" else None,
              text_mask=batch.get("text_mask") if model_cfg.text == "embeddings" else None)


def _select(null_value, value, where):
  if where is None:
    return jnp.broadcast_to(null_value, value.shape).astype(value.dtype)
  w = where.reshape(where.shape + (1,) * (value.ndim - 1))
  return jnp.where(w, null_value, value).astype(value.dtype)


def _null_labels(cond: Cond, where, null_label: int) -> Cond:
  if cond.labels is None:
    return cond
  return cond.replace(labels=_select(null_label, cond.labels, where))


def _null_text(cond: Cond, where, null_label: int) -> Cond:
  if cond.tokens is not None:
    return cond.replace(tokens=_select(0, cond.tokens, where))
  if cond.text_emb is not None:
    return cond.replace(text_emb=_select(0.0, cond.text_emb, where),
                        text_mask=_select(False, cond.text_mask, where))
  return cond


def _null_image(cond: Cond, where, null_label: int) -> Cond:
  if cond.image is None:
    return cond
  return cond.replace(image=_select(0.0, cond.image, where))


class Guided(NamedTuple):
  """A condition that classifier-free guidance can drop (training) and null (sampling)."""
  null: Callable  # (cond, where, null_label) -> cond with this condition nulled where True.
  dropout_field: str  # training.<field>: probability it is dropped in training.
  guidance_field: str  # sample.<field>: its guidance scale.
  present: Callable[[UNetConfig], bool]  # Whether a model takes it.
  what: str  # For messages.


# The guided conditions, in the order guidance nests them (image first, as
# InstructPix2Pix). Their nulls: an all-zero image, the null label, the empty prompt.
GUIDED: dict[str, Guided] = {
    "image": Guided(_null_image, "image_dropout", "image_guidance_scale",
                    lambda m: m.cond_image_channels > 0, "an image condition"),
    "labels": Guided(_null_labels, "label_dropout", "guidance_scale",
                     lambda m: m.num_classes > 0, "class labels (data.num_classes > 0)"),
    "text": Guided(_null_text, "text_dropout", "text_guidance_scale",
                   lambda m: bool(m.text), "text"),
}


def null(cond: Cond, which: str, null_label: int, where: Array | None = None) -> Cond:
  """`cond` with one condition (a name of GUIDED) replaced by its null, where
  `where` (B,) is True (everywhere if None)."""
  return GUIDED[which].null(cond, where, null_label)


def guidance_scales(sample_cfg) -> dict[str, float]:
  """Each guided condition's scale from the `sample` section, in nesting order."""
  return {name: float(sample_cfg[g.guidance_field]) for name, g in GUIDED.items()}


def dropout_rates(training_cfg) -> dict[str, float]:
  """Each guided condition's dropout probability from the `training` section."""
  return {name: float(training_cfg[g.dropout_field]) for name, g in GUIDED.items()}


def check_guidance(training_cfg, sample_cfg, model_cfg: UNetConfig) -> None:
  """Dropout needs the condition; a scale other than 1 needs its unconditional branch."""
  for g in GUIDED.values():
    rate, scale = training_cfg[g.dropout_field], sample_cfg[g.guidance_field]
    finite(f"training.{g.dropout_field}", rate, 0, 1, high_open=True)
    require(rate == 0 or g.present(model_cfg),
            f"training.{g.dropout_field}={rate} needs a model with {g.what}")
    finite(f"sample.{g.guidance_field}", scale, 0)
    require(scale == 1.0 or (g.present(model_cfg) and rate > 0),
            f"sample.{g.guidance_field}={scale} needs a model with {g.what} trained with "
            f"training.{g.dropout_field} > 0 (its unconditional branch)")


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
