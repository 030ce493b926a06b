"""Targets, conversions and weightings against exact answers for Gaussian data.

For x0 ~ N(0, S^2 I), E[x0 | x_t] = g x_t with g = alpha S^2 / (alpha^2 S^2 + sigma^2), and
its error has variance V(t) = S^2 sigma^2 / (alpha^2 S^2 + sigma^2) per dimension. A
network that outputs the exact denoiser in any parameterisation therefore attains the
loss minimum E_t[w(t) V(t)] (times k(t)^2, the target's slope in x0, for 'simple').
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.config.errors import ConfigError
from diffusion_jax.core import diffusion, parameterisation, samplers, schedules

S = 0.5
SCHEDS = ["linear", "cosine", "vp", "subvp", "ve", "edm", "flow"]


def exact_x0(sch, x_t, t):
  a, s = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
  return a * S**2 / (a**2 * S**2 + s**2) * x_t


def post_var(sch, t):
  a, s = sch.alpha(t), sch.sigma(t)
  return S**2 * s**2 / (a**2 * S**2 + s**2)


@pytest.mark.parametrize("sched,pred", list(itertools.product(SCHEDS, sorted(parameterisation.PREDICTIONS))))
def test_every_target_round_trips_through_x0(sched, pred):
  sch = getattr(schedules, sched)()
  p = parameterisation.parameterisation(pred)
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x0 = jax.random.uniform(k1, (32, 6), minval=-1, maxval=1)
  eps = jax.random.normal(k2, x0.shape)
  t = jax.random.uniform(k3, (32,), minval=0.05, maxval=0.95)
  x_t = parameterisation.q_sample(sch, x0, t, eps)
  np.testing.assert_allclose(p.to_x0(sch, p.target(sch, x0, eps, t, x_t), x_t, t), x0,
                             atol=5e-3, rtol=1e-3)
  np.testing.assert_allclose(p.from_x0(sch, x0, x_t, t), p.target(sch, x0, eps, t, x_t),
                             atol=5e-3, rtol=1e-3)


# Every process (cosine also discrete) at every time a run evaluates it at: training's
# t_min and the largest float32 below 1 (continuous times are drawn from [t_min, 1)),
# or the steps 1/T and 1 of a discrete schedule; the sampler's default t_min and grid
# start; and t = 1.
ENDPOINT_PROCESSES = {name: getattr(schedules, name)() for name in schedules.SCHEDULES}
ENDPOINT_PROCESSES["cosine_T1000"] = schedules.cosine(num_steps=1000)


def endpoint_times(sch):
  n = sch.num_steps
  top = [1.0] if n else [1e-5, float(np.nextafter(np.float32(1), np.float32(0))), 1.0]
  return sorted(set([1.0 / n if n else 1e-5, 1e-3, samplers.grid_start(sch)] + top))


@pytest.mark.parametrize("pred", sorted(parameterisation.PREDICTIONS))
@pytest.mark.parametrize("sched", sorted(ENDPOINT_PROCESSES))
def test_every_target_round_trips_at_the_endpoints(sched, pred):
  """The round trip target -> x0 is exact up to float32 rounding of its inputs (the
  target and x_t), amplified by the conversion's own sensitivity to them: 1 / alpha
  for eps and score, which is ~1e7 just below t = 1 where alpha(1) = 0. Where
  alpha = 0 (flow and cosine at t = 1) x0 follows from x0, v and flow only.
  Before: flow's velocity conversion divided by zero above t = 0.999 (nan)."""
  sch, p = ENDPOINT_PROCESSES[sched], parameterisation.parameterisation(pred)
  k1, k2 = jax.random.split(jax.random.key(0))
  x0 = jax.random.uniform(k1, (64, 6), minval=-1, maxval=1)
  eps = jax.random.normal(k2, x0.shape)
  for tv in endpoint_times(sch):
    t = jnp.full((64,), tv, jnp.float32)
    if float(sch.alpha(t[0])) == 0.0 and pred not in ("x0", "v", "flow"):
      continue  # eps, score and edm's F carry nothing about x0 where alpha = 0.
    x_t = parameterisation.q_sample(sch, x0, t, eps)
    out = p.target(sch, x0, eps, t, x_t)
    back = p.to_x0(sch, out, x_t, t)
    # |d x0 / d out| |out| + |d x0 / d x_t| |x_t|, by forward differentiation (the
    # conversions are linear in out and x_t).
    sens = (jnp.abs(jax.jvp(lambda o: p.to_x0(sch, o, x_t, t), (out,), (jnp.abs(out),))[1])
            + jnp.abs(jax.jvp(lambda x: p.to_x0(sch, out, x, t), (x_t,), (jnp.abs(x_t),))[1]))
    err = np.asarray(jnp.abs(back - x0))
    assert np.all(np.isfinite(np.asarray(out))) and np.all(np.isfinite(err)), tv
    assert np.all(err <= 1e-6 + 8 * np.finfo(np.float32).eps * np.asarray(sens)), (
        tv, float(err.max()), float(sens.max()))


