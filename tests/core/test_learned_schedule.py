"""VDM's learned schedule: monotone for any parameters, a VP process, its gradient
(the endpoints d E[L], the shape d E[L^2]) against direct differentiation, and
sampling and likelihoods with its parameters traced (one program for all of them)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core import diffusion, learned_schedule as ls, likelihood, samplers, schedules


def random_params(key, hidden=16, scale=3.0):
  """Parameters far from the initial ones: every entry drawn at `scale`."""
  p = ls.init_params(jax.random.key(0), hidden)
  keys = jax.random.split(key, len(p) + 1)
  p = {k: scale * jax.random.normal(kk, jnp.shape(v)) for (k, v), kk in zip(p.items(), keys)}
  lo, gap = jax.random.normal(keys[-1], (2,)) * 5.0
  p["gamma0"], p["gamma1"] = lo, lo + jnp.abs(gap) + 0.1
  return p


@pytest.mark.parametrize("seed", range(5))
def test_gamma_is_increasing_between_its_endpoints_for_any_parameters(seed):
  p = random_params(jax.random.key(seed))
  t = jnp.linspace(0.0, 1.0, 1001)
  g = np.asarray(ls.gamma(p, t), np.float64)
  assert np.all(np.diff(g) > 0), "gamma must increase strictly (log-SNR decrease)"
  np.testing.assert_allclose(g[[0, -1]], [p["gamma0"], p["gamma1"]], rtol=1e-5, atol=1e-5)
  # gamma' from the values the loss reads is gamma's derivative, and positive.
  v = ls.values(p, t[1:-1])
  np.testing.assert_allclose(v["gamma"], g[1:-1], rtol=1e-5, atol=1e-5)
  fd = (g[2:] - g[:-2]) / (2e-3)
  np.testing.assert_allclose(np.asarray(v["dgamma"]), fd, rtol=2e-2, atol=1e-2)
  assert np.all(np.asarray(v["dgamma"]) > 0)


def test_the_learned_schedule_is_a_vp_process_starting_at_the_configured_endpoints():
  sch = schedules.learned(hidden=8)
  t = jnp.linspace(0.0, 1.0, 101)
  np.testing.assert_allclose(sch.alpha(t) ** 2 + sch.sigma(t) ** 2, 1.0, atol=1e-6)
  np.testing.assert_allclose(sch.log_snr(jnp.array([0.0, 1.0])), [13.3, -5.0], atol=1e-4)
  assert sch.params is not None and schedules.linear_logsnr().params is None


def analytic_case(hidden=16):
  """A loss whose denoiser is linear in z (eps_hat = w z): everything is closed-form
  given the schedule's values, so direct differentiation is the reference."""
  b, d = 8, 6
  k = jax.random.split(jax.random.key(3), 5)
  x0 = jnp.round(jax.random.uniform(k[0], (b, d), minval=-1, maxval=1) * 127.5) / 127.5
  eps, t = jax.random.normal(k[1], (b, d)), jax.random.uniform(k[2], (b,))
  p = random_params(k[3], hidden, scale=1.0)

  def per_example(w, values):
    return ls.vlb_per_example(lambda z, t: w * z, values, x0, t, eps, k[4])
  return per_example, jnp.float32(0.7), p, t


def test_gradient_is_d_mean_loss_for_endpoints_and_network_and_d_mean_square_for_the_shape():
  per_example, w, p, t = analytic_case()
  loss, per, (g_w, g_p) = ls.loss_and_grads(per_example, w, p, t)
  direct = lambda w, p: per_example(w, ls.values(p, t))
  np.testing.assert_allclose(loss, jnp.mean(direct(w, p)), rtol=1e-5)
  d_mean = jax.grad(lambda w, p: jnp.mean(direct(w, p)), argnums=(0, 1))(w, p)
  d_square = jax.grad(lambda p: jnp.mean(direct(w, p) ** 2))(p)
  np.testing.assert_allclose(g_w, d_mean[0], rtol=1e-5)
  for name in p:
    want = d_mean[1][name] if name in ("gamma0", "gamma1") else d_square[name]
    np.testing.assert_allclose(g_p[name], want, rtol=2e-4, atol=1e-7, err_msg=name)
  # The two differ: the shape does not follow the bound's own gradient.
  assert not np.allclose(g_p["l2_w"], d_mean[1]["l2_w"], rtol=1e-2)


def test_the_diffusion_term_is_the_elbo_weighted_loss():
  """VDM's 0.5 gamma'(t) ||eps - eps_hat||^2 / D is the project's 'elbo' weighting on
  the same process: the bound minus its prior and decoder terms."""
  per_example, w, p, t = analytic_case()
  b, d = 8, 6
  k = jax.random.split(jax.random.key(3), 5)
  x0 = jnp.round(jax.random.uniform(k[0], (b, d), minval=-1, maxval=1) * 127.5) / 127.5
  eps = jax.random.normal(k[1], (b, d))
  d_proc = diffusion.make(ls.schedule(p), "eps", "elbo", check=False)
  _, aux = diffusion.loss_given_noise(lambda z, t: w * z, d_proc, x0, t, jnp.ones_like(t), eps)
  full = per_example(w, ls.values(p, t))
  # The prior and decoder terms alone: the bound with a perfect denoiser's diffusion term.
  no_diff = ls.vlb_per_example(lambda z, t: eps, ls.values(p, t), x0, t, eps, k[4])
  np.testing.assert_allclose(full - no_diff, aux["per_example"], rtol=2e-4)


# Sampling and likelihoods take the schedule's parameters as a traced input: the time
# grids are computed on device from them (core.samplers.traced_time_grid).

