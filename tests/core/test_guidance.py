"""The guidance interval and autoguidance against closed forms: Gaussian data, whose
denoisers are affine in x_t, and counts of the branches each evaluation runs."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffusion_jax.conditioning import conditions
from diffusion_jax.config.errors import ConfigError
from diffusion_jax.core import guidance, samplers, schedules
from diffusion_jax.models.unet import Cond

NULL = 10  # The null label of the test's 10 classes.
STD = 0.5


def class_mean(labels):
  """Class c's data mean; the null label stands for the unconditional branch."""
  return jnp.where(labels == NULL, 0.0, 0.1 * labels - 0.4)


def gaussian(schedule, std, calls, name):
  """E[x0 | x_t, c] for x0 | c ~ N(class_mean(c), std^2) per dimension, which records
  the batch size of every evaluation that actually runs (jax.debug.callback)."""
  def d(x, t, cond):
    jax.debug.callback(lambda v: calls.append((name, v.shape[0])), t)
    a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    mu = class_mean(cond.labels)[:, None]
    return mu + a * std**2 / (a**2 * std**2 + s**2) * (x - a * mu)
  return d


def expected(schedule, x, t, labels, std, null=False):
  """The same posterior mean, in numpy float64 from the schedule's alpha and sigma."""
  a = np.asarray(schedule.alpha(t), np.float64)[:, None]
  s = np.asarray(schedule.sigma(t), np.float64)[:, None]
  mu = np.where(null, 0.0, 0.1 * np.asarray(labels) - 0.4)[:, None]
  return mu + a * std**2 / (a**2 * std**2 + s**2) * (np.asarray(x, np.float64) - a * mu)


def _null(cond, which):
  return conditions.null(cond, which, null_label=NULL)


LO, HI = 0.28, 5.42  # EDM2's interval (Kynkaanniemi et al. 2024).


def test_interval_guides_only_inside_and_skips_the_unconditional_branch_outside():
  sch = schedules.edm()  # alpha = 1: sigma(t) runs from 0.002 to 80.
  sigmas = np.array([0.05, 0.27, 0.29, 1.0, 5.4, 5.45, 40.0])
  ts = schedules.t_for_lambda(sch, sigmas, 0.0, 1.0)
  lam = np.asarray(schedules.lam(sch, jnp.asarray(ts)))
  inside = (lam > LO) & (lam <= HI)
  assert inside.tolist() == [False, False, True, True, True, False, False]
  x = jax.random.normal(jax.random.key(0), (len(ts), 3))
  labels = jnp.arange(len(ts)) % 10
  cond, w = Cond(labels=labels), 3.0
  calls = []
  d = guidance.guided(gaussian(sch, STD, calls, "model"), {"labels": w}, _null,
                      interval=(LO, HI), schedule=sch)
  f = jax.jit(d)
  c = expected(sch, x, ts, labels, STD)
  u = expected(sch, x, ts, labels, STD, null=True)
  want = np.where(inside[:, None], u + w * (c - u), c)
  # A batch with times inside and outside: every example right; both branches ran.
  np.testing.assert_allclose(f(x, jnp.asarray(ts), cond), want, rtol=1e-5, atol=1e-6)
  assert calls == [("model", 2 * len(ts))]
  # Each time alone (as in a sampler, where one time is shared by the batch): outside
  # the interval, only the conditional branch runs.
  for i in range(len(ts)):
    calls.clear()
    one = lambda v: v[i:i + 1]
    out = f(one(x), jnp.asarray(ts[i:i + 1]), Cond(labels=one(labels)))
    np.testing.assert_allclose(out, want[i:i + 1], rtol=1e-5, atol=1e-6)
    assert calls == [("model", 2 if inside[i] else 1)], (i, calls)


def test_no_interval_guides_everywhere_as_before():
  sch = schedules.vp()
  ts = jnp.asarray([0.01, 0.3, 0.99])
  x, labels = jnp.ones((3, 2)), jnp.asarray([1, 5, 9])
  calls = []
  out = guidance.guided(gaussian(sch, STD, calls, "model"), {"labels": 2.0}, _null)(
      x, ts, Cond(labels=labels))
  c, u = expected(sch, x, ts, labels, STD), expected(sch, x, ts, labels, STD, null=True)
  np.testing.assert_allclose(out, u + 2.0 * (c - u), rtol=1e-5, atol=1e-6)


