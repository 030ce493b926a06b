"""Samplers checked against exact answers: Gaussian data has a closed-form denoiser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import samplers, schedules
from diffusion_jax.models.unet import Cond

MU, STD = 0.3, 0.5


def gaussian_denoiser(schedule):
  """E[x0 | x_t] for x0 ~ N(MU, STD^2) per dimension."""
  def d(x, t, cond):
    a = schedule.alpha(t)[:, None]
    s = schedule.sigma(t)[:, None]
    gain = a * STD**2 / (a**2 * STD**2 + s**2)
    return MU + gain * (x - a * MU)
  return d


# Stochastic steps (DDPM, DDIM eta > 0) draw from q(x_s | x_t, x0 = E[x0 | x_t]), which
# ignores the spread of x0 given x_t: exact only as steps get small (at 50 steps the
# std comes out ~0.44 instead of 0.5). Deterministic DDIM is accurate at 50 steps.
@pytest.mark.parametrize("name,steps,eta", [("ddpm", 1000, 0.0), ("ddim", 50, 0.0),
                                            ("ddim", 1000, 1.0)])
def test_sampler_recovers_gaussian(name, steps, eta):
  sch = schedules.linear()
  cfg = samplers.SamplerConfig(name=name, num_steps=steps, eta=eta, clip_denoised=False)
  n = 4000
  x = jax.jit(lambda k: samplers.sample(gaussian_denoiser(sch), sch, cfg, (n, 2), None, k))(
      jax.random.key(0))
  x = np.asarray(x)
  # n = 4000 draws per dimension: standard errors ~0.008 (mean), ~0.006 (std).
  np.testing.assert_allclose(x.mean(0), MU, atol=0.04)
  np.testing.assert_allclose(x.std(0), STD, atol=0.03)


def test_ddim_eta_one_is_the_ddpm_posterior():
  sch = schedules.cosine()
  x = jax.random.normal(jax.random.key(1), (64, 3))
  x0 = jax.random.normal(jax.random.key(2), (64, 3)) * 0.3
  key = jax.random.key(3)
  for t, s in [(0.9, 0.8), (0.5, 0.45), (0.1, 0.0)]:
    a = samplers.ddpm_step(sch, x, x0, jnp.float32(t), jnp.float32(s), key)
    b = samplers.ddim_step(sch, x, x0, jnp.float32(t), jnp.float32(s), key, eta=1.0)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_last_step_returns_the_denoised_estimate():
  sch = schedules.linear()
  x = jnp.ones((4, 2))
  x0 = jnp.full((4, 2), 0.25)
  out = samplers.ddim_step(sch, x, x0, jnp.float32(0.001), jnp.float32(0.0), jax.random.key(0))
  # sigma(0) ~ 3e-7 (log-SNR capped at 30) times the implied eps (75) leaves ~2e-5.
  np.testing.assert_allclose(out, x0, atol=5e-5)


def test_time_grid_on_discrete_steps():
  sch = schedules.linear(num_steps=1000)
  g = samplers.time_grid(sch, 50)
  assert g[0] == 1.0 and g[-1] == 0.0 and len(g) == 51
  np.testing.assert_allclose(g * 1000, np.round(g * 1000), atol=1e-3)
  assert np.all(np.diff(g) < 0)
  with pytest.raises(ValueError, match="exceed"):
    samplers.time_grid(sch, 1001)


def test_guidance_arithmetic():
  """D_u + w (D_c - D_u), both branches in one doubled batch."""
  calls = []

  def d(x, t, cond):
    calls.append(x.shape[0])
    return jnp.where(cond.labels[:, None] == 10, 1.0, 3.0) * jnp.ones_like(x)

  x, t = jnp.zeros((5, 2)), jnp.full((5,), 0.5)
  cond = Cond(labels=jnp.arange(5))
  for w, want in [(0.0, 1.0), (1.0, 3.0), (2.0, 5.0), (4.0, 9.0)]:
    calls.clear()
    out = samplers.guided(d, w, null_label=10)(x, t, cond)
    np.testing.assert_allclose(out, want)
    assert calls == ([5] if w == 1.0 else [10])


def test_unknown_sampler():
  with pytest.raises(ValueError, match="unknown sampler 'heun9'"):
    samplers.sample(lambda x, t, c: x, schedules.linear(),
                    samplers.SamplerConfig(name="heun9"), (1, 1), None, jax.random.key(0))
