import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core import diffusion, parameterisation, schedules

SCHEDS = {"linear": schedules.linear(), "cosine": schedules.cosine()}


@pytest.mark.parametrize("name", sorted(SCHEDS))
def test_noising_marginal_mean_and_variance(name):
  sch = SCHEDS[name]
  n = 200_000
  x0 = jnp.full((n, 1), 0.7)
  t = jnp.full((n,), 0.3)
  eps = jax.random.normal(jax.random.key(0), x0.shape)
  xt = np.asarray(parameterisation.q_sample(sch, x0, t, eps))
  a, s = float(sch.alpha(0.3)), float(sch.sigma(0.3))
  # Standard errors: s / sqrt(n) for the mean, ~ s^2 sqrt(2 / n) for the variance.
  assert abs(xt.mean() - a * 0.7) < 5 * s / np.sqrt(n)
  assert abs(xt.var() - s**2) < 5 * s**2 * np.sqrt(2 / n)


@pytest.mark.parametrize("prediction", sorted(parameterisation.PREDICTIONS))
def test_target_converts_back_to_x0(prediction):
  sch = SCHEDS["cosine"]
  k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
  x0 = jax.random.uniform(k1, (16, 4, 4, 1), minval=-1, maxval=1)
  eps = jax.random.normal(k2, x0.shape)
  t = jax.random.uniform(k3, (16,), minval=0.02, maxval=0.98)
  xt = parameterisation.q_sample(sch, x0, t, eps)
  out = parameterisation.target(prediction, sch, x0, t, eps)
  np.testing.assert_allclose(parameterisation.to_x0(prediction, sch, out, xt, t), x0, atol=2e-4)


def test_conversions_round_trip():
  sch = SCHEDS["linear"]
  k1, k2 = jax.random.split(jax.random.key(2))
  x0 = jax.random.normal(k1, (8, 3))
  eps = jax.random.normal(k2, (8, 3))
  t = jnp.linspace(0.05, 0.95, 8)
  xt = parameterisation.q_sample(sch, x0, t, eps)
  np.testing.assert_allclose(parameterisation.eps_from_x0(sch, x0, xt, t), eps, atol=1e-4)
  np.testing.assert_allclose(parameterisation.x0_from_eps(sch, eps, xt, t), x0, atol=1e-3)
  v = parameterisation.v_from(sch, x0, eps, t)
  np.testing.assert_allclose(parameterisation.x0_from_v(sch, v, xt, t), x0, atol=1e-5)
  # Tweedie: score = -eps / sigma.
  sig = np.asarray(sch.sigma(t))[:, None]
  np.testing.assert_allclose(parameterisation.score_from_x0(sch, x0, xt, t), -eps / sig, rtol=1e-3,
                             atol=1e-3)


def test_loss_is_zero_for_the_true_target_and_positive_otherwise():
  sch = SCHEDS["linear"]
  x0 = jnp.zeros((32, 2, 2, 1))  # With x0 = 0, x_t = sigma eps: eps is recoverable.
  exact = lambda xt, t: xt / sch.sigma(t)[:, None, None, None]
  d = diffusion.make(sch, "eps")
  loss, aux = diffusion.denoising_loss(exact, d, x0, jax.random.key(3))
  assert float(loss) < 1e-8
  assert aux["per_example"].shape == (32,)
  wrong, _ = diffusion.denoising_loss(lambda xt, t: jnp.zeros_like(xt), d, x0,
                                      jax.random.key(3))
  assert float(wrong) == pytest.approx(1.0, abs=0.15)  # E[eps^2] = 1.


def test_discrete_time_sampling_is_on_the_grid():
  t = diffusion.uniform_times(4096, jax.random.key(0), 1000, 1e-5)
  idx = np.asarray(t) * 1000
  np.testing.assert_allclose(idx, np.round(idx), atol=1e-3)
  assert idx.min() >= 1 and idx.max() <= 1000


def test_unknown_prediction():
  with pytest.raises(ValueError, match="diffusion.prediction='score2' is unknown"):
    parameterisation.target("score2", SCHEDS["linear"], jnp.zeros(1), jnp.zeros(1), jnp.zeros(1))
