"""Noise schedules as pure functions of continuous time t in [0, 1].

A schedule gives the forward process x_t = alpha(t) x_0 + sigma(t) eps. The
variance-preserving (VP) schedules here have alpha^2 + sigma^2 = 1 and are defined
by their log signal-to-noise ratio, log_snr(t) = log(alpha^2 / sigma^2):

  alpha^2 = sigmoid(log_snr),  sigma^2 = sigmoid(-log_snr).

Computing alpha and sigma from log_snr keeps both accurate at the ends, where
1 - alpha^2 would lose precision.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ScalarFn = Callable[[Array], Array]


class Schedule(NamedTuple):
  """A forward process: three pure functions of t (broadcast over any shape)."""
  alpha: ScalarFn
  sigma: ScalarFn
  log_snr: ScalarFn
  # Number of discrete steps the schedule was defined with, or 0 for continuous time.
  num_steps: int = 0


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


def linear(beta_start: float = 1e-4, beta_end: float = 0.02,
           num_steps: int = 1000) -> Schedule:
  """Ho et al. (2020) linear-beta schedule, exact at t = i / T.

  log-SNR is tabulated at the T + 1 grid points and interpolated linearly in
  between, so the continuous schedule equals the discrete one on the grid.
  """
  abar = ddpm_alpha_bars(beta_start, beta_end, num_steps)
  table = np.log(abar[1:]) - np.log1p(-abar[1:])
  # alpha-bar_0 = 1 has infinite log-SNR; a large finite value keeps t = 0 usable.
  table = np.concatenate([[max(30.0, table[0] + 10.0)], table]).astype(np.float32)
  grid = np.arange(num_steps + 1, dtype=np.float32)

  def log_snr(t):
    return jnp.interp(jnp.asarray(t, jnp.float32) * num_steps, grid, table)

  return from_log_snr(log_snr, num_steps)


def cosine(s: float = 0.008, num_steps: int = 0, log_snr_min: float = -20.0,
           log_snr_max: float = 20.0) -> Schedule:
  """Nichol & Dhariwal (2021): alpha-bar(t) = cos^2(pi/2 (t + s) / (1 + s)) / f(0).

  alpha(1) is exactly zero in the formula; log_snr is clipped to
  [log_snr_min, log_snr_max] to keep samplers and conversions finite.
  """
  f0 = np.cos(0.5 * np.pi * s / (1 + s)) ** 2

  def log_snr(t):
    t = jnp.asarray(t, jnp.float32)
    abar = jnp.cos(0.5 * jnp.pi * (t + s) / (1 + s)) ** 2 / f0
    abar = jnp.clip(abar, 0.0, 1.0)
    raw = jnp.log(abar) - jnp.log1p(-jnp.minimum(abar, 1.0 - 1e-7))
    return jnp.clip(raw, log_snr_min, log_snr_max)

  return from_log_snr(log_snr, num_steps)


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "linear": linear,
    "cosine": cosine,
}


def get_schedule(name: str, **kwargs) -> Schedule:
  if name not in SCHEDULES:
    raise ValueError(f"unknown noise schedule {name!r}; known: {sorted(SCHEDULES)}")
  return SCHEDULES[name](**kwargs)


def from_config(diffusion_cfg) -> Schedule:
  """The schedule a config's `diffusion` section describes."""
  name = diffusion_cfg.schedule
  if name == "linear":
    return linear(diffusion_cfg.beta_start, diffusion_cfg.beta_end, diffusion_cfg.num_steps)
  if name == "cosine":
    return cosine(diffusion_cfg.cosine_s, diffusion_cfg.num_steps)
  return get_schedule(name)
