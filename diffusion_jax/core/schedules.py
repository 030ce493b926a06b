"""Forward processes as pure functions of continuous time t in [0, 1].

A schedule gives x_t = alpha(t) x_0 + sigma(t) eps, eps ~ N(0, I), and
log_snr(t) = log(alpha^2 / sigma^2), decreasing in t. Families:

  linear, cosine, vp   variance preserving (alpha^2 + sigma^2 = 1): DDPM's discrete
                       linear betas, Nichol & Dhariwal's cosine, score_sde's
                       continuous VP SDE (beta(t) linear in t);
  subvp                score_sde's sub-VP: alpha as VP, sigma = 1 - alpha^2;
  linear_logsnr        VP with log-SNR linear in t (VDM's fixed schedule);
  learned              VP with VDM's learned monotone log-SNR, trained with the network
                       (core.learned_schedule; here its initial value);
  ve                   variance exploding (SMLD): alpha = 1, geometric sigma;
  edm                  Karras et al.: alpha = 1, sigma from sigma_min to sigma_max on
                       the rho-warped grid sigma(t)^(1/rho) linear in t;
  flow                 rectified flow / flow matching: alpha = 1 - t, sigma = t.

VP schedules compute alpha and sigma from log_snr (alpha^2 = sigmoid(log_snr)), or
(continuous cosine) from forms without cancellation, which keeps both accurate at the
ends where 1 - alpha^2 loses precision. No process clips t or log-SNR, so alpha' and
sigma' are exact wherever they are used; flow and the continuous cosine reach
alpha(1) = 0, where sigma / alpha is infinite: samplers and likelihoods start where it
is finite (their lambda_max), never at t = 1.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.config.errors import choice, finite, require

Array = jax.Array
ScalarFn = Callable[[Array], Array]


class Schedule(NamedTuple):
  """A forward process: three pure functions of t (broadcast over any shape)."""
  alpha: ScalarFn
  sigma: ScalarFn
  log_snr: ScalarFn
  # Number of discrete steps the schedule was defined with, or 0 for continuous time.
  num_steps: int = 0
  # A learned schedule's parameters (core.learned_schedule), None for a fixed one.
  params: Any = None


def from_log_snr(log_snr: ScalarFn, num_steps: int = 0) -> Schedule:
  """Builds a VP schedule from its log-SNR function."""
  return Schedule(
      alpha=lambda t: jnp.sqrt(jax.nn.sigmoid(log_snr(t))),
      sigma=lambda t: jnp.sqrt(jax.nn.sigmoid(-log_snr(t))),
      log_snr=log_snr,
      num_steps=num_steps)


def ddpm_alpha_bars(beta_start: float, beta_end: float, num_steps: int) -> np.ndarray:
  """Discrete DDPM alpha-bar_i = prod_{j<=i} (1 - beta_j), i = 0..T (alpha-bar_0 = 1)."""
  betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
  return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


def tabulated(alpha_bars: np.ndarray) -> Schedule:
  """A discrete VP schedule from alpha-bar_0..T (alpha-bar_0 = 1), exact at t = i / T.

  log-SNR is tabulated at the T + 1 grid points and interpolated linearly in
  between, so the continuous schedule equals the discrete one on the grid.
  """
  num_steps = len(alpha_bars) - 1
  abar = np.asarray(alpha_bars[1:], np.float64)
  table = np.log(abar) - np.log1p(-abar)
  # alpha-bar_0 = 1 has infinite log-SNR; a large finite value keeps t = 0 usable.
  table = np.concatenate([[max(30.0, table[0] + 10.0)], table]).astype(np.float32)
  grid = np.arange(num_steps + 1, dtype=np.float32)

  def log_snr(t):
    return jnp.interp(jnp.asarray(t, jnp.float32) * num_steps, grid, table)

  return from_log_snr(log_snr, num_steps)


def linear(beta_start: float = 1e-4, beta_end: float = 0.02,
           num_steps: int = 1000) -> Schedule:
  """Ho et al. (2020) linear-beta schedule, exact at t = i / T."""
  return tabulated(ddpm_alpha_bars(beta_start, beta_end, num_steps))


def cosine(s: float = 0.008, num_steps: int = 0) -> Schedule:
  """Nichol & Dhariwal (2021): alpha-bar(t) = cos^2(B) / cos^2(A), B = pi/2 (t + s) / (1 + s),
  A = B at t = 0.

  Continuous (num_steps = 0): the formula exactly, so alpha(1) = 0 and log-SNR runs
  from +inf at t = 0 to -inf at t = 1 (time grids start where sigma / alpha is finite:
  sample.lambda_max). Written without cancellation at either end: alpha = sin(pi/2 - B)
  / cos(A) and sigma^2 = (cos^2 A - cos^2 B) / cos^2 A = sin(B + A) sin(B - A) / cos^2 A.
  Discrete (num_steps = T): their betas, beta_i = min(1 - alpha-bar(i/T) /
  alpha-bar((i-1)/T), 0.999), which keep alpha-bar_T > 0, tabulated as `tabulated` does.
  """
  if num_steps:
    ts = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    f = np.cos(0.5 * np.pi * (ts + s) / (1 + s)) ** 2
    betas = np.minimum(1.0 - f[1:] / f[:-1], 0.999)
    return tabulated(np.concatenate([[1.0], np.cumprod(1.0 - betas)]))
  k, cos_a = 0.5 * np.pi / (1.0 + s), float(np.cos(0.5 * np.pi * s / (1.0 + s)))
  t32 = lambda t: jnp.asarray(t, jnp.float32)
  # log_snr = log(cos^2 B) - log(sin(B + A) sin(B - A)), with cos B = sin(k (1 - t)).
  return Schedule(
      alpha=lambda t: jnp.sin(k * (1.0 - t32(t))) / cos_a,
      sigma=lambda t: jnp.sqrt(jnp.sin(k * (t32(t) + 2 * s)) * jnp.sin(k * t32(t))) / cos_a,
      log_snr=lambda t: (2.0 * jnp.log(jnp.sin(k * (1.0 - t32(t))))
                         - jnp.log(jnp.sin(k * (t32(t) + 2 * s))) - jnp.log(jnp.sin(k * t32(t)))))


def _vp_log_alpha(t, beta_min, beta_max):
  t = jnp.asarray(t, jnp.float32)
  return -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min


def vp(beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
  """score_sde's continuous VP SDE: beta(t) = beta_min + t (beta_max - beta_min)."""
  def log_snr(t):
    two_log_a = 2.0 * _vp_log_alpha(t, beta_min, beta_max)
    return two_log_a - jnp.log(-jnp.expm1(two_log_a))
  return from_log_snr(log_snr)


