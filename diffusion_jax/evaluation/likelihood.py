"""Likelihood of a data split under a trained model, in bits per dimension (the `eval`
section's "bpd" metric, evaluation.eval_config): a compiled, data-parallel evaluation
over the core's likelihood methods."""

from typing import Callable

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from diffusion_jax.conditioning import conditions
from diffusion_jax.core import diffusion, learned_schedule, likelihood
from diffusion_jax.training import mesh as mesh_lib


def _vlb(denoise, diff, images, cond, key, cfg):
  x = images.astype(jnp.float32) / 127.5 - 1.0
  return likelihood.vlb_nll(denoise, diff.schedule, x, cond, key)


def _ode(denoise, diff, images, cond, key, cfg):
  return likelihood.ode_nll(denoise, diff.schedule, images, cond, key,
                            steps=cfg.ode_steps, t_min=cfg.t_min, t_max=cfg.t_max,
                            lambda_max=cfg.lambda_max, probes=cfg.hutchinson_probes)


# Bits/dim of uint8 images: (denoise, diffusion, images, cond, key, cfg) -> per example.
METHODS: dict[str, Callable] = {
    "ode": _ode,  # Probability-flow ODE, uniform dequantisation (any process).
    "vlb": _vlb,  # DDPM's discrete variational bound.
}


def make_nll_fn(model, diff: diffusion.Diffusion, cfg, mesh, cond_cfg=conditions.NO_IMAGE):
  """A compiled fn(params, images_u8, inputs, key) -> bits/dim per example. `inputs`
  holds each example's conditions as the model takes them (label, tokens or text
  embeddings, the image condition's inputs; sampling.inputs.split_conditions): the
  result is the conditional likelihood log p(x | conditions). A learned schedule is
  read from `params` (params["noise_schedule"]), inside the program: one compiled
  function serves every value of it."""

  def fn(params, images, inputs, key):
    params = mesh_lib.gathered(params, mesh)
    d = learned_schedule.trained(diff, params)  # `diff` itself if its schedule is fixed.
    apply = lambda x, t, cond: model.apply({"params": params}, x, t, cond)
    denoise = diffusion.make_denoiser(apply, d)
    cond = conditions.make_cond(model.config, cond_cfg, inputs, images.shape[1])
    return METHODS[cfg.method](denoise, d, images, cond, key, cfg)

  repl, data = mesh_lib.replicated(mesh), mesh_lib.data_sharded(mesh)
  # The parameters stay in the shardings they come in (replicated, or split over fsdp).
  return jax.jit(fn, in_shardings=(None, data, data, repl), out_shardings=data)


def _pad(a: np.ndarray, size: int) -> np.ndarray:
  """Pads a batch to `size` by repeating its last example (results are trimmed)."""
  return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def bits_per_dim(nll_fn, params, images: np.ndarray, inputs: dict, cfg, mesh) -> np.ndarray:
  """Bits/dim of every image given its conditions `inputs` (every process holds all of
  them and feeds its slice)."""
  bs, key = cfg.batch_size, jax.random.key(cfg.seed)
  per = jax.process_count()
  lo = jax.process_index() * (bs // per)
  local = lambda a: mesh_lib.global_batch(a[lo:lo + bs // per], mesh)
  out = []
  for i, start in enumerate(range(0, len(images), bs)):
    chunk = slice(start, start + bs)
    n = len(images[chunk])
    x = _pad(images[chunk], bs)
    c = {k: local(_pad(v[chunk], bs)) for k, v in inputs.items()}
    bpd = nll_fn(params, local(x), c, jax.random.fold_in(key, i))
    out.append(np.asarray(multihost_utils.process_allgather(bpd, tiled=True)
                          if per > 1 else bpd)[:n])
  return np.concatenate(out)
