"""Non-leaking geometric augmentation (Karras et al. 2022, EDM, App. F; the pipeline of
StyleGAN2-ADA, Karras et al. 2020), applied to the clean images in the train step.

Each op of `augment.ops` is switched on per example with probability `augment.p` (or
always, for the ops of `augment.always`); when on, its parameters are drawn from its
distribution (a flip's is a fair coin, so half of the switched-on flips leave the image
as it is). The network is told what was done: the parameters, as a label vector, are an
input (model.augment_dim), and the label of an op that is off is zero. At sampling the
labels are zero (the network's default), so the network produces images as the data
has them, while training sees a larger variety: the augmentation does not "leak" into
the samples.

Label vector: the labels of the listed ops, concatenated in the order of AUGMENTATIONS
(not of the list). Per op (angles in the pixel frame, x right, y down; a positive angle
turns the content as jnp.rot90 does):
  xflip          1  1 = mirrored left-right
  yflip          1  1 = mirrored top-bottom
  rotate90       2  cos(k pi/2) - 1, sin(k pi/2): k quarter turns, k uniform in 0..3
  translate_int  2  tx, ty / (TRANSLATE_INT_MAX * side): whole-pixel shifts, uniform
  scale          1  w: the content is magnified by 2^(w SCALE_STD), w ~ N(0, 1)
  rotate         2  cos(theta) - 1, sin(theta): theta uniform in [-pi, pi)
  aniso          2  w cos(2r), w sin(2r): stretched by 2^(w ANISO_STD) along the axis at
                    angle r and shrunk by as much across it, w ~ N(0, 1); r uniform in
                    [-pi, pi) with probability ANISO_ROTATE_PROB, else 0
  translate      2  u, v: shifts of (u, v) TRANSLATE_STD * side pixels, u, v ~ N(0, 1)
EDM's set (EDM_OPS) has 9 entries: xflip, yflip, scale, rotate, aniso, translate. EDM
encodes aniso as w cos(r), w sin(r), which does not say which way the stretch goes
((w, r) and (-w, r + pi) give the same label and opposite stretches); the angle 2r
determines it.

The first four move whole pixels (exact; shifts mirror at the border). The last four
are composed into one affine map (scale first, translation last) and applied by one
resampling: the image is upsampled 2x (lanczos3), read bilinearly through the map with
mirrored borders, and averaged back down 2x. An example whose resampled ops are all off
is left exactly as it was.
"""

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

from diffusion_jax.config.errors import choice, finite, require, section_values

Array = jax.Array

# The ranges of StyleGAN2-ADA's and EDM's pipeline.
TRANSLATE_INT_MAX = 0.125  # translate_int: at most this fraction of the side.
SCALE_STD = 0.2  # scale: std of log2 of the factor.
ANISO_STD = 0.2  # aniso: std of log2 of the stretch.
ANISO_ROTATE_PROB = 0.5  # aniso: probability that the stretch's axis is rotated.
TRANSLATE_STD = 0.125  # translate: std of the shift, as a fraction of the side.


# --- 3x3 affine matrices of (B,) parameters, in centred pixel coordinates (x, y, 1).

def _matrix(rows) -> Array:
  return jnp.stack([jnp.stack(row, -1) for row in rows], -2)


def _rotation(theta: Array) -> Array:
  c, s, z, o = jnp.cos(theta), jnp.sin(theta), jnp.zeros_like(theta), jnp.ones_like(theta)
  return _matrix([[c, -s, z], [s, c, z], [z, z, o]])


def _scaling(sx: Array, sy: Array) -> Array:
  z, o = jnp.zeros_like(sx), jnp.ones_like(sx)
  return _matrix([[sx, z, z], [z, sy, z], [z, z, o]])


def _shift(tx: Array, ty: Array) -> Array:
  z, o = jnp.zeros_like(tx), jnp.ones_like(tx)
  return _matrix([[o, z, tx], [z, o, ty], [z, z, o]])


