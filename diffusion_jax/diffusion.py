"""Pure diffusion math: forward noising, prediction targets, loss weightings, the loss.

Notation: x_t = alpha_t x_0 + sigma_t eps, eps ~ N(0, I); SNR = alpha^2 / sigma^2;
lambda = sigma / alpha (the noise level of x_t / alpha_t = x_0 + lambda eps).

Parameterisations (what the network predicts), each convertible to the denoiser view
x0_hat = D(x_t, t, cond), which is all that samplers use:
  eps    the noise;                         x0   the clean data;
  v      alpha eps - sigma x0 (Salimans & Ho 2022);
  score  grad log p(x_t) = -eps / sigma;
  edm    Karras et al.'s F with preconditioning, generalised to any alpha:
         D = c_skip y + c_out F(c_in y), y = x_t / alpha,
         c_skip = sd^2 / (lambda^2 + sd^2), c_out = lambda sd / sqrt(lambda^2 + sd^2),
         c_in = 1 / sqrt(lambda^2 + sd^2), sd = sigma_data;
  flow   the velocity dx_t/dt = alpha' x0 + sigma' eps (eps - x0 for flow matching).

Weightings, as a weight w(t) on ||x0_hat - x0||^2 (any parameterisation's error is a
multiple of that one, so every weighting applies to every target):
  simple       none: the plain MSE of the network's own target (Ho et al.);
  snr          SNR (= the eps-MSE);
  min_snr      min(SNR, gamma) (Hang et al. 2023);
  edm          (lambda^2 + sd^2) / (lambda sd)^2 (Karras et al.);
  likelihood   g(t)^2 / 2 on the score error (Song et al. 2021): g^2 alpha^2 / (2 sigma^4),
               g^2 = d sigma^2/dt - 2 (d log alpha/dt) sigma^2;
  elbo         -SNR'(t) / 2, the continuous-time ELBO (Kingma et al. 2021).
likelihood and elbo are the same function computed two ways (a test checks it).
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import schedules as schedules_lib
from diffusion_jax.schedules import Schedule

Array = jax.Array
# D(x_t, t, cond) -> x0_hat. `t` has shape (batch,); `cond` is whatever the model takes.
Denoiser = Callable[[Array, Array, object], Array]


def _bcast(v: Array, x: Array) -> Array:
  """Reshapes per-example scalars (batch,) to broadcast against x (batch, ...)."""
  v = jnp.asarray(v, x.dtype)
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _coefs(schedule: Schedule, t: Array, x: Array):
  return _bcast(schedule.alpha(t), x), _bcast(schedule.sigma(t), x)


def _derivs(schedule: Schedule, t: Array):
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
  a, s, da, ds = _derivs(schedule, t)
  return tuple(_bcast(v, x) for v in (a, s, da, ds))


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


_ones = lambda sch, t, x: jnp.ones_like(_bcast(sch.alpha(t), x))


def parameterisation(name: str, sigma_data: float = 0.5) -> Parameterisation:
  if name not in PREDICTIONS:
    raise ValueError(f"unknown prediction {name!r}; known: {sorted(PREDICTIONS)}")
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
        lambda sch, x0, eps, t, x_t: -eps / _bcast(sch.sigma(t), eps),
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


# --- Weightings, as weights on ||x0_hat - x0||^2 (per example, shape of t).

def _snr(schedule, t):
  return jnp.exp(schedule.log_snr(t))


def _likelihood_weight(schedule, t, **_):
  a, s, da, ds = _derivs(schedule, t)
  g2 = 2 * s * ds - 2 * (da / a) * s * s
  return 0.5 * g2 * a * a / s**4


def _elbo_weight(schedule, t, **_):
  snr, dsnr = jax.jvp(lambda u: _snr(schedule, u), (jnp.asarray(t, jnp.float32),),
                      (jnp.ones_like(t),))
  return -0.5 * dsnr


WEIGHTINGS: dict[str, Callable | None] = {
    "simple": None,
    "snr": lambda sch, t, **_: _snr(sch, t),
    "min_snr": lambda sch, t, gamma=5.0, **_: jnp.minimum(_snr(sch, t), gamma),
    "edm": lambda sch, t, sigma_data=0.5, **_: (
        (schedules_lib.lam(sch, t) ** 2 + sigma_data**2)
        / (schedules_lib.lam(sch, t) * sigma_data) ** 2),
    "likelihood": _likelihood_weight,
    "elbo": _elbo_weight,
}


def weight(name: str, schedule: Schedule, t: Array, **opts) -> Array:
  if name not in WEIGHTINGS or WEIGHTINGS[name] is None:
    raise ValueError(f"weighting {name!r} has no x0 weight; known: {sorted(WEIGHTINGS)}")
  return WEIGHTINGS[name](schedule, t, **opts)


# --- Training time distributions.

def uniform_times(batch: int, key: Array, num_steps: int, t_min: float) -> Array:
  """Uniform on {1/T, ..., 1} for a discrete schedule, else U(t_min, 1)."""
  if num_steps > 0:
    return jax.random.randint(key, (batch,), 1, num_steps + 1).astype(jnp.float32) / num_steps
  return jax.random.uniform(key, (batch,), minval=t_min, maxval=1.0)


def importance_table(schedule: Schedule, w_fn: Callable, t_min: float, points: int = 4096):
  """Proposal p(t) proportional to the weight in eps units, w_x0(t) / SNR(t), which is
  the loss integrand's scale (an eps-error is O(1) at every t). Returns (sample, pdf)."""
  ts = np.linspace(t_min, 1.0, points)
  tj = jnp.asarray(ts, jnp.float32)
  w = np.asarray(w_fn(tj) / _snr(schedule, tj), np.float64)
  w = np.maximum(np.nan_to_num(w, nan=0.0, posinf=0.0), 0.0)
  mid = 0.5 * (w[1:] + w[:-1]) * np.diff(ts)
  cdf = np.concatenate([[0.0], np.cumsum(mid)])
  total = cdf[-1]
  cdf, pdf = (cdf / total).astype(np.float32), (w / total).astype(np.float32)
  ts32 = ts.astype(np.float32)

  def sample(key, batch):
    return jnp.interp(jax.random.uniform(key, (batch,)), cdf, ts32)

  return sample, lambda t: jnp.interp(t, ts32, pdf)


