"""VDM's learned schedule: monotone for any parameters, a VP process, and its gradient
(the endpoints d E[L], the shape d E[L^2]) against direct differentiation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core import diffusion, learned_schedule as ls, schedules


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
