"""Every sampler on every process through the path a trained model takes: a network's
output in each `diffusion.prediction` -> `core.diffusion.make_denoiser` (with the
network-input scaling `model_input`) -> the sampler, the process built from the config
by `core.diffusion.from_config`, the sampler by `SamplerConfig.from_config`.

The "network" is exact: for Gaussian-mixture data it computes the posterior mean
E[x0 | x_t] and E[eps | x_t] = -sigma grad log p_t(x_t) in closed form and outputs the
prediction's target from them by its definition (written out here, independently of
core.parameterisation). A correct conversion then makes every sampler reproduce the
data's moments.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.config import defaults
from diffusion_jax.core import diffusion, parameterisation, samplers, schedules

PREDICTIONS = sorted(parameterisation.PREDICTIONS)
# Every process of core.schedules.SCHEDULES (cosine both discrete and continuous), as
# the `diffusion` config overrides that select it.
PROCESSES = {
    "linear": {"schedule": "linear", "num_steps": 1000},
    "cosine_T1000": {"schedule": "cosine", "num_steps": 1000},
    "cosine": {"schedule": "cosine", "num_steps": 0},
    "vp": {"schedule": "vp", "num_steps": 0},
    "subvp": {"schedule": "subvp", "num_steps": 0},
    "linear_logsnr": {"schedule": "linear_logsnr", "num_steps": 0},
    "ve": {"schedule": "ve", "num_steps": 0},
    "edm": {"schedule": "edm", "num_steps": 0},
    "flow": {"schedule": "flow", "num_steps": 0},
}
SIGMA_DATA = 0.5  # The edm prediction's sigma_data (the config default).


class Mixture:
  """x0 ~ sum_k w_k N(mu_k, diag(sd_k^2)), in D dimensions."""

  def __init__(self, weights, means, sds):
    self.w = np.asarray(weights, np.float64)
    self.mu = np.asarray(means, np.float64)
    self.sd = np.broadcast_to(np.asarray(sds, np.float64), self.mu.shape)

  def posterior(self, a, s, x):
    """(E[x0 | x_t], E[eps | x_t]) at x_t = x, alpha = a, sigma = s (shape (B, 1))."""
    mu, sd2 = jnp.asarray(self.mu, jnp.float32), jnp.asarray(self.sd**2, jnp.float32)
    a, s = a[:, :, None], s[:, :, None]
    var = a**2 * sd2[None] + s**2  # (B, K, D): the variance of x_t in component k.
    diff = x[:, None, :] - a * mu[None]
    log_r = (jnp.log(jnp.asarray(self.w, jnp.float32))[None]
             - 0.5 * jnp.sum(diff**2 / var + jnp.log(var), axis=-1))
    r = jax.nn.softmax(log_r, axis=1)[..., None]
    x0 = jnp.sum(r * (mu[None] + a * sd2[None] / var * diff), axis=1)
    score = jnp.sum(r * (-diff / var), axis=1)  # grad log p_t(x_t).
    return x0, -s[:, :, 0] * score


MIX = Mixture([0.5, 0.3, 0.2], [[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]], 0.15)


def exact_network(d: diffusion.Diffusion, data: Mixture, process: str):
  """apply(network input, t, cond) -> d.prediction's target, exactly. The velocity
  takes alpha' and sigma' by differentiating the process's functions, except on the
  flow process, where it is eps - x0 by definition (there the functions are on trial:
  they once clipped t at 0.999)."""
  sch, pred = d.schedule, d.prediction

  def apply(net_in, t, cond):
    a, s = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
    # The network sees x_t scaled by c_in / alpha = 1 / sqrt(sigma^2 + alpha^2 sd^2)
    # for the edm prediction (Karras et al.'s c_in of y = x_t / alpha), x_t otherwise.
    scale = 1.0 / jnp.sqrt(s**2 + a**2 * SIGMA_DATA**2) if pred == "edm" else 1.0
    x_t = net_in / scale
    x0, eps = data.posterior(a, s, x_t)
    if pred == "eps":
      return eps
    if pred == "x0":
      return x0
    if pred == "v":  # Salimans & Ho.
      return a * eps - s * x0
    if pred == "score":
      return -eps / s
    if pred == "edm":  # D = c_skip y + c_out F.
      lam = s / a
      c_skip = SIGMA_DATA**2 / (lam**2 + SIGMA_DATA**2)
      c_out = lam * SIGMA_DATA / jnp.sqrt(lam**2 + SIGMA_DATA**2)
      return (x0 - c_skip * x_t / a) / c_out
    if pred == "flow":  # E[d x_t / dt | x_t] = alpha' E[x0 | x_t] + sigma' E[eps | x_t].
      if process == "flow":  # alpha = 1 - t, sigma = t by definition (Liu et al. 2022).
        return eps - x0
      one = jnp.ones_like(t)
      da = jax.jvp(sch.alpha, (t,), (one,))[1][:, None]
      ds = jax.jvp(sch.sigma, (t,), (one,))[1][:, None]
      return da * x0 + ds * eps
    raise AssertionError(f"no exact target written for prediction {pred!r}")
  return apply


def config(process: str, prediction: str, **sample):
  c = defaults.get_config()
  c.diffusion.update(PROCESSES[process])
  c.diffusion.prediction = prediction
  c.sample.clip_denoised = False  # The data reach beyond [-1, 1].
  c.sample.update(sample)
  return c


def draw(c, data: Mixture, n: int, process: str, seed: int = 0):
  """Samples through the real path: from_config -> make_denoiser -> sample. Returns
  them and lambda = sigma / alpha at the grid's start."""
  d = diffusion.from_config(c.diffusion)
  cfg = samplers.SamplerConfig.from_config(c.sample)
  cfg.check_schedule(d.schedule)
  denoise = diffusion.make_denoiser(exact_network(d, data, process), d)
  fn = jax.jit(lambda k: samplers.sample(denoise, d.schedule, cfg, (n, data.mu.shape[1]),
                                         None, k))
  t0 = samplers.time_grid(d.schedule, cfg.num_steps, cfg.grid, cfg.rho, cfg.t_min,
                          cfg.t_max, cfg.lambda_max)[0]
  return np.asarray(fn(jax.random.key(seed))), float(schedules.lam(d.schedule, t0))


