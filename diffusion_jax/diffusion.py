"""Pure diffusion math: forward noising, prediction targets, conversions, loss.

Notation: x_t = alpha_t x_0 + sigma_t eps with eps ~ N(0, I).
  eps-prediction:  the model predicts eps.
  v-prediction:    v = alpha_t eps - sigma_t x_0 (Salimans & Ho, 2022).
  x0-prediction:   the model predicts x_0.
Every parameterisation converts to the denoiser view x0_hat = D(x_t, t, cond), which
is all that samplers use.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_jax.schedules import Schedule

Array = jax.Array
# D(x_t, t, cond) -> x0_hat. `t` has shape (batch,); `cond` is whatever the model takes.
Denoiser = Callable[[Array, Array, object], Array]


def _bcast(v: Array, x: Array) -> Array:
  """Reshapes per-example scalars (batch,) to broadcast against x (batch, ...)."""
  v = jnp.asarray(v, x.dtype)
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def q_sample(schedule: Schedule, x0: Array, t: Array, eps: Array) -> Array:
  """Forward noising x_t = alpha(t) x_0 + sigma(t) eps."""
  return _bcast(schedule.alpha(t), x0) * x0 + _bcast(schedule.sigma(t), x0) * eps


def target(prediction: str, schedule: Schedule, x0: Array, t: Array, eps: Array) -> Array:
  """The regression target of a parameterisation."""
  if prediction not in PREDICTIONS:
    raise ValueError(f"unknown prediction {prediction!r}; known: {sorted(PREDICTIONS)}")
  return PREDICTIONS[prediction].target(schedule, x0, t, eps)


def to_x0(prediction: str, schedule: Schedule, out: Array, x_t: Array, t: Array) -> Array:
  """Converts a model output of the given parameterisation to x0_hat."""
  if prediction not in PREDICTIONS:
    raise ValueError(f"unknown prediction {prediction!r}; known: {sorted(PREDICTIONS)}")
  return PREDICTIONS[prediction].to_x0(schedule, out, x_t, t)


def eps_from_x0(schedule: Schedule, x0: Array, x_t: Array, t: Array) -> Array:
  """eps implied by (x_t, x0_hat): (x_t - alpha x0) / sigma."""
  return (x_t - _bcast(schedule.alpha(t), x_t) * x0) / _bcast(schedule.sigma(t), x_t)


def x0_from_eps(schedule: Schedule, eps: Array, x_t: Array, t: Array) -> Array:
  return (x_t - _bcast(schedule.sigma(t), x_t) * eps) / _bcast(schedule.alpha(t), x_t)


def v_from(schedule: Schedule, x0: Array, eps: Array, t: Array) -> Array:
  return _bcast(schedule.alpha(t), x0) * eps - _bcast(schedule.sigma(t), x0) * x0


def x0_from_v(schedule: Schedule, v: Array, x_t: Array, t: Array) -> Array:
  # alpha x_t - sigma v = (alpha^2 + sigma^2) x_0, for any schedule.
  a, s = _bcast(schedule.alpha(t), x_t), _bcast(schedule.sigma(t), x_t)
  return (a * x_t - s * v) / (a * a + s * s)


def score_from_x0(schedule: Schedule, x0: Array, x_t: Array, t: Array) -> Array:
  """Score of the noisy marginal, grad log p_t(x_t) = -(x_t - alpha x0_hat) / sigma^2."""
  s = _bcast(schedule.sigma(t), x_t)
  return -(x_t - _bcast(schedule.alpha(t), x_t) * x0) / (s * s)


class _Param:
  def __init__(self, target, to_x0):
    self.target, self.to_x0 = target, to_x0


PREDICTIONS = {
    "eps": _Param(lambda sch, x0, t, eps: eps,
                  lambda sch, out, x_t, t: x0_from_eps(sch, out, x_t, t)),
    "v": _Param(lambda sch, x0, t, eps: v_from(sch, x0, eps, t),
                lambda sch, out, x_t, t: x0_from_v(sch, out, x_t, t)),
    "x0": _Param(lambda sch, x0, t, eps: x0,
                 lambda sch, out, x_t, t: out),
}


def sample_time(rng: Array, batch: int, num_steps: int) -> Array:
  """Training times: uniform on {1/T, ..., 1} for a discrete schedule, else U(0, 1]."""
  if num_steps > 0:
    return jax.random.randint(rng, (batch,), 1, num_steps + 1).astype(jnp.float32) / num_steps
  # Avoid t = 0 exactly, where sigma = 0 makes eps unidentifiable.
  return jax.random.uniform(rng, (batch,), minval=1e-5, maxval=1.0)


def denoising_loss(apply_fn: Callable[[Array, Array], Array], schedule: Schedule,
                   prediction: str, x0: Array, rng: Array) -> tuple[Array, dict]:
  """Denoising score-matching loss with the 'simple' (uniform) weighting.

  Args:
    apply_fn: (x_t, t) -> model output; conditioning is closed over by the caller.
    schedule: the forward process.
    prediction: the parameterisation the model output is read as ('eps', 'v', 'x0').
    x0: clean data (batch, ...).
    rng: a PRNG key.
  Returns:
    (scalar loss, per-example losses under "per_example").
  """
  t_rng, eps_rng = jax.random.split(rng)
  t = sample_time(t_rng, x0.shape[0], schedule.num_steps)
  eps = jax.random.normal(eps_rng, x0.shape, x0.dtype)
  x_t = q_sample(schedule, x0, t, eps)
  out = apply_fn(x_t, t)
  err = (out.astype(jnp.float32) - target(prediction, schedule, x0, t, eps)) ** 2
  per_example = jnp.mean(err.reshape(err.shape[0], -1), axis=1)
  return jnp.mean(per_example), {"per_example": per_example, "t": t}


def make_denoiser(apply_fn: Callable[[Array, Array, object], Array], schedule: Schedule,
                  prediction: str) -> Denoiser:
  """The denoiser view of a model: D(x_t, t, cond) -> x0_hat."""
  def denoise(x_t, t, cond):
    return to_x0(prediction, schedule, apply_fn(x_t, t, cond), x_t, t)
  return denoise
