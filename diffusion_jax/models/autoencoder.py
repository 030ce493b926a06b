"""KL-regularised autoencoder of latent diffusion (Rombach et al. 2022), in NHWC.

Layer for layer it is diffusers' `AutoencoderKL` (Stable Diffusion's VAE), so that
converted weights (`convert_vae`) reproduce it: every Flax module is named after the
diffusers module it mirrors, with `.N` written `_N` ("down_blocks.0.resnets.1" is
down_blocks_0/resnets_1).

  Encoder: conv_in, one down block per entry of block_out_channels (layers_per_block
    ResNet blocks, then a stride-2 conv on all but the last), a mid block (ResNet,
    single-head self-attention, ResNet), GroupNorm + SiLU, conv_out to 2 latent_channels.
  quant_conv (1x1) -> DiagonalGaussian(mean, logvar) -> a sample z -> post_quant_conv
  (1x1) -> Decoder: the mirror image, with layers_per_block + 1 ResNet blocks per up
    block and nearest-neighbour upsampling + conv.

The downsampling factor is f = 2^(len(block_out_channels) - 1); with the defaults
(block_out_channels (128, 256, 512, 512), two blocks per level, 4 latent channels) it
is SD's kl-f8 VAE, 83,653,863 parameters. Images are (B, H, W, in_channels) in
[-1, 1] with H and W multiples of f; latents are (B, H/f, W/f, latent_channels).
Diffusion models see latents scaled by `scaling_factor` (`normalize_latents`).
"""

import dataclasses
import functools
import math
import numbers
from typing import Any, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

DTYPES = ("float32", "bfloat16", "float16")
# diffusers' AutoencoderKL: every GroupNorm of the VAE has eps 1e-6.
NORM_EPS = 1e-6
# DiagonalGaussianDistribution clamps logvar so that exp(logvar) cannot over/underflow.
LOGVAR_RANGE = (-30.0, 20.0)


def _type_name(kind) -> str:
  names = {bool: "a bool", int: "an int", float: "a number", str: "a string"}
  return names.get(kind, "a tuple of ints")


def _coerce(name: str, kind, value):
  """`value` as the field's type, or a ValueError naming the field."""
  is_int = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
  if kind is bool and isinstance(value, (bool, np.bool_)):
    return bool(value)
  if kind is int and is_int(value):
    return int(value)
  if kind is float and isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
    return float(value)
  if kind is str and isinstance(value, str):
    return value
  if kind == tuple[int, ...] and isinstance(value, (list, tuple)) and all(map(is_int, value)):
    return tuple(int(v) for v in value)
  raise ValueError(f"{name}={value!r} must be {_type_name(kind)}")


def parse_fields(cls, section: Mapping[str, Any]) -> dict:
  """The fields of a frozen config dataclass from a config section: unknown keys and
  values of the wrong type are errors naming the field."""
  d = dict(section)
  fields = {f.name: f.type for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - set(fields))
  if unknown:
    raise ValueError(f"unknown {cls.__name__} fields: {unknown}; known: {sorted(fields)}")
  return {k: _coerce(k, fields[k], v) for k, v in d.items()}


