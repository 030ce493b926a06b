"""Samplers over the denoiser view x0_hat = D(x_t, t, cond).

A sampler sees only a denoiser, the process (schedule) and a decreasing time grid
t_max = t_0 > ... > t_N = 0, so any parameterisation, any process, or an analytic
denoiser plugs in. Each runs as one compiled loop (lax.fori_loop). With
y = x / alpha and lambda = sigma / alpha, every process's probability-flow ODE is
dy/dlambda = (y - D) / lambda (Karras et al. 2022), which Euler, Heun and DPM-Solver
integrate; DDIM is exactly its Euler step.

Every grid starts at t_max, or earlier where lambda reaches lambda_max (on a discrete
schedule: the last of its steps at or below both), and never where alpha = 0 (flow and
the continuous cosine at t = 1). The default lambda_max = 160 keeps the start of the
processes whose lambda at t = 1 is bounded and moderate (DDPM's linear T = 1000: 157,
vp 152, ve 50, edm 80) and caps those where it is huge or infinite (cosine T = 1000:
2e4; continuous cosine and flow: inf). A first step down from such a lambda is too long
for a high-order solver: from cosine's former start lambda = e^10, Heun on a uniform
grid gave N(0, 1) data +34% std at 50 steps, +715% at 18; from 160, +0.7% and +6%.

A fixed schedule's grid is built on the host from its exact values, a constant of the
compiled sampler. A learned schedule's (schedule.params set) is computed on device from
its parameters (traced_time_grid), so that they can be an input of the compiled
sampler: one program serves every value of them (each periodic evaluation's EMA).

  ddpm        ancestral: the mean of q(x_s | x_t, x0 = D), and its variance
              or the forward step's (ddpm_variance)                      NFE = N
  ddim        DDIM(eta); eta = 1 matches ddpm                            NFE = N
  euler       probability-flow ODE, Euler (optional churn)               NFE = N
  heun        EDM's 2nd-order Heun (optional churn)                      NFE = 2N - 1
  em          reverse SDE, Euler-Maruyama                                NFE = N
  pc          em predictor + Langevin corrector (Song et al. 2021)      NFE = N + c (N - 1)
  dpmpp_2m    DPM-Solver++(2M), multistep (Lu et al. 2022)               NFE = N
"""

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.config.errors import choice, finite, require
from diffusion_jax.core import schedules as schedules_lib
from diffusion_jax.core.parameterisation import Denoiser, derivatives
from diffusion_jax.core.schedules import Schedule

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """How to integrate from the prior to data: the sampler fields of the `sample` section."""
  sampler: str = "ddim"  # A name of SAMPLERS.
  num_steps: int = 100  # N: grid intervals (see the table above for NFE).
  eta: float = 0.0  # ddim noise.
  ddpm_variance: str = "posterior"  # ddpm: a name of DDPM_VARIANCES.
  clip_denoised: bool = True
  grid: str = "uniform"  # "uniform" in t, or "edm": lambda^(1/rho) uniform.
  rho: float = 7.0
  t_min: float = 1e-3  # Continuous time: the last nonzero time of the grid.
  t_max: float = 1.0
  # Start where lambda = sigma / alpha reaches lambda_max, if that is before t_max
  # (EDM starts every process at 80). The default caps cosine and flow, not linear
  # T = 1000 (157), vp, ve or edm: see the module docstring.
  lambda_max: float = 160.0
  churn: float = 0.0  # euler/heun: EDM's S_churn (0 = deterministic).
  churn_min: float = 0.0  # Churn only where lambda in [churn_min, churn_max].
  churn_max: float = float("inf")
  churn_noise: float = 1.0  # EDM's S_noise.
  corrector_steps: int = 1  # pc: Langevin steps per time.
  corrector_snr: float = 0.16  # pc: Langevin signal-to-noise ratio.

  @classmethod
  def from_config(cls, sample_cfg) -> "SamplerConfig":
    """The sampler fields of a `sample` section, checked (ConfigError)."""
    cfg = cls(**{f.name: sample_cfg[f.name] for f in dataclasses.fields(cls)})
    choice("sample.sampler", cfg.sampler, SAMPLERS)
    choice("sample.grid", cfg.grid, GRIDS)
    choice("sample.ddpm_variance", cfg.ddpm_variance, DDPM_VARIANCES)
    min_steps = SAMPLERS[cfg.sampler].min_steps
    require(cfg.num_steps >= min_steps,
            f"sample.num_steps={cfg.num_steps}: sampler {cfg.sampler!r} needs >= {min_steps}")
    require(0 < cfg.t_min < cfg.t_max <= 1, "sample: need 0 < t_min < t_max <= 1")
    finite("sample.eta", cfg.eta, 0)
    finite("sample.rho", cfg.rho, 0, low_open=True)
    require(cfg.lambda_max > 0, "sample.lambda_max must be > 0 (inf = no cap)")
    finite("sample.churn", cfg.churn, 0)
    finite("sample.churn_noise", cfg.churn_noise, 0)
    require(cfg.churn_min <= cfg.churn_max, "sample: need churn_min <= churn_max")
    require(cfg.corrector_steps >= 0, "sample.corrector_steps must be >= 0")
    finite("sample.corrector_snr", cfg.corrector_snr, 0, low_open=True)
    return cfg

  def check_schedule(self, schedule: Schedule) -> None:
    """The grid fits the process: a discrete schedule has enough steps below the
    grid's start, and sigma / alpha is finite there."""
    n = schedule.num_steps
    require(not n or self.num_steps <= n,
            f"sample.num_steps={self.num_steps} exceeds diffusion.num_steps={n}")
    time_grid(schedule, self.num_steps, self.grid, self.rho, self.t_min, self.t_max,
              self.lambda_max)