def _angle_label(theta: Array) -> Array:
  return jnp.stack([jnp.cos(theta) - 1.0, jnp.sin(theta)], -1)


def _angle(label: Array) -> Array:
  return jnp.arctan2(label[:, 1], label[:, 0] + 1.0)


# --- The ops. draw(key, batch, side) -> (B, dims) labels of a drawn transform; an op
# either moves pixels, pixels(images, labels) -> images, or is resampled, source(labels,
# side) -> (B, 3, 3): the map from an output pixel to where it reads the input.

def _mirror(i: Array, n: int) -> Array:
  """Indices mirrored into 0..n-1 at the edge pixels (not repeating them)."""
  period = 2 * n - 2
  m = jnp.mod(i, period)
  return jnp.where(m < n, m, period - m)


def _flip(axis: int):
  def pixels(images: Array, labels: Array) -> Array:
    on = labels[:, 0] > 0.5
    return jnp.where(on[:, None, None, None], jnp.flip(images, axis), images)
  return pixels


def _draw_bit(key, batch, side):
  return jax.random.bernoulli(key, 0.5, (batch, 1)).astype(jnp.float32)


def _rotate90_pixels(images: Array, labels: Array) -> Array:
  k = jnp.mod(jnp.round(_angle(labels) / (math.pi / 2)).astype(jnp.int32), 4)
  turned = [jnp.rot90(images, i, axes=(1, 2)) for i in range(4)]
  return jnp.select([(k == i)[:, None, None, None] for i in range(4)], turned)


def _draw_rotate90(key, batch, side):
  return _angle_label(jax.random.randint(key, (batch,), 0, 4) * (math.pi / 2))


def _translate_int_pixels(images: Array, labels: Array) -> Array:
  _, h, w, _ = images.shape
  t = jnp.round(labels * jnp.array([w, h]) * TRANSLATE_INT_MAX).astype(jnp.int32)
  rows = _mirror(jnp.arange(h)[None] - t[:, 1:2], h)  # Output row y reads row y - ty.
  cols = _mirror(jnp.arange(w)[None] - t[:, 0:1], w)
  images = jnp.take_along_axis(images, rows[:, :, None, None], axis=1)
  return jnp.take_along_axis(images, cols[:, None, :, None], axis=2)


def _draw_translate_int(key, batch, side):
  span = side * TRANSLATE_INT_MAX
  w = jax.random.uniform(key, (batch, 2), minval=-1.0, maxval=1.0)
  return jnp.round(w * span) / span


def _draw_normal(dims: int):
  return lambda key, batch, side: jax.random.normal(key, (batch, dims))


def _scale_source(labels: Array, side: int) -> Array:
  s = jnp.exp2(labels[:, 0] * SCALE_STD)
  return _scaling(1.0 / s, 1.0 / s)


def _draw_rotate(key, batch, side):
  return _angle_label(jax.random.uniform(key, (batch,), minval=-math.pi, maxval=math.pi))


def _rotate_source(labels: Array, side: int) -> Array:
  return _rotation(_angle(labels))


def _draw_aniso(key, batch, side):
  kw, kr, kp = jax.random.split(key, 3)
  w = jax.random.normal(kw, (batch,))
  r = jax.random.uniform(kr, (batch,), minval=-math.pi, maxval=math.pi)
  r = jnp.where(jax.random.uniform(kp, (batch,)) < ANISO_ROTATE_PROB, r, 0.0)
  return jnp.stack([w * jnp.cos(2 * r), w * jnp.sin(2 * r)], -1)


def _aniso_source(labels: Array, side: int) -> Array:
  w = jnp.hypot(labels[:, 0], labels[:, 1])
  r = 0.5 * jnp.arctan2(labels[:, 1], labels[:, 0])
  s = jnp.exp2(w * ANISO_STD)
  return _rotation(r) @ _scaling(1.0 / s, s) @ _rotation(-r)