def require(ok: bool, msg: str) -> None:
  if not ok:
    raise ValueError(msg)


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  """Architecture of the VAE; field names are those of diffusers' AutoencoderKL config."""
  in_channels: int = 3
  out_channels: int = 3
  # One down (and up) block per entry; f = 2^(len - 1).
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  # Latents are (z - shift_factor) * scaling_factor for the diffusion model (SD:
  # 0.18215, 1 / std of the latents of a batch of training images; see
  # `scaling_factor_from_latents`). SD3 / Flux VAEs also shift.
  scaling_factor: float = 0.18215
  shift_factor: float = 0.0
  # Off in some later VAEs (SD3, Flux) which have no 1x1 convs around the latent.
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  # Computation dtype; parameters are always float32.
  dtype: str = "float32"

  def __post_init__(self):
    chans = self.block_out_channels
    require(len(chans) >= 1 and all(c >= 1 for c in chans),
            f"block_out_channels={chans} must be one or more positive channel counts")
    require(self.norm_num_groups >= 1, f"norm_num_groups={self.norm_num_groups} must be >= 1")
    require(all(c % self.norm_num_groups == 0 for c in chans),
            f"block_out_channels={chans} must all be multiples of "
            f"norm_num_groups={self.norm_num_groups} (GroupNorm splits channels into groups)")
    require(self.layers_per_block >= 1, f"layers_per_block={self.layers_per_block} must be >= 1")
    for name in ("in_channels", "out_channels", "latent_channels"):
      require(getattr(self, name) >= 1, f"{name}={getattr(self, name)} must be >= 1")
    require(math.isfinite(self.scaling_factor) and self.scaling_factor > 0,
            f"scaling_factor={self.scaling_factor} must be a finite number > 0")
    require(math.isfinite(self.shift_factor), f"shift_factor={self.shift_factor} must be finite")
    require(self.dtype in DTYPES, f"dtype={self.dtype!r} is unknown; known: {list(DTYPES)}")

  @property
  def factor(self) -> int:
    """Spatial downsampling factor f from image to latent."""
    return 2 ** (len(self.block_out_channels) - 1)

  @classmethod
  def from_config(cls, section: Mapping[str, Any]) -> "AutoencoderConfig":
    """From a config section (a dict or ml_collections ConfigDict). Unknown keys, wrong
    types and bad values raise ValueError naming the field."""
    return cls(**parse_fields(cls, section))


@flax.struct.dataclass
class DiagonalGaussian:
  """The encoder's posterior q(z | x) = N(mean, exp(logvar)), both (B, h, w, latent)."""
  mean: Array
  logvar: Array

  @classmethod
  def from_moments(cls, moments: Array) -> "DiagonalGaussian":
    # The first half of the channels is the mean (diffusers' chunk along channels).
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return cls(mean, jnp.clip(logvar, *LOGVAR_RANGE))

  @property
  def std(self) -> Array:
    return jnp.exp(0.5 * self.logvar)

  def sample(self, key: Array) -> Array:
    return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

  def mode(self) -> Array:
    return self.mean


def _norm(groups: int, dtype, name: str) -> nn.GroupNorm:
  # Two-pass variance, as torch: the fast E[x^2] - E[x]^2 loses digits on large means.
  return nn.GroupNorm(num_groups=groups, epsilon=NORM_EPS, dtype=dtype,
                      use_fast_variance=False, name=name)


def _conv(features: int, size: int, dtype, name: str, **kw) -> nn.Conv:
  return nn.Conv(features, (size, size), padding="SAME" if size > 1 else "VALID",
                 dtype=dtype, name=name, **kw)


class ResnetBlock(nn.Module):
  """diffusers' ResnetBlock2D without a time embedding: norm-SiLU-conv twice, plus a 1x1
  conv on the skip path when the channel count changes."""
  out_channels: int
  groups: int
  dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = _conv(self.out_channels, 3, self.dtype, "conv1")(
        nn.silu(_norm(self.groups, self.dtype, "norm1")(x)))
    h = _conv(self.out_channels, 3, self.dtype, "conv2")(
        nn.silu(_norm(self.groups, self.dtype, "norm2")(h)))
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
    return x + h


class Attention(nn.Module):
  """Single-head self-attention over all positions with a residual connection (diffusers'
  Attention with one head of width C, as converted from the original AttnBlock)."""
  groups: int
  dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, hgt, wid, c = x.shape
    h = _norm(self.groups, self.dtype, "group_norm")(x).reshape(b, hgt * wid, c)
    q, k, v = (nn.Dense(c, dtype=self.dtype, name=n)(h) for n in ("to_q", "to_k", "to_v"))
    logits = jnp.einsum("bqc,bkc->bqk", q, k) / math.sqrt(c)
    # Softmax in float32 (diffusers' upcast_softmax) so that half precision stays stable.
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    h = nn.Dense(c, dtype=self.dtype, name="to_out_0")(jnp.einsum("bqk,bkc->bqc", weights, v))
    return x + h.reshape(b, hgt, wid, c)


