"""Samplers checked against exact answers: Gaussian data has a closed-form denoiser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.conditioning import conditions
from diffusion_jax.config.errors import ConfigError
from diffusion_jax.core import guidance, samplers, schedules
from diffusion_jax.models.unet import Cond

MU, STD = 0.3, 0.5
# Each sampler at its usual number of steps (NFE in samplers.nfe).
USUAL = [("ddpm", 1000, "uniform"), ("ddim", 50, "uniform"), ("euler", 50, "edm"),
         ("heun", 18, "edm"), ("dpmpp_2m", 20, "edm"), ("em", 1000, "uniform"),
         ("pc", 500, "uniform")]
N = 4000  # Samples per test: standard errors ~0.008 (means), ~0.006 (stds) at STD = 0.5.


def gaussian_denoiser(schedule):
  """E[x0 | x_t] for x0 ~ N(MU, STD^2) per dimension."""
  def d(x, t, cond):
    a = schedule.alpha(t)[:, None]
    s = schedule.sigma(t)[:, None]
    gain = a * STD**2 / (a**2 * STD**2 + s**2)
    return MU + gain * (x - a * MU)
  return d


# The mixture of tests/core/test_denoiser_path.py, which runs every sampler on every
# process through the network path.
MIX_MU = np.array([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]])
MIX_W = np.array([0.5, 0.3, 0.2])
MIX_SD = 0.15


def mixture_denoiser(schedule):
  """E[x0 | x_t] for x0 ~ sum_k w_k N(mu_k, MIX_SD^2 I): responsibilities times the
  per-component Gaussian posterior means."""
  mu, logw = jnp.asarray(MIX_MU), jnp.log(jnp.asarray(MIX_W))

  def d(x, t, cond):
    a = schedule.alpha(t)[:, None, None]
    s = schedule.sigma(t)[:, None, None]
    var = a**2 * MIX_SD**2 + s**2
    diff = x[:, None, :] - a * mu[None]
    r = jax.nn.softmax(logw[None] - 0.5 * jnp.sum(diff**2, -1) / var[..., 0], axis=1)
    return jnp.sum(r[..., None] * (mu[None] + a * MIX_SD**2 / var * diff), axis=1)
  return d


def draw(denoiser, sched_name, name, steps, grid, shape, **kw):
  sch = getattr(schedules, sched_name)()
  cfg = samplers.SamplerConfig(sampler=name, num_steps=steps, grid=grid, clip_denoised=False,
                               lambda_max=80.0 if grid == "edm" else float("inf"), **kw)
  fn = jax.jit(lambda k: samplers.sample(denoiser(sch), sch, cfg, shape, None, k))
  return np.asarray(fn(jax.random.key(0)))


# Stochastic steps (DDPM, DDIM eta > 0) draw from q(x_s | x_t, x0 = E[x0 | x_t]), which
# ignores the spread of x0 given x_t: exact only as steps get small (at 50 steps the
# std comes out ~0.44 instead of 0.5), so they are tested at 1000 steps.
@pytest.mark.parametrize("name,steps,grid", USUAL + [("ddim_eta1", 1000, "uniform")],
                         ids=lambda v: str(v))
def test_every_sampler_recovers_a_gaussian(name, steps, grid):
  kw = {"eta": 1.0} if name == "ddim_eta1" else {}
  x = draw(gaussian_denoiser, "linear", name.replace("_eta1", ""), steps, grid, (N, 2), **kw)
  # Measured std errors at these steps: ddim-50 -5.6%, heun-18 +5.8%, dpmpp_2m-20 +6%;
  # test_ode_samplers_converge_at_their_order shows they vanish at the right rate.
  np.testing.assert_allclose(x.mean(0), MU, atol=0.03)
  np.testing.assert_allclose(x.std(0), STD, rtol=0.08)
  assert abs(np.corrcoef(x, rowvar=False)[0, 1]) < 0.05


@pytest.mark.parametrize("name,order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_ode_samplers_converge_at_their_order(name, order):
  """Gaussian data: the probability-flow ODE has the exact solution
  y - MU = (y_max - MU) STD / sqrt(STD^2 + lambda_max^2), y = x / alpha."""
  sch = schedules.edm()
  key = jax.random.key(0)
  errors = []
  for n in (18, 36, 72):
    cfg = samplers.SamplerConfig(sampler=name, num_steps=n, grid="edm", clip_denoised=False,
                                 lambda_max=80.0)
    x = np.asarray(samplers.sample(gaussian_denoiser(sch), sch, cfg, (512, 1), None, key))
    t0 = samplers.time_grid(sch, n, "edm", 7.0, 1e-3, 1.0, 80.0)[0]
    x_max = np.asarray(sch.sigma(t0) * jax.random.normal(jax.random.split(key)[0], (512, 1)))
    lam0, a0 = float(schedules.lam(sch, jnp.float32(t0))), float(sch.alpha(t0))
    exact = MU + (x_max / a0 - MU) * STD / np.sqrt(STD**2 + lam0**2)
    errors.append(np.abs(x - exact).max())
  rates = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
  assert np.all(rates > order - 0.3), (errors, rates)
  assert errors[-1] < (0.07 if order == 1 else 0.006)


def test_nfe_counts():
  assert samplers.nfe(samplers.SamplerConfig(sampler="heun", num_steps=18)) == 35
  assert samplers.nfe(samplers.SamplerConfig(sampler="pc", num_steps=500)) == 999
  assert samplers.nfe(samplers.SamplerConfig(sampler="dpmpp_2m", num_steps=20)) == 20


def test_euler_is_ddim():
  """DDIM's deterministic step is the Euler step of dy/dlambda = (y - D) / lambda."""
  a = draw(mixture_denoiser, "vp", "ddim", 30, "edm", (256, 2))
  b = draw(mixture_denoiser, "vp", "euler", 30, "edm", (256, 2))
  np.testing.assert_allclose(a, b, atol=1e-4)


