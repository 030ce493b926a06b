"""Runs of kind "autoencoder": the KL autoencoder of latent diffusion trained with the
same command, checkpoints and logs as a diffusion run (run/build.py's KINDS entry).

Its config: the `data`, `training`, `optim` sections as for diffusion, `autoencoder`
(the architecture) and `autoencoder_loss` (models/autoencoder_losses.py). At the end
of training the latent scale (1 / std of posterior samples of `latent.scale_batches`
training batches: Stable Diffusion's 0.18215 recipe) is computed with the EMA
parameters and written to WORKDIR/latent_scale.json, with the checkpoint step it
belongs to; a latent diffusion run reads it (run/latent.py).
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from diffusion_jax.config.errors import ConfigError, Problems, require
from diffusion_jax.data import pipeline
from diffusion_jax.data.pipeline import DataConfig
from diffusion_jax.evaluation.eval_config import EvalConfig
from diffusion_jax.models import autoencoder as ae_lib
from diffusion_jax.models import autoencoder_losses as losses
from diffusion_jax.training import autoencoder_step, distributed, mesh as mesh_lib
from diffusion_jax.training.loop import TrainConfig
from diffusion_jax.training.optimizer import OptimConfig

KIND = "autoencoder"
LATENT_SCALE = "latent_scale.json"  # In the workdir, beside checkpoints/.
# The config sections that are the autoencoder's architecture (AutoencoderConfig fields).
ARCHITECTURE = ("block_out_channels", "layers_per_block", "latent_channels",
                "norm_num_groups", "mid_block_add_attention", "dtype")


@dataclasses.dataclass(frozen=True)
class AutoencoderSpec:
  """An autoencoder run, checked."""
  config: ml_collections.ConfigDict
  seed: int
  data: DataConfig
  autoencoder: ae_lib.AutoencoderConfig
  loss: losses.AutoencoderLossConfig
  training: TrainConfig
  optim: OptimConfig
  eval: EvalConfig  # Only so that the run machinery finds every_steps = 0.
  scale_batches: int
  mesh: mesh_lib.MeshConfig
  lpips: dict | None = None  # Loaded LPIPS weights (loss.perceptual_weight > 0).
  kind: str = KIND

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.data.image_size, self.data.image_size, self.data.channels)


def architecture(section, channels: int) -> ae_lib.AutoencoderConfig:
  """The AutoencoderConfig of an `autoencoder` section, for images of `channels`."""
  values = {k: section[k] for k in ARCHITECTURE if k in section}
  unknown = sorted(set(section) - set(ARCHITECTURE))
  require(not unknown, f"autoencoder: unknown fields {unknown}; known: {list(ARCHITECTURE)}")
  try:
    return ae_lib.AutoencoderConfig.from_config(
        {**values, "in_channels": channels, "out_channels": channels})
  except ValueError as e:
    raise ConfigError(f"autoencoder.{e}") from None


def parse(config: ml_collections.ConfigDict, num_devices: int) -> AutoencoderSpec:
  """Parses an autoencoder run's sections (ConfigError listing every problem)."""
  problems, parsed = Problems(), {}

  def section(name, parser, *args):
    with problems.check():
      parsed[name] = parser(*args)

  def loss_config(s):
    try:
      return losses.AutoencoderLossConfig.from_config(s)
    except ValueError as e:
      raise ConfigError(f"autoencoder_loss.{e}") from None

  section("data", DataConfig.from_config, config.data)
  section("training", TrainConfig.from_config, config.training)
  section("optim", OptimConfig.from_config, config.optim)
  section("eval", EvalConfig.from_config, config.eval)
  section("mesh", mesh_lib.MeshConfig.from_config, config.mesh)
  section("loss", loss_config, config.autoencoder_loss)
  if "data" in parsed:
    section("autoencoder", architecture, config.autoencoder, parsed["data"].channels)
  with problems.check():
    n = config.latent.scale_batches
    require(isinstance(n, int) and n >= 1, f"latent.scale_batches={n!r} must be an integer >= 1")
    require(not config.latent.autoencoder,
            f"latent.autoencoder={config.latent.autoencoder!r} applies to diffusion runs; "
            f"an autoencoder run (kind={KIND!r}) trains in pixel space")
  if "eval" in parsed:
    with problems.check():
      require(parsed["eval"].every_steps == 0,
              f"eval.every_steps={parsed['eval'].every_steps}: an autoencoder run has no "
              "periodic evaluation (its reconstruction PSNR is logged as `psnr`)")
  if "data" in parsed and "autoencoder" in parsed:
    d, a = parsed["data"], parsed["autoencoder"]
    with problems.check():
      require(d.image_size % a.factor == 0,
              f"data.image_size={d.image_size} is not divisible by the autoencoder's "
              f"downsampling factor f={a.factor} (2^(len(autoencoder.block_out_channels) - 1))")
    if "loss" in parsed and parsed["loss"].use_discriminator:
      layers = parsed["loss"].disc_layers
      with problems.check():
        require(losses.discriminator_output_size(d.image_size, layers) >= 1,
                f"data.image_size={d.image_size} is too small for a {layers}-layer "
                "discriminator: lower autoencoder_loss.disc_layers")
  if "training" in parsed:
    with problems.check():
      mesh_lib.check_batch(parsed["training"].batch_size, num_devices, "training.batch_size")
    with problems.check():
      require(parsed["training"].microbatches == 1,
              "training.microbatches applies to diffusion runs; an autoencoder run takes "
              "training.microbatches=1")
  problems.raise_if_any()
  return AutoencoderSpec(config=config, seed=config.seed,
                         scale_batches=config.latent.scale_batches, **parsed)


