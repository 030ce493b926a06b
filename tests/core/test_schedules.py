import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core import diffusion, parameterisation, schedules


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


@pytest.mark.parametrize("name", ["linear", "cosine", "vp", "linear_logsnr"])
def test_variance_preserving(name):
  sch = getattr(schedules, name)()
  t = jnp.linspace(0.0, 1.0, 2001)
  np.testing.assert_allclose(sch.alpha(t) ** 2 + sch.sigma(t) ** 2, 1.0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(schedules.SCHEDULES))
def test_log_snr_is_consistent_and_strictly_decreasing(name):
  sch = getattr(schedules, name)()
  t = jnp.linspace(1e-3, 0.99, 2001)
  a, s, l = (np.asarray(f(t), np.float64) for f in (sch.alpha, sch.sigma, sch.log_snr))
  assert np.all(np.diff(l) < 0), "log-SNR must decrease strictly"
  assert np.all(np.isfinite(l))
  np.testing.assert_allclose(l, np.log(a**2) - np.log(s**2), rtol=1e-3, atol=2e-3)


def test_closed_forms_of_each_process():
  t = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
  tj = jnp.asarray(t)
  log_a = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
  np.testing.assert_allclose(schedules.vp().alpha(tj), np.exp(log_a), rtol=1e-5)
  np.testing.assert_allclose(schedules.subvp().sigma(tj), 1 - np.exp(2 * log_a), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(schedules.subvp().alpha(tj), np.exp(log_a), rtol=1e-5)
  np.testing.assert_allclose(schedules.ve(0.01, 50.0).sigma(tj), 0.01 * 5000.0**t, rtol=1e-5)
  np.testing.assert_allclose(schedules.ve().alpha(tj), 1.0)
  edm = schedules.edm(0.002, 80.0, 7.0)
  np.testing.assert_allclose(edm.sigma(jnp.asarray([0.0, 1.0])), [0.002, 80.0], rtol=1e-5)
  root = np.asarray(edm.sigma(tj)) ** (1 / 7)  # Linear in t on the rho-warped scale.
  np.testing.assert_allclose(np.diff(root) / np.diff(t), (80 ** (1 / 7) - 0.002 ** (1 / 7)),
                             rtol=1e-4)
  fl = schedules.flow()
  np.testing.assert_allclose(fl.alpha(tj), 1 - t, atol=1e-7)
  np.testing.assert_allclose(fl.sigma(tj), t, atol=1e-7)


def test_flow_derivatives_are_exact_everywhere():
  """Before: t clipped at 0.999 inside alpha and sigma made both derivatives 0 above
  it and half their value at 0.999 (the velocity target and its conversion broke)."""
  t = jnp.asarray([0.0, 0.3, 0.999, 0.9995, float(np.nextafter(np.float32(1), 0)), 1.0])
  a, s, da, ds = parameterisation.derivatives(schedules.flow(), t)
  np.testing.assert_allclose(a, 1 - np.asarray(t), atol=1e-7)
  np.testing.assert_allclose(s, t, atol=1e-7)
  np.testing.assert_array_equal(da, -1.0)
  np.testing.assert_array_equal(ds, 1.0)


def test_cosine_derivatives_match_the_formula_up_to_t_one():
  """alpha = cos(B) / cos(A): d alpha / dt = -pi/2 / (1 + s) sin(B) / cos(A), finite
  and nonzero at t = 1 (a log-SNR clip at -20 used to zero it for t > 0.99997)."""
  s = 0.008
  t = np.array([0.5, 0.9, 0.99999, float(np.nextafter(np.float32(1), 0)), 1.0])
  _, _, da, _ = parameterisation.derivatives(schedules.cosine(s), jnp.asarray(t))
  b = 0.5 * np.pi * (t + s) / (1 + s)
  want = -0.5 * np.pi / (1 + s) * np.sin(b) / np.cos(0.5 * np.pi * s / (1 + s))
  np.testing.assert_allclose(da, want, rtol=1e-5)


def test_continuous_vp_is_the_limit_of_ddpm_betas():
  """score_sde: beta_min = T beta_start, beta_max = T beta_end gives DDPM as T grows."""
  ddpm, cont = schedules.linear(1e-4, 0.02, 1000), schedules.vp(0.1, 20.0)
  t = jnp.linspace(0.01, 1.0, 100)
  la_d = np.log(np.asarray(ddpm.alpha(t), np.float64))
  la_c = np.log(np.asarray(cont.alpha(t), np.float64))
  # They differ by O(1/T): DDPM's beta_i sits at the start of its step, not the middle.
  np.testing.assert_allclose(la_d, la_c, rtol=0.01, atol=5e-4)


@pytest.mark.parametrize("name", sorted(schedules.SCHEDULES))
def test_lambda_inverse_round_trips(name):
  sch = getattr(schedules, name)()
  t_of = schedules.lambda_inverse(sch, 1e-3, 0.99)
  t = jnp.linspace(0.01, 0.98, 50)
  np.testing.assert_allclose(t_of(schedules.lam(sch, t)), t, atol=2e-4)


def test_cosine_endpoints_and_closed_form():
  sch = schedules.cosine(s=0.008)
  assert float(sch.alpha(0.0)) == 1.0 and float(sch.sigma(0.0)) == 0.0
  assert float(sch.alpha(1.0)) == 0.0 and float(sch.sigma(1.0)) == 1.0
  t = np.array([1e-5, 0.1, 0.5, 0.9, 0.9999])
  f = lambda u: np.cos(0.5 * np.pi * (u + 0.008) / 1.008) ** 2
  t32 = np.asarray(jnp.asarray(t, jnp.float32), np.float64)  # The times jnp evaluates.
  abar = f(t32) / f(0)
  np.testing.assert_allclose(np.asarray(sch.alpha(jnp.asarray(t)), np.float64) ** 2, abar,
                             rtol=1e-5)
  # Accurate at both ends, where 1 - alpha^2 or alpha^2 alone would cancel.
  np.testing.assert_allclose(np.asarray(sch.sigma(jnp.asarray(t)), np.float64) ** 2, 1 - abar,
                             rtol=1e-4)
  np.testing.assert_allclose(sch.log_snr(jnp.asarray(t)), np.log(abar / (1 - abar)), rtol=1e-4,
                             atol=1e-4)


def test_discrete_cosine_is_nichol_and_dhariwals_clipped_betas():
  """beta_i = min(1 - f(i/T) / f((i-1)/T), 0.999) (their section 3.2), alpha-bar_i the
  product of 1 - beta: alpha-bar_T = alpha-bar_{T-1} (1 - 0.999) > 0."""
  T, s = 1000, 0.008
  f = lambda i: np.cos(0.5 * np.pi * (i / T + s) / (1 + s)) ** 2
  betas = [min(1 - f(i) / f(i - 1), 0.999) for i in range(1, T + 1)]
  abar = np.cumprod(1 - np.asarray(betas))
  sch = schedules.cosine(s, num_steps=T)
  i = np.array([1, 10, 500, 990, 999, 1000])
  np.testing.assert_allclose(np.asarray(sch.alpha(jnp.asarray(i / T)), np.float64) ** 2,
                             abar[i - 1], rtol=1e-4)
  assert betas[-1] == 0.999 and abar[-1] == pytest.approx(abar[-2] * 1e-3)


def test_linear_logsnr_is_vdms_fixed_schedule():
  """Kingma et al. (2021): gamma(t) = -log-SNR(t) linear from -13.3 to 5."""
  sch = schedules.linear_logsnr(13.3, -5.0)
  t = np.array([0.0, 0.25, 0.5, 1.0])
  np.testing.assert_allclose(sch.log_snr(jnp.asarray(t)), 13.3 - 18.3 * t, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(np.asarray(sch.sigma(jnp.asarray(t))) ** 2,
                             1 / (1 + np.exp(13.3 - 18.3 * t)), rtol=1e-5)
  # VDM's continuous ELBO weights the eps error by gamma'(t) / 2: here a constant 9.15.
  w_eps = diffusion.weight("elbo", sch, jnp.asarray(t)) / jnp.exp(sch.log_snr(jnp.asarray(t)))
  np.testing.assert_allclose(w_eps, 18.3 / 2, rtol=1e-4)


def test_schedule_is_jittable_and_broadcasts():
  sch = schedules.linear()
  out = jax.jit(sch.alpha)(jnp.ones((3, 2)) * 0.5)
  assert out.shape == (3, 2)


def test_unknown_schedule():
  from diffusion_jax.config import defaults
  f = defaults.get_config().diffusion
  f.schedule = "nope"
  with pytest.raises(ValueError, match="diffusion.schedule='nope' is unknown; known: .*'vp'"):
    schedules.from_config(f)
