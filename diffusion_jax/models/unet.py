"""Conditional U-Net (Ho et al. 2020 layout, with ADM's, score_sde's, EDM's and VDM's options).

The typed boundary is `UNetConfig` (what the network is) and `Cond` (what it is
conditioned on). With ch=128, ch_mult=(1, 2, 2, 2), two res blocks per level,
attention at 16x16 and no conditioning, it is exactly the 35.7M-parameter DDPM
CIFAR-10 network. The other options build score_sde's DDPM++/NCSN++ (BigGAN-style
resampling blocks, 1/sqrt(2) skip rescaling, Fourier time features, progressive
input/output paths), EDM's DDPM++ and VDM's no-downsampling U-Net; each option's
default keeps the DDPM network, parameter for parameter.
"""

import dataclasses
import functools
import math
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.config.errors import choice, finite, require, section_values
from diffusion_jax.models import conv, layers
from diffusion_jax.models.text import Context, CrossAttnBlock, TextEncoder

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Architecture of the U-Net. Resolutions are in pixels of the input image."""
  out_channels: int = 3
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = (16,)
  num_heads: int = 1
  dropout: float = 0.1
  num_groups: int = 32
  # ADM: the time embedding scales and shifts the normalised activations.
  scale_shift_norm: bool = False
  # Class labels 0..num_classes-1, plus num_classes as the "null" label for
  # classifier-free guidance. 0 means unconditional.
  num_classes: int = 0
  # Channels of a conditioning image concatenated to the input (super-resolution,
  # image-to-image). 0 means none.
  cond_image_channels: int = 0
  # Lower feature-map sizes where the (area-downsampled) conditioning image is also
  # added, through a 1x1 convolution.
  cond_image_resolutions: tuple[int, ...] = ()
  # Text: token ids encoded by a jointly trained transformer (text_vocab_size > 0),
  # or precomputed embeddings of width text_emb_dim (> 0); at most one of the two.
  text_vocab_size: int = 0
  text_max_len: int = 16
  text_width: int = 64
  text_layers: int = 2
  text_heads: int = 4
  text_emb_dim: int = 0
  # Feature-map sizes with cross-attention to the text.
  cross_attn_resolutions: tuple[int, ...] = ()
  # A learned position embedding added to the cross-attention queries (binds each
  # phrase's attributes to the place it names).
  cross_attn_positions: bool = False
  # The text's mean added to the time embedding. Off, every location gets the text only
  # through cross-attention, never as a bag of all its words.
  text_pooled: bool = True
  dtype: str = "float32"
  # Storage dtype of the parameters (PARAM_DTYPES); their EMA and the optimizer state
  # follow it. The layers cast the parameters to `dtype` to compute.
  param_dtype: str = "float32"
  # Rematerialisation (REMAT_POLICIES): which activations of each residual and
  # attention block the backward pass recomputes instead of keeping.
  remat: str = "none"
  # How the convolutions compute their kernel gradient (models.conv.CONV_IMPLS):
  # "auto" is "chunked" on the CPU (faster there) and exactly nn.Conv's elsewhere.
  conv_impl: str = "auto"
  # Time embedding (EMBEDDINGS): "positional" (DDPM, of 1000 t) or "fourier"
  # (NCSN++: random Fourier features of t, frequencies ~ N(0, fourier_scale^2)).
  embedding: str = "positional"
  fourier_scale: float = 16.0
  # BigGAN-style resampling: a residual block that down/upsamples (score_sde's
  # resblock_type="biggan", EDM) instead of a strided / nearest-neighbour conv.
  resblock_updown: bool = False
  # FIR taps of the resampling blocks and progressive paths: (1, 1) box (DDPM++, EDM),
  # (1, 3, 3, 1) NCSN++'s FIR filter.
  resample_filter: tuple[int, ...] = (1, 1)
  # Residual and attention outputs scaled by 1/sqrt(2) (score_sde, EDM).
  skip_rescale: bool = False
  # Up path: one attention per level after its last block (score_sde, EDM), not
  # one after every block (Ho et al.).
  up_attn_once: bool = False
  # Progressive input (PROGRESSIVE_INPUTS): "none", "input_skip" or "residual".
  progressive_input: str = "none"
  # Progressive output: "none" or "output_skip" (each up level adds its own prediction).
  progressive: str = "none"
  # VDM's Fourier features of the input: exponents k of sin/cos(2^k 2 pi x); () = none.
  input_fourier: tuple[int, ...] = ()
  # EDM: entries of the augmentation label vector (training/augment.py), mapped by a
  # bias-free linear layer into the noise-level embedding; 0 = no such input.
  augment_dim: int = 0

  @property
  def text(self) -> str:
    """How the model takes text: "tokens", "embeddings" or "" (not at all)."""
    return "tokens" if self.text_vocab_size else "embeddings" if self.text_emb_dim else ""

  @classmethod
  def from_config(cls, cfg: Any) -> "UNetConfig":
    """From a config's `model` section, checked (ConfigError naming the field)."""
    values = section_values(cls, cfg, "model")
    for k, v in values.items():
      if isinstance(v, tuple):
        values[k] = tuple(int(x) for x in v)
    config = cls(**values)
    config.check()
    return config

  def check(self) -> None:
    """Checks the fields that need no data: names, counts, divisibility."""
    choice("model.dtype", self.dtype, DTYPES)
    choice("model.param_dtype", self.param_dtype, PARAM_DTYPES)
    require(jax.dtypes.canonicalize_dtype(PARAM_DTYPES[self.param_dtype])
            == PARAM_DTYPES[self.param_dtype],
            f"model.param_dtype={self.param_dtype!r} needs 64-bit JAX (JAX_ENABLE_X64=1), "
            "which is off: JAX would store the parameters as float32")
    require(not (self.param_dtype == "float64" and jax.default_backend() == "tpu"),
            f"model.param_dtype={self.param_dtype!r} cannot run on TPU (no 64-bit floats); "
            f"allowed there: {sorted(set(PARAM_DTYPES) - {'float64'})}")
    choice("model.remat", self.remat, REMAT_POLICIES)
    choice("model.conv_impl", self.conv_impl, conv.CONV_IMPLS)
    choice("model.embedding", self.embedding, EMBEDDINGS)
    choice("model.progressive_input", self.progressive_input, ("none", *PROGRESSIVE_INPUTS))
    choice("model.progressive", self.progressive, ("none", *PROGRESSIVES))
    require(len(self.ch_mult) >= 1, "model.ch_mult must have at least one level")
    require(self.ch > 0 and min(self.ch_mult) > 0 and self.num_res_blocks >= 0,
            "model: ch and ch_mult must be > 0, num_res_blocks >= 0")
    for ch in sorted({self.ch * k for k in self.ch_mult}):
      require(ch % self.num_groups == 0,
              f"model.num_groups={self.num_groups} does not divide the channel count {ch}")
      require(not self.attn_resolutions or ch % self.num_heads == 0,
              f"model.num_heads={self.num_heads} does not divide the channel count {ch}")
    finite("model.dropout", self.dropout, 0, 1, high_open=True)
    finite("model.fourier_scale", self.fourier_scale, 0, low_open=True)
    require(len(self.resample_filter) >= 2 and sum(self.resample_filter) > 0,
            f"model.resample_filter={self.resample_filter} needs at least two taps with a "
            "positive sum, e.g. (1, 1) or (1, 3, 3, 1)")
    uses_filter = (self.resblock_updown or self.progressive != "none"
                   or self.progressive_input != "none")
    require(uses_filter or self.resample_filter == (1, 1),
            "model.resample_filter only acts with resblock_updown or a progressive path")
    require(self.num_classes >= 0 and self.cond_image_channels >= 0 and self.augment_dim >= 0,
            "model.num_classes, cond_image_channels and augment_dim must be >= 0")
    require(not (self.text_vocab_size and self.text_emb_dim),
            "model.text_vocab_size and model.text_emb_dim are exclusive: text comes as "
            "token ids or as precomputed embeddings")
    require(not self.text or self.cross_attn_resolutions,
            "a text model needs model.cross_attn_resolutions (where the U-Net reads the text)")
    require(self.text or not self.cross_attn_resolutions,
            "model.cross_attn_resolutions needs text (model.text_vocab_size or text_emb_dim)")
    require(self.cross_attn_resolutions or not self.cross_attn_positions,
            "model.cross_attn_positions needs model.cross_attn_resolutions")
    require(self.text or self.text_pooled,
            "model.text_pooled=False needs text (model.text_vocab_size or text_emb_dim)")
    if self.text:
      require(self.text_width % self.text_heads == 0 and self.text_max_len > 0
              and self.text_layers >= 0,
              "model: text_heads must divide text_width; text_max_len > 0; text_layers >= 0")
    require(not self.cond_image_resolutions or self.cond_image_channels,
            "model.cond_image_resolutions needs a conditioning image "
            "(model.cond_image_channels > 0)")

  def check_input(self, image_size: int, channels: int, num_classes: int) -> None:
    """Checks the U-Net against the data it is given (the `data` section)."""
    require(self.out_channels == channels,
            f"model.out_channels={self.out_channels} != data.channels={channels}")
    require(self.num_classes == num_classes,
            f"model.num_classes={self.num_classes} != data.num_classes={num_classes}")
    levels = len(self.ch_mult)
    require(image_size % 2 ** (levels - 1) == 0,
            f"data.image_size={image_size} is not divisible by 2^{levels - 1}: the U-Net's "
            f"{levels} levels (model.ch_mult={self.ch_mult}) halve it {levels - 1} times")
    res = resolutions(image_size, levels)
    for field, allowed in (("attn_resolutions", res), ("cross_attn_resolutions", res),
                           ("cond_image_resolutions", res[1:])):
      bad = [r for r in getattr(self, field) if r not in allowed]
      require(not bad, f"model.{field} {bad} are not "
              f"{'lower ' if field.startswith('cond') else ''}feature-map sizes of this "
              f"U-Net (image_size={image_size}, levels={levels}: sizes {allowed})")