def subvp(beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
  """score_sde's sub-VP SDE: alpha as VP, sigma(t) = 1 - alpha(t)^2 (below VP's)."""
  alpha = lambda t: jnp.exp(_vp_log_alpha(t, beta_min, beta_max))
  sigma = lambda t: -jnp.expm1(2.0 * _vp_log_alpha(t, beta_min, beta_max))
  return Schedule(alpha=alpha, sigma=sigma,
                  log_snr=lambda t: 2.0 * (jnp.log(alpha(t)) - jnp.log(sigma(t))))


def linear_logsnr(log_snr_max: float = 13.3, log_snr_min: float = -5.0) -> Schedule:
  """VP with log-SNR linear from log_snr_max at t = 0 to log_snr_min at t = 1.

  Kingma et al. (2021)'s fixed schedule gamma(t) = -log-SNR(t) from -13.3 to 5.
  """
  def log_snr(t):
    return log_snr_max + jnp.asarray(t, jnp.float32) * (log_snr_min - log_snr_max)
  return from_log_snr(log_snr)


def ve(sigma_min: float = 0.01, sigma_max: float = 50.0) -> Schedule:
  """SMLD / score_sde VE SDE: sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
  log_min, log_max = np.log(sigma_min), np.log(sigma_max)
  log_sigma = lambda t: log_min + jnp.asarray(t, jnp.float32) * (log_max - log_min)
  return Schedule(alpha=lambda t: jnp.ones_like(jnp.asarray(t, jnp.float32)),
                  sigma=lambda t: jnp.exp(log_sigma(t)),
                  log_snr=lambda t: -2.0 * log_sigma(t))


def edm(sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Schedule:
  """Karras et al. (2022): alpha = 1, sigma(t)^(1/rho) linear from sigma_min to sigma_max."""
  lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
  sigma = lambda t: (lo + jnp.asarray(t, jnp.float32) * (hi - lo)) ** rho
  return Schedule(alpha=lambda t: jnp.ones_like(jnp.asarray(t, jnp.float32)), sigma=sigma,
                  log_snr=lambda t: -2.0 * jnp.log(sigma(t)))


def flow() -> Schedule:
  """Rectified flow / flow matching: x_t = (1 - t) x_0 + t eps, exact on all of [0, 1].

  alpha(1) = 0, so log_snr(1) = -inf and sigma / alpha is infinite there: time grids
  start where sigma / alpha is finite (sample.lambda_max), not at t = 1. No clipping
  inside the process, so d alpha/dt = -1 and d sigma/dt = 1 everywhere.
  """
  t32 = lambda t: jnp.asarray(t, jnp.float32)
  return Schedule(alpha=lambda t: 1.0 - t32(t), sigma=t32,
                  log_snr=lambda t: 2.0 * (jnp.log1p(-t32(t)) - jnp.log(t32(t))))


def _discrete_or_continuous(f, name: str, discrete: bool | None) -> None:
  """discrete: True (defined by discrete steps), False (continuous only), None (either)."""
  finite("diffusion.num_steps", f.num_steps, 0)
  if discrete:
    require(f.num_steps > 0, f"diffusion.schedule={name!r} is defined by its discrete steps: "
            "diffusion.num_steps must be > 0")
  elif discrete is False:
    require(f.num_steps == 0, f"diffusion.num_steps={f.num_steps}: schedule {name!r} is "
            "continuous-time; set diffusion.num_steps=0")


def _linear_from(f) -> Schedule:
  _discrete_or_continuous(f, "linear", True)
  require(0 < f.beta_start < f.beta_end < 1, "diffusion: need 0 < beta_start < beta_end < 1")
  return linear(f.beta_start, f.beta_end, f.num_steps)


def _cosine_from(f) -> Schedule:
  _discrete_or_continuous(f, "cosine", None)
  finite("diffusion.cosine_s", f.cosine_s, 0, low_open=True)
  return cosine(f.cosine_s, f.num_steps)


def _vp_from(f, fn) -> Schedule:
  _discrete_or_continuous(f, fn.__name__, False)
  require(0 < f.beta_min < f.beta_max, "diffusion: need 0 < beta_min < beta_max")
  return fn(f.beta_min, f.beta_max)


def _linear_logsnr_from(f) -> Schedule:
  _discrete_or_continuous(f, "linear_logsnr", False)
  require(f.log_snr_min < f.log_snr_max, "diffusion: need log_snr_min < log_snr_max")
  return linear_logsnr(f.log_snr_max, f.log_snr_min)


def learned(hidden: int = 1024, log_snr_max: float = 13.3,
            log_snr_min: float = -5.0) -> Schedule:
  """VDM's learned schedule at its initial parameters (core.learned_schedule): a
  monotone network of t between log-SNR log_snr_max and log_snr_min."""
  # Imported here: learned_schedule builds its processes with this module.
  from diffusion_jax.core import learned_schedule
  return learned_schedule.schedule(learned_schedule.initial_params(hidden, log_snr_max,
                                                                   log_snr_min))


def _learned_from(f) -> Schedule:
  _discrete_or_continuous(f, "learned", False)
  require(f.log_snr_min < f.log_snr_max, "diffusion: need log_snr_min < log_snr_max")
  require(isinstance(f.learned_hidden, int) and f.learned_hidden >= 1,
          f"diffusion.learned_hidden={f.learned_hidden!r}: need an integer >= 1")
  why = "VDM's loss is its continuous-time bound on the eps error"
  require(f.prediction == "eps", f"diffusion.schedule='learned' needs diffusion.prediction="
          f"'eps' (got {f.prediction!r}): {why}")
  require(f.weighting == "elbo", f"diffusion.schedule='learned' needs diffusion.weighting="
          f"'elbo' (got {f.weighting!r}): {why}")
  require(f.time_sampling == "uniform", "diffusion.schedule='learned' needs diffusion."
          f"time_sampling='uniform' (got {f.time_sampling!r}): {why}, over uniform times")
  return learned(f.learned_hidden, f.log_snr_max, f.log_snr_min)


def _sigmas_from(f, name: str) -> None:
  _discrete_or_continuous(f, name, False)
  require(0 < f.sigma_min < f.sigma_max, "diffusion: need 0 < sigma_min < sigma_max")


def _ve_from(f) -> Schedule:
  _sigmas_from(f, "ve")
  return ve(f.sigma_min, f.sigma_max)


def _edm_from(f) -> Schedule:
  _sigmas_from(f, "edm")
  finite("diffusion.rho", f.rho, 0, low_open=True)
  return edm(f.sigma_min, f.sigma_max, f.rho)


def _flow_from(f) -> Schedule:
  _discrete_or_continuous(f, "flow", False)
  return flow()


# Each process by name: builds it from the config's `diffusion` section, checking the
# fields it reads.
SCHEDULES: dict[str, Callable[[Any], Schedule]] = {
    "linear": _linear_from,
    "cosine": _cosine_from,
    "vp": lambda f: _vp_from(f, vp),
    "subvp": lambda f: _vp_from(f, subvp),
    "linear_logsnr": _linear_logsnr_from,
    "learned": _learned_from,
    "ve": _ve_from,
    "edm": _edm_from,
    "flow": _flow_from,
}


def from_config(diffusion_cfg) -> Schedule:
  """The schedule a config's `diffusion` section describes (ConfigError if it can't)."""
  choice("diffusion.schedule", diffusion_cfg.schedule, SCHEDULES)
  return SCHEDULES[diffusion_cfg.schedule](diffusion_cfg)


def lam(schedule: Schedule, t):
  """lambda(t) = sigma / alpha, the noise level of x_t / alpha_t = x_0 + lambda eps."""
  return schedule.sigma(t) / schedule.alpha(t)


def t_for_lambda(schedule: Schedule, lams, t_lo: float, t_hi: float, iters: int = 60) -> np.ndarray:
  """Times t in [t_lo, t_hi] with lambda(t) = lams, by bisection (lambda increases in t).
  Host-side and exact to float32; for building grids, not for use under jit."""
  lams = np.asarray(lams, np.float64)
  lo, hi = np.full(lams.shape, t_lo, np.float64), np.full(lams.shape, t_hi, np.float64)
  with jax.ensure_compile_time_eval():
    for _ in range(iters):
      mid = 0.5 * (lo + hi)
      above = np.asarray(lam(schedule, jnp.asarray(mid, jnp.float32)), np.float64) > lams
      hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
  return (0.5 * (lo + hi)).astype(np.float32)


def traced_t_for_lambda(schedule: Schedule, lams, t_lo, t_hi, iters: int = 40) -> Array:
  """t_for_lambda as a jittable float32 bisection: times in [t_lo, t_hi] (which may be
  traced) with lambda(t) = lams, for a schedule whose values are known only on device
  (a learned schedule's traced parameters). 40 halvings of [0, 1] (2^-40 ~ 1e-12)
  reach float32's resolution of any t above 1e-5."""
  lams = jnp.asarray(lams, jnp.float32)
  lo = jnp.broadcast_to(jnp.asarray(t_lo, jnp.float32), lams.shape)
  hi = jnp.broadcast_to(jnp.asarray(t_hi, jnp.float32), lams.shape)

  def halve(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    above = lam(schedule, mid) > lams
    return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

  lo, hi = jax.lax.fori_loop(0, iters, halve, (lo, hi))
  return 0.5 * (lo + hi)


def lambda_inverse(schedule: Schedule, t_min: float = 0.0, t_max: float = 1.0,
                   points: int = 20001):
  """A jittable t(lambda) for lambda in [lambda(t_min), lambda(t_max)], by interpolating
  log lambda on a dense grid (lambda is strictly increasing in t). The grid is uniform
  in t and in log t, since log lambda changes fastest as t -> 0."""
  ts = np.linspace(t_min, t_max, points)
  if t_min < t_max / 100:
    ts = np.unique(np.concatenate([ts, np.geomspace(max(t_min, 1e-9), t_max, points)]))
  log_lams = np.log(np.asarray(lam(schedule, jnp.asarray(ts, jnp.float32)), np.float64))
  # Drop float32 ties, and lambda = inf where alpha = 0 (flow at t = 1).
  keep = np.isfinite(log_lams) & np.concatenate([[True], np.diff(log_lams) > 0])
  log_lams, ts = log_lams[keep].astype(np.float32), ts[keep].astype(np.float32)
  return lambda l: jnp.interp(jnp.log(l), log_lams, ts)