def test_churn_keeps_the_distribution():
  x = draw(gaussian_denoiser, "edm", "heun", 40, "edm", (N, 2), churn=10.0,
           churn_min=0.05, churn_max=50.0)
  np.testing.assert_allclose(x.mean(0), MU, atol=0.03)
  np.testing.assert_allclose(x.std(0), STD, rtol=0.06)


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


# Every process, cosine both discrete and continuous.
GRID_PROCESSES = {name: getattr(schedules, name)() for name in schedules.SCHEDULES}
GRID_PROCESSES["cosine_T1000"] = schedules.cosine(num_steps=1000)


@pytest.mark.parametrize("grid", sorted(samplers.GRIDS))
@pytest.mark.parametrize("name", sorted(GRID_PROCESSES))
def test_every_grid_honours_t_max_and_lambda_max(name, grid):
  """Before: the uniform grid of a discrete schedule started at t = 1 whatever t_max
  and lambda_max said (cosine T = 1000: sigma/alpha = e^10 there)."""
  sch = GRID_PROCESSES[name]
  lam = lambda t: float(schedules.lam(sch, jnp.float32(t)))
  n = sch.num_steps
  for t_max, lambda_max in [(1.0, 160.0), (0.7, float("inf")), (0.9, 5.0), (1.0, 40.0)]:
    if not np.isfinite(lambda_max) and not np.isfinite(lam(t_max)):
      continue
    g = samplers.time_grid(sch, 10, grid, t_max=t_max, lambda_max=lambda_max)
    assert len(g) == 11 and g[-1] == 0.0 and np.all(np.diff(g) < 0)
    assert g[0] <= t_max and lam(g[0]) <= lambda_max * (1 + 1e-4)
    if n and grid == "uniform":  # On the schedule's own steps, the last one allowed.
      np.testing.assert_allclose(g * n, np.round(g * n), atol=1e-3)
      nxt = round(g[0] * n) + 1
      assert nxt > n or nxt / n > t_max + 1e-6 or lam(nxt / n) > lambda_max
    elif not n:  # Exactly at the cap, or at t_max when the cap lies beyond it.
      assert g[0] == pytest.approx(t_max) or lam(g[0]) == pytest.approx(lambda_max, rel=1e-4)


