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


def expected_bound(x, T=1000):
  """The DDPM bound in nats per example, in expectation over its noise, for this
  Gaussian data and its exact denoiser, in float64: an independent computation.

  With D(x_t) = MU + g (x_t - a MU), g = a S^2 / (a^2 S^2 + s^2) and x_t = a x + s eps,
  x - D = (1 - g a)(x - MU) - g s eps, so each KL term's expectation is
  c^2 [(1 - g a)^2 (x - MU)^2 + g^2 s^2] / (2 v), c and v the posterior mean's
  coefficient of x0 and its variance; the decoder's expectation is over
  D(x_1) ~ N(MU + g a (x - MU), (g s)^2), by Gauss-Hermite quadrature."""
  abar = schedules.ddpm_alpha_bars(1e-4, 0.02, T)
  a, s2 = np.sqrt(abar), 1 - abar
  g = a * S**2 / (a**2 * S**2 + s2)
  total = 0.5 * abar[T] * x**2 / s2[T]  # KL of the prior.
  for i in range(2, T + 1):
    beta = 1 - abar[i] / abar[i - 1]
    c, v = a[i - 1] * beta / s2[i], beta * s2[i - 1] / s2[i]
    total = total + c**2 * ((1 - g[i] * a[i]) ** 2 * (x - MU) ** 2 + g[i] ** 2 * s2[i]) / (2 * v)
  std = np.sqrt((1 - abar[2] / abar[1]) * s2[1] / s2[2])  # The decoder's.
  decoder = 0.0
  for z, w in zip(*np.polynomial.hermite_e.hermegauss(40)):
    mean = MU + g[1] * a[1] * (x - MU) + g[1] * np.sqrt(s2[1]) * z
    prob = (st.norm.cdf((x + likelihood.HALF_BIN - mean) / std)
            - st.norm.cdf((x - likelihood.HALF_BIN - mean) / std))
    decoder = decoder - w / np.sqrt(2 * np.pi) * np.log(np.maximum(prob, 1e-12))
  return (total + decoder).sum(-1)


def test_discrete_bound_is_its_exact_expectation_and_above_the_nll():
  """Two-sided: the bound's Monte Carlo estimate (16 draws of its noise) matches its
  exact expectation (expected_bound), which lies above the exact discrete NLL by a
  margin stated here: 1.28-1.73 nats per example, 0.67 bits/dim on average, the
  slack of a reverse process with fixed (posterior) variances on this narrow data.
  A bound off by any factor, or below the NLL, fails."""
  sch = schedules.linear()
  u8 = np.clip(np.round((X + 1) * 127.5), 0, 255)
  x = u8 / 127.5 - 1
  f = jax.jit(lambda x, k: likelihood.vlb_terms(denoiser(sch), sch, x, None, k))
  draws = np.stack([np.asarray(f(jnp.asarray(x, jnp.float32), jax.random.key(s)))
                    for s in range(16)])
  exact = expected_bound(x)
  lo, hi = (u8 - 0.5) / 127.5 - 1, (u8 + 0.5) / 127.5 - 1
  nll = -np.log(st.norm(MU, S).cdf(hi) - st.norm(MU, S).cdf(lo)).sum(1)
  gap = exact - nll
  assert np.all(gap > 1.2) and np.all(gap < 1.8) and gap.mean() / (3 * np.log(2)) == (
      pytest.approx(0.67, abs=0.01))
  # Measured: per example within 3.2 standard errors (64 examples), overall 0.2.
  stderr = draws.std(0, ddof=1) / np.sqrt(len(draws))
  assert np.all(np.abs(draws.mean(0) - exact) < 4.5 * stderr)
  assert abs(draws.mean() - exact.mean()) < 3 * draws.std() / np.sqrt(draws.size)
  np.testing.assert_allclose(draws.mean(), exact.mean(), rtol=0.01)


def test_dequantized_bits_per_dim_of_uniform_data_is_eight():
  """Uniform uint8 data is 8 bits/dim; dequantised, x = (u8 + u) / 127.5 - 1 is uniform
  on an interval of length 256 / 127.5 per dimension."""
  dims = 5
  nll_x = jnp.full((3,), dims * np.log(256 / 127.5))
  np.testing.assert_allclose(likelihood.dequantized_nll_to_bpd(nll_x, dims), 8.0, atol=1e-5)
