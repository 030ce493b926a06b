"""Building blocks of the score_sde / EDM / VDM U-Nets: FIR resampling, Fourier features.

FIR resampling follows score_sde's `upfirdn2d` semantics: a 1-D filter of taps
(e.g. (1, 3, 3, 1)) becomes the separable 2-D kernel outer(taps, taps), normalised to
unit gain. With taps (1, 1) it is exactly a 2x2 box: average pooling down, nearest
neighbour up (EDM's DDPM++ choice); (1, 3, 3, 1) is NCSN++'s "FIR" (bilinear) filter.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def area_downsample(x: Array, factor: int) -> Array:
  """Mean over factor x factor blocks (exact area downsampling)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def upfirdn(x: Array, taps: tuple[int, ...], up: int = 1, down: int = 1,
            pad: tuple[int, int] = (0, 0)) -> Array:
  """Per-channel FIR filtering of NHWC `x`: zero-insert `up`x, pad, convolve, keep every `down`th.

  The kernel's gain is up^2, so that zero insertion does not dim the image.
  """
  k = np.outer(taps, taps).astype(np.float64)
  k = (k / k.sum() * up * up)[::-1, ::-1]  # Flipped: a true convolution, as upfirdn2d.
  channels = x.shape[-1]
  kernel = jnp.asarray(np.tile(k[:, :, None, None], (1, 1, 1, channels)), x.dtype)
  # lhs_dilation puts up - 1 zeros between samples; upfirdn also puts them after the last.
  padding = ((pad[0], pad[1] + up - 1),) * 2
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(down, down), padding=padding, lhs_dilation=(up, up),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)


def downsample_2d(x: Array, taps: tuple[int, ...]) -> Array:
  """Halves height and width with the FIR filter `taps`."""
  p = len(taps) - 2
  return upfirdn(x, taps, down=2, pad=((p + 1) // 2, p // 2))


def upsample_2d(x: Array, taps: tuple[int, ...]) -> Array:
  """Doubles height and width with the FIR filter `taps`."""
  p = len(taps) - 2
  return upfirdn(x, taps, up=2, pad=((p + 1) // 2 + 1, p // 2))


def pre_conv_downsample(x: Array, taps: tuple[int, ...], kernel_size: int = 3) -> Array:
  """FIR-filters `x` so that a VALID stride-2 conv of `kernel_size` then halves it exactly
  (score_sde's FIR conv downsampling: filter first, then the strided conv)."""
  p = len(taps) - 2 + kernel_size - 1
  return upfirdn(x, taps, pad=((p + 1) // 2, p // 2))


RESAMPLE = {"up": upsample_2d, "down": downsample_2d}


def fourier_embedding(t: Array, num_freqs: int, scale: float) -> Array:
  """Gaussian random Fourier features of t (Tancik et al.; NCSN++): [sin, cos](2 pi w t).

  The frequencies w ~ N(0, scale^2) are drawn once from a fixed seed and are not
  parameters, so every run, checkpoint and device sees the same embedding.
  Returns (batch, 2 num_freqs).
  """
  w = np.random.default_rng(0).standard_normal(num_freqs) * scale
  args = t.astype(jnp.float32)[:, None] * jnp.asarray(2 * math.pi * w, jnp.float32)[None]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def with_input_fourier_features(x: Array, exponents: tuple[int, ...]) -> Array:
  """VDM's Fourier features of the input: x and sin/cos(2^k 2 pi x) for each exponent k.

  They let the network see the fine bit-level detail of x; () leaves x unchanged.
  Returns (..., C (1 + 2 len(exponents))).
  """
  if not exponents:
    return x
  w = 2.0 * math.pi * 2.0 ** np.asarray(exponents, np.float64)
  h = jnp.repeat(x, len(exponents), axis=-1) * jnp.asarray(np.tile(w, x.shape[-1]), x.dtype)
  return jnp.concatenate([x, jnp.sin(h), jnp.cos(h)], axis=-1)
