import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import schedules


def test_linear_reproduces_ddpm_alpha_bars():
  sch = schedules.linear(1e-4, 0.02, 1000)
  betas = np.linspace(1e-4, 0.02, 1000)
  abar = np.cumprod(1 - betas)  # Ho et al.: alpha-bar_i, i = 1..T.
  i = np.array([1, 2, 10, 100, 500, 999, 1000])
  t = jnp.asarray(i / 1000.0)
  np.testing.assert_allclose(np.asarray(sch.alpha(t)) ** 2, abar[i - 1], rtol=2e-5, atol=1e-9)
  np.testing.assert_allclose(np.asarray(sch.sigma(t)) ** 2, 1 - abar[i - 1], rtol=2e-5)
  # Published endpoint values: alpha-bar_1 = 1 - 1e-4, alpha-bar_T ~ 4.04e-5.
  assert abs(float(sch.alpha(1.0)) ** 2 - 4.0358e-5) < 1e-8
  assert float(sch.sigma(0.001)) ** 2 == pytest.approx(1e-4, rel=1e-3)


@pytest.mark.parametrize("name", sorted(schedules.SCHEDULES))
def test_variance_preserving_and_monotone(name):
  sch = schedules.get_schedule(name)
  t = jnp.linspace(0.0, 1.0, 2001)
  a, s, l = sch.alpha(t), sch.sigma(t), sch.log_snr(t)
  np.testing.assert_allclose(a**2 + s**2, 1.0, atol=1e-6)
  assert np.all(np.diff(np.asarray(l)) < 0), "log-SNR must decrease strictly"
  assert np.all(np.isfinite(np.asarray(l)))
  np.testing.assert_allclose(np.asarray(l), np.log(a**2) - np.log(s**2), rtol=1e-3, atol=1e-3)


def test_cosine_endpoints_and_closed_form():
  sch = schedules.cosine(s=0.008)
  assert float(sch.alpha(0.0)) == pytest.approx(1.0, abs=1e-6)
  assert float(sch.sigma(1.0)) == pytest.approx(1.0, abs=1e-6)
  assert float(sch.alpha(1.0)) < 1e-4
  t = np.array([0.1, 0.5, 0.9])
  f = lambda u: np.cos(0.5 * np.pi * (u + 0.008) / 1.008) ** 2
  np.testing.assert_allclose(np.asarray(sch.alpha(jnp.asarray(t))) ** 2, f(t) / f(0), rtol=1e-5)


def test_schedule_is_jittable_and_broadcasts():
  sch = schedules.get_schedule("linear")
  out = jax.jit(sch.alpha)(jnp.ones((3, 2)) * 0.5)
  assert out.shape == (3, 2)


def test_unknown_schedule():
  with pytest.raises(ValueError, match="unknown noise schedule 'nope'"):
    schedules.get_schedule("nope")
