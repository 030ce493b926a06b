"""Likelihood of a data split under a trained model, in bits per dimension (the `eval`
section): a compiled, data-parallel evaluation over the core's likelihood methods."""

import dataclasses
from typing import Callable

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from diffusion_jax.config.errors import choice, require, section_values
from diffusion_jax.core import diffusion, likelihood, schedules
from diffusion_jax.models.unet import Cond
from diffusion_jax.training import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  split: str
  num_examples: int  # 0 = the whole split.
  batch_size: int
  method: str  # A name of METHODS.
  ode_steps: int
  hutchinson_probes: int
  t_min: float
  t_max: float
  lambda_max: float
  seed: int

  @classmethod
  def from_config(cls, eval_cfg) -> "EvalConfig":
    e = cls(**section_values(cls, eval_cfg, "eval"))
    choice("eval.method", e.method, METHODS)
    require(e.num_examples >= 0, "eval.num_examples must be >= 0 (0 = the whole split)")
    require(e.ode_steps > 0 and e.hutchinson_probes > 0,
            "eval.ode_steps and eval.hutchinson_probes must be > 0")
    require(0 < e.t_min < e.t_max <= 1, "eval: need 0 < t_min < t_max <= 1")
    require(e.lambda_max > 0, "eval.lambda_max must be > 0 (inf = no cap)")
    return e

  def check_model(self, text: str, image_condition: str) -> None:
    """--mode=eval: the models the likelihood evaluation supports."""
    require(not (text or image_condition),
            "--mode=eval (likelihood) supports class-conditional and unconditional models "
            "only; this model takes text or an image condition")

  def check_diffusion(self, diff: diffusion.Diffusion) -> None:
    require(self.method != "vlb" or diff.schedule.num_steps > 0,
            "eval.method='vlb' is the discrete-time bound: it needs diffusion.num_steps > 0")
    require(self.method != "ode" or self.lambda_max < np.inf
            or np.isfinite(float(schedules.lam(diff.schedule, self.t_max))),
            f"eval: sigma/alpha is infinite at eval.t_max={self.t_max} on this process "
            "(alpha = 0 there, as for flow at t = 1): set eval.lambda_max finite or "
            "eval.t_max < 1")


def _vlb(denoise, diff, images, cond, key, cfg: EvalConfig):
  x = images.astype(jnp.float32) / 127.5 - 1.0
  return likelihood.vlb_nll(denoise, diff.schedule, x, cond, key)


def _ode(denoise, diff, images, cond, key, cfg: EvalConfig):
  return likelihood.ode_nll(denoise, diff.schedule, images, cond, key,
                            steps=cfg.ode_steps, t_min=cfg.t_min, t_max=cfg.t_max,
                            lambda_max=cfg.lambda_max, probes=cfg.hutchinson_probes)


# Bits/dim of uint8 images: (denoise, diffusion, images, cond, key, cfg) -> per example.
METHODS: dict[str, Callable] = {
    "ode": _ode,  # Probability-flow ODE, uniform dequantisation (any process).
    "vlb": _vlb,  # DDPM's discrete variational bound.
}


def make_nll_fn(model, diff: diffusion.Diffusion, cfg: EvalConfig, mesh):
  """A compiled fn(params, images_u8, labels, key) -> bits/dim per example."""
  num_classes = model.config.num_classes

  def fn(params, images, labels, key):
    apply = lambda x, t, cond: model.apply({"params": params}, x, t, cond)
    denoise = diffusion.make_denoiser(apply, diff)
    cond = Cond(labels=labels if num_classes else None)
    return METHODS[cfg.method](denoise, diff, images, cond, key, cfg)

  repl, data = mesh_lib.replicated(mesh), mesh_lib.data_sharded(mesh)
  return jax.jit(fn, in_shardings=(repl, data, data, repl), out_shardings=data)


def _pad(a: np.ndarray, size: int) -> np.ndarray:
  """Pads a batch to `size` by repeating its last example (results are trimmed)."""
  return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def bits_per_dim(nll_fn, params, images: np.ndarray, labels: np.ndarray, cfg: EvalConfig,
                 mesh) -> np.ndarray:
  """Bits/dim of every image (every process holds all of them and feeds its slice)."""
  bs, key = cfg.batch_size, jax.random.key(cfg.seed)
  per = jax.process_count()
  lo = jax.process_index() * (bs // per)
  out = []
  for i, start in enumerate(range(0, len(images), bs)):
    chunk = slice(start, start + bs)
    n = len(images[chunk])
    x, y = (_pad(a[chunk], bs) for a in (images, labels))
    bpd = nll_fn(params, mesh_lib.global_batch(x[lo:lo + bs // per], mesh),
                 mesh_lib.global_batch(y[lo:lo + bs // per], mesh), jax.random.fold_in(key, i))
    out.append(np.asarray(multihost_utils.process_allgather(bpd, tiled=True)
                          if per > 1 else bpd)[:n])
  return np.concatenate(out)