def nfe(cfg: SamplerConfig) -> int:
  """Denoiser evaluations per sample (a guided evaluation counts once)."""
  return SAMPLERS[cfg.sampler].nfe(cfg)


def grid_start(schedule: Schedule, t_min: float = 1e-3, t_max: float = 1.0,
               lambda_max: float = SamplerConfig.lambda_max) -> float:
  """A grid's first time: t_max, or earlier where lambda = sigma / alpha reaches
  lambda_max; on a discrete schedule the last of its steps i / T at or below both.
  ConfigError if lambda is infinite there (alpha = 0: flow at t = 1)."""
  n = schedule.num_steps
  lam_of = lambda t: np.asarray(schedules_lib.lam(schedule, jnp.asarray(t, jnp.float32)),
                                np.float64)
  with jax.ensure_compile_time_eval():
    if n:
      steps = np.arange(1, n + 1)
      ok = (steps <= np.floor(t_max * n + 1e-6)) & (lam_of(steps / n) <= lambda_max)
      require(ok.any(), f"sample: no step of the {n}-step schedule has t <= t_max={t_max} "
              f"and sigma/alpha <= lambda_max={lambda_max}")
      t0 = float(np.float32(steps[ok].max() / n))
    else:
      t0 = t_max
      if not lam_of(t_max) <= lambda_max:  # Also when lambda(t_max) is inf or nan.
        t0 = float(schedules_lib.t_for_lambda(schedule, [lambda_max], t_min, t_max)[0])
      require(t0 > t_min, f"sample: the grid would start at t={t0:.4g}, not above "
              f"sample.t_min={t_min} (sigma/alpha reaches lambda_max={lambda_max} there)")
    lam0 = float(lam_of(t0))
  require(np.isfinite(lam0) and lam0 > 0,
          f"sample: sigma/alpha = {lam0} at the grid's first time t={t0:.6g} (alpha = 0 "
          "there, as for flow at t = 1): set sample.lambda_max finite or sample.t_max < 1")
  return t0


