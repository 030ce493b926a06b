"""VDM's learned noise schedule (Kingma et al. 2021), as pure functions of an explicit
parameter pytree, and its loss and gradients.

gamma(t) = -log-SNR(t) = gamma0 + (gamma1 - gamma0) s(t), where s is a monotone network
of t normalised to s(0) = 0, s(1) = 1:
  m(t) = l1(t) + l3(sigmoid(l2(l1(t)))),  s(t) = (m(t) - m(0)) / (m(1) - m(0)),
l1: 1 -> 1, l2: 1 -> hidden, l3: hidden -> 1, every weight positive (softplus of a free
parameter), so m and s are strictly increasing. The endpoints gamma0, gamma1 are free
parameters, initialised to the fixed linear-log-SNR schedule's; gamma increases while
gamma0 < gamma1, which nothing enforces: the bound's prior and decoder terms keep them
apart (the diffusion term alone would draw them together). optim.weight_decay applies
to them as to every parameter (default 0).

The loss is VDM's continuous-time bound per example, in nats per dimension:
  L = [0.5 gamma'(t) ||eps - eps_hat||^2 + KL(q(z_1 | x) || N(0, I)) - log p(x | z_0)] / D,
the last term a Gaussian decoder on the uint8 bins of [-1, 1]. The endpoints get the
gradient of E[L] (the bound itself); the shape s gets the gradient of E[L^2], the
second moment of the bound's Monte-Carlo estimate (VDM's variance-minimising schedule):
E[L] does not depend on the shape (in continuous time the diffusion term depends on
the endpoints only), its variance does. `variance_scaled` is VDM's device: an identity
whose vjp multiplies the incoming cotangent by 2 L per example, so one backward pass
from L gives d E[L^2] for the shape's parameters.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.core import diffusion, likelihood
from diffusion_jax.core.diffusion import Diffusion
from diffusion_jax.core.schedules import Schedule, from_log_snr

Array = jax.Array
Params = dict  # {"gamma0", "gamma1", "l1_w", "l1_b", "l2_w", "l2_b", "l3_w"}

# Where a run's train state keeps the schedule: params[PARAMS_KEY], beside the U-Net's
# modules (Flax ignores a top-level entry no module reads).
PARAMS_KEY = "noise_schedule"


def init_params(key: Array, hidden: int = 1024, gamma0: float = -13.3,
                gamma1: float = 5.0) -> Params:
  """Initial parameters: the endpoints given, the network's weights random."""
  k1, k2, k3 = jax.random.split(key, 3)
  f32 = jnp.float32
  return {
      "gamma0": jnp.asarray(gamma0, f32), "gamma1": jnp.asarray(gamma1, f32),
      "l1_w": jax.random.normal(k1, (), f32), "l1_b": jnp.zeros((), f32),
      "l2_w": jax.random.normal(k2, (hidden,), f32), "l2_b": jnp.zeros((hidden,), f32),
      # l3's weights start small: the schedule starts near linear in t.
      "l3_w": jax.random.normal(k3, (hidden,), f32) - 3.0,
  }


def initial_params(hidden: int, log_snr_max: float, log_snr_min: float) -> Params:
  """A run's initial parameters: the network from a fixed key, so that the process a
  config names (diffusion.learned_hidden, log_snr_max, log_snr_min) is the one its
  training starts from."""
  with jax.ensure_compile_time_eval():
    return init_params(jax.random.key(0), hidden, -log_snr_max, -log_snr_min)


def _monotone(p: Params, t: Array) -> Array:
  """m(t), strictly increasing in t (positive weights), for t of any shape."""
  h = jax.nn.softplus(p["l1_w"]) * t + p["l1_b"]
  z = jax.nn.sigmoid(h[..., None] * jax.nn.softplus(p["l2_w"]) + p["l2_b"])
  hidden = p["l2_w"].shape[0]
  return h + (z @ jax.nn.softplus(p["l3_w"])) / hidden


def shape(p: Params, t: Array) -> Array:
  """s(t) in [0, 1], s(0) = 0, s(1) = 1, increasing."""
  t = jnp.asarray(t, jnp.float32)
  m0, m1 = _monotone(p, jnp.float32(0.0)), _monotone(p, jnp.float32(1.0))
  return (_monotone(p, t) - m0) / (m1 - m0)


def gamma(p: Params, t: Array) -> Array:
  """gamma(t) = -log-SNR(t)."""
  return p["gamma0"] + (p["gamma1"] - p["gamma0"]) * shape(p, t)


def schedule(p: Params) -> Schedule:
  """The VP process of parameters `p` (concrete ones, for sampling and likelihoods)."""
  return from_log_snr(lambda t: -gamma(p, t))._replace(params=p)


