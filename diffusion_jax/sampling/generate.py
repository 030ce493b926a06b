"""Batched, data-parallel sampling of a sample set from a trained U-Net.

`make_sample_fn` compiles one sampler loop over the model's denoiser (guided as the
`sample` section says); `generate` runs it over the rows of a set's conditions, each
process feeding its slice of every batch.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np

from diffusion_jax.conditioning import conditions
from diffusion_jax.config.errors import require
from diffusion_jax.core import diffusion, guidance, learned_schedule, samplers
from diffusion_jax.models.unet import UNet
from diffusion_jax.training import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class SampleSetConfig:
  """The sample-set fields of the `sample` section (the sampler's are SamplerConfig's)."""
  num_samples: int
  batch_size: int
  seed: int
  cond_split: str
  project: bool

  @classmethod
  def from_config(cls, sample_cfg) -> "SampleSetConfig":
    cfg = cls(**{f.name: sample_cfg[f.name] for f in dataclasses.fields(cls)})
    require(cfg.num_samples > 0 and cfg.batch_size > 0,
            "sample.num_samples and sample.batch_size must be > 0")
    return cfg


def to_uint8(x) -> np.ndarray:
  return np.asarray(jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255)).astype(np.uint8)


def make_sample_fn(model: UNet, diff: diffusion.Diffusion, cfg: samplers.SamplerConfig,
                   image_shape: tuple, mesh, cond_cfg=conditions.NO_IMAGE,
                   project: bool = False, scales: dict | None = None,
                   guidance_cfg: guidance.GuidanceConfig = guidance.GuidanceConfig(),
                   guide: tuple[UNet, diffusion.Diffusion] | None = None,
                   decode: Callable | None = None, encode: Callable | None = None
                   ) -> Callable[[object, jax.Array, dict], jax.Array]:
  """A compiled fn(params, key, inputs) -> images in [-1, 1], sharded over `data`.

  `inputs` holds the user-facing conditions (see diffusion_jax.conditions), one row
  per sample; an unconditional model takes {}. With `project`, each sample is moved
  to the nearest image that satisfies its image condition exactly. `scales` are the
  guidance scales by condition (conditions.guidance_scales); none = unguided.
  `guidance_cfg` limits guidance to an interval of noise levels and scales
  autoguidance by `guide`, the (network, process) of a weaker model of the same task:
  `params` are then (the model's, the guide's).

  Latent diffusion: `image_shape` is the latent's, and `decode(decoder_params, z)`
  turns the samples into images; params is then (the above, decoder params). An
  image condition is then brought into latent space with `encode(decoder params,
  images) -> latents` (conditions.make_cond).

  A learned schedule is read from `params` (params["noise_schedule"]), inside the
  program: one compiled sampler serves every value of it."""
  mcfg = model.config
  null = lambda cond, which: conditions.null(cond, which, mcfg.num_classes)

  def fn(params, key, inputs):
    if decode is not None:
      params, decoder_params = params
    params, guide_params = params if guide else (params, None)
    # Once per call, not in every sampler step.
    params, guide_params = mesh_lib.gathered((params, guide_params), mesh)
    d = learned_schedule.trained(diff, params)  # `diff` itself if its schedule is fixed.
    apply = lambda x, t, cond: model.apply({"params": params}, x, t, cond)
    guide_denoise = None
    if guide:
      guide_net, guide_diff = guide
      guide_apply = lambda x, t, cond: guide_net.apply({"params": guide_params}, x, t, cond)
      guide_denoise = diffusion.make_denoiser(guide_apply, guide_diff)
    denoise = guidance.guided(diffusion.make_denoiser(apply, d), scales or {}, null,
                              guide=guide_denoise, guide_scale=guidance_cfg.autoguidance_scale,
                              interval=guidance_cfg.interval, schedule=d.schedule)
    latent_encode = None
    if decode is not None and encode is not None:
      latent_encode = lambda x: encode(decoder_params, x)
    cond = conditions.make_cond(mcfg, cond_cfg, inputs, image_shape[0], latent_encode)
    batch = jax.tree.leaves(inputs)[0].shape[0]
    x = samplers.sample(denoise, d.schedule, cfg, (batch,) + image_shape, cond, key)
    if project and cond_cfg.image:
      x = jnp.clip(conditions.IMAGE_CONDITIONS[cond_cfg.image].project(x, inputs, cond_cfg),
                   -1.0, 1.0)
    return x if decode is None else decode(decoder_params, x)

  # The parameters stay in the shardings they come in (replicated, or split over fsdp).
  repl, data = mesh_lib.replicated(mesh), mesh_lib.data_sharded(mesh)
  return jax.jit(fn, in_shardings=(None, repl, data), out_shardings=data)


def generate(sample_fn, params, inputs: dict, batch_size: int, seed: int,
             mesh, num_samples: int | None = None) -> np.ndarray:
  """Samples one image per row of `inputs` (or num_samples for an unconditional
  model), in batches of batch_size; returns uint8 images."""
  n = len(jax.tree.leaves(inputs)[0]) if inputs else num_samples
  if not inputs:  # Unconditional: a dummy row per sample carries the batch size.
    inputs = {"_": np.zeros((n,), np.int32)}
  key = jax.random.key(seed)
  per_process = batch_size // jax.process_count()
  lo = jax.process_index() * per_process
  out = []
  for i, start in enumerate(range(0, n, batch_size)):
    chunk = {k: v[start:start + batch_size] for k, v in inputs.items()}
    count = len(jax.tree.leaves(chunk)[0])
    # Pad with the chunk's first row; every process holds all rows and feeds its slice.
    padded = {k: np.concatenate([v, np.repeat(v[:1], batch_size - count, 0)])
              for k, v in chunk.items()}
    local = {k: v[lo:lo + per_process] for k, v in padded.items()}
    images = sample_fn(params, jax.random.fold_in(key, i), mesh_lib.global_batch(local, mesh))
    if jax.process_count() > 1:
      images = multihost_utils.process_allgather(images, tiled=True)
    out.append(to_uint8(images)[:count])
  return np.concatenate(out)