def check(spec: AutoencoderSpec, mode: str) -> AutoencoderSpec:
  """The dataset and the LPIPS weights, before anything compiles."""
  require(mode == "train", f"--mode={mode}: an autoencoder run (kind={KIND!r}) only "
          "trains; its latent scale and reconstruction PSNR are written while training")
  pipeline.check(spec.data, {"data.split": (spec.data.split, spec.training.batch_size)})
  if spec.loss.perceptual_weight > 0:
    try:
      return dataclasses.replace(spec, lpips=losses.load_lpips(spec.loss.lpips_weights))
    except ValueError as e:
      raise ConfigError(f"autoencoder_loss.lpips_weights: {e}") from None
  return spec


def model(spec: AutoencoderSpec) -> ae_lib.AutoencoderKL:
  return ae_lib.AutoencoderKL(spec.autoencoder)


def init_state(spec: AutoencoderSpec, net: ae_lib.AutoencoderKL, tx):
  return lambda key: autoencoder_step.create_state(key, net, spec.loss, tx,
                                                   spec.data.image_size)


def train_step(spec: AutoencoderSpec, net: ae_lib.AutoencoderKL, tx):
  return autoencoder_step.make_train_step(net, spec.loss, tx, spec.training.ema_decay,
                                          spec.lpips)


def meta(spec: AutoencoderSpec, tokenizer=None) -> dict:
  """What a checkpoint must agree on with the config to be restorable."""
  arch = dataclasses.asdict(spec.autoencoder)
  for k in ("scaling_factor", "shift_factor"):  # Computed, not part of the network.
    arch.pop(k)
  disc = ({k: getattr(spec.loss, k) for k in ("disc_channels", "disc_layers",
                                               "disc_norm_groups")}
          if spec.loss.use_discriminator else None)
  return json.loads(json.dumps({"kind": KIND, "autoencoder": arch, "discriminator": disc,
                                "image_size": spec.data.image_size,
                                "channels": spec.data.channels}))