def mixture_stats(x):
  k = np.argmin(((x[:, None] - MIX.mu[None]) ** 2).sum(-1), 1)
  weights = np.bincount(k, minlength=3) / len(x)
  means = np.stack([x[k == j].mean(0) for j in range(3)])
  stds = np.stack([x[k == j].std(0) for j in range(3)])
  return weights, means, stds


# Each sampler at its usual number of steps and grid: EDM's grid with EDM's start
# (lambda_max = 80, as configs/digits_edm.py); the uniform grid from the default start.
EDM_GRID = {"grid": "edm", "lambda_max": 80.0}
USUAL = {"ddpm": (1000, {}), "ddim": (50, {}), "euler": (50, EDM_GRID),
         "heun": (18, EDM_GRID), "dpmpp_2m": (20, EDM_GRID), "em": (1000, {}),
         "pc": (500, {})}
N = 4000  # Samples per run: the weights' standard errors are <= 0.008.


# Every process x every sampler, each through one prediction, rotated so that every
# prediction meets every process and every sampler (63 runs, not 378).
# Components 0.15 wide and >= 7 widths apart: the denoiser switches sharply at low
# noise, the hardest case for few steps. Measured errors over the 63 runs: weights
# <= 0.013, means <= 0.043, stds -6.4% to +8.9% (dpmpp_2m on ve, edm and flow),
# and -12.3% for DDIM on a uniform 50-step grid; they shrink with more steps.
@pytest.mark.parametrize("sampler", list(USUAL))
@pytest.mark.parametrize("process", list(PROCESSES))
def test_every_sampler_on_every_process_through_the_network_path(process, sampler):
  i, j = list(PROCESSES).index(process), list(USUAL).index(sampler)
  prediction = PREDICTIONS[(i + j) % len(PREDICTIONS)]
  steps, grid = USUAL[sampler]
  if process != "linear" and sampler in ("ddpm", "em", "pc") and steps > 100:
    steps = 500  # Same check, half the time: these are first-order in the step.
  if process == "subvp" and grid:
    # subvp's lambda at t_min = 1e-3 is 1e-4 (the others' ~1e-2): EDM's grid spreads
    # its steps over two more decades (dpmpp_2m at 20 steps: std +10.4%, means 0.050).
    steps *= 2
  x, _ = draw(config(process, prediction, sampler=sampler, num_steps=steps, **grid), MIX, N,
              process)
  assert np.all(np.isfinite(x)), (process, prediction, sampler)
  weights, means, stds = mixture_stats(x)
  np.testing.assert_allclose(weights, MIX.w, atol=0.02, err_msg=prediction)
  np.testing.assert_allclose(means, MIX.mu, atol=0.05, err_msg=prediction)
  np.testing.assert_allclose(stds, MIX.sd, rtol=0.15 if sampler == "ddim" else 0.10,
                             err_msg=prediction)


# Gaussians in three dimensions: N(0, 1) (the widest data in [-1, 1] pixel units),
# N(0.3, 0.5^2), N(3, 0.5^2) (far from the prior's mean).
GAUSS = Mixture([1.0], [[0.0, 0.3, 3.0]], [[1.0, 0.5, 0.5]])


@pytest.mark.parametrize("sampler,steps", [("heun", 18), ("dpmpp_2m", 20)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("process", list(PROCESSES))
def test_default_grid_is_safe_for_every_solver_on_every_process(process, sampler, steps):
  """The high-order solvers with everything at its default but the sampler and its
  steps: a uniform grid from the default start (the first-order ones run from it in
  the test above: ddim, whose deterministic step is Euler's, ddpm, em, pc). Before the
  default lambda_max, Heun 18 from cosine's lambda = e^10 gave +715% std on N(0, 1),
  and flow gave inf/NaN from t = 1.

  The prior N(0, sigma^2) at the start leaves out alpha x0: the exact ODE then ends at
  mean mu (1 - sd / sqrt(sd^2 + lambda_0^2)), std sd lambda_0 / sqrt(sd^2 + lambda_0^2)
  (a -0.13 shift of N(3, 0.5^2) on linear_logsnr, whose lambda_0 is 12): the checks
  are against those, so what is left is the solver's error. Measured (N = 4000):
  means within 0.012 of them; stds within 9% (dpmpp_2m on subvp +8.6%, Heun on ve
  +6.5%: the uniform grid's coarse low-noise end, not the start)."""
  prediction = PREDICTIONS[list(PROCESSES).index(process) % len(PREDICTIONS)]
  x, lam0 = draw(config(process, prediction, sampler=sampler, num_steps=steps), GAUSS, 4000,
                 process)
  assert np.all(np.isfinite(x)), (process, prediction)
  mu, sd = GAUSS.mu[0], GAUSS.sd[0]
  shrink = sd / np.sqrt(sd**2 + lam0**2)
  np.testing.assert_allclose(x.mean(0), mu * (1 - shrink), atol=0.04, err_msg=prediction)
  np.testing.assert_allclose(x.std(0), lam0 * shrink, rtol=0.12, err_msg=prediction)