@pytest.mark.parametrize("name", ["flow", "cosine"])
def test_no_grid_starts_where_alpha_is_zero(name):
  """alpha(1) = 0 for flow and the continuous cosine: t = 1 is refused as a start,
  by the sampler and by the config check, and the default start is finite."""
  sch = getattr(schedules, name)()
  with pytest.raises(ConfigError, match="alpha = 0 there"):
    samplers.time_grid(sch, 10, lambda_max=float("inf"))
  cfg = samplers.SamplerConfig(lambda_max=float("inf"))
  with pytest.raises(ConfigError, match="set sample.lambda_max finite or sample.t_max < 1"):
    cfg.check_schedule(sch)
  g = samplers.time_grid(sch, 10)
  assert float(schedules.lam(sch, g[0])) == pytest.approx(samplers.SamplerConfig.lambda_max,
                                                          rel=1e-4)


def test_discrete_grid_needs_its_steps_below_the_start():
  sch = schedules.cosine(num_steps=1000)  # lambda <= 160 up to step 995.
  assert samplers.time_grid(sch, 995)[0] == pytest.approx(0.995)
  with pytest.raises(ConfigError, match="exceed the schedule's 995 discrete steps"):
    samplers.SamplerConfig(sampler="ddpm", num_steps=1000).check_schedule(sch)
  samplers.SamplerConfig(sampler="ddpm", num_steps=1000,
                         lambda_max=float("inf")).check_schedule(sch)


@pytest.mark.parametrize("variance", sorted(samplers.DDPM_VARIANCES))
def test_ddpm_step_variance(variance):
  """posterior: var(x_s | x_t, x_0) = sigma_{t|s}^2 sigma_s^2 / sigma_t^2; fixedlarge:
  the forward step's sigma_{t|s}^2 = 1 - alpha-bar_t / alpha-bar_s, DDPM's beta_t for
  adjacent steps; no noise on the last step to s = 0."""
  sch = schedules.linear()
  x, x0 = jnp.full((200_000, 1), 0.4), jnp.full((200_000, 1), -0.2)
  abar = schedules.ddpm_alpha_bars(1e-4, 0.02, 1000)
  for i, j in [(1000, 999), (500, 499), (500, 400), (1, 0)]:
    t, s = jnp.float32(i / 1000), jnp.float32(j / 1000)
    out = np.asarray(samplers.ddpm_step(sch, x, x0, t, s, jax.random.key(i), variance=variance))
    beta = 1 - abar[i] / abar[j]
    post = beta * (1 - abar[j]) / (1 - abar[i])
    want = post if variance == "posterior" else (beta if j > 0 else 0.0)
    assert out.var() == pytest.approx(want, rel=0.02, abs=1e-9), (i, j)


def test_ddpm_fixedlarge_is_exact_for_standard_normal_data():
  """x0 ~ N(0, I) on a VP process: with x0_hat = E[x0 | x_t] = alpha x_t, the step of
  mean alpha_s / alpha_t x_t and variance 1 - alpha_t^2 / alpha_s^2 (fixedlarge) is the
  exact reverse q(x_s | x_t) at any step size, so after N - 1 steps x is exactly
  N(0, I), and the last step returns alpha x_t: std alpha(t_{N-1}). The posterior
  variance is smaller: its samples are too narrow with few steps."""
  sch = schedules.linear()

  def denoise(x, t, cond):
    return sch.alpha(t)[:, None] * x

  stds = {}
  for variance in samplers.DDPM_VARIANCES:
    cfg = samplers.SamplerConfig(sampler="ddpm", num_steps=20, clip_denoised=False,
                                 ddpm_variance=variance)
    x = np.asarray(jax.jit(lambda k: samplers.sample(denoise, sch, cfg, (100_000, 1), None, k))(
        jax.random.key(0)))
    stds[variance] = x.std()  # Standard error 0.22%.
    assert abs(x.mean()) < 0.01
  want = float(sch.alpha(samplers.time_grid(sch, 20)[-2]))  # alpha(t_19), t_19 = 0.05.
  assert stds["fixedlarge"] == pytest.approx(want, rel=0.01)
  assert stds["posterior"] < 0.9 * want  # Measured: 0.84 against 0.985.