def flatten(d: dict, prefix: str = "") -> dict:
  """A nested dict as {"a.b.c": leaf}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def meta_diff(saved: dict, want: dict) -> list[str]:
  """The fields in which a checkpoint's metadata and the config's differ."""
  if saved.get("kind", "diffusion") != want["kind"]:
    return ["kind"]
  a, b = flatten(saved), flatten(want)
  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


# --- The latent scale.

def _moments_fn(net: ae_lib.AutoencoderKL, mesh):
  """A compiled fn(params, images, key) -> (count, sum, sum of squares) of posterior
  samples of a global batch (float32: a few batches' sums)."""
  repl, data = mesh_lib.replicated(mesh), mesh_lib.data_sharded(mesh)

  def fn(params, images, key):
    z = net.apply({"params": params}, images, method="encode").sample(key)
    return jnp.float32(z.size), jnp.sum(z), jnp.sum(jnp.square(z))

  return jax.jit(fn, in_shardings=(repl, data, repl), out_shardings=repl)


def scale_of(net: ae_lib.AutoencoderKL, params, data_cfg: DataConfig, batch_size: int,
             batches: int, seed: int, mesh) -> dict:
  """1 / std of posterior samples (of all elements) of the first `batches` global
  batches of data_cfg's split, in the order a run with `seed` reads it; every process
  takes part. Returns {"scaling_factor", "std", "mean", "examples"}."""
  fn = _moments_fn(net, mesh)
  it = pipeline.make_iterator(data_cfg, batch_size, seed)
  key = jax.random.fold_in(jax.random.key(seed), 0x5CA1E)
  sums = None
  try:
    for i in range(batches):  # Summed on device: one transfer at the end.
      batch = mesh_lib.global_batch({"image": next(it)["image"]}, mesh)
      out = fn(params, batch["image"], jax.random.fold_in(key, i))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  finally:
    it.close()
  count, total, squares = (float(v) for v in jax.device_get(sums))
  mean = total / count
  std = float(np.sqrt(max(squares / count - mean * mean, 0.0)))
  require(std > 0 and np.isfinite(std), f"the latents' std is {std}: no latent scale")
  return {"scaling_factor": 1.0 / std, "std": std, "mean": mean,
          "examples": batches * batch_size}


def latent_scale(spec: AutoencoderSpec, params, mesh, net=None) -> dict:
  """The latent scale of an autoencoder run's parameters: latent.scale_batches batches
  of its training split (`scale_of`)."""
  return scale_of(net or model(spec), params, spec.data, spec.training.batch_size,
                  spec.scale_batches, spec.seed, mesh)


def write_latent_scale(workdir: str, step: int, scale: dict) -> str:
  path = epath.Path(workdir) / LATENT_SCALE
  path.write_text(json.dumps({**scale, "step": int(step)}, indent=2) + "\n")
  return str(path)


def read_latent_scale(workdir: str) -> dict | None:
  path = epath.Path(workdir) / LATENT_SCALE
  return json.loads(path.read_text()) if path.exists() else None


# What a checkpoint means: a run may not resume with other values of these.
MEANING = ("kind", "data.name", "data.image_key", "data.image_size", "data.channels",
           "autoencoder", "autoencoder_loss.disc_channels", "autoencoder_loss.disc_layers",
           "autoencoder_loss.disc_norm_groups")


def finish(spec: AutoencoderSpec, workdir: str, state, mesh, net, tokenizer, writer) -> None:
  """After training: the latent scale of the EMA parameters, beside the checkpoints."""
  scale = latent_scale(spec, state.ema_params["autoencoder"], mesh, net)
  if distributed.is_primary():
    path = write_latent_scale(workdir, int(state.step), scale)
    writer.log(f"latent scale {scale['scaling_factor']:.5f} (std {scale['std']:.4f} of "
               f"{scale['examples']} examples' latents): {path}")
  distributed.sync("latent scale written")


__all__ = ["AutoencoderSpec", "LATENT_SCALE", "flatten", "latent_scale", "parse",
           "read_latent_scale", "scale_of"]
