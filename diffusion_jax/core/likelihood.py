"""Negative log-likelihood in bits per dimension, over the denoiser view.

(a) `vlb_nll`: the discrete-time variational bound of a DDPM model (Ho et al. 2020):
    L = KL(q(x_T | x_0) || N(0, sigma_T^2)) + sum_{i=2..T} KL(q(x_{i-1} | x_i, x_0) || p(x_{i-1} | x_i))
        - log p(x_0 | x_1),
    p(x_{i-1} | x_i) the posterior with x0 = D(x_i), and a discretised Gaussian decoder on
    the uint8 bins. It bounds the NLL of the discrete data from above.
(b) `ode_nll`: the probability-flow ODE likelihood (Song et al. 2021), in the coordinates
    y = x / alpha, lambda = sigma / alpha where every process has dy/dlambda = (y - D) / lambda:
    log p(y at lambda_min) = log N(y at lambda_max; 0, lambda_max^2) + int div f dlambda,
    with the divergence from Hutchinson's estimator (or exactly, for small dimensions), and
    uniform dequantisation of uint8 data.

Data scaling is the pipeline's: x = u8 / 127.5 - 1, bins of width 2 / 255.
"""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.config.errors import require
from diffusion_jax.core import schedules as schedules_lib
from diffusion_jax.core.parameterisation import Denoiser
from diffusion_jax.core.schedules import Schedule

Array = jax.Array
HALF_BIN = 1.0 / 255.0  # Half the width of a uint8 bin in [-1, 1].


def _sum(v: Array) -> Array:
  return jnp.sum(v.reshape(v.shape[0], -1), axis=1)


def bits_per_dim(nll_nats: Array, dims: int) -> Array:
  return nll_nats / (dims * np.log(2.0))


def dequantized_nll_to_bpd(nll_x: Array, dims: int) -> Array:
  """Continuous NLL of x = (u8 + u) / 127.5 - 1, u ~ U[0, 1), to discrete bits/dim:
  -log P(u8) <= E_u[-log p_x(x)] + D log 127.5."""
  return bits_per_dim(nll_x + dims * np.log(127.5), dims)


def gaussian_kl(mean1, var1, mean2, var2) -> Array:
  """KL(N(mean1, var1) || N(mean2, var2)), summed over all but the batch axis."""
  return _sum(0.5 * (jnp.log(var2) - jnp.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0))