@flax.struct.dataclass
class Cond:
  """What the network is conditioned on; a field left None is not used.

  labels:    (batch,) int32 class ids; `num_classes` is the null label.
  image:     (batch, H, W, cond_image_channels) at the output resolution; zeros = none.
  tokens:    (batch, L) int32 token ids, 0 = padding; all padding = the empty prompt.
  text_emb:  (batch, L, text_emb_dim) precomputed embeddings, with
  text_mask: (batch, L) bool, False where there is no token (all False = empty prompt).
  augment:   (batch, augment_dim) float augmentation labels (training); None = zeros,
             "not augmented": what sampling and evaluation ask for.
  """
  labels: Optional[Array] = None
  image: Optional[Array] = None
  tokens: Optional[Array] = None
  text_emb: Optional[Array] = None
  text_mask: Optional[Array] = None
  augment: Optional[Array] = None


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
  """Sinusoidal embedding of t * 1000, so that DDPM step indices embed as in Ho et al."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args = (1000.0 * t.astype(jnp.float32))[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


# Compute dtypes of the layers (the parameters are stored in PARAM_DTYPES).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Storage dtypes of the parameters, their EMA and the optimizer state. float32 with a
# bfloat16 `dtype` is mixed precision; bfloat16 halves the memory, but an EMA with decay
# near 1 and Adam's moments lose the small updates that bfloat16 cannot represent;
# float64 (CPU/GPU, with JAX_ENABLE_X64=1) is for checking numerics.
PARAM_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}

# Rematerialisation of each residual and attention block (jax.checkpoint policies):
# "block" keeps only the block's inputs and recomputes the rest in the backward pass;
# "dots_saveable" also keeps the outputs of its convolutions and matmuls, recomputing
# only the cheap normalisations and activations.
REMAT_POLICIES = {
    "none": None,
    "block": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}

EMBEDDINGS = {
    "positional": lambda t, cfg: timestep_embedding(t, cfg.ch),
    # 2 ch features, as NCSN++ (embedding_size=nf) and EDM (channel_mult_noise=2).
    "fourier": lambda t, cfg: layers.fourier_embedding(t, cfg.ch, cfg.fourier_scale),
}


def _rescaled_sum(x: Array, h: Array, rescale: bool) -> Array:
  # score_sde / EDM keep the variance of a residual sum constant.
  return (x + h) / math.sqrt(2.0) if rescale else x + h


class ResBlock(nn.Module):
  """Pre-activation residual block; with `resample`, a BigGAN-style up/down block that
  resamples both paths (the skip then always gets a 1x1 conv, as in score_sde / EDM)."""
  out_ch: int
  dropout: float
  num_groups: int
  scale_shift_norm: bool
  dtype: Any
  resample: str = "none"  # "none", "up" or "down".
  resample_filter: tuple[int, ...] = (1, 1)
  skip_rescale: bool = False
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, emb, train: bool):
    h = nn.swish(nn.GroupNorm(self.num_groups, dtype=self.dtype)(x))
    if self.resample != "none":
      resample = lambda v: layers.RESAMPLE[self.resample](v, self.resample_filter)
      h, x = resample(h), resample(x)
    h = conv.make_conv(self.conv_impl, self.out_ch, (3, 3), dtype=self.dtype)(h)
    emb = nn.Dense((2 if self.scale_shift_norm else 1) * self.out_ch,
                   dtype=self.dtype)(nn.swish(emb))[:, None, None, :]
    if self.scale_shift_norm:
      scale, shift = jnp.split(emb, 2, axis=-1)
      h = nn.GroupNorm(self.num_groups, dtype=self.dtype)(h) * (1 + scale) + shift
    else:
      h = nn.GroupNorm(self.num_groups, dtype=self.dtype)(h + emb)
    h = nn.Dropout(self.dropout)(nn.swish(h), deterministic=not train)
    # Zero init: each block starts as the identity (Ho et al., ADM).
    h = conv.make_conv(self.conv_impl, self.out_ch, (3, 3),
                       kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
    if x.shape[-1] != self.out_ch or self.resample != "none":
      x = nn.Dense(self.out_ch, dtype=self.dtype, name="skip")(x)
    return _rescaled_sum(x, h, self.skip_rescale)


class AttnBlock(nn.Module):
  num_heads: int
  num_groups: int
  dtype: Any
  skip_rescale: bool = False

  @nn.compact
  def __call__(self, x):
    b, hgt, wid, c = x.shape
    h = nn.GroupNorm(self.num_groups, dtype=self.dtype)(x).reshape(b, hgt * wid, c)
    h = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, qkv_features=c, out_features=c, dtype=self.dtype,
        out_kernel_init=nn.initializers.zeros)(h, h)
    return _rescaled_sum(x, h.reshape(b, hgt, wid, c), self.skip_rescale)


@functools.cache
def rematted(block: type[nn.Module], policy: str) -> type[nn.Module]:
  """`block` rematerialised with REMAT_POLICIES[policy] (itself for "none").

  The wrapped class keeps the block's name, so that its parameters keep their names:
  a checkpoint trained with one policy restores with any other.
  """
  if REMAT_POLICIES[policy] is None:
    return block
  # A ResBlock's `train` flag (argument 3, counting self) selects code, not values.
  static = (3,) if block is ResBlock else ()
  wrapped = nn.remat(block, policy=REMAT_POLICIES[policy], static_argnums=static)
  return type(block.__name__, (wrapped,), {"__module__": block.__module__})


def _input_skip(cfg: UNetConfig, pyramid: Array, h: Array) -> tuple[Array, Array]:
  # The input image, resampled to this level, is added to h through a 1x1 conv.
  pyramid = layers.downsample_2d(pyramid, cfg.resample_filter)
  combine = nn.Dense(h.shape[-1], dtype=jnp.dtype(cfg.dtype), name="combine")
  return pyramid, h + combine(pyramid)


def _input_residual(cfg: UNetConfig, pyramid: Array, h: Array) -> tuple[Array, Array]:
  # A strided-conv path from the input, merged with h as a residual; h follows it.
  pyramid = layers.pre_conv_downsample(pyramid, cfg.resample_filter)
  pyramid = conv.make_conv(cfg.conv_impl, h.shape[-1], (3, 3), strides=(2, 2),
                           padding="VALID", dtype=jnp.dtype(cfg.dtype),
                           name="conv_down")(pyramid)
  pyramid = _rescaled_sum(pyramid, h, cfg.skip_rescale)
  return pyramid, pyramid


PROGRESSIVE_INPUTS = {"input_skip": _input_skip, "residual": _input_residual}
PROGRESSIVES = ("output_skip",)  # Progressive output paths besides "none".


class ProgressiveInput(nn.Module):
  """score_sde's progressive input path at one downsampling: (pyramid, h) -> (pyramid, h)."""
  config: UNetConfig

  @nn.compact
  def __call__(self, pyramid: Array, h: Array) -> tuple[Array, Array]:
    return PROGRESSIVE_INPUTS[self.config.progressive_input](self.config, pyramid, h)