def trained(d: Diffusion, params) -> Diffusion:
  """`d` with its learned schedule read from a run's parameters (params[PARAMS_KEY]);
  `d` itself if its schedule is fixed."""
  if d.schedule.params is None:
    return d
  return diffusion.with_schedule(d, schedule(params[PARAMS_KEY]))


@jax.custom_vjp
def variance_scaled(x, loss):
  """Identity in x; its vjp scales x's cotangent by 2 * loss (loss: x's shape)."""
  return x


def _variance_fwd(x, loss):
  return x, loss


def _variance_bwd(loss, ct):
  return jax.tree.map(lambda c: 2.0 * loss * c, ct), jnp.zeros_like(loss)


variance_scaled.defvjp(_variance_fwd, _variance_bwd)


def values(p: Params, t: Array, loss: Array | None = None) -> dict:
  """What the loss reads of the schedule: gamma(t), gamma'(t) (shape of t) and the
  endpoints. With `loss` (per example), the shape's part of gamma(t) and gamma'(t)
  passes through variance_scaled: its parameters get d E[L^2] instead of d E[L]."""
  s, ds = jax.jvp(lambda u: shape(p, u), (jnp.asarray(t, jnp.float32),),
                  (jnp.ones_like(t, jnp.float32),))
  if loss is not None:
    s, ds = variance_scaled((s, ds), loss)
  g0, g1 = p["gamma0"], p["gamma1"]
  return {"gamma": g0 + (g1 - g0) * s, "dgamma": (g1 - g0) * ds, "gamma0": g0, "gamma1": g1}


def _vp(g: Array) -> tuple[Array, Array]:
  """alpha, sigma of gamma = -log-SNR."""
  return jnp.sqrt(jax.nn.sigmoid(-g)), jnp.sqrt(jax.nn.sigmoid(g))


def _bcast(v: Array, x: Array) -> Array:
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def vlb_per_example(eps_fn: Callable[[Array, Array], Array], v: dict, x0: Array, t: Array,
                    eps: Array, key: Array) -> Array:
  """VDM's bound per example in nats per dimension, from the schedule's `values` v.

  eps_fn(z_t, t) -> eps_hat (the network, eps prediction); x0 in [-1, 1] on the uint8
  grid; `key` draws z_0 for the decoder term.
  """
  dims = int(np.prod(x0.shape[1:]))
  a, s = _vp(v["gamma"])
  z = _bcast(a, x0) * x0 + _bcast(s, x0) * eps
  err = (eps_fn(z, t).astype(jnp.float32) - eps) ** 2
  diffusion = 0.5 * v["dgamma"] * jnp.sum(err.reshape(err.shape[0], -1), axis=1)
  # Prior: KL(N(a1 x, s1^2) || N(0, 1)) per dimension, summed.
  a1, s1 = _vp(v["gamma1"])
  prior = likelihood.gaussian_kl(a1 * x0, s1**2, jnp.zeros_like(x0), jnp.ones_like(x0))
  # Decoder: x_hat = z_0 / a0 with std s0 / a0 on the uint8 bins.
  a0, s0 = _vp(v["gamma0"])
  z0 = a0 * x0 + s0 * jax.random.normal(key, x0.shape)
  recon = -likelihood.discretized_gaussian_log_likelihood(x0, z0 / a0, s0 / a0)
  return (diffusion + prior + recon) / dims


def loss_and_grads(loss_fn: Callable, net_params, sched_params: Params, t: Array):
  """The mean loss, per-example losses and gradients (net, schedule) of
  loss_fn(net_params, values) -> per-example losses (values: `values(sched, t)`).

  The network and the endpoints get d mean(L); the schedule's shape d mean(L^2). One
  backward pass through the network gives d mean(L) / d values; a second, through the
  tiny schedule only, carries it to the schedule's parameters with the shape's
  cotangent scaled by 2 L (variance_scaled)."""
  v = values(sched_params, t)

  def mean_loss(net, vals):
    per = loss_fn(net, vals)
    return jnp.mean(per), per

  (loss, per), (g_net, g_vals) = jax.value_and_grad(mean_loss, argnums=(0, 1),
                                                    has_aux=True)(net_params, v)
  per_const = jax.lax.stop_gradient(per)
  _, vjp = jax.vjp(lambda p: values(p, t, per_const), sched_params)
  (g_sched,) = vjp(g_vals)
  return loss, per, (g_net, g_sched)


__all__ = ["PARAMS_KEY", "gamma", "init_params", "initial_params", "loss_and_grads", "schedule", "shape",
           "trained", "values", "variance_scaled", "vlb_per_example"]