def _null_labels(cond, which):
  return conditions.null(cond, which, null_label=10)


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
    out = guidance.guided(d, {"labels": w}, _null_labels)(x, t, cond)
    np.testing.assert_allclose(out, want)
    assert calls == ([5] if w == 1.0 else [10])


def test_guidance_per_condition():
  """Nested guidance over image, labels and text: D_0 + sum_k w_k (D_k - D_{k-1}).

  The test denoiser is additive, D = 1 + 10 [label] + 100 [text] + 1000 [image], so
  each guided condition's term is its scale times its own contribution."""
  calls = []

  def d(x, t, cond):
    calls.append(x.shape[0])
    on = lambda v: v.reshape(v.shape[0], -1).any(axis=1)[:, None].astype(jnp.float32)
    value = (1.0 + 10.0 * (cond.labels != 10)[:, None] + 100.0 * on(cond.tokens)
             + 1000.0 * on(cond.image))
    return value * jnp.ones_like(x)

  n = 3
  x, t = jnp.zeros((n, 2)), jnp.full((n,), 0.5)
  cond = Cond(labels=jnp.arange(n), tokens=jnp.ones((n, 4), jnp.int32),
              image=jnp.ones((n, 2, 2, 1)))
  cases = [  # scales -> expected output, branches evaluated.
      ({}, 1111.0, 1),
      ({"text": 3.0}, 1 + 10 + 1000 + 3 * 100, 2),
      ({"image": 0.0}, 1 + 10 + 100, 2),
      ({"labels": 2.0, "text": 5.0}, 1 + 1000 + 2 * 10 + 5 * 100, 3),
      ({"image": 1.5, "labels": 0.5, "text": 2.0}, 1 + 1.5 * 1000 + 0.5 * 10 + 2 * 100, 4),
  ]
  for scales, want, branches in cases:
    calls.clear()
    out = guidance.guided(d, scales, _null_labels)(x, t, cond)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert calls == [n * branches]


def test_null_conditions_and_dropout():
  cond = Cond(labels=jnp.arange(4), tokens=jnp.ones((4, 3), jnp.int32),
              image=jnp.ones((4, 2, 2, 1)), text_emb=None)
  assert int(conditions.null(cond, "labels", 10).labels.max()) == 10
  assert int(conditions.null(cond, "text", 10).tokens.sum()) == 0
  assert float(conditions.null(cond, "image", 10).image.sum()) == 0.0
  emb = Cond(text_emb=jnp.ones((4, 3, 5)), text_mask=jnp.ones((4, 3), bool))
  nulled = conditions.null(emb, "text", 10)
  assert not bool(nulled.text_mask.any()) and float(nulled.text_emb.sum()) == 0.0
  # Dropout: each condition independently, per example, at its rate.
  big = Cond(labels=jnp.zeros((4000,), jnp.int32), tokens=jnp.ones((4000, 2), jnp.int32))
  out = conditions.drop(big, jax.random.key(0), {"labels": 0.1, "text": 0.5}, 10)
  label_dropped = np.asarray(out.labels == 10)
  text_dropped = np.asarray(out.tokens.sum(1) == 0)
  assert abs(label_dropped.mean() - 0.1) < 0.02 and abs(text_dropped.mean() - 0.5) < 0.03
  # Independent: both dropped about 5% of the time.
  assert abs((label_dropped & text_dropped).mean() - 0.05) < 0.015


def test_unknown_sampler():
  with pytest.raises(ValueError, match="sample.sampler='heun9' is unknown"):
    samplers.sample(lambda x, t, c: x, schedules.linear(),
                    samplers.SamplerConfig(sampler="heun9"), (1, 1), None, jax.random.key(0))
