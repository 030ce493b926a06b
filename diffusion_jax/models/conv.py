"""How the U-Net's convolutions compute their kernel gradient (CONV_IMPLS).

Each entry is a drop-in for `lax.conv_general_dilated`, given to flax's `nn.Conv` as
its `conv_general_dilated`: the module, its parameters and their names stay those of
`nn.Conv`, so parameter trees and checkpoints are the same under every choice. Forward
values are the same; only how reverse mode computes d(loss)/d(kernel) differs.

  xla:     `lax.conv_general_dilated` itself: exactly nn.Conv's program.
  chunked: the kernel gradient as a sum of convolutions over chunks of the batch, each
           of at most CHUNK_POSITIONS output positions (examples x output pixels).
           XLA emits a kernel gradient as one convolution whose window is the whole
           feature map, contracting batch x pixels; on XLA:CPU that runs several times
           slower per example once the contraction is long (experiments/bench_conv.py:
           batch 32 x 32x32 x 128 channels), while chunks of 4,096 positions keep the
           rate of a small batch. The forward pass and the input gradient are XLA's.
  auto:    "chunked" when tracing for the CPU backend, "xla" on GPU and TPU (their
           programs are exactly nn.Conv's). On the CPU it also computes the 3x3
           convolution after a nearest-neighbour 2x upsampling (the U-Net's upsampling
           layer) at the low resolution: `upsampling_conv`.
"""

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

Array = jax.Array

# Output positions (examples x output pixels) per kernel-gradient convolution of
# "chunked": 4 examples of a 32x32 map, 16 of a 16x16 one (experiments/README.md).
CHUNK_POSITIONS = 4096


def _chunk_tangent(x: Array, k_dot: Array, batch_axis: int, out_axis: int, size: int,
                   conv: Callable[[Array, Array], Array]) -> Array:
  """conv(x, k_dot), one batch chunk at a time: its transpose in k_dot (the kernel
  gradient) becomes one short convolution per chunk, summed."""
  parts = [conv(lax.slice_in_dim(x, i, min(i + size, x.shape[batch_axis]), axis=batch_axis),
                k_dot)
           for i in range(0, x.shape[batch_axis], size)]
  return jnp.concatenate(parts, axis=out_axis)