def _std_normal_cdf(v):
  return 0.5 * (1.0 + jax.lax.erf(v / np.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: Array, mean: Array, std: Array) -> Array:
  """log P(bin of x) under N(mean, std^2), bins of width 2/255 on [-1, 1], edges open."""
  upper = jnp.where(x > 1.0 - 1e-3, jnp.inf, (x + HALF_BIN - mean) / std)
  lower = jnp.where(x < -1.0 + 1e-3, -jnp.inf, (x - HALF_BIN - mean) / std)
  prob = _std_normal_cdf(upper) - _std_normal_cdf(lower)
  return _sum(jnp.log(jnp.maximum(prob, 1e-12)))


def vlb_terms(denoise: Denoiser, schedule: Schedule, x0: Array, cond, key: Array) -> Array:
  """Per-example bound in nats for a discrete schedule, all T terms (T denoiser calls)."""
  n = schedule.num_steps
  if not n:
    raise ValueError("the discrete variational bound needs a discrete schedule (num_steps > 0)")
  b = x0.shape[0]
  t_of = lambda i: jnp.full((b,), i / n, jnp.float32)

  def posterior(i, x_t, x0_):
    t, s = jnp.float32(i / n), jnp.float32((i - 1) / n)
    a_t, s_t, a_s, s_s = schedule.alpha(t), schedule.sigma(t), schedule.alpha(s), schedule.sigma(s)
    var_ts = s_t**2 - (a_t / a_s) ** 2 * s_s**2
    mean = (a_s * var_ts / s_t**2) * x0_ + ((a_t / a_s) * s_s**2 / s_t**2) * x_t
    return mean, var_ts * s_s**2 / s_t**2

  prior_kl = gaussian_kl(schedule.alpha(1.0) * x0, schedule.sigma(1.0) ** 2,
                         jnp.zeros_like(x0), schedule.sigma(1.0) ** 2)

  def term(i, total):
    k = jax.random.fold_in(key, i)
    x_t = schedule.alpha(i / n) * x0 + schedule.sigma(i / n) * jax.random.normal(k, x0.shape)
    x0_hat = denoise(x_t, t_of(i), cond)
    mean_q, var = posterior(i, x_t, x0)
    mean_p, _ = posterior(i, x_t, x0_hat)
    return total + gaussian_kl(mean_q, var, mean_p, var)

  total = jax.lax.fori_loop(2, n + 1, term, prior_kl)
  # Decoder p(x_0 | x_1): mean x0_hat, std of the first posterior step (Nichol & Dhariwal).
  x_1 = schedule.alpha(1 / n) * x0 + schedule.sigma(1 / n) * jax.random.normal(
      jax.random.fold_in(key, 1), x0.shape)
  _, var2 = posterior(2, x_1, x0)
  decoder = discretized_gaussian_log_likelihood(x0, denoise(x_1, t_of(1), cond), jnp.sqrt(var2))
  return total - decoder


def vlb_nll(denoise, schedule, x0, cond, key) -> Array:
  """Bits/dim of the discrete bound, per example."""
  return bits_per_dim(vlb_terms(denoise, schedule, x0, cond, key), int(np.prod(x0.shape[1:])))


def ode_log_likelihood(denoise: Denoiser, schedule: Schedule, x: Array, cond, key: Array,
                       steps: int = 500, t_min: float = 1e-5, t_max: float = 1.0,
                       lambda_max: float = float("inf"), probes: int = 1,
                       exact_trace: bool = False) -> Array:
  """log p(x) in nats (x taken at t_min), per example, by Heun integration on a grid
  geometric in lambda. Grid times come from bisection, so lambda and t always agree.
  A fixed schedule's grid is a constant built on the host; a learned schedule's
  (schedule.params set) is computed on device, so its parameters may be traced."""
  dims = int(np.prod(x.shape[1:]))
  if schedule.params is None:
    with jax.ensure_compile_time_eval():
      lo = float(schedules_lib.lam(schedule, jnp.float32(t_min)))
      hi = min(float(schedules_lib.lam(schedule, jnp.float32(t_max))), lambda_max)
      require(np.isfinite(hi), f"the prior's sigma/alpha is {hi} at t_max={t_max} (alpha "
              "= 0 there, as for flow at t = 1): set lambda_max finite or t_max < 1")
      ts = schedules_lib.t_for_lambda(schedule, np.geomspace(lo, hi, steps + 1), t_min, t_max)
      ts[0] = t_min
      lams = np.asarray(schedules_lib.lam(schedule, jnp.asarray(ts)), np.float32)
      hi = float(lams[-1])
    log_norm = dims * (np.log(hi) + 0.5 * np.log(2 * np.pi))
  else:  # A VP process with finite log-SNR: lambda is finite everywhere.
    lo, top = (schedules_lib.lam(schedule, jnp.float32(t)) for t in (t_min, t_max))
    targets = jnp.exp(jnp.linspace(jnp.log(lo), jnp.log(jnp.minimum(top, lambda_max)),
                                   steps + 1))
    ts = schedules_lib.traced_t_for_lambda(schedule, targets, t_min, t_max).at[0].set(t_min)
    lams = schedules_lib.lam(schedule, ts)
    hi = lams[-1]
    log_norm = dims * (jnp.log(hi) + 0.5 * np.log(2 * np.pi))
  lams_j, ts_j = jnp.asarray(lams), jnp.asarray(ts)
  b = x.shape[0]
  # Fixed Rademacher probes along the whole trajectory, as in score_sde.
  eps = jax.random.rademacher(key, (probes,) + x.shape, jnp.float32)

  def drift_and_div(y, lam, t):
    a = schedule.alpha(t)
    d_fn = lambda yy: denoise(a * yy, jnp.full((b,), t), cond)
    d = d_fn(y)
    if exact_trace:
      # Examples are independent: one JVP per dimension, along that dimension in every
      # example, gives each example's diagonal entry. D JVPs: small problems only.
      def diag(j):
        e = jax.nn.one_hot(jnp.full((b,), j), dims, dtype=y.dtype).reshape(y.shape)
        return _sum(e * jax.jvp(d_fn, (y,), (e,))[1])
      trace = jnp.sum(jax.vmap(diag)(jnp.arange(dims)), axis=0)
    else:
      trace = jnp.mean(jnp.stack([_sum(e * jax.jvp(d_fn, (y,), (e,))[1]) for e in eps]), axis=0)
    return (y - d) / lam, (dims - trace) / lam

  def body(i, carry):
    y, integral = carry
    l0, l1 = lams_j[i], lams_j[i + 1]
    f0, g0 = drift_and_div(y, l0, ts_j[i])
    y_pred = y + (l1 - l0) * f0
    f1, g1 = drift_and_div(y_pred, l1, ts_j[i + 1])
    return y + (l1 - l0) * 0.5 * (f0 + f1), integral + (l1 - l0) * 0.5 * (g0 + g1)

  y0 = x / schedule.alpha(jnp.float32(t_min))
  y1, integral = jax.lax.fori_loop(0, steps, body, (y0, jnp.zeros((b,))))
  log_prior = _sum(-0.5 * (y1 / hi) ** 2) - log_norm
  return log_prior + integral - dims * jnp.log(schedule.alpha(jnp.float32(t_min)))


def ode_nll(denoise: Denoiser, schedule: Schedule, images_u8: Array, cond, key: Array,
            **kwargs) -> Array:
  """Bits/dim of uint8 images by the probability-flow ODE with uniform dequantisation."""
  deq_key, probe_key = jax.random.split(key)
  x = (images_u8.astype(jnp.float32) + jax.random.uniform(deq_key, images_u8.shape)) / 127.5 - 1.0
  dims = int(np.prod(images_u8.shape[1:]))
  return dequantized_nll_to_bpd(-ode_log_likelihood(denoise, schedule, x, cond, probe_key,
                                                    **kwargs), dims)