def test_flow_velocity_target_is_eps_minus_x0_up_to_t_one():
  """Before: 0 above t = 0.999 and half of eps - x0 at 0.999."""
  sch = schedules.flow()
  t = jnp.asarray([0.5, 0.999, 0.9995, float(np.nextafter(np.float32(1), 0)), 1.0])
  x0, eps = jnp.full((5, 3), 0.2), jnp.full((5, 3), -1.0)
  out = parameterisation.target("flow", sch, x0, t, eps)
  np.testing.assert_allclose(out, eps - x0, rtol=1e-6)


@pytest.mark.parametrize("weighting", sorted(w for w in diffusion.WEIGHTINGS))
def test_flow_prediction_trains_finitely_with_every_weighting(weighting):
  """Loss and gradient of a small linear network, batch 4096 of uniform times, which
  reach above t = 0.999 (before: nan there with any weighting but simple, which
  regressed onto a zero target instead)."""
  d = diffusion.make(schedules.flow(), "flow", weighting, t_min=1e-3)
  x0 = 0.5 * jax.random.normal(jax.random.key(0), (4096, 3))

  def loss(w, key):
    return diffusion.denoising_loss(lambda x, t: w[0] * x + w[1] * t[:, None], d, x0, key)

  (value, aux), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      jnp.asarray([0.3, -0.2]), jax.random.key(1))
  assert float(jnp.max(aux["t"])) > 0.999
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))


def test_weightings_not_finite_on_the_training_times_are_refused():
  """The check evaluates each term of the loss on the training times: SNR = 1e60 at
  t = 1e-30 on flow is inf in float32, so that config is refused before training."""
  from diffusion_jax.config import defaults
  f = defaults.get_config().diffusion
  f.schedule, f.num_steps, f.prediction, f.weighting, f.t_min = "flow", 0, "flow", "snr", 1e-30
  with pytest.raises(ConfigError, match=r"the weighting is not finite on this process at "
                     r"t=1e-30 \(prediction='flow', weighting='snr'"):
    diffusion.from_config(f)
  f.t_min = 1e-5
  diffusion.from_config(f)


def exact_apply(d):
  """The network that makes D exact, in d's parameterisation (input scaling undone)."""
  def apply(net_in, t):
    x_t = net_in / d.param.in_scale(d.schedule, t, net_in)
    return d.param.from_x0(d.schedule, exact_x0(d.schedule, x_t, t), x_t, t)
  return apply


def slope(d, t):
  """k(t): the change of the target per unit change of x0 at fixed x_t."""
  x_t = jnp.zeros((t.shape[0], 1))
  one = d.param.from_x0(d.schedule, jnp.ones_like(x_t), x_t, t)
  zero = d.param.from_x0(d.schedule, jnp.zeros_like(x_t), x_t, t)
  return (one - zero)[:, 0]


def mc_loss(d, n=8192, dim=8, seed=0):
  x0 = S * jax.random.normal(jax.random.key(seed), (n, dim))
  loss, _ = jax.jit(lambda k: diffusion.denoising_loss(exact_apply(d), d, x0, k))(
      jax.random.key(seed + 1))
  return float(loss)


def quadrature(d, weight_fn, t_min):
  if d.schedule.num_steps:
    t = jnp.arange(1, d.schedule.num_steps + 1, dtype=jnp.float32) / d.schedule.num_steps
    return float(jnp.mean(weight_fn(t) * post_var(d.schedule, t)))
  t = jnp.linspace(t_min, 1.0, 200_001)
  f = np.asarray(weight_fn(t) * post_var(d.schedule, t), np.float64)
  return float(np.trapezoid(f, np.asarray(t, np.float64)) / (1.0 - t_min))