class MidBlock(nn.Module):
  """ResNet, attention, ResNet at the lowest resolution (UNetMidBlock2D)."""
  channels: int
  groups: int
  attention: bool
  dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = ResnetBlock(self.channels, self.groups, self.dtype, name="resnets_0")(x)
    if self.attention:
      x = Attention(self.groups, self.dtype, name="attentions_0")(x)
    return ResnetBlock(self.channels, self.groups, self.dtype, name="resnets_1")(x)


class Downsample(nn.Module):
  channels: int
  dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    # Zero padding on the bottom and right only, then a VALID stride-2 3x3 conv: the
    # original LDM Downsample (diffusers' padding=0), not a symmetric SAME padding.
    return nn.Conv(self.channels, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)),
                   dtype=self.dtype, name="conv")(x)


class Upsample(nn.Module):
  channels: int
  dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # Nearest neighbour, x2.
    return _conv(self.channels, 3, self.dtype, "conv")(x)


class DownBlock(nn.Module):
  """DownEncoderBlock2D: ResNet blocks, then (except at the last level) a downsampling."""
  out_channels: int
  num_layers: int
  downsample: bool
  groups: int
  dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for j in range(self.num_layers):
      x = ResnetBlock(self.out_channels, self.groups, self.dtype, name=f"resnets_{j}")(x)
    if self.downsample:
      x = Downsample(self.out_channels, self.dtype, name="downsamplers_0")(x)
    return x


class UpBlock(nn.Module):
  """UpDecoderBlock2D: ResNet blocks, then (except at the last level) an upsampling."""
  out_channels: int
  num_layers: int
  upsample: bool
  groups: int
  dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for j in range(self.num_layers):
      x = ResnetBlock(self.out_channels, self.groups, self.dtype, name=f"resnets_{j}")(x)
    if self.upsample:
      x = Upsample(self.out_channels, self.dtype, name="upsamplers_0")(x)
    return x


class Encoder(nn.Module):
  """Image (B, H, W, in_channels) -> moments (B, H/f, W/f, 2 latent_channels)."""
  config: AutoencoderConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    dtype, groups, chans = jnp.dtype(cfg.dtype), cfg.norm_num_groups, cfg.block_out_channels
    h = _conv(chans[0], 3, dtype, "conv_in")(x)
    for i, ch in enumerate(chans):
      h = DownBlock(ch, cfg.layers_per_block, i < len(chans) - 1, groups, dtype,
                    name=f"down_blocks_{i}")(h)
    h = MidBlock(chans[-1], groups, cfg.mid_block_add_attention, dtype, name="mid_block")(h)
    h = nn.silu(_norm(groups, dtype, "conv_norm_out")(h))
    return _conv(2 * cfg.latent_channels, 3, dtype, "conv_out")(h)


class Decoder(nn.Module):
  """Latent (B, h, w, latent_channels) -> image (B, f h, f w, out_channels)."""
  config: AutoencoderConfig

  @nn.compact
  def __call__(self, z: Array) -> Array:
    cfg = self.config
    dtype, groups = jnp.dtype(cfg.dtype), cfg.norm_num_groups
    chans = cfg.block_out_channels[::-1]
    h = _conv(chans[0], 3, dtype, "conv_in")(z)
    h = MidBlock(chans[0], groups, cfg.mid_block_add_attention, dtype, name="mid_block")(h)
    for i, ch in enumerate(chans):
      h = UpBlock(ch, cfg.layers_per_block + 1, i < len(chans) - 1, groups, dtype,
                  name=f"up_blocks_{i}")(h)
    h = nn.silu(_norm(groups, dtype, "conv_norm_out")(h))
    return _conv(cfg.out_channels, 3, dtype, "conv_out")(h)


