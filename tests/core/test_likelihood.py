"""Likelihoods against exact answers: Gaussian data, whose denoiser and density are known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st

from diffusion_jax.core import likelihood, schedules

MU, S = 0.1, 0.1


def denoiser(sch):
  def d(x, t, cond):
    shape = (-1,) + (1,) * (x.ndim - 1)
    a, s = sch.alpha(t).reshape(shape), sch.sigma(t).reshape(shape)
    return MU + a * S**2 / (a**2 * S**2 + s**2) * (x - a * MU)
  return d


X = MU + S * np.asarray(jax.random.normal(jax.random.key(0), (64, 3)))
EXACT = st.norm(MU, S).logpdf(X).sum(1)


@pytest.mark.parametrize("name", ["linear", "vp", "subvp", "ve", "edm", "flow"])
def test_ode_likelihood_matches_the_exact_gaussian_density(name):
  sch = getattr(schedules, name)()
  kw = {"t_max": 0.999} if name == "flow" else {}
  ll = jax.jit(lambda x, k: likelihood.ode_log_likelihood(
      denoiser(sch), sch, x, None, k, steps=500, exact_trace=True, **kw))(
          jnp.asarray(X, jnp.float32), jax.random.key(1))
  ll = np.asarray(ll)
  # Measured: <= 0.3% at 500 Heun steps (the error falls 16x for 4x the steps).
  assert abs(ll.mean() - EXACT.mean()) < 0.01 * abs(EXACT.mean())
  assert np.abs(ll - EXACT).max() < 0.05


def test_correlated_gaussian_exactly_and_by_hutchinson():
  """A rotated covariance makes the denoiser's Jacobian non-diagonal, so Rademacher
  probes have variance (for a diagonal Jacobian they are exact)."""
  rot = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0]
  cov = rot @ np.diag([0.05, 0.1, 0.3]) ** 2 @ rot.T
  sch = schedules.vp()
  cov_j = jnp.asarray(cov, jnp.float32)

  def d(x, t, cond):  # E[x0 | x_t] = alpha C (alpha^2 C + sigma^2 I)^-1 x_t.
    def one(xi, ti):
      a, s = sch.alpha(ti), sch.sigma(ti)
      return a * cov_j @ jnp.linalg.solve(a**2 * cov_j + s**2 * jnp.eye(3), xi)
    return jax.vmap(one)(x, t)

  x = np.random.default_rng(1).multivariate_normal(np.zeros(3), cov, 256).astype(np.float32)
  exact = st.multivariate_normal(np.zeros(3), cov).logpdf(x)
  run = lambda tr: np.asarray(jax.jit(lambda k: likelihood.ode_log_likelihood(
      d, sch, jnp.asarray(x), None, k, steps=300, probes=1, exact_trace=tr))(jax.random.key(4)))
  ref, est = run(True), run(False)
  assert abs(ref.mean() - exact.mean()) < 0.01 * abs(exact.mean())
  diff = est - ref
  assert np.abs(diff).max() > 1e-2  # The single-probe estimate does scatter...
  assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(len(diff))  # ...without bias.


def test_discrete_bound_is_never_below_the_true_nll():
  sch = schedules.linear()
  u8 = np.clip(np.round((X + 1) * 127.5), 0, 255)
  x = jnp.asarray(u8 / 127.5 - 1, jnp.float32)
  f = jax.jit(lambda x, k: likelihood.vlb_terms(denoiser(sch), sch, x, None, k))
  draws = np.stack([np.asarray(f(x, jax.random.key(s))) for s in range(16)])
  lo, hi = (u8 - 0.5) / 127.5 - 1, (u8 + 0.5) / 127.5 - 1
  nll = -np.log(st.norm(MU, S).cdf(hi) - st.norm(MU, S).cdf(lo)).sum(1)
  # The bound holds in expectation over its noise: per example within 3 standard
  # errors of the 16-draw mean, and overall by a wide margin.
  stderr = draws.std(0, ddof=1) / np.sqrt(len(draws))
  assert np.all(draws.mean(0) - nll > -3 * stderr)
  assert draws.mean() - nll.mean() > 5 * draws.std() / np.sqrt(draws.size)


def test_dequantized_bits_per_dim_of_uniform_data_is_eight():
  """Uniform uint8 data is 8 bits/dim; dequantised, x = (u8 + u) / 127.5 - 1 is uniform
  on an interval of length 256 / 127.5 per dimension."""
  dims = 5
  nll_x = jnp.full((3,), dims * np.log(256 / 127.5))
  np.testing.assert_allclose(likelihood.dequantized_nll_to_bpd(nll_x, dims), 8.0, atol=1e-5)
