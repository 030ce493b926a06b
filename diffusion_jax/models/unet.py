"""Conditional U-Net (Ho et al. 2020 layout, with ADM's options).

The typed boundary is `UNetConfig` (what the network is) and `Cond` (what it is
conditioned on). With ch=128, ch_mult=(1, 2, 2, 2), two res blocks per level,
attention at 16x16 and no conditioning, it is exactly the 35.7M-parameter DDPM
CIFAR-10 network.
"""

import dataclasses
import math
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

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
  dtype: str = "float32"

  @property
  def text(self) -> str:
    """How the model takes text: "tokens", "embeddings" or "" (not at all)."""
    return "tokens" if self.text_vocab_size else "embeddings" if self.text_emb_dim else ""

  @classmethod
  def from_config(cls, cfg: Any) -> "UNetConfig":
    """From an ml_collections model section (unknown keys are an error)."""
    d = dict(cfg)
    for k in ("ch_mult", "attn_resolutions", "cond_image_resolutions",
              "cross_attn_resolutions"):
      if k in d:
        d[k] = tuple(int(v) for v in d[k])
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown model config fields: {unknown}")
    return cls(**d)


@flax.struct.dataclass
class Cond:
  """What the network is conditioned on; a field left None is not used.

  labels:    (batch,) int32 class ids; `num_classes` is the null label.
  image:     (batch, H, W, cond_image_channels) at the output resolution; zeros = none.
  tokens:    (batch, L) int32 token ids, 0 = padding; all padding = the empty prompt.
  text_emb:  (batch, L, text_emb_dim) precomputed embeddings, with
  text_mask: (batch, L) bool, False where there is no token (all False = empty prompt).
  """
  labels: Optional[Array] = None
  image: Optional[Array] = None
  tokens: Optional[Array] = None
  text_emb: Optional[Array] = None
  text_mask: Optional[Array] = None


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
  """Sinusoidal embedding of t * 1000, so that DDPM step indices embed as in Ho et al."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args = (1000.0 * t.astype(jnp.float32))[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class ResBlock(nn.Module):
  out_ch: int
  dropout: float
  num_groups: int
  scale_shift_norm: bool
  dtype: Any

  @nn.compact
  def __call__(self, x, emb, train: bool):
    h = nn.swish(nn.GroupNorm(self.num_groups, dtype=self.dtype)(x))
    h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype)(h)
    emb = nn.Dense((2 if self.scale_shift_norm else 1) * self.out_ch,
                   dtype=self.dtype)(nn.swish(emb))[:, None, None, :]
    if self.scale_shift_norm:
      scale, shift = jnp.split(emb, 2, axis=-1)
      h = nn.GroupNorm(self.num_groups, dtype=self.dtype)(h) * (1 + scale) + shift
    else:
      h = nn.GroupNorm(self.num_groups, dtype=self.dtype)(h + emb)
    h = nn.Dropout(self.dropout)(nn.swish(h), deterministic=not train)
    # Zero init: each block starts as the identity (Ho et al., ADM).
    h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
    if x.shape[-1] != self.out_ch:
      x = nn.Dense(self.out_ch, dtype=self.dtype, name="skip")(x)
    return x + h


class AttnBlock(nn.Module):
  num_heads: int
  num_groups: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    b, hgt, wid, c = x.shape
    h = nn.GroupNorm(self.num_groups, dtype=self.dtype)(x).reshape(b, hgt * wid, c)
    h = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, qkv_features=c, out_features=c, dtype=self.dtype,
        out_kernel_init=nn.initializers.zeros)(h, h)
    return x + h.reshape(b, hgt, wid, c)


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
    emb = timestep_embedding(t, cfg.ch)
    emb = nn.Dense(emb_dim, dtype=dtype)(emb)
    emb = nn.Dense(emb_dim, dtype=dtype)(nn.swish(emb))
    if cfg.num_classes:
      if cond.labels is None:
        raise ValueError("this U-Net is class-conditional: pass Cond(labels=...); "
                         f"label {cfg.num_classes} means unconditional")
      emb = emb + nn.Embed(cfg.num_classes + 1, emb_dim, name="label_emb")(cond.labels)
    if cfg.cond_image_channels:
      if cond.image is None or cond.image.shape[-1] != cfg.cond_image_channels:
        raise ValueError(f"this U-Net takes a {cfg.cond_image_channels}-channel "
                         "conditioning image in Cond(image=...)")
      x = jnp.concatenate([x, cond.image.astype(x.dtype)], axis=-1)
    context = None
    if cfg.text:
      context, mask, pooled = self._context(cond, emb_dim, dtype)
      emb = emb + pooled

    block = lambda ch: ResBlock(ch, cfg.dropout, cfg.num_groups, cfg.scale_shift_norm, dtype)

    def attn(h):
      if h.shape[1] in cfg.attn_resolutions:
        h = AttnBlock(cfg.num_heads, cfg.num_groups, dtype)(h)
      if context is not None and h.shape[1] in cfg.cross_attn_resolutions:
        h = CrossAttnBlock(cfg.num_heads, cfg.num_groups, dtype)(h, context, mask)
      return h

    h = nn.Conv(cfg.ch, (3, 3), dtype=dtype, name="conv_in")(x)
    skips = [h]
    for level, mult in enumerate(cfg.ch_mult):
      if level and h.shape[1] in cfg.cond_image_resolutions:
        h = h + nn.Conv(h.shape[-1], (1, 1), dtype=dtype)(
            _area_resize(cond.image.astype(h.dtype), h.shape[1]))
      for _ in range(cfg.num_res_blocks):
        h = attn(block(cfg.ch * mult)(h, emb, train))
        skips.append(h)
      if level != len(cfg.ch_mult) - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=dtype)(h)
        skips.append(h)

    h = block(h.shape[-1])(h, emb, train)
    h = AttnBlock(cfg.num_heads, cfg.num_groups, dtype)(h)
    if context is not None and h.shape[1] in cfg.cross_attn_resolutions:
      h = CrossAttnBlock(cfg.num_heads, cfg.num_groups, dtype)(h, context, mask)
    h = block(h.shape[-1])(h, emb, train)

    for level, mult in reversed(list(enumerate(cfg.ch_mult))):
      for _ in range(cfg.num_res_blocks + 1):
        h = attn(block(cfg.ch * mult)(jnp.concatenate([h, skips.pop()], axis=-1), emb, train))
      if level != 0:
        b, hh, ww, c = h.shape
        h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), method="nearest")
        h = nn.Conv(c, (3, 3), dtype=dtype)(h)
    assert not skips

    h = nn.swish(nn.GroupNorm(cfg.num_groups, dtype=dtype)(h))
    h = nn.Conv(cfg.out_channels, (3, 3), kernel_init=nn.initializers.zeros,
                dtype=dtype, name="conv_out")(h)
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
    return Context(cfg.text_width, emb_dim, dtype, name="context")(text, mask)


def _area_resize(x: Array, size: int) -> Array:
  """Mean over size x size blocks: exact area downsampling by an integer factor."""
  b, h, w, c = x.shape
  f = h // size
  return x.reshape(b, size, f, size, f, c).mean(axis=(2, 4))


def resolutions(image_size: int, num_levels: int) -> list[int]:
  """Feature-map sizes of each U-Net level for a square input."""
  return [image_size // 2**i for i in range(num_levels)]


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