def test_autoguidance_closed_form_with_and_without_cfg_and_interval():
  """D_bad + w (D - D_bad); with CFG the two directions add; the interval applies to
  both, and outside it the guide is not evaluated."""
  sch = schedules.vp()
  ts = np.asarray(schedules.t_for_lambda(sch, np.array([0.1, 1.0, 10.0]), 1e-3, 1.0))
  x = jax.random.normal(jax.random.key(1), (3, 4))
  labels = jnp.asarray([0, 4, 8])
  cond = Cond(labels=labels)
  calls = []
  good = gaussian(sch, STD, calls, "good")
  bad = gaussian(sch, 2 * STD, calls, "bad")  # A "bad version": too broad.
  c = expected(sch, x, ts, labels, STD)
  u = expected(sch, x, ts, labels, STD, null=True)
  b = expected(sch, x, ts, labels, 2 * STD)
  wa, wc = 2.5, 1.5
  auto = b + wa * (c - b)
  cases = [  # (scales, interval, expected, calls)
      ({}, (), auto, [("good", 3), ("bad", 3)]),
      ({"labels": wc}, (), u + wc * (c - u) + (wa - 1) * (c - b), [("good", 6), ("bad", 3)]),
      ({}, (0.5, 5.0), np.where(np.array([[False], [True], [False]]), auto, c),
       [("good", 3), ("bad", 3)]),
  ]
  for scales, interval, want, want_calls in cases:
    calls.clear()
    d = jax.jit(guidance.guided(good, scales, _null, guide=bad, guide_scale=wa,
                                interval=interval, schedule=sch))
    np.testing.assert_allclose(d(x, jnp.asarray(ts), cond), want, rtol=1e-5, atol=1e-6)
    assert sorted(calls) == sorted(want_calls), (scales, interval, calls)
  # One time outside the interval: the good model's conditional branch only.
  calls.clear()
  d = jax.jit(guidance.guided(good, {"labels": wc}, _null, guide=bad, guide_scale=wa,
                              interval=(0.5, 5.0), schedule=sch))
  out = d(x[:1], jnp.asarray(ts[:1]), Cond(labels=labels[:1]))
  np.testing.assert_allclose(out, c[:1], rtol=1e-5, atol=1e-6)
  assert calls == [("good", 1)]
  # Scale 1 is the model alone: no guide evaluated.
  calls.clear()
  d = guidance.guided(good, {}, _null, guide=bad, guide_scale=1.0)
  np.testing.assert_allclose(d(x, jnp.asarray(ts), cond), c, rtol=1e-5, atol=1e-6)
  assert calls == [("good", 3)]


def test_a_sampler_runs_the_guided_batch_only_at_times_inside():
  """Through a whole sampling loop: the doubled (guided) batch runs once per evaluation
  at a time whose sigma is inside, the single batch at every other; an interval that
  holds none of the times gives the unguided result."""
  sch = schedules.vp()
  cfg = samplers.SamplerConfig(sampler="heun", num_steps=8, clip_denoised=False)
  grid = samplers.time_grid(sch, cfg.num_steps, t_min=cfg.t_min, lambda_max=cfg.lambda_max)
  batch = 4
  cond = Cond(labels=jnp.arange(batch))

  def run(interval, scales):
    calls = []
    d = guidance.guided(gaussian(sch, STD, calls, "m"), scales, _null, interval=interval,
                        schedule=sch)
    x = jax.jit(lambda k: samplers.sample(d, sch, cfg, (batch, 2), cond, k))(jax.random.key(0))
    return np.asarray(x), calls

  # The times Heun evaluates D at: each grid time and the next, then the last nonzero.
  evals = [v for i in range(len(grid) - 2) for v in (grid[i], grid[i + 1])] + [grid[-2]]
  assert len(evals) == samplers.nfe(cfg)
  lam = np.asarray(schedules.lam(sch, jnp.asarray(evals)))
  u = np.unique(lam)  # Bounds between two of them (none on a bound): some in, some out.
  lo, hi = float(np.sqrt(u[1] * u[2])), float(np.sqrt(u[-3] * u[-2]))
  x, calls = run((lo, hi), {"labels": 3.0})
  inside = (lam > lo) & (lam <= hi)
  assert 0 < inside.sum() < len(evals)
  assert sorted(calls) == sorted([("m", 2 * batch if i else batch) for i in inside])
  unguided, _ = run((), {})
  none_inside, calls = run((1e8, 1e9), {"labels": 3.0})
  assert calls == [("m", batch)] * len(evals)
  # Equal up to float32 rounding: the programs differ.
  np.testing.assert_allclose(none_inside, unguided, atol=1e-6)
  assert not np.allclose(x, unguided, atol=1e-3)


def _sample_section(**fields):
  s = ml_collections.ConfigDict({"guidance_interval": (), "autoguidance_scale": 1.0})
  s.update(fields)
  return s


def test_guidance_config_parses_and_checks():
  g = guidance.GuidanceConfig.from_config(_sample_section(guidance_interval=(0.28, 5.42),
                                                          autoguidance_scale=2))
  assert g == guidance.GuidanceConfig((0.28, 5.42), 2.0)
  assert guidance.GuidanceConfig.from_config(_sample_section()).interval == ()
  for fields, message in [
      ({"guidance_interval": (1.0,)}, "give (lo, hi)"),
      ({"guidance_interval": (5.0, 1.0)}, "need 0 <= lo < hi"),
      ({"guidance_interval": (-1.0, 2.0)}, "need 0 <= lo < hi"),
      ({"guidance_interval": ("(0.28,inf)",)}, "two numbers"),
      ({"autoguidance_scale": -1.0}, "sample.autoguidance_scale=-1.0 must be"),
  ]:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
      guidance.GuidanceConfig.from_config(_sample_section(**fields))