class OutputSkip(nn.Module):
  """score_sde's progressive "output_skip": each up level's prediction is added to the
  upsampled sum of the coarser levels' predictions; the finest sum is the output."""
  config: UNetConfig

  @nn.compact
  def __call__(self, pyramid: Array | None, h: Array) -> Array:
    cfg = self.config
    out = nn.swish(nn.GroupNorm(cfg.num_groups, dtype=jnp.dtype(cfg.dtype))(h))
    out = conv.make_conv(cfg.conv_impl, cfg.out_channels, (3, 3),
                         kernel_init=nn.initializers.zeros, dtype=jnp.dtype(cfg.dtype))(out)
    if pyramid is None:
      return out
    return layers.upsample_2d(pyramid, cfg.resample_filter) + out


def _downsample(cfg: UNetConfig, block, h: Array, emb: Array, train: bool) -> Array:
  """Halves h: a BigGAN-style resampling block, or DDPM's stride-2 conv."""
  if cfg.resblock_updown:
    return block(h.shape[-1], "down")(h, emb, train)
  return conv.make_conv(cfg.conv_impl, h.shape[-1], (3, 3), strides=(2, 2),
                        dtype=jnp.dtype(cfg.dtype))(h)


def _upsample(cfg: UNetConfig, block, h: Array, emb: Array, train: bool) -> Array:
  """Doubles h: a BigGAN-style resampling block, or DDPM's nearest-neighbour + conv."""
  if cfg.resblock_updown:
    return block(h.shape[-1], "up")(h, emb, train)
  return conv.upsample_and_conv(cfg.conv_impl, h, h.shape[-1], dtype=jnp.dtype(cfg.dtype))


