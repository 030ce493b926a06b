"""What the network predicts, and the denoiser view every sampler uses.

Notation: x_t = alpha_t x_0 + sigma_t eps, eps ~ N(0, I); lambda = sigma / alpha.
Each parameterisation has a regression target and a conversion of the network's
output to x0_hat = D(x_t, t, cond):
  eps    the noise;                         x0   the clean data;
  v      alpha eps - sigma x0 (Salimans & Ho 2022);
  score  grad log p(x_t) = -eps / sigma;
  edm    Karras et al.'s F with preconditioning, generalised to any alpha:
         D = c_skip y + c_out F(c_in y), y = x_t / alpha,
         c_skip = sd^2 / (lambda^2 + sd^2), c_out = lambda sd / sqrt(lambda^2 + sd^2),
         c_in = 1 / sqrt(lambda^2 + sd^2), sd = sigma_data;
  flow   the velocity dx_t/dt = alpha' x0 + sigma' eps (eps - x0 for flow matching).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax.config.errors import choice
from diffusion_jax.core.schedules import Schedule

Array = jax.Array
# D(x_t, t, cond) -> x0_hat. `t` has shape (batch,); `cond` is whatever the model takes.
Denoiser = Callable[[Array, Array, object], Array]


def bcast(v: Array, x: Array) -> Array:
  """Reshapes per-example scalars (batch,) to broadcast against x (batch, ...)."""
  v = jnp.asarray(v, x.dtype)
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _coefs(schedule: Schedule, t: Array, x: Array):
  return bcast(schedule.alpha(t), x), bcast(schedule.sigma(t), x)


def derivatives(schedule: Schedule, t: Array):
  """(alpha, sigma, d alpha/dt, d sigma/dt) at t, by forward-mode differentiation."""
  t = jnp.asarray(t, jnp.float32)
  a, da = jax.jvp(schedule.alpha, (t,), (jnp.ones_like(t),))
  s, ds = jax.jvp(schedule.sigma, (t,), (jnp.ones_like(t),))
  return a, s, da, ds


def q_sample(schedule: Schedule, x0: Array, t: Array, eps: Array) -> Array:
  """Forward noising x_t = alpha(t) x_0 + sigma(t) eps."""
  a, s = _coefs(schedule, t, x0)
  return a * x0 + s * eps


# --- Conversions used by the parameterisations and by samplers.

def eps_from_x0(schedule: Schedule, x0: Array, x_t: Array, t: Array) -> Array:
  """eps implied by (x_t, x0_hat): (x_t - alpha x0) / sigma."""
  a, s = _coefs(schedule, t, x_t)
  return (x_t - a * x0) / s


def x0_from_eps(schedule: Schedule, eps: Array, x_t: Array, t: Array) -> Array:
  a, s = _coefs(schedule, t, x_t)
  return (x_t - s * eps) / a


def v_from(schedule: Schedule, x0: Array, eps: Array, t: Array) -> Array:
  a, s = _coefs(schedule, t, x0)
  return a * eps - s * x0


def x0_from_v(schedule: Schedule, v: Array, x_t: Array, t: Array) -> Array:
  # alpha x_t - sigma v = (alpha^2 + sigma^2) x_0, for any schedule.
  a, s = _coefs(schedule, t, x_t)
  return (a * x_t - s * v) / (a * a + s * s)


def score_from_x0(schedule: Schedule, x0: Array, x_t: Array, t: Array) -> Array:
  """Score of the noisy marginal, grad log p_t(x_t) = -(x_t - alpha x0_hat) / sigma^2."""
  a, s = _coefs(schedule, t, x_t)
  return -(x_t - a * x0) / (s * s)


def x0_from_score(schedule: Schedule, score: Array, x_t: Array, t: Array) -> Array:
  a, s = _coefs(schedule, t, x_t)
  return (x_t + s * s * score) / a


def _edm_coefs(schedule: Schedule, t: Array, x: Array, sigma_data: float):
  a, s = _coefs(schedule, t, x)
  lam = s / a
  denom = lam * lam + sigma_data**2
  return a, sigma_data**2 / denom, lam * sigma_data / jnp.sqrt(denom), 1.0 / jnp.sqrt(denom)


def _flow_coefs(schedule: Schedule, t: Array, x: Array):
  a, s, da, ds = derivatives(schedule, t)
  return tuple(bcast(v, x) for v in (a, s, da, ds))


def velocity_from(schedule: Schedule, x0: Array, eps: Array, t: Array) -> Array:
  a, s, da, ds = _flow_coefs(schedule, t, x0)
  return da * x0 + ds * eps


def x0_from_velocity(schedule: Schedule, u: Array, x_t: Array, t: Array) -> Array:
  # Solve [x_t; u] = [[a, s], [a', s']] [x0; eps] for x0.
  a, s, da, ds = _flow_coefs(schedule, t, x_t)
  return (ds * x_t - s * u) / (a * ds - s * da)


class Parameterisation(NamedTuple):
  """What the network predicts. All functions are pure and batch-wise."""
  target: Callable  # (schedule, x0, eps, t, x_t) -> regression target
  to_x0: Callable  # (schedule, out, x_t, t) -> x0_hat
  from_x0: Callable  # (schedule, x0_hat, x_t, t) -> the output that yields x0_hat
  in_scale: Callable  # (schedule, t, x_t) -> factor on the network's input


_ones = lambda sch, t, x: jnp.ones_like(bcast(sch.alpha(t), x))


def parameterisation(name: str, sigma_data: float = 0.5) -> Parameterisation:
  choice("diffusion.prediction", name, PREDICTIONS)
  return PREDICTIONS[name](sigma_data)


def _edm(sd: float) -> Parameterisation:
  def target(sch, x0, eps, t, x_t):
    a, c_skip, c_out, _ = _edm_coefs(sch, t, x0, sd)
    return (x0 - c_skip * x_t / a) / c_out

  def to_x0(sch, out, x_t, t):
    a, c_skip, c_out, _ = _edm_coefs(sch, t, x_t, sd)
    return c_skip * x_t / a + c_out * out

  def in_scale(sch, t, x):
    a, _, _, c_in = _edm_coefs(sch, t, x, sd)
    return c_in / a

  return Parameterisation(target, to_x0, lambda sch, x0, x_t, t: target(sch, x0, None, t, x_t),
                          in_scale)


PREDICTIONS: dict[str, Callable[[float], Parameterisation]] = {
    "eps": lambda sd: Parameterisation(
        lambda sch, x0, eps, t, x_t: eps, lambda sch, o, x_t, t: x0_from_eps(sch, o, x_t, t),
        lambda sch, x0, x_t, t: eps_from_x0(sch, x0, x_t, t), _ones),
    "x0": lambda sd: Parameterisation(
        lambda sch, x0, eps, t, x_t: x0, lambda sch, o, x_t, t: o,
        lambda sch, x0, x_t, t: x0, _ones),
    "v": lambda sd: Parameterisation(
        lambda sch, x0, eps, t, x_t: v_from(sch, x0, eps, t),
        lambda sch, o, x_t, t: x0_from_v(sch, o, x_t, t),
        lambda sch, x0, x_t, t: v_from(sch, x0, eps_from_x0(sch, x0, x_t, t), t), _ones),
    "score": lambda sd: Parameterisation(
        lambda sch, x0, eps, t, x_t: -eps / bcast(sch.sigma(t), eps),
        lambda sch, o, x_t, t: x0_from_score(sch, o, x_t, t),
        lambda sch, x0, x_t, t: score_from_x0(sch, x0, x_t, t), _ones),
    "edm": _edm,
    "flow": lambda sd: Parameterisation(
        lambda sch, x0, eps, t, x_t: velocity_from(sch, x0, eps, t),
        lambda sch, o, x_t, t: x0_from_velocity(sch, o, x_t, t),
        lambda sch, x0, x_t, t: velocity_from(sch, x0, eps_from_x0(sch, x0, x_t, t), t), _ones),
}


def target(prediction: str, schedule: Schedule, x0: Array, t: Array, eps: Array) -> Array:
  """The regression target of a parameterisation."""
  return parameterisation(prediction).target(schedule, x0, eps, t, q_sample(schedule, x0, t, eps))


def to_x0(prediction: str, schedule: Schedule, out: Array, x_t: Array, t: Array) -> Array:
  """Converts a model output of the given parameterisation to x0_hat."""
  return parameterisation(prediction).to_x0(schedule, out, x_t, t)