def chunked_conv(lhs: Array, rhs: Array, window_strides, padding, lhs_dilation=None,
                 rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                 batch_group_count: int = 1, precision: Any = None,
                 preferred_element_type: Any = None) -> Array:
  """`lax.conv_general_dilated`, whose kernel gradient is summed over batch chunks."""
  kwargs = dict(window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
                rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                feature_group_count=feature_group_count,
                batch_group_count=batch_group_count, precision=precision,
                preferred_element_type=preferred_element_type)
  conv = lambda x, k: lax.conv_general_dilated(x, k, **kwargs)
  dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  out = jax.eval_shape(conv, lhs, rhs).shape
  batch_axis, out_axis = dims.lhs_spec[0], dims.out_spec[0]
  pixels = math.prod(out[axis] for axis in dims.out_spec[2:])  # Per example.
  size = max(1, CHUNK_POSITIONS // pixels)
  if batch_group_count != 1 or lhs.shape[batch_axis] <= size:
    return conv(lhs, rhs)

  @jax.custom_jvp
  def f(x, k):
    return conv(x, k)

  def f_jvp(primals, tangents):
    # Symbolic zeros: a constant input or kernel (forward mode through a frozen
    # network, or the network's input image) costs no tangent convolution.
    x, k = primals
    x_dot, k_dot = tangents
    y = conv(x, k)
    parts = []
    if not isinstance(k_dot, SymbolicZero):
      parts.append(_chunk_tangent(x, k_dot, batch_axis, out_axis, size, conv))
    if not isinstance(x_dot, SymbolicZero):
      parts.append(conv(x_dot, k))
    return y, sum(parts[1:], parts[0]) if parts else jnp.zeros_like(y)

  f.defjvp(f_jvp, symbolic_zeros=True)
  return f(lhs, rhs)


def auto_conv(lhs: Array, rhs: Array, *args, **kwargs) -> Array:
  """"chunked" on the CPU backend, `lax.conv_general_dilated` elsewhere."""
  impl = chunked_conv if jax.default_backend() == "cpu" else lax.conv_general_dilated
  return impl(lhs, rhs, *args, **kwargs)


# The 3x3 convolution of a nearest-neighbour 2x upsampling, per output phase: output row
# 2i + p reads upsampled rows 2i + p - 1 .. 2i + p + 1, which are source rows i - 1, i, i
# (p = 0) or i, i, i + 1 (p = 1). So each phase is a 2x2 convolution of the source whose
# taps sum the 3x3 kernel's rows (and likewise columns): PHASE_TAPS[p][tap][kernel row].
PHASE_TAPS = ((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1))
PHASE_PADS = (1, 0), (0, 1)  # Phase 0 reads rows i - 1 and i, phase 1 rows i and i + 1.
# Source sizes from which `upsampling_conv` is used: below, its four small convolutions
# and the interleaving cost more than the 2.25x fewer multiplications save on the CPU
# (experiments/README.md, "The upsampling convolution").
PHASE_MIN_SIZE = 8


def upsampling_conv(base: Callable[..., Array]) -> Callable[..., Array]:
  """A drop-in for `lax.conv_general_dilated` (3x3, stride 1, SAME, NHWC) that convolves
  the nearest-neighbour 2x upsampling of its input, given the input at its own
  resolution: four 2x2 convolutions (`base`) at that resolution, one per output phase,
  interleaved. The same values as upsampling first (in exact arithmetic), with 16 kernel
  taps per source pixel instead of 36, in the forward pass and both gradients."""

  def conv(lhs: Array, rhs: Array, window_strides, padding, lhs_dilation=None,
           rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
           batch_group_count: int = 1, precision: Any = None,
           preferred_element_type: Any = None) -> Array:
    dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    same = padding == "SAME" or tuple(map(tuple, padding)) == ((1, 1), (1, 1))
    if (rhs.shape[:2] != (3, 3) or tuple(window_strides) != (1, 1) or not same
        or feature_group_count != 1 or batch_group_count != 1
        or any(d not in (None, (1, 1)) for d in (lhs_dilation, rhs_dilation))
        or tuple(dims.lhs_spec) != (0, 3, 1, 2) or tuple(dims.rhs_spec) != (3, 2, 0, 1)):
      raise ValueError("upsampling_conv takes a 3x3, stride-1, SAME convolution in NHWC")
    b, h, w, _ = lhs.shape
    taps = jnp.asarray(PHASE_TAPS, jnp.float32)
    kernels = jnp.einsum("pay,qbx,yxio->pqabio", taps, taps, rhs.astype(jnp.float32),
                         precision=lax.Precision.HIGHEST).astype(rhs.dtype)
    kwargs = dict(dimension_numbers=dimension_numbers, precision=precision,
                  preferred_element_type=preferred_element_type)
    rows = [jnp.stack([base(lhs, kernels[p, q], (1, 1), (PHASE_PADS[p], PHASE_PADS[q]),
                            **kwargs) for q in (0, 1)], axis=3) for p in (0, 1)]
    out = jnp.stack(rows, axis=2)  # (b, h, phase p, w, phase q, channels)
    return out.reshape(b, 2 * h, 2 * w, out.shape[-1])

  return conv


def uses_upsampling_conv(impl: str, size: tuple[int, int]) -> bool:
  """Whether upsample_and_conv(impl, x, ...) convolves at x's resolution (`size`)."""
  return impl == "auto" and jax.default_backend() == "cpu" and min(size) >= PHASE_MIN_SIZE


CONV_IMPLS: dict[str, Callable[..., Array]] = {
    "auto": auto_conv,
    "xla": lax.conv_general_dilated,
    "chunked": chunked_conv,
}


def make_conv(impl: str, *args: Any, **kwargs: Any) -> nn.Conv:
  """flax `nn.Conv(*args, **kwargs)` whose kernel gradient CONV_IMPLS[impl] computes."""
  return nn.Conv(*args, conv_general_dilated=CONV_IMPLS[impl], **kwargs)


def upsample_and_conv(impl: str, x: Array, features: int, **kwargs: Any) -> Array:
  """A 3x3 `make_conv(impl, features, ...)` of the nearest-neighbour 2x upsampling of NHWC
  `x`. Its parameters are nn.Conv's either way; where `uses_upsampling_conv`, it runs at
  x's resolution (`upsampling_conv`)."""
  if uses_upsampling_conv(impl, x.shape[1:3]):
    layer = nn.Conv(features, (3, 3), conv_general_dilated=upsampling_conv(CONV_IMPLS[impl]),
                    **kwargs)
    return layer(x)
  b, h, w, c = x.shape
  x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="nearest")
  return make_conv(impl, features, (3, 3), **kwargs)(x)