class Diffusion(NamedTuple):
  """Everything about the generative process that the loss and samplers need."""
  schedule: Schedule
  prediction: str
  param: Parameterisation
  weighting: str = "simple"
  weight_fn: Callable | None = None  # t -> weight on x0-MSE (None: simple).
  time_fn: Callable | None = None  # (key, batch) -> (t, importance factor 1/p(t)).


def make(schedule: Schedule, prediction: str = "eps", weighting: str = "simple",
         time_sampling: str = "uniform", *, sigma_data: float = 0.5, gamma: float = 5.0,
         t_min: float = 1e-5, p_mean: float = -1.2, p_std: float = 1.2) -> Diffusion:
  """Builds a Diffusion; every name is checked here."""
  param = parameterisation(prediction, sigma_data)
  if weighting not in WEIGHTINGS:
    raise ValueError(f"unknown weighting {weighting!r}; known: {sorted(WEIGHTINGS)}")
  w_fn = None
  if WEIGHTINGS[weighting] is not None:
    w_fn = functools.partial(WEIGHTINGS[weighting], schedule, sigma_data=sigma_data, gamma=gamma)
  n = schedule.num_steps

  if time_sampling == "uniform":
    time_fn = lambda key, b: (uniform_times(b, key, n, t_min), jnp.ones((b,)))
  elif time_sampling == "lognormal":
    # EDM: log lambda ~ N(p_mean, p_std^2), mapped to t and kept in the schedule's range.
    t_of = schedules_lib.lambda_inverse(schedule, t_min, 1.0)
    time_fn = lambda key, b: (
        t_of(jnp.exp(p_mean + p_std * jax.random.normal(key, (b,)))), jnp.ones((b,)))
  elif time_sampling == "importance":
    if w_fn is None:
      raise ValueError("time_sampling='importance' needs a weighting other than 'simple'")
    if n:
      raise ValueError("time_sampling='importance' needs continuous time (num_steps = 0)")
    sample, pdf = importance_table(schedule, w_fn, max(t_min, 1e-4))
    time_fn = lambda key, b: (lambda t: (t, 1.0 / pdf(t)))(sample(key, b))
  else:
    raise ValueError(f"unknown time_sampling {time_sampling!r}; "
                     "known: ['importance', 'lognormal', 'uniform']")
  return Diffusion(schedule, prediction, param, weighting, w_fn, time_fn)


def from_config(diffusion_cfg) -> Diffusion:
  f = diffusion_cfg
  return make(schedules_lib.from_config(f), f.prediction, f.weighting, f.time_sampling,
              sigma_data=f.sigma_data, gamma=f.min_snr_gamma, t_min=f.t_min,
              p_mean=f.p_mean, p_std=f.p_std)


def model_input(d: Diffusion, x_t: Array, t: Array) -> Array:
  return x_t * d.param.in_scale(d.schedule, t, x_t)


def denoising_loss(apply_fn: Callable[[Array, Array], Array], d: Diffusion, x0: Array,
                   rng: Array) -> tuple[Array, dict]:
  """Denoising score-matching loss.

  Args:
    apply_fn: (network input, t) -> network output; conditioning is closed over.
    d: the Diffusion (process, parameterisation, weighting, time distribution).
    x0: clean data (batch, ...).
    rng: a PRNG key.
  Returns:
    (scalar loss, {"per_example": ..., "t": ...}).
  """
  t_rng, eps_rng = jax.random.split(rng)
  t, iw = d.time_fn(t_rng, x0.shape[0])
  eps = jax.random.normal(eps_rng, x0.shape, x0.dtype)
  x_t = q_sample(d.schedule, x0, t, eps)
  out = apply_fn(model_input(d, x_t, t), t).astype(jnp.float32)
  if d.weight_fn is None:
    err = (out - d.param.target(d.schedule, x0, eps, t, x_t)) ** 2
    w = iw
  else:
    err = (d.param.to_x0(d.schedule, out, x_t, t) - x0) ** 2
    w = d.weight_fn(t) * iw
  per_example = w * jnp.mean(err.reshape(err.shape[0], -1), axis=1)
  return jnp.mean(per_example), {"per_example": per_example, "t": t}


def make_denoiser(apply_fn: Callable[[Array, Array, object], Array], d: Diffusion) -> Denoiser:
  """The denoiser view of a model: D(x_t, t, cond) -> x0_hat."""

  def denoise(x_t, t, cond):
    out = apply_fn(model_input(d, x_t, t), t, cond)
    return d.param.to_x0(d.schedule, out, x_t, t)
  return denoise
