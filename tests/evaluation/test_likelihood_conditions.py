"""The likelihood of conditioned models through the evaluation's own path: inputs ->
conditions.make_cond -> the network (here exact) -> make_denoiser -> the ODE -> bits/dim,
against the exact conditional density."""

import types

import jax.numpy as jnp
import numpy as np

from diffusion_jax.conditioning import conditions
from diffusion_jax.config import defaults
from diffusion_jax.core import diffusion
from diffusion_jax.evaluation import likelihood
from diffusion_jax.evaluation.eval_config import EvalConfig
from diffusion_jax.training import mesh as mesh_lib

S = 0.15  # Given its conditions, every pixel is N(mu(conditions), S^2).
H = 1.0 / 127.5  # A uint8 bin's width in [-1, 1].


def mean_of(labels, image):
  """mu: a shift by class plus half of the upsampled low-resolution image."""
  return 0.3 * (labels.astype(jnp.float32) - 1.0)[:, None, None, None] + 0.5 * image


class ExactModel:
  """A class- and super-resolution-conditioned "network" that outputs eps exactly."""

  def __init__(self, d):
    self.config = types.SimpleNamespace(num_classes=3, text="")
    self.d = d

  def apply(self, variables, x_t, t, cond):
    sch = self.d.schedule
    a, s = (f(t)[:, None, None, None] for f in (sch.alpha, sch.sigma))
    mu = mean_of(cond.labels, cond.image)
    x0 = mu + a * S**2 / (a**2 * S**2 + s**2) * (x_t - a * mu)  # E[x0 | x_t, cond].
    return (x_t - a * x0) / s


def setup():
  c = defaults.get_config()
  c.diffusion.update({"schedule": "vp", "num_steps": 0, "prediction": "eps"})
  d = diffusion.from_config(c.diffusion)
  c.eval.update({"method": "ode", "ode_steps": 200, "batch_size": 8})
  ecfg = EvalConfig.from_config(c.eval)
  cond_cfg = conditions.CondConfig(image="sr", sr_factor=2)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 12).astype(np.int32)
  lowres = rng.uniform(-0.6, 0.6, (12, 4, 4, 1)).astype(np.float32)
  image = np.asarray(conditions.IMAGE_CONDITIONS["sr"].model_image({"lowres": lowres}, 8))
  mu = np.asarray(mean_of(jnp.asarray(labels), jnp.asarray(image)))
  x = mu + S * rng.standard_normal(mu.shape)
  images = np.clip(np.round((x + 1.0) * 127.5 - 0.5), 0, 255).astype(np.uint8)
  mesh = mesh_lib.make_mesh(1)
  fn = likelihood.make_nll_fn(ExactModel(d), d, ecfg, mesh, cond_cfg)
  return fn, images, {"label": labels, "lowres": lowres}, mu, ecfg, mesh


def exact_bpd(images, mu):
  """E over the dequantisation of -log N(x; mu, S^2), as bits per dimension of uint8."""
  centre = (images.astype(np.float64) + 0.5) / 127.5 - 1.0
  nats = 0.5 * np.log(2 * np.pi * S**2) + ((centre - mu) ** 2 + H**2 / 12) / (2 * S**2)
  return (nats.reshape(len(images), -1).mean(1) + np.log(127.5)) / np.log(2.0)


def test_conditional_bits_per_dim_equal_the_exact_conditional_density():
  fn, images, inputs, mu, ecfg, mesh = setup()
  got = likelihood.bits_per_dim(fn, {}, images, inputs, ecfg, mesh)
  want = exact_bpd(images, mu)
  assert got.shape == (12,)  # Two batches of 8, the second padded and trimmed.
  # Measured: 0.010 bits/dim at most (one dequantisation draw per example).
  np.testing.assert_allclose(got, want, atol=0.03)

  # The conditions are used: another example's label and low-resolution image give
  # each image a far lower likelihood.
  wrong = {k: np.roll(v, 1, axis=0) for k, v in inputs.items()}
  worse = likelihood.bits_per_dim(fn, {}, images, wrong, ecfg, mesh)
  # Measured: 0.2% at most; these are far from the mean, where 200 steps do less well.
  np.testing.assert_allclose(worse, exact_bpd(images, np.roll(mu, 1, axis=0)), rtol=0.01)
  assert worse.mean() > got.mean() + 0.5