def _translate_source(labels: Array, side: int) -> Array:
  t = labels * side * TRANSLATE_STD
  return _shift(-t[:, 0], -t[:, 1])


class Augmentation(NamedTuple):
  """One op: its label's size, its draw, and how it acts (pixels or source, not both)."""
  dims: int
  draw: Callable  # (key, batch, side) -> (B, dims) labels.
  pixels: Callable | None = None  # (images, labels) -> images, moving whole pixels.
  source: Callable | None = None  # (labels, side) -> (B, 3, 3), for resampling.


AUGMENTATIONS: dict[str, Augmentation] = {
    "xflip": Augmentation(1, _draw_bit, pixels=_flip(2)),
    "yflip": Augmentation(1, _draw_bit, pixels=_flip(1)),
    "rotate90": Augmentation(2, _draw_rotate90, pixels=_rotate90_pixels),
    "translate_int": Augmentation(2, _draw_translate_int, pixels=_translate_int_pixels),
    "scale": Augmentation(1, _draw_normal(1), source=_scale_source),
    "rotate": Augmentation(2, _draw_rotate, source=_rotate_source),
    "aniso": Augmentation(2, _draw_aniso, source=_aniso_source),
    "translate": Augmentation(2, _draw_normal(2), source=_translate_source),
}

# EDM's pipeline (its `--augment` option): a 9-entry label vector.
EDM_OPS = ("xflip", "yflip", "scale", "rotate", "aniso", "translate")


def ordered(ops) -> list[str]:
  """The names of `ops` in the order of AUGMENTATIONS (the label vector's order)."""
  return [n for n in AUGMENTATIONS if n in ops]


def label_dim(ops) -> int:
  """Entries of the label vector of `ops`."""
  return sum(AUGMENTATIONS[n].dims for n in ops)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """The `augment` section: which ops, and how often each is on."""
  p: float = 0.0  # Probability that each op is on, per example; 0 = no augmentation.
  ops: tuple[str, ...] = EDM_OPS  # Names of AUGMENTATIONS.
  always: tuple[str, ...] = ()  # Ops of `ops` on for every example (EDM: xflip).

  @classmethod
  def from_config(cls, section) -> "AugmentConfig":
    config = cls(**section_values(cls, section, "augment"))
    config.check()
    return config

  def check(self) -> None:
    finite("augment.p", self.p, 0, 1)
    for field in ("ops", "always"):
      for name in getattr(self, field):
        # A tuple override on the command line needs quoted names.
        hint = (f" (on the command line: --config.augment.{field}=\"('xflip','rotate')\")"
                if "(" in name or "," in name else "")
        choice(f"augment.{field}", name, AUGMENTATIONS, hint)
    require(len(set(self.ops)) == len(self.ops), f"augment.ops={self.ops} names an op twice")
    extra = [n for n in self.always if n not in self.ops]
    require(not extra, f"augment.always {extra} are not in augment.ops={self.ops}")
    require(self.p == 0 or self.ops, f"augment.p={self.p} needs augment.ops (none listed)")
    require(self.p > 0 or not self.always,
            f"augment.always={self.always} needs augment.p > 0 (p = 0 turns augmentation off)")

  @property
  def on(self) -> bool:
    return self.p > 0

  @property
  def label_dim(self) -> int:
    """Entries of the label vector the network gets (0 when off)."""
    return label_dim(self.ops) if self.on else 0

  def check_model(self, augment_dim: int) -> None:
    """The network's augmentation input must take the label vector, and only then."""
    if self.on:
      require(augment_dim == self.label_dim,
              f"model.augment_dim={augment_dim}, but augment.p={self.p} with augment.ops="
              f"{self.ops} gives {self.label_dim} labels: set model.augment_dim="
              f"{self.label_dim}")
    else:
      require(augment_dim == 0, f"model.augment_dim={augment_dim} without augmentation "
              "(augment.p=0): set model.augment_dim=0, or augment.p > 0")