class UNet(nn.Module):
  """eps/v/x0-predicting U-Net: (x_t, t, cond) -> output with x_t's spatial shape."""
  config: UNetConfig

  @nn.compact
  def __call__(self, x: Array, t: Array, cond: Optional[Cond] = None,
               train: bool = False) -> Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    cond = cond if cond is not None else Cond()
    emb_dim = 4 * cfg.ch
    emb = EMBEDDINGS[cfg.embedding](t, cfg)
    if cfg.augment_dim:  # EDM: added to the noise-level embedding, before its MLP.
      labels = cond.augment
      if labels is None:
        labels = jnp.zeros((x.shape[0], cfg.augment_dim))
      if labels.shape[-1] != cfg.augment_dim:
        raise ValueError(f"this U-Net takes {cfg.augment_dim} augmentation labels in "
                         f"Cond(augment=...), not {labels.shape[-1]}")
      emb = emb + nn.Dense(emb.shape[-1], use_bias=False, dtype=dtype,
                           name="augment_emb")(labels.astype(emb.dtype))
    elif cond.augment is not None:
      raise ValueError("this U-Net takes no augmentation labels (model.augment_dim=0)")
    emb = nn.Dense(emb_dim, dtype=dtype)(emb)
    emb = nn.Dense(emb_dim, dtype=dtype)(nn.swish(emb))
    if cfg.num_classes:
      if cond.labels is None:
        raise ValueError("this U-Net is class-conditional: pass Cond(labels=...); "
                         f"label {cfg.num_classes} means unconditional")
      emb = emb + nn.Embed(cfg.num_classes + 1, emb_dim, name="label_emb")(cond.labels)
    x = layers.with_input_fourier_features(x, cfg.input_fourier)
    if cfg.cond_image_channels:
      if cond.image is None or cond.image.shape[-1] != cfg.cond_image_channels:
        raise ValueError(f"this U-Net takes a {cfg.cond_image_channels}-channel "
                         "conditioning image in Cond(image=...)")
      x = jnp.concatenate([x, cond.image.astype(x.dtype)], axis=-1)
    context = None
    if cfg.text:
      context, mask, pooled = self._context(cond, emb_dim, dtype)
      if pooled is not None:
        emb = emb + pooled

    res_block, attn_block, cross_attn_block = (
        rematted(m, cfg.remat) for m in (ResBlock, AttnBlock, CrossAttnBlock))
    block = lambda ch, resample="none": res_block(
        ch, cfg.dropout, cfg.num_groups, cfg.scale_shift_norm, dtype, resample,
        cfg.resample_filter, cfg.skip_rescale, cfg.conv_impl)
    self_attn = lambda: attn_block(cfg.num_heads, cfg.num_groups, dtype, cfg.skip_rescale)

    def attn(h, self_attention=True):
      """Self-attention and cross-attention to the text, where configured."""
      if self_attention and h.shape[1] in cfg.attn_resolutions:
        h = self_attn()(h)
      if context is not None and h.shape[1] in cfg.cross_attn_resolutions:
        h = cross_attn_block(cfg.num_heads, cfg.num_groups, dtype, cfg.cross_attn_positions)(h, context, mask)
      return h

    h = conv.make_conv(cfg.conv_impl, cfg.ch, (3, 3), dtype=dtype, name="conv_in")(x)
    pyramid = x  # Progressive input path.
    skips = [h]
    for level, mult in enumerate(cfg.ch_mult):
      if level and h.shape[1] in cfg.cond_image_resolutions:
        h = h + conv.make_conv(cfg.conv_impl, h.shape[-1], (1, 1), dtype=dtype)(
            layers.area_downsample(cond.image.astype(h.dtype), cond.image.shape[1] // h.shape[1]))
      for _ in range(cfg.num_res_blocks):
        h = attn(block(cfg.ch * mult)(h, emb, train))
        skips.append(h)
      if level != len(cfg.ch_mult) - 1:
        h = _downsample(cfg, block, h, emb, train)
        if cfg.progressive_input != "none":
          pyramid, h = ProgressiveInput(cfg)(pyramid, h)
        skips.append(h)

    h = block(h.shape[-1])(h, emb, train)
    h = self_attn()(h)
    if context is not None and h.shape[1] in cfg.cross_attn_resolutions:
      h = cross_attn_block(cfg.num_heads, cfg.num_groups, dtype, cfg.cross_attn_positions)(h, context, mask)
    h = block(h.shape[-1])(h, emb, train)

    out = None  # Progressive output path.
    for level, mult in reversed(list(enumerate(cfg.ch_mult))):
      for _ in range(cfg.num_res_blocks + 1):
        h = block(cfg.ch * mult)(jnp.concatenate([h, skips.pop()], axis=-1), emb, train)
        h = attn(h, self_attention=not cfg.up_attn_once)
      if h.shape[1] in cfg.attn_resolutions and cfg.up_attn_once:
        h = self_attn()(h)
      if cfg.progressive == "output_skip":
        out = OutputSkip(cfg)(out, h)
      if level != 0:
        h = _upsample(cfg, block, h, emb, train)
    assert not skips
    if out is not None:
      return out.astype(jnp.float32)

    h = nn.swish(nn.GroupNorm(cfg.num_groups, dtype=dtype)(h))
    h = conv.make_conv(cfg.conv_impl, cfg.out_channels, (3, 3),
                       kernel_init=nn.initializers.zeros, dtype=dtype, name="conv_out")(h)
    return h.astype(jnp.float32)

  def _context(self, cond: Cond, emb_dim: int, dtype):
    """The cross-attention context, its mask and a pooled embedding, from either
    token ids (encoded here) or precomputed embeddings."""
    cfg = self.config
    if cfg.text == "tokens":
      if cond.tokens is None:
        raise ValueError("this U-Net takes text as token ids: pass Cond(tokens=...)")
      text, mask = TextEncoder(cfg.text_vocab_size, cfg.text_max_len, cfg.text_width,
                               cfg.text_layers, cfg.text_heads, dtype,
                               name="text_encoder")(cond.tokens)
    else:
      if cond.text_emb is None or cond.text_emb.shape[-1] != cfg.text_emb_dim:
        raise ValueError(f"this U-Net takes precomputed text embeddings of width "
                         f"{cfg.text_emb_dim}: pass Cond(text_emb=..., text_mask=...)")
      text, mask = cond.text_emb.astype(dtype), cond.text_mask
    return Context(cfg.text_width, emb_dim, dtype, cfg.text_pooled, name="context")(text, mask)


def resolutions(image_size: int, num_levels: int) -> list[int]:
  """Feature-map sizes of each U-Net level for a square input."""
  return [image_size // 2**i for i in range(num_levels)]


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