class AutoencoderKL(nn.Module):
  """The VAE. `encode(x)` -> DiagonalGaussian, `decode(z)` -> image; calling it
  reconstructs x through a sample of the posterior (its mean when no key is given)."""
  config: AutoencoderConfig

  def setup(self):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)
    if cfg.use_quant_conv:
      self.quant_conv = _conv(2 * cfg.latent_channels, 1, dtype, None)
    if cfg.use_post_quant_conv:
      self.post_quant_conv = _conv(cfg.latent_channels, 1, dtype, None)

  def encode(self, x: Array) -> DiagonalGaussian:
    cfg = self.config
    check_image_shape(cfg, x.shape)
    moments = self.encoder(x.astype(cfg.dtype))
    if cfg.use_quant_conv:
      moments = self.quant_conv(moments)
    return DiagonalGaussian.from_moments(moments)

  def decode(self, z: Array) -> Array:
    cfg = self.config
    if z.ndim != 4 or z.shape[-1] != cfg.latent_channels:
      raise ValueError(f"latents must be (batch, h, w, {cfg.latent_channels}) (NHWC); "
                       f"got shape {tuple(z.shape)}")
    z = z.astype(cfg.dtype)
    if cfg.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, x: Array, key: Optional[Array] = None) -> tuple[Array, DiagonalGaussian]:
    """(reconstruction, posterior); z is sampled with `key`, or the posterior mean."""
    posterior = self.encode(x)
    z = posterior.mode() if key is None else posterior.sample(key)
    return self.decode(z), posterior


def check_image_shape(cfg: AutoencoderConfig, shape: tuple[int, ...]) -> None:
  """A clear error for images the VAE cannot take (wrong layout, channels or size)."""
  if len(shape) != 4 or shape[-1] != cfg.in_channels:
    raise ValueError(f"images must be (batch, H, W, {cfg.in_channels}) (NHWC); got shape "
                     f"{tuple(shape)}")
  f = cfg.factor
  if shape[1] % f or shape[2] % f:
    raise ValueError(f"image size {shape[1]}x{shape[2]} is not divisible by the VAE's "
                     f"downsampling factor f={f} (2^(len(block_out_channels) - 1))")


def latent_shape(cfg: AutoencoderConfig, image_shape: tuple[int, ...]) -> tuple[int, ...]:
  """(B, H/f, W/f, latent_channels) for images of `image_shape`."""
  check_image_shape(cfg, image_shape)
  b, h, w, _ = image_shape
  return (b, h // cfg.factor, w // cfg.factor, cfg.latent_channels)


def init_params(cfg: AutoencoderConfig, key: Array) -> dict:
  """Freshly initialised parameters (their shapes do not depend on the image size)."""
  x = jnp.zeros((1, cfg.factor, cfg.factor, cfg.in_channels), jnp.float32)
  return jax.jit(AutoencoderKL(cfg).init)(key, x)["params"]


@functools.cache
def param_shapes(cfg: AutoencoderConfig) -> dict:
  """The parameter tree as jax.ShapeDtypeStructs, without allocating it."""
  return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


# --- Latent scale (Rombach et al. 2022, Sec. 4.3.2 / App. D.1).

def scaling_factor_from_latents(latents: Array) -> float:
  """1 / std of latents sampled from the posteriors of a batch of training images, over
  all of their elements: SD's recipe, so that the diffusion model sees unit variance."""
  return float(1.0 / jnp.std(jnp.asarray(latents, jnp.float32)))


@functools.partial(jax.jit, static_argnums=0)
def sample_latents(model: AutoencoderKL, params, images: Array, key: Array) -> Array:
  """z ~ q(z | images), before normalisation."""
  return model.apply({"params": params}, images, method="encode").sample(key)


def estimate_scaling_factor(model: AutoencoderKL, params, images: Array, key: Array,
                            batch_size: int = 32) -> float:
  """`scaling_factor_from_latents` of posterior samples of `images`, encoded in batches
  of `batch_size` (one key each, split from `key`); store the result with
  `dataclasses.replace(config, scaling_factor=s)`."""
  keys = jax.random.split(key, -(-len(images) // batch_size))
  zs = [sample_latents(model, params, jnp.asarray(images[i * batch_size:(i + 1) * batch_size]), k)
        for i, k in enumerate(keys)]
  return scaling_factor_from_latents(jnp.concatenate(zs))


def normalize_latents(cfg: AutoencoderConfig, z: Array) -> Array:
  """VAE latents -> the diffusion model's (about unit-variance) latents."""
  return (z - cfg.shift_factor) * cfg.scaling_factor


def unnormalize_latents(cfg: AutoencoderConfig, z: Array) -> Array:
  """The diffusion model's latents -> VAE latents (the inverse of `normalize_latents`)."""
  return z / cfg.scaling_factor + cfg.shift_factor


def count_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
