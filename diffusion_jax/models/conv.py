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
           programs are exactly nn.Conv's).
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


CONV_IMPLS: dict[str, Callable[..., Array]] = {
    "auto": auto_conv,
    "xla": lax.conv_general_dilated,
    "chunked": chunked_conv,
}


def make_conv(impl: str, *args: Any, **kwargs: Any) -> nn.Conv:
  """flax `nn.Conv(*args, **kwargs)` whose kernel gradient CONV_IMPLS[impl] computes."""
  return nn.Conv(*args, conv_general_dilated=CONV_IMPLS[impl], **kwargs)