def draw(key: Array, batch: int, side: int, cfg: AugmentConfig) -> Array:
  """(B, label_dim) labels: each op on with probability p (1 for `always`), zero if off.
  Each op draws from its own key (fold_in of its index in AUGMENTATIONS), so listing
  another op does not change it."""
  parts = []
  for name in ordered(cfg.ops):
    k_draw, k_on = jax.random.split(jax.random.fold_in(key, list(AUGMENTATIONS).index(name)))
    value = AUGMENTATIONS[name].draw(k_draw, batch, side)
    p = 1.0 if name in cfg.always else cfg.p
    on = jax.random.uniform(k_on, (batch,)) < p
    parts.append(jnp.where(on[:, None], value, 0.0))
  return jnp.concatenate(parts, -1)


def resample(images: Array, source: Array) -> Array:
  """`images` (B, H, W, C) through `source` (B, 3, 3): output pixel p (centred pixel
  coordinates) takes the input at source @ p, mirrored at the borders; 2x supersampled
  (lanczos3 up, bilinear read, 2x2 mean down)."""
  b, h, w, c = images.shape
  up = jax.image.resize(images, (b, 2 * h, 2 * w, c), method="lanczos3")
  # The 2x grid's pixel centres, in the input's centred pixel coordinates.
  ys = (jnp.arange(2 * h) + 0.5) / 2 - 0.5 - (h - 1) / 2
  xs = (jnp.arange(2 * w) + 0.5) / 2 - 0.5 - (w - 1) / 2
  gy, gx = jnp.meshgrid(ys, xs, indexing="ij")
  points = jnp.stack([gx.ravel(), gy.ravel(), jnp.ones(gx.size)])  # (3, N)
  src = source.astype(jnp.float32) @ points  # (B, 3, N)
  # Back to the upsampled image's indices.
  u = 2 * (src[:, 0] + (w - 1) / 2 + 0.5) - 0.5
  v = 2 * (src[:, 1] + (h - 1) / 2 + 0.5) - 0.5

  def read(plane, v, u):  # One (2H, 2W) channel.
    return map_coordinates(plane, [v, u], order=1, mode="mirror")

  per_channel = jax.vmap(read, in_axes=(2, None, None), out_axes=-1)
  out = jax.vmap(per_channel)(up, v, u).reshape(b, 2 * h, 2 * w, c)
  return out.reshape(b, h, 2, w, 2, c).mean(axis=(2, 4)).astype(images.dtype)


def apply(images: Array, labels: Array, ops) -> Array:
  """`images` (B, H, W, C) transformed as `labels` (B, label_dim(ops)) say: the pixel
  ops in order, then the resampled ones as one map. Zero labels change nothing."""
  b, side = images.shape[0], images.shape[1]
  source, moved, start = jnp.broadcast_to(jnp.eye(3), (b, 3, 3)), jnp.zeros(b, bool), 0
  for name in ordered(ops):
    op = AUGMENTATIONS[name]
    label = labels[:, start:start + op.dims]
    start += op.dims
    if op.pixels is not None:
      images = op.pixels(images, label)
    else:
      # Scale first, translation last: source = S^-1 R^-1 A^-1 T^-1.
      source = source @ op.source(label, side)
      moved = moved | jnp.any(label != 0, axis=-1)
  if any(AUGMENTATIONS[n].source is not None for n in ops):
    images = jnp.where(moved[:, None, None, None], resample(images, source), images)
  return images


def augment(images: Array, key: Array, cfg: AugmentConfig) -> tuple[Array, Array]:
  """(augmented images, their (B, label_dim) labels), per example from `key`."""
  labels = draw(key, images.shape[0], images.shape[1], cfg)
  return apply(images, labels, cfg.ops), labels
