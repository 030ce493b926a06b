"""A run's config parsed once: one typed object per section, made by the module that
owns the section, and the rules that need two sections at once.

`parse` reports every problem it finds (ConfigError with one line per problem),
before any dataset is opened, anything compiled or anything written.
"""

import dataclasses
from typing import Any

import ml_collections

from diffusion_jax.conditioning import conditions
from diffusion_jax.config.errors import ConfigError, Problems, require
from diffusion_jax.core import diffusion as diffusion_lib
from diffusion_jax.core.guidance import GuidanceConfig
from diffusion_jax.core.samplers import SamplerConfig
from diffusion_jax.data.pipeline import DataConfig
from diffusion_jax.evaluation.eval_config import EvalConfig
from diffusion_jax.models.unet import UNetConfig
from diffusion_jax.run import latent as latent_lib
from diffusion_jax.sampling.generate import SampleSetConfig
from diffusion_jax.training import mesh as mesh_lib
from diffusion_jax.training.augment import AugmentConfig
from diffusion_jax.training.loop import TrainConfig
from diffusion_jax.training.optimizer import OptimConfig


@dataclasses.dataclass(frozen=True)
class Spec:
  """Everything a run is, checked."""
  config: ml_collections.ConfigDict  # As given (saved with the run).
  seed: int
  data: DataConfig
  model: UNetConfig
  cond: conditions.CondConfig
  diffusion: diffusion_lib.Diffusion
  training: TrainConfig
  dropout: dict[str, float]  # Classifier-free guidance dropout, by condition.
  optim: OptimConfig
  sampler: SamplerConfig
  sample_set: SampleSetConfig
  guidance: dict[str, float]  # Guidance scales, by condition, in nesting order.
  guidance_config: GuidanceConfig  # Guidance interval, autoguidance scale.
  eval: EvalConfig
  latent: latent_lib.LatentConfig
  mesh: mesh_lib.MeshConfig
  augment: AugmentConfig
  # The autoencoder of latent.autoencoder, loaded once the run is checked (run/build.py).
  autoencoder: latent_lib.Autoencoder | None = None
  kind: str = "diffusion"

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """The dataset's (and the samples') images."""
    d = self.data
    return (d.image_size, d.image_size, d.channels)

  @property
  def model_shape(self) -> tuple[int, int, int]:
    """What the U-Net denoises: the images, or their latents."""
    if self.autoencoder is None:
      return self.image_shape
    return self.autoencoder.latent_shape(self.data.image_size)


def _check_learned(diff: diffusion_lib.Diffusion, training, latent) -> None:
  """What a learned schedule's train step does not support."""
  if diff.schedule.params is None:
    return
  require(training.microbatches == 1, f"training.microbatches={training.microbatches} with "
          "diffusion.schedule='learned': its train step takes the whole batch at once")
  require(not latent.autoencoder, "diffusion.schedule='learned' with latent.autoencoder: "
          "its bound's decoder term is of uint8 pixels, not of latents")


def parse(config: ml_collections.ConfigDict, num_devices: int) -> Spec:
  """Parses every section and checks the rules between them (ConfigError listing all)."""
  problems = Problems()
  parsed: dict[str, Any] = {}

  def section(name: str, parser, *args):
    with problems.check():
      parsed[name] = parser(*args)

  section("data", DataConfig.from_config, config.data)
  section("model", UNetConfig.from_config, config.model)
  section("cond", conditions.CondConfig.from_config, config.cond)
  section("diffusion", diffusion_lib.from_config, config.diffusion)
  section("training", TrainConfig.from_config, config.training)
  section("optim", OptimConfig.from_config, config.optim)
  section("sampler", SamplerConfig.from_config, config.sample)
  section("sample_set", SampleSetConfig.from_config, config.sample)
  section("guidance_config", GuidanceConfig.from_config, config.sample)
  section("eval", EvalConfig.from_config, config.eval)
  section("latent", latent_lib.LatentConfig.from_config, config.latent)
  section("mesh", mesh_lib.MeshConfig.from_config, config.mesh)
  section("augment", AugmentConfig.from_config, config.get("augment", {}))

  def cross(needs: tuple[str, ...], rule) -> None:
    if all(n in parsed for n in needs):
      with problems.check():
        rule(*(parsed[n] for n in needs))

  if parsed.get("latent") and parsed["latent"].autoencoder:
    # The U-Net's input is the latent: checked against it once it is loaded (build.py).
    cross(("augment",), lambda a: require(
        not a.on, f"augment.p={a.p} with latent.autoencoder: augmentation of latent "
        "diffusion is not supported yet; set augment.p=0 and model.augment_dim=0"))
    cross(("cond", "sample_set"), lambda c, s: require(
        not (c.image and s.project), f"sample.project with cond.image={c.image!r} and "
        "latent.autoencoder: the projection is onto images, the samples are latents"))
    if parsed["latent"].cache:
      cross(("cond",), lambda c: require(
          not c.image, f"latent.cache with cond.image={c.image!r}: image conditions are "
          "made from each batch's pixels, which a latent cache does not hold; train with "
          "latent.cache=\"\" (the encoder runs on each batch)"))
      cross(("model",), lambda m: require(
          not m.text, f"latent.cache with model.text={m.text!r}: a latent cache holds "
          "class labels only, no text; train with latent.cache=\"\""))
  else:
    cross(("model", "data"),
          lambda m, d: m.check_input(d.image_size, d.channels, d.num_classes))
    cross(("cond", "model", "data"), lambda c, m, d: c.check_model(m, d.image_size, d.channels))
  cross(("augment", "model"), lambda a, m: a.check_model(m.augment_dim))
  cross(("model",), lambda m: conditions.check_guidance(config.training, config.sample, m))
  cross(("diffusion", "training", "latent"), _check_learned)
  cross(("sampler", "diffusion"), lambda s, f: s.check_schedule(f.schedule))
  cross(("eval", "diffusion"), lambda e, f: e.check_diffusion(f))
  cross(("eval", "data"), lambda e, d: e.check_data(d.name, d.image_size, d.channels))
  cross(("training",), lambda t: mesh_lib.check_batch(t.batch_size, num_devices,
                                                      "training.batch_size"))
  cross(("training",), lambda t: t.check_devices(num_devices))
  cross(("training", "latent"), lambda t, la: la.check_devices(t.batch_size, num_devices))
  cross(("mesh",), lambda m: m.check_devices(num_devices))
  cross(("sample_set",), lambda s: mesh_lib.check_batch(s.batch_size, num_devices,
                                                        "sample.batch_size"))
  cross(("eval",), lambda e: mesh_lib.check_batch(e.batch_size, num_devices, "eval.batch_size"))
  with problems.check():
    kind = config.get("kind", "diffusion")
    require(kind == "diffusion", f"kind={kind!r}: not a diffusion run")
  problems.raise_if_any()
  return Spec(config=config, seed=config.seed, guidance=conditions.guidance_scales(config.sample),
              dropout=conditions.dropout_rates(config.training), **parsed)


__all__ = ["ConfigError", "Spec", "parse"]