def time_grid(schedule: Schedule, num_steps: int, grid: str = "uniform", rho: float = 7.0,
              t_min: float = 1e-3, t_max: float = 1.0,
              lambda_max: float = SamplerConfig.lambda_max) -> np.ndarray:
  """num_steps + 1 decreasing times from grid_start(...) to 0; on the schedule's own
  steps if it is discrete and the grid is uniform."""
  choice("sample.grid", grid, GRIDS)
  with jax.ensure_compile_time_eval():  # A constant, even when called under jit.
    t0 = grid_start(schedule, t_min, t_max, lambda_max)
    n = schedule.num_steps
    below = int(round(t0 * n))
    require(not n or num_steps <= below,
            f"{num_steps} sampling steps exceed the schedule's {below} discrete steps "
            f"at or below the grid's start t={t0:.4g}")
    return GRIDS[grid].host(schedule, num_steps, rho, t_min, t0)


def traced_grid_start(schedule: Schedule, t_min: float = 1e-3, t_max: float = 1.0,
                      lambda_max: float = SamplerConfig.lambda_max) -> Array:
  """grid_start of a continuous schedule, computed on device (jittable in the
  schedule's parameters): t_max, or earlier where lambda reaches lambda_max. It checks
  nothing of the values; check_schedule checks the configured schedule's grid."""
  at_max = schedules_lib.lam(schedule, jnp.float32(t_max))
  capped = schedules_lib.traced_t_for_lambda(schedule, lambda_max, t_min, t_max)
  return jnp.where(at_max <= lambda_max, jnp.float32(t_max), capped)


def traced_time_grid(schedule: Schedule, num_steps: int, grid: str = "uniform",
                     rho: float = 7.0, t_min: float = 1e-3, t_max: float = 1.0,
                     lambda_max: float = SamplerConfig.lambda_max) -> Array:
  """time_grid of a continuous schedule known only on device (a learned schedule's
  traced parameters), as a device array; equal to time_grid's to float32 rounding
  (exactly, for the uniform grid from t_max = 1)."""
  choice("sample.grid", grid, GRIDS)
  require(not schedule.num_steps, "a grid computed on device needs a continuous schedule")
  t0 = traced_grid_start(schedule, t_min, t_max, lambda_max)
  return GRIDS[grid].traced(schedule, num_steps, rho, t_min, t0)


def _uniform_grid(schedule, num_steps, rho, t_min, t_start):
  n = schedule.num_steps
  if n:
    idx = np.round(np.linspace(round(t_start * n), 0, num_steps + 1)).astype(np.int64)
    return (idx / n).astype(np.float32)
  return np.linspace(t_start, 0.0, num_steps + 1, dtype=np.float32)


