"""Classifier-free guidance over the denoiser view, with one scale per condition."""

from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_jax.core.parameterisation import Denoiser


def guided(denoise: Denoiser, scales: dict[str, float],
           null: Callable[[object, str], object]) -> Denoiser:
  """Classifier-free guidance with one scale per condition.

  `scales` maps each condition's name to its scale, in nesting order. With the guided
  conditions c_1..c_K (those whose scale w_k != 1, in that order) and D_k the denoiser
  given c_1..c_k (the later ones nulled),
    D = D_0 + sum_k w_k (D_k - D_{k-1}).
  One condition gives the usual D_u + w (D_c - D_u); all scales 1 give D_K = D; for
  image + text it is InstructPix2Pix's rule. Because x0, eps and the score are affine
  in each other at fixed (x_t, t), guiding x0_hat is the same as guiding eps. The K + 1
  branches run as one batch. `null(cond, name)` replaces a condition by its null.
  """
  active = [k for k, w in scales.items() if w != 1.0]
  if not active:
    return denoise

  def d(x, t, cond):
    branches = []
    for k in range(len(active) + 1):
      c = cond
      for name in active[k:]:
        c = null(c, name)
      branches.append(c)
    n = len(branches)
    stacked = jax.tree.map(lambda *v: jnp.concatenate(v), *branches)
    outs = jnp.split(denoise(jnp.concatenate([x] * n), jnp.concatenate([t] * n), stacked), n)
    out = outs[0]
    for k, name in enumerate(active):
      out = out + scales[name] * (outs[k + 1] - outs[k])
    return out
  return d