@pytest.mark.parametrize("sched,pred", [("linear", "eps"), ("linear", "v"), ("cosine", "x0"),
                                        ("vp", "score"), ("edm", "edm"), ("flow", "flow")])
def test_simple_loss_of_the_exact_denoiser_is_its_known_minimum(sched, pred):
  d = diffusion.make(getattr(schedules, sched)(), pred, t_min=1e-3)
  want = quadrature(d, lambda t: slope(d, t) ** 2, 1e-3)
  assert mc_loss(d) == pytest.approx(want, rel=0.06)


@pytest.mark.parametrize("sched,weighting,sampling", [
    ("vp", "elbo", "importance"), ("vp", "likelihood", "importance"),
    ("ve", "likelihood", "importance"), ("cosine", "min_snr", "uniform"),
    ("edm", "edm", "uniform"), ("linear", "snr", "uniform")])
def test_weighted_loss_of_the_exact_denoiser_is_its_known_minimum(sched, weighting, sampling):
  sch = getattr(schedules, sched)(**({"num_steps": 0} if sched == "cosine" else {}))
  d = diffusion.make(sch, "eps", weighting, sampling, t_min=1e-3)
  want = quadrature(d, d.weight_fn, 1e-3 if sampling == "uniform" else 1e-3)
  assert mc_loss(d) == pytest.approx(want, rel=0.06)


def test_edm_target_is_the_edm_weighting_and_eps_is_the_snr_weighting():
  """Same network output, two losses: they must agree example by example."""
  for sched, pred, weighting in [("edm", "edm", "edm"), ("linear", "eps", "snr")]:
    sch = getattr(schedules, sched)()
    plain = diffusion.make(sch, pred)
    weighted = diffusion.make(sch, pred, weighting)
    x0 = jax.random.normal(jax.random.key(0), (256, 4)) * S
    net = lambda net_in, t: jnp.tanh(net_in) * 0.3 + t[:, None]  # Any fixed function.
    a, aux_a = diffusion.denoising_loss(net, plain, x0, jax.random.key(1))
    b, aux_b = diffusion.denoising_loss(net, weighted, x0, jax.random.key(1))
    np.testing.assert_allclose(aux_a["per_example"], aux_b["per_example"], rtol=2e-3)


@pytest.mark.parametrize("sched", SCHEDS)
def test_likelihood_and_elbo_weightings_agree(sched):
  sch = getattr(schedules, sched)()
  t = jnp.linspace(0.05, 0.95, 19)
  np.testing.assert_allclose(diffusion.weight("likelihood", sch, t), diffusion.weight("elbo", sch, t),
                             rtol=2e-3)


def test_importance_sampling_follows_its_density():
  sch = schedules.vp()
  d = diffusion.make(sch, "eps", "elbo", "importance", t_min=1e-3)
  t, iw = d.time_fn(jax.random.key(0), 200_000)
  # For VP, w_eps of the ELBO is -d log SNR / dt / 2: its CDF is linear in log SNR.
  ls = np.asarray(sch.log_snr(t))
  lo, hi = float(sch.log_snr(1.0)), float(sch.log_snr(1e-3))
  hist, _ = np.histogram(ls, bins=10, range=(lo, hi))
  np.testing.assert_allclose(hist / len(ls), 0.1, atol=0.005)
  assert np.all(np.isfinite(np.asarray(iw)))


def test_lognormal_time_sampling_matches_edm():
  sch = schedules.edm()
  d = diffusion.make(sch, "edm", time_sampling="lognormal")
  t, _ = d.time_fn(jax.random.key(0), 100_000)
  log_sigma = np.log(np.asarray(sch.sigma(t)))
  assert log_sigma.mean() == pytest.approx(-1.2, abs=0.02)
  assert log_sigma.std() == pytest.approx(1.2, abs=0.02)


def test_bad_names():
  sch = schedules.linear()
  with pytest.raises(ValueError, match="diffusion.weighting='heavy' is unknown"):
    diffusion.make(sch, "eps", "heavy")
  with pytest.raises(ValueError, match="diffusion.time_sampling='sobol' is unknown"):
    diffusion.make(sch, "eps", time_sampling="sobol")
  with pytest.raises(ValueError, match="needs a weighting other than 'simple'"):
    diffusion.make(schedules.vp(), "eps", time_sampling="importance")