def _edm_grid(schedule, num_steps, rho, t_min, t_start):
  n = schedule.num_steps
  t_lo = 1.0 / n if n else t_min
  lo, hi = (float(schedules_lib.lam(schedule, jnp.float32(v))) for v in (t_lo, t_start))
  if num_steps == 1:
    lams = np.array([hi])
  else:
    lams = (hi ** (1 / rho) + np.arange(num_steps) / (num_steps - 1)
            * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
  ts = schedules_lib.t_for_lambda(schedule, lams, t_lo, t_start)
  ts[0] = t_start  # Exactly.
  return np.concatenate([ts, [0.0]]).astype(np.float32)


def _uniform_traced(schedule, num_steps, rho, t_min, t_start):
  # As np.linspace(t_start, 0, ...) to rounding; exactly it when t_start = 1.
  return t_start * jnp.asarray(np.linspace(1.0, 0.0, num_steps + 1, dtype=np.float32))


def _edm_traced(schedule, num_steps, rho, t_min, t_start):
  lo, hi = (schedules_lib.lam(schedule, jnp.asarray(v, jnp.float32)) for v in (t_min, t_start))
  if num_steps == 1:
    lams = hi[None]
  else:
    frac = jnp.asarray(np.arange(num_steps) / (num_steps - 1), jnp.float32)
    lams = (hi ** (1 / rho) + frac * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
  ts = schedules_lib.traced_t_for_lambda(schedule, lams, t_min, t_start).at[0].set(t_start)
  return jnp.concatenate([ts, jnp.zeros((1,), jnp.float32)])


class Grid(NamedTuple):
  """A time grid, (schedule, num_steps, rho, t_min, t_start) -> num_steps + 1 decreasing
  times from t_start (grid_start's) to 0: on the host (numpy, from a schedule's exact
  values), and traced (jnp, a continuous schedule known only on device)."""
  host: Callable
  traced: Callable


GRIDS: dict[str, Grid] = {
    # Uniform in t (on the schedule's own steps if discrete).
    "uniform": Grid(_uniform_grid, _uniform_traced),
    "edm": Grid(_edm_grid, _edm_traced),  # lambda^(1/rho) uniform (Karras et al.).
}


def _full(t, x):
  return jnp.full((x.shape[0],), t, jnp.float32)


def _coeffs(schedule: Schedule, t: Array, s: Array):
  a_t, s_t, a_s, s_s = schedule.alpha(t), schedule.sigma(t), schedule.alpha(s), schedule.sigma(s)
  # Variance of x_t given x_s: sigma_{t|s}^2 = sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2.
  var_ts = jnp.maximum(s_t**2 - (a_t / a_s) ** 2 * s_s**2, 0.0)
  return a_t, s_t, a_s, s_s, var_ts


# The variance of DDPM's step from t to s, (var_ts, sigma_s, sigma_t, s) -> variance:
DDPM_VARIANCES: dict[str, Callable] = {
    # The posterior's, var(x_s | x_t, x_0) (Ho et al.'s beta-tilde, "fixedsmall").
    "posterior": lambda var_ts, s_s, s_t, s: var_ts * s_s**2 / s_t**2,
    # The forward step's, var(x_t | x_s) (Ho et al.'s beta_t, "fixedlarge", which they
    # sampled CIFAR-10 with); the last step to s = 0 adds no noise, as in their code.
    # Exact for x_0 ~ N(0, I) on a VP process at any number of steps.
    "fixedlarge": lambda var_ts, s_s, s_t, s: jnp.where(s > 0, var_ts, 0.0),
}


def ddpm_step(schedule: Schedule, x: Array, x0: Array, t: Array, s: Array, key: Array,
              variance: str = "posterior", **_) -> Array:
  """Ancestral step: the mean of the Gaussian posterior q(x_s | x_t, x_0 = x0_hat), and
  the variance DDPM_VARIANCES[variance]."""
  a_t, s_t, a_s, s_s, var_ts = _coeffs(schedule, t, s)
  mean = (a_s * var_ts / s_t**2) * x0 + ((a_t / a_s) * s_s**2 / s_t**2) * x
  std = jnp.sqrt(DDPM_VARIANCES[variance](var_ts, s_s, s_t, s))
  return mean + std * jax.random.normal(key, x.shape, x.dtype)


def ddim_step(schedule: Schedule, x: Array, x0: Array, t: Array, s: Array, key: Array,
              eta: float = 0.0, **_) -> Array:
  """DDIM (Song et al. 2021); eta = 0 is deterministic, eta = 1 matches DDPM."""
  a_t, s_t, a_s, s_s, var_ts = _coeffs(schedule, t, s)
  eps = (x - a_t * x0) / s_t
  c = eta * jnp.sqrt(var_ts * s_s**2) / s_t
  direction = jnp.sqrt(jnp.maximum(s_s**2 - c**2, 0.0))
  return a_s * x0 + direction * eps + c * jax.random.normal(key, x.shape, x.dtype)


def one_step_sampler(step_fn):
  def run(denoise, schedule, grid, x, cond, key, cfg):
    times = jnp.asarray(grid)

    def body(i, x):
      t, s = times[i], times[i + 1]
      x0 = denoise(x, _full(t, x), cond)
      return step_fn(schedule, x, x0, t, s, jax.random.fold_in(key, i), eta=cfg.eta,
                     variance=cfg.ddpm_variance)
    return jax.lax.fori_loop(0, len(times) - 1, body, x)
  return run


def _ode_sampler(second_order: bool):
  """Euler / Heun on dy/dlambda = (y - D) / lambda, with EDM's optional churn."""

  def run(denoise, schedule, grid, x, cond, key, cfg):
    lam = lambda t: schedules_lib.lam(schedule, t)
    n = len(grid) - 1
    times = jnp.asarray(grid)
    if cfg.churn > 0 and schedule.params is None:  # Churn evaluates D off the grid.
      with jax.ensure_compile_time_eval():
        t_of = schedules_lib.lambda_inverse(schedule, float(grid[-2]), float(grid[0]))
    elif cfg.churn > 0:  # A learned schedule, on device.
      t_of = lambda l: schedules_lib.traced_t_for_lambda(schedule, l, times[n - 1], times[0])
    gamma_max = min(cfg.churn / n, np.sqrt(2.0) - 1.0)

    def d_of(y, t):
      return denoise(schedule.alpha(t) * y, _full(t, y), cond)

    def body(i, y):
      t, t_next = times[i], times[i + 1]
      l, l_next = lam(t), lam(t_next)
      if cfg.churn > 0:
        gamma = jnp.where((l >= cfg.churn_min) & (l <= cfg.churn_max), gamma_max, 0.0)
        l_hat = l * (1.0 + gamma)
        z = jax.random.normal(jax.random.fold_in(key, i), y.shape)
        y = y + jnp.sqrt(jnp.maximum(l_hat**2 - l**2, 0.0)) * cfg.churn_noise * z
        t = jnp.where(gamma > 0, t_of(l_hat), t)
        l = lam(t)
      slope = (y - d_of(y, t)) / l
      y_next = y + (l_next - l) * slope
      if second_order:
        slope2 = (y_next - d_of(y_next, t_next)) / l_next
        y_next = y + (l_next - l) * 0.5 * (slope + slope2)
      return y_next

    y = x / schedule.alpha(times[0])
    y = jax.lax.fori_loop(0, n - 1, body, y)
    # Last step to lambda = 0: the Euler step lands exactly on D.
    return d_of(y, times[n - 1])

  return run


def _score(schedule, x, x0, t):
  a, s = schedule.alpha(t), schedule.sigma(t)
  return -(x - a * x0) / (s * s)


def _sde_sampler(corrector: bool):
  """Reverse SDE dx = [f x - g^2 score] dt + g dW (Euler-Maruyama), optionally with a
  Langevin corrector at each time (predictor-corrector)."""

  def run(denoise, schedule, grid, x, cond, key, cfg):
    n = len(grid) - 1
    times = jnp.asarray(grid)

    def langevin(x, t, key):
      for j in range(cfg.corrector_steps):
        k = jax.random.fold_in(key, j)
        grad = _score(schedule, x, denoise(x, _full(t, x), cond), t)
        z = jax.random.normal(k, x.shape)
        # Norms averaged over the batch, as in score_sde: per-example ratios blow up
        # wherever a gradient is near zero, which is common in low dimensions.
        norm = lambda v: jnp.mean(jnp.sqrt(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1)))
        step = 2.0 * (cfg.corrector_snr * norm(z) / jnp.maximum(norm(grad), 1e-12)) ** 2
        x = x + step * grad + jnp.sqrt(2.0 * step) * z
      return x

    def body(i, x):
      t, s = times[i], times[i + 1]
      k_pred, k_corr = jax.random.split(jax.random.fold_in(key, i))
      if corrector:
        x = langevin(x, t, k_corr)
      a, sig, da, dsig = derivatives(schedule, t)
      f = da / a
      g2 = 2.0 * sig * dsig - 2.0 * f * sig * sig
      score = _score(schedule, x, denoise(x, _full(t, x), cond), t)
      dt = t - s
      return x - (f * x - g2 * score) * dt + jnp.sqrt(g2 * dt) * jax.random.normal(k_pred, x.shape)

    x = jax.lax.fori_loop(0, n - 1, body, x)
    return denoise(x, _full(times[n - 1], x), cond)

  return run


def _dpmpp_2m(denoise, schedule, grid, x, cond, key, cfg):
  """DPM-Solver++(2M) in half-log-SNR h = log(alpha / sigma), data prediction."""
  n = len(grid) - 1
  times = jnp.asarray(grid)
  half_log_snr = lambda t: 0.5 * schedule.log_snr(t)

  def body(i, carry):
    x, d_prev, h_prev = carry
    t, s = times[i], times[i + 1]
    d = denoise(x, _full(t, x), cond)
    h = half_log_snr(s) - half_log_snr(t)
    r = h_prev / h
    d_hat = jnp.where(i == 0, d, (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * d_prev)
    x = (schedule.sigma(s) / schedule.sigma(t)) * x - schedule.alpha(s) * jnp.expm1(-h) * d_hat
    return x, d, h

  x, _, _ = jax.lax.fori_loop(0, n - 1, body, (x, jnp.zeros_like(x), jnp.float32(1.0)))
  return denoise(x, _full(times[n - 1], x), cond)


class Sampler(NamedTuple):
  """A sampling loop (denoise, schedule, grid, x, cond, key, cfg) -> x_0, the fewest
  grid steps it takes, and its denoiser evaluations for a config."""
  run: Callable
  min_steps: int = 1
  nfe: Callable[[SamplerConfig], int] = lambda cfg: cfg.num_steps


SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(one_step_sampler(ddpm_step)),
    "ddim": Sampler(one_step_sampler(ddim_step)),
    "euler": Sampler(_ode_sampler(second_order=False), 2),
    "heun": Sampler(_ode_sampler(second_order=True), 2, lambda c: 2 * c.num_steps - 1),
    "em": Sampler(_sde_sampler(corrector=False), 2),
    "pc": Sampler(_sde_sampler(corrector=True), 2,
                  lambda c: c.num_steps + c.corrector_steps * (c.num_steps - 1)),
    "dpmpp_2m": Sampler(_dpmpp_2m, 2),
}


def sample(denoise: Denoiser, schedule: Schedule, cfg: SamplerConfig, shape: tuple,
           cond, key: Array) -> Array:
  """Draws samples of `shape` from the prior at t_max down to t = 0."""
  choice("sample.sampler", cfg.sampler, SAMPLERS)
  sampler = SAMPLERS[cfg.sampler]
  require(cfg.num_steps >= sampler.min_steps,
          f"sampler {cfg.sampler!r} needs at least {sampler.min_steps} steps")
  # A learned schedule's parameters may be traced: its grid is computed on device.
  grid_fn = time_grid if schedule.params is None else traced_time_grid
  times = grid_fn(schedule, cfg.num_steps, cfg.grid, cfg.rho, cfg.t_min, cfg.t_max,
                  cfg.lambda_max)
  if cfg.clip_denoised:
    inner = denoise
    denoise = lambda x, t, c: jnp.clip(inner(x, t, c), -1.0, 1.0)
  prior_key, loop_key = jax.random.split(key)
  # The prior: x_0's contribution alpha(t_max) x_0 is negligible next to sigma(t_max).
  x = schedule.sigma(times[0]) * jax.random.normal(prior_key, shape, jnp.float32)
  x = sampler.run(denoise, schedule, times, x, cond, loop_key, cfg)
  return jnp.clip(x, -1.0, 1.0) if cfg.clip_denoised else x
