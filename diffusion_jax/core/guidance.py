"""Guidance over the denoiser view: classifier-free guidance with one scale per
condition, autoguidance by a weaker model, both optionally limited to an interval of
noise levels."""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.config.errors import ConfigError, finite, require
from diffusion_jax.core import schedules as schedules_lib
from diffusion_jax.core.parameterisation import Denoiser
from diffusion_jax.core.schedules import Schedule


@dataclasses.dataclass(frozen=True)
class GuidanceConfig:
  """Where and how guidance applies: the guidance fields of the `sample` section other
  than the per-condition scales (conditioning.conditions.guidance_scales)."""
  # Guide only where sigma = sigma_t / alpha_t lies in (lo, hi]; () = at every time.
  interval: tuple[float, ...] = ()
  autoguidance_scale: float = 1.0  # w of D_bad + w (D - D_bad); 1 = no autoguidance.

  @classmethod
  def from_config(cls, sample_cfg) -> "GuidanceConfig":
    """The guidance fields of a `sample` section, checked (ConfigError)."""
    raw = sample_cfg.guidance_interval
    try:
      interval = tuple(float(v) for v in raw)
    except (TypeError, ValueError):
      raise ConfigError(f"sample.guidance_interval={raw!r}: give (lo, hi) as two numbers "
                        "(1e9 for no upper bound), or () for everywhere") from None
    require(len(interval) in (0, 2), f"sample.guidance_interval={raw!r}: give (lo, hi) in "
            "sigma = sigma_t / alpha_t units, or () for everywhere")
    if interval:
      lo, hi = interval
      require(np.isfinite(lo) and lo >= 0 and not np.isnan(hi) and hi > lo,
              f"sample.guidance_interval={raw!r}: need 0 <= lo < hi")
    finite("sample.autoguidance_scale", sample_cfg.autoguidance_scale, 0)
    return cls(interval, float(sample_cfg.autoguidance_scale))


def in_interval(schedule: Schedule, t: jax.Array, interval: tuple[float, ...]) -> jax.Array:
  """(B,) bool: whether sigma(t) / alpha(t) lies in (lo, hi] (always, for ())."""
  if not interval:
    return jnp.ones(jnp.shape(t), bool)
  lo, hi = interval
  sigma = schedules_lib.lam(schedule, t)  # inf where alpha = 0: above any finite hi.
  return (sigma > lo) & (sigma <= hi)


def guided(denoise: Denoiser, scales: dict[str, float],
           null: Callable[[object, str], object], *, guide: Denoiser | None = None,
           guide_scale: float = 1.0, interval: tuple[float, ...] = (),
           schedule: Schedule | None = None) -> Denoiser:
  """Classifier-free guidance with one scale per condition, and autoguidance.

  `scales` maps each condition's name to its scale, in nesting order. With the guided
  conditions c_1..c_K (those whose scale w_k != 1, in that order) and D_k the denoiser
  given c_1..c_k (the later ones nulled),
    D_cfg = D_0 + sum_k w_k (D_k - D_{k-1}).
  One condition gives the usual D_u + w (D_c - D_u); all scales 1 give D_K = D; for
  image + text it is InstructPix2Pix's rule. Because x0, eps and the score are affine
  in each other at fixed (x_t, t), guiding x0_hat is the same as guiding eps. The K + 1
  branches run as one batch, each example's branches side by side. `null(cond, name)`
  replaces a condition by its null.

  Autoguidance (Karras et al. 2024) by `guide`, a weaker denoiser of the same task,
  with scale w_a: D_bad + w_a (D_K - D_bad). With CFG as well, the two guidance
  directions add: D = D_cfg + (w_a - 1)(D_K - D_bad).

  With an `interval` (lo, hi), the guidance applies only where sigma = sigma_t / alpha_t
  of `schedule` lies in (lo, hi] (Kynkaanniemi et al. 2024); elsewhere D = D_K, and a
  batch with no example inside evaluates only D_K (lax.cond: under vmap both run).
  """
  active = [k for k, w in scales.items() if w != 1.0]
  auto = guide is not None and guide_scale != 1.0
  if not active and not auto:
    return denoise
  if interval:
    require(schedule is not None, "guided: a guidance interval needs the schedule")

  def full(x, t, cond):
    """(guided D, plain conditional D_K)."""
    if active:
      branches = []
      for k in range(len(active) + 1):
        c = cond
        for name in active[k:]:
          c = null(c, name)
        branches.append(c)
      n = len(branches)
      # Interleaved, not concatenated: an example's branches are neighbours, so a batch
      # sharded over devices keeps each example's branches on its own device (no
      # all-to-all along the batch axis).
      both = lambda *v: jnp.stack(v, 1).reshape((-1,) + v[0].shape[1:])
      stacked = jax.tree.map(both, *branches)
      joint = denoise(both(*[x] * n), both(*[t] * n), stacked)
      joint = joint.reshape((x.shape[0], n) + joint.shape[1:])
      outs = [joint[:, k] for k in range(n)]
      out = outs[0]
      for k, name in enumerate(active):
        out = out + scales[name] * (outs[k + 1] - outs[k])
      plain = outs[-1]
    else:
      out = plain = denoise(x, t, cond)
    if auto:
      out = out + (guide_scale - 1.0) * (plain - guide(x, t, cond))
    return out, plain

  if not interval:
    return lambda x, t, cond: full(x, t, cond)[0]

  def d(x, t, cond):
    inside = in_interval(schedule, t, interval)

    def some_inside():
      out, plain = full(x, t, cond)
      return jnp.where(inside.reshape((-1,) + (1,) * (x.ndim - 1)), out, plain)
    return jax.lax.cond(jnp.any(inside), some_inside, lambda: denoise(x, t, cond))
  return d