S = 0.5  # The data of the analytic denoiser: N(0, S^2) per dimension.


def analytic_denoiser(sch):
  """E[x0 | x_t] of N(0, S^2) data on the process `sch`."""
  def denoise(x, t, cond):
    a, s = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
    return a * S**2 / (a**2 * S**2 + s**2) * x
  return denoise


def trained_like():
  """Two parameter sets: log-SNR from 10 to -4 (lambda(1) = e^2: the grids start at
  t = 1), and from 12 to -13 (lambda(1) = e^6.5 > lambda_max = 160: they start earlier)."""
  base = random_params(jax.random.key(7), hidden=8, scale=1.0)
  return [{**base, "gamma0": jnp.float32(g0), "gamma1": jnp.float32(g1)}
          for g0, g1 in ((-10.0, 4.0), (-12.0, 13.0))]


def baked(p):
  """The process of `p` as a fixed schedule: its values constants of the program, its
  grids built on the host (how sampling used a trained schedule before)."""
  return ls.schedule(p)._replace(params=None)


@pytest.mark.parametrize("grid", sorted(samplers.GRIDS))
def test_the_device_grid_of_traced_parameters_is_the_host_grid_of_their_values(grid):
  traces = []

  def device_grid(p):
    traces.append(1)
    return samplers.traced_time_grid(ls.schedule(p), 8, grid)

  device_grid = jax.jit(device_grid)
  starts = []
  for p in trained_like():
    want = samplers.time_grid(baked(p), 8, grid)
    got = np.asarray(device_grid(p))
    starts.append(want[0])
    if want[0] == 1.0 and grid == "uniform":
      np.testing.assert_array_equal(got, want)
    # atol: where |log-SNR| is ~10, float32 resolves the t of a given lambda to ~1e-7.
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=5e-7)
  assert starts[0] == 1.0 and starts[1] < 0.99  # Both starts are covered.
  assert len(traces) == 1  # One program for both parameter sets.


# What a traced schedule changes: the grid (both kinds), churn's t(lambda), and the
# schedule's uses inside the loops (alpha/sigma, log-SNR, derivatives).
CASES = [("ddim", "uniform", 0.0), ("heun", "edm", 5.0), ("dpmpp_2m", "uniform", 0.0),
         ("pc", "edm", 0.0)]


@pytest.mark.parametrize("name,grid,churn", CASES, ids=[f"{n}-{g}-{c}" for n, g, c in CASES])
def test_samples_of_traced_schedule_parameters_equal_the_baked_schedule_s(name, grid, churn):
  cfg = samplers.SamplerConfig(sampler=name, num_steps=6, grid=grid, churn=churn,
                               clip_denoised=False)
  traces, key = [], jax.random.key(1)

  def draw(sch, key):
    return samplers.sample(analytic_denoiser(sch), sch, cfg, (32, 2), None, key)

  def traced(p, key):
    traces.append(1)
    return draw(ls.schedule(p), key)

  traced = jax.jit(traced)
  outs = []
  for p in trained_like():
    want = np.asarray(jax.jit(lambda k: draw(baked(p), k))(key))
    outs.append(np.asarray(traced(p, key)))
    np.testing.assert_allclose(outs[-1], want, rtol=1e-4, atol=1e-5)
  assert not np.allclose(*outs)  # The parameters reach the samples.
  assert len(traces) == 1


def test_the_ode_likelihood_of_traced_schedule_parameters_equals_the_baked_schedule_s():
  x = jnp.linspace(-0.9, 0.9, 12).reshape(4, 3)
  key, traces = jax.random.key(2), []

  def nll(sch, key):
    return likelihood.ode_log_likelihood(analytic_denoiser(sch), sch, x, None, key, steps=8,
                                         lambda_max=160.0)

  def traced(p, key):
    traces.append(1)
    return nll(ls.schedule(p), key)

  traced = jax.jit(traced)
  for p in trained_like():
    want = np.asarray(jax.jit(lambda k: nll(baked(p), k))(key))
    np.testing.assert_allclose(traced(p, key), want, rtol=1e-5)
  assert len(traces) == 1


@pytest.mark.parametrize("sampler,grid,churn,sch", [
    ("heun", "edm", 5.0, schedules.cosine()), ("ddim", "uniform", 0.0, schedules.linear())])
def test_fixed_schedules_keep_their_host_built_grids(sampler, grid, churn, sch):
  """A fixed schedule's samples are those of the grid time_grid builds on the host
  (its exact values), bit for bit: the device grid is for learned schedules only."""
  cfg = samplers.SamplerConfig(sampler=sampler, num_steps=6, grid=grid, churn=churn)
  key = jax.random.key(3)
  got = jax.jit(lambda k: samplers.sample(analytic_denoiser(sch), sch, cfg, (8, 2), None, k))(key)

  def by_host_grid(k):  # samplers.sample's steps, on the host-built grid.
    times = samplers.time_grid(sch, cfg.num_steps, cfg.grid, cfg.rho, cfg.t_min, cfg.t_max,
                               cfg.lambda_max)
    denoise = lambda x, t, c: jnp.clip(analytic_denoiser(sch)(x, t, c), -1.0, 1.0)
    prior_key, loop_key = jax.random.split(k)
    x = sch.sigma(times[0]) * jax.random.normal(prior_key, (8, 2), jnp.float32)
    x = samplers.SAMPLERS[sampler].run(denoise, sch, times, x, None, loop_key, cfg)
    return jnp.clip(x, -1.0, 1.0)

  np.testing.assert_array_equal(got, jax.jit(by_host_grid)(key))
