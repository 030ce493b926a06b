"""The generative process of a run (the config's `diffusion` section): its forward
process, what the network predicts, the loss weighting and the training times; the
denoising score-matching loss; and the denoiser view of a network.

Weightings are weights w(t) on ||x0_hat - x0||^2 (any parameterisation's error is a
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

from diffusion_jax.config.errors import ConfigError, choice, finite, require
from diffusion_jax.core import schedules as schedules_lib
from diffusion_jax.core.parameterisation import (Denoiser, Parameterisation, derivatives,
                                                 parameterisation, q_sample)
from diffusion_jax.core.schedules import Schedule

Array = jax.Array


# --- Weightings, as weights on ||x0_hat - x0||^2 (per example, shape of t).

def _snr(schedule, t):
  return jnp.exp(schedule.log_snr(t))


def _likelihood_weight(schedule, t, **_):
  a, s, da, ds = derivatives(schedule, t)
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
  choice("diffusion.weighting", name, [k for k, v in WEIGHTINGS.items() if v is not None])
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


class TimeArgs(NamedTuple):
  """What a time distribution may use."""
  schedule: Schedule
  weight_fn: Callable | None
  t_min: float
  p_mean: float
  p_std: float


def _uniform_time_fn(a: TimeArgs):
  n = a.schedule.num_steps
  return lambda key, b: (uniform_times(b, key, n, a.t_min), jnp.ones((b,)))


def _lognormal_time_fn(a: TimeArgs):
  # EDM: log lambda ~ N(p_mean, p_std^2), mapped to t and kept in the schedule's range.
  t_of = schedules_lib.lambda_inverse(a.schedule, a.t_min, 1.0)
  return lambda key, b: (
      t_of(jnp.exp(a.p_mean + a.p_std * jax.random.normal(key, (b,)))), jnp.ones((b,)))


def _importance_time_fn(a: TimeArgs):
  require(a.weight_fn is not None and not a.schedule.num_steps,
          "diffusion.time_sampling='importance' needs a weighting other than 'simple' "
          "and continuous time (num_steps=0)")
  sample, pdf = importance_table(a.schedule, a.weight_fn, max(a.t_min, 1e-4))
  return lambda key, b: (lambda t: (t, 1.0 / pdf(t)))(sample(key, b))


# Training time distributions: (TimeArgs) -> time_fn(key, batch) -> (t, 1 / p(t) factor).
TIME_SAMPLING: dict[str, Callable[[TimeArgs], Callable]] = {
    "uniform": _uniform_time_fn,
    "lognormal": _lognormal_time_fn,  # EDM.
    "importance": _importance_time_fn,  # t in proportion to the weighting.
}


class Diffusion(NamedTuple):
  """Everything about the generative process that the loss and samplers need."""
  schedule: Schedule
  prediction: str
  param: Parameterisation
  weighting: str = "simple"
  weight_fn: Callable | None = None  # t -> weight on x0-MSE (None: simple).
  time_fn: Callable | None = None  # (key, batch) -> (t, importance factor 1/p(t)).
  weight_opts: tuple = ()  # The weighting's options (sigma_data, gamma), as items.


def make(schedule: Schedule, prediction: str = "eps", weighting: str = "simple",
         time_sampling: str = "uniform", *, sigma_data: float = 0.5, gamma: float = 5.0,
         t_min: float = 1e-5, p_mean: float = -1.2, p_std: float = 1.2,
         check: bool = True) -> Diffusion:
  """Builds a Diffusion; every name is checked here, and with `check` that its loss is
  finite on the training times (check_finite) (ConfigError)."""
  param = parameterisation(prediction, sigma_data)
  choice("diffusion.weighting", weighting, WEIGHTINGS)
  choice("diffusion.time_sampling", time_sampling, TIME_SAMPLING)
  opts = (("sigma_data", sigma_data), ("gamma", gamma))
  w_fn = _weight_fn(weighting, schedule, opts)
  time_fn = TIME_SAMPLING[time_sampling](TimeArgs(schedule, w_fn, t_min, p_mean, p_std))
  d = Diffusion(schedule, prediction, param, weighting, w_fn, time_fn, opts)
  if check:
    check_finite(d, t_min)
  return d


def _weight_fn(weighting: str, schedule: Schedule, opts: tuple) -> Callable | None:
  w = WEIGHTINGS[weighting]
  return None if w is None else functools.partial(w, schedule, **dict(opts))


def with_schedule(d: Diffusion, schedule: Schedule) -> Diffusion:
  """`d` on another process with the same steps (a learned schedule's trained value):
  its weighting follows; the time distribution is kept (the learned schedule's is
  uniform, which reads only the number of steps)."""
  assert schedule.num_steps == d.schedule.num_steps, "a process with other steps"
  return d._replace(schedule=schedule, weight_fn=_weight_fn(d.weighting, schedule,
                                                             d.weight_opts))


def training_time_range(schedule: Schedule, t_min: float) -> np.ndarray:
  """Times that cover where training evaluates the loss: every step i / T of a discrete
  schedule; else t_min, the largest float32 below 1 (continuous times are drawn from
  [t_min, 1)), and a dense grid between, geometric near 0 and uniform."""
  if schedule.num_steps:
    return np.arange(1, schedule.num_steps + 1, dtype=np.float64) / schedule.num_steps
  top = float(np.nextafter(np.float32(1.0), np.float32(0.0)))
  inner = np.concatenate([np.geomspace(t_min, 0.5, 400), np.linspace(0.5, top, 400),
                          1.0 - np.geomspace(1e-7, 0.5, 400)])
  return np.unique(np.clip(np.concatenate([[t_min, top], inner]), t_min, top))


def check_finite(d: Diffusion, t_min: float) -> None:
  """ConfigError unless the loss can be finite at every training time: the weighting,
  the target, and its conversion back to x0 (which weighted losses and samplers use).
  One compiled program: op-by-op evaluation would compile each op separately."""
  t_np = training_time_range(d.schedule, t_min)

  def parts(t):
    x0 = jnp.stack([-jnp.ones_like(t), jnp.ones_like(t)], axis=1)
    x_t = q_sample(d.schedule, x0, t, -x0)
    target = d.param.target(d.schedule, x0, -x0, t, x_t)
    out = {"target": target,
           "target's conversion to x0": d.param.to_x0(d.schedule, target, x_t, t)}
    if d.weight_fn is not None:
      out["weighting"] = d.weight_fn(t)
    return {k: jnp.all(jnp.isfinite(v.reshape(t.shape[0], -1)), axis=1) for k, v in out.items()}

  with jax.ensure_compile_time_eval():
    finite_at = jax.jit(parts)(jnp.asarray(t_np, jnp.float32))
  for what, ok in finite_at.items():
    bad = ~np.asarray(ok)
    if bad.any():
      raise ConfigError(
          f"diffusion: the {what} is not finite on this process at t={t_np[bad][0]:.6g} "
          f"(prediction={d.prediction!r}, weighting={d.weighting!r}; training times span "
          f"{t_np[0]:.3g} to {t_np[-1]:.8g}): choose another weighting or prediction, or "
          "raise diffusion.t_min")


def from_config(diffusion_cfg) -> Diffusion:
  """The process a config's `diffusion` section describes, checked (ConfigError)."""
  f = diffusion_cfg
  finite("diffusion.sigma_data", f.sigma_data, 0, low_open=True)
  finite("diffusion.min_snr_gamma", f.min_snr_gamma, 0, low_open=True)
  finite("diffusion.t_min", f.t_min, 0, 1, low_open=True, high_open=True)
  finite("diffusion.p_mean", f.p_mean)
  finite("diffusion.p_std", f.p_std, 0, low_open=True)
  d = make(schedules_lib.from_config(f), f.prediction, f.weighting, f.time_sampling,
           sigma_data=f.sigma_data, gamma=f.min_snr_gamma, t_min=f.t_min,
           p_mean=f.p_mean, p_std=f.p_std, check=False)
  _check_finite_once(tuple((k, f[k]) for k in sorted(f.keys())), d, f.t_min)
  return d


_CHECKED: set = set()  # The `diffusion` sections check_finite has passed, as item tuples.


def _check_finite_once(section: tuple, d: Diffusion, t_min: float) -> None:
  """check_finite once per process for each `diffusion` section: it compiles (~0.5 s of
  CPU), and a process may parse the same section many times (tests, sweeps)."""
  if section not in _CHECKED:
    check_finite(d, t_min)
    _CHECKED.add(section)


def model_input(d: Diffusion, x_t: Array, t: Array) -> Array:
  return x_t * d.param.in_scale(d.schedule, t, x_t)


def draw_noise(d: Diffusion, x0: Array, rng: Array) -> tuple[Array, Array, Array]:
  """The training randomness of a batch: (times t, their importance weights, noise eps),
  one of each per example of x0."""
  t_rng, eps_rng = jax.random.split(rng)
  t, iw = d.time_fn(t_rng, x0.shape[0])
  eps = jax.random.normal(eps_rng, x0.shape, x0.dtype)
  return t, iw, eps


def loss_given_noise(apply_fn: Callable[[Array, Array], Array], d: Diffusion, x0: Array,
                     t: Array, iw: Array, eps: Array) -> tuple[Array, dict]:
  """The denoising loss of x0 at the times and noise `draw_noise` drew for it."""
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
  return loss_given_noise(apply_fn, d, x0, *draw_noise(d, x0, rng))


def make_denoiser(apply_fn: Callable[[Array, Array, object], Array], d: Diffusion) -> Denoiser:
  """The denoiser view of a model: D(x_t, t, cond) -> x0_hat."""

  def denoise(x_t, t, cond):
    out = apply_fn(model_input(d, x_t, t), t, cond)
    return d.param.to_x0(d.schedule, out, x_t, t)
  return denoise


__all__ = ["Diffusion", "TIME_SAMPLING", "WEIGHTINGS", "check_finite", "denoising_loss",
           "draw_noise", "from_config", "importance_table", "loss_given_noise", "make",
           "make_denoiser", "model_input", "training_time_range", "uniform_times", "weight",
           "with_schedule"]
