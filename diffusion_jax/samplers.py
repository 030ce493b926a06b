"""Samplers over the denoiser view x0_hat = D(x_t, t, cond).

A sampler only sees a denoiser, the schedule and a decreasing time grid
1 = t_N > ... > t_0 = 0; each step makes one denoiser call (NFE = N, doubled in
batch, not in calls, under classifier-free guidance). The whole loop runs inside
one compiled function (lax.fori_loop).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.diffusion import Denoiser
from diffusion_jax.models.unet import Cond
from diffusion_jax.schedules import Schedule

Array = jax.Array


def time_grid(schedule: Schedule, num_steps: int) -> np.ndarray:
  """num_steps + 1 decreasing times from 1 to 0, on the schedule's grid if discrete."""
  if schedule.num_steps:
    if num_steps > schedule.num_steps:
      raise ValueError(f"{num_steps} sampling steps exceed the schedule's "
                       f"{schedule.num_steps} discrete steps")
    idx = np.round(np.linspace(schedule.num_steps, 0, num_steps + 1)).astype(np.int64)
    return (idx / schedule.num_steps).astype(np.float32)
  return np.linspace(1.0, 0.0, num_steps + 1, dtype=np.float32)


def _coeffs(schedule: Schedule, t: Array, s: Array):
  a_t, s_t, a_s, s_s = schedule.alpha(t), schedule.sigma(t), schedule.alpha(s), schedule.sigma(s)
  # Variance of x_t given x_s: sigma_{t|s}^2 = sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2.
  var_ts = jnp.maximum(s_t**2 - (a_t / a_s) ** 2 * s_s**2, 0.0)
  return a_t, s_t, a_s, s_s, var_ts


def ddpm_step(schedule: Schedule, x: Array, x0: Array, t: Array, s: Array, key: Array,
              **_) -> Array:
  """Ancestral step: a draw from the Gaussian posterior q(x_s | x_t, x_0 = x0_hat)."""
  a_t, s_t, a_s, s_s, var_ts = _coeffs(schedule, t, s)
  mean = (a_s * var_ts / s_t**2) * x0 + ((a_t / a_s) * s_s**2 / s_t**2) * x
  std = jnp.sqrt(var_ts * s_s**2 / s_t**2)
  return mean + std * jax.random.normal(key, x.shape, x.dtype)


def ddim_step(schedule: Schedule, x: Array, x0: Array, t: Array, s: Array, key: Array,
              eta: float = 0.0, **_) -> Array:
  """DDIM (Song et al. 2021); eta = 0 is deterministic, eta = 1 matches DDPM."""
  a_t, s_t, a_s, s_s, var_ts = _coeffs(schedule, t, s)
  eps = (x - a_t * x0) / s_t
  c = eta * jnp.sqrt(var_ts * s_s**2) / s_t
  direction = jnp.sqrt(jnp.maximum(s_s**2 - c**2, 0.0))
  return a_s * x0 + direction * eps + c * jax.random.normal(key, x.shape, x.dtype)


SAMPLERS: dict[str, Callable[..., Array]] = {
    "ddpm": ddpm_step,
    "ddim": ddim_step,
}


class SamplerConfig(NamedTuple):
  name: str = "ddim"
  num_steps: int = 100
  eta: float = 0.0
  guidance_scale: float = 1.0
  clip_denoised: bool = True


def guided(denoise: Denoiser, scale: float, null_label: int) -> Denoiser:
  """Classifier-free guidance on class labels: D_u + scale * (D_c - D_u).

  scale = 1 is the plain conditional model, 0 the unconditional one. Because x0,
  eps and the score are affine in each other at fixed (x_t, t), guiding x0_hat is
  the same as guiding eps. Both branches run as one doubled batch.
  """
  if scale == 1.0:
    return denoise

  def d(x, t, cond: Cond):
    both = Cond(labels=jnp.concatenate([cond.labels, jnp.full_like(cond.labels, null_label)]),
                image=None if cond.image is None else jnp.concatenate([cond.image] * 2))
    out = denoise(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both)
    c, u = jnp.split(out, 2)
    return u + scale * (c - u)
  return d


def sample(denoise: Denoiser, schedule: Schedule, cfg: SamplerConfig, shape: tuple,
           cond, key: Array) -> Array:
  """Draws samples of `shape` (batch, H, W, C). Returns x_0 in [-1, 1] if clipped."""
  if cfg.name not in SAMPLERS:
    raise ValueError(f"unknown sampler {cfg.name!r}; known: {sorted(SAMPLERS)}")
  step_fn = SAMPLERS[cfg.name]
  times = jnp.asarray(time_grid(schedule, cfg.num_steps))
  prior_key, loop_key = jax.random.split(key)
  x = schedule.sigma(times[0]) * jax.random.normal(prior_key, shape, jnp.float32)

  def body(i, x):
    t, s = times[i], times[i + 1]
    x0 = denoise(x, jnp.full((shape[0],), t), cond)
    if cfg.clip_denoised:
      x0 = jnp.clip(x0, -1.0, 1.0)
    return step_fn(schedule, x, x0, t, s, jax.random.fold_in(loop_key, i), eta=cfg.eta)

  x = jax.lax.fori_loop(0, cfg.num_steps, body, x)
  return jnp.clip(x, -1.0, 1.0) if cfg.clip_denoised else x
