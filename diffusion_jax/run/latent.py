"""Diffusion in an autoencoder's latent space: the `latent` section, the autoencoder it
names (an autoencoder run's workdir or a converted weight file), and the encode and
decode functions of the train step and the samplers.

The U-Net sees z = (E(x) - shift) * scaling_factor, E(x) a sample of the posterior; a
sample of the U-Net is decoded by D(z / scaling_factor + shift) and everything after
(PNG grids, sample metrics) is in pixel space. The scaling factor is the autoencoder
run's latent_scale.json (computed at the end of its training), or, for a weight file,
FILE.latent_scale.json beside it if there is one, else the file's own (SD: 0.18215).
"""

import dataclasses
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
from etils import epath

from diffusion_jax.config import files
from diffusion_jax.config.errors import ConfigError, require
from diffusion_jax.models import autoencoder as ae_lib
from diffusion_jax.models import convert_vae
from diffusion_jax.run import autoencoder as ae_run
from diffusion_jax.training import checkpoint, mesh as mesh_lib, optimizer


@dataclasses.dataclass(frozen=True)
class LatentConfig:
  """The diffusion run's fields of the `latent` section."""
  autoencoder: str  # "" = pixel space.
  cache: str = ""  # A latent cache (run/latent_cache.py) training reads; "" = encode.
  # The train step encodes each device's images in this many chunks, one after another:
  # the encoder's activations are a chunk's, the latents the same as in one go.
  encode_chunks: int = 1

  @classmethod
  def from_config(cls, section) -> "LatentConfig":
    path, cache = section.autoencoder, section.get("cache", "")
    chunks = section.get("encode_chunks", 1)
    require(isinstance(path, str), f"latent.autoencoder={path!r} must be a path (or \"\")")
    require(isinstance(cache, str), f"latent.cache={cache!r} must be a path (or \"\")")
    require(not cache or path, f"latent.cache={cache!r} without latent.autoencoder: a "
            "cache holds the latents of one autoencoder; name it")
    require(isinstance(chunks, int) and not isinstance(chunks, bool) and chunks >= 1,
            f"latent.encode_chunks={chunks!r} must be an integer >= 1")
    require(chunks == 1 or (path and not cache), f"latent.encode_chunks={chunks} needs a "
            "train step that encodes: latent.autoencoder set and no latent.cache")
    return cls(autoencoder=path, cache=cache, encode_chunks=chunks)

  def check_devices(self, batch_size: int, num_devices: int) -> None:
    """The chunks split each device's share of the batch evenly."""
    mesh_lib.check_per_device_split(self.encode_chunks, "latent.encode_chunks", batch_size,
                                    num_devices)


@dataclasses.dataclass(frozen=True)
class Autoencoder:
  """A trained autoencoder, loaded: its config (scaling_factor as the diffusion model
  uses it), parameters (host arrays) and where they came from."""
  source: str
  config: ae_lib.AutoencoderConfig
  params: Any
  step: int | None = None  # The checkpoint's step (an autoencoder run).

  def latent_shape(self, image_size: int) -> tuple[int, int, int]:
    f = self.config.factor
    return (image_size // f, image_size // f, self.config.latent_channels)


def scale_file(weight_file: str) -> str:
  return weight_file + ".latent_scale.json"


def _from_file(path: str) -> Autoencoder:
  try:
    cfg, params = convert_vae.load(path)
  except convert_vae.ConversionError as e:
    raise ConfigError(f"latent.autoencoder={path!r}: {e}") from None
  beside = epath.Path(scale_file(path))
  if beside.exists():
    cfg = dataclasses.replace(cfg, scaling_factor=json.loads(beside.read_text())["scaling_factor"])
  return Autoencoder(path, cfg, params)


def _from_workdir(path: str) -> Autoencoder:
  where = f"latent.autoencoder={path!r}"
  config = files.load_saved(path)
  require(config is not None, f"{where} holds no run config: give an autoencoder run's "
          "workdir or a converted weight file (.npz)")
  require(config.kind == ae_run.KIND, f"{where} is a run of kind {config.kind!r}, not an "
          f"autoencoder (kind={ae_run.KIND!r})")
  spec = ae_run.parse(config, 1)
  found = checkpoint.find(path, with_iterator=False)
  require(found.latest is not None,
          f"{where}: no checkpoint in {checkpoint.checkpoint_dir(path)}: train it first")
  scale = ae_run.read_latent_scale(path)
  require(scale is not None and scale.get("step") == found.latest,
          f"{where}: no latent scale for its checkpoint at step {found.latest} "
          f"({ae_run.LATENT_SCALE} is written when its training finishes: finish it)")
  net, tx = ae_run.model(spec), optimizer.make_optimizer(spec.optim, spec.training.num_steps)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.eval_shape(ae_run.init_state(spec, net, tx), jax.random.key(0))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          abstract)
  manager = checkpoint.reader(path)
  try:
    state, _ = checkpoint.restore(manager, found.latest, abstract)
  except Exception as e:  # Whatever orbax or the filesystem raise.
    raise ConfigError(f"{where}: checkpoint {found.latest} cannot be restored "
                      f"({' '.join(str(e).split())[:200]})") from None
  finally:
    manager.close()
  cfg = dataclasses.replace(spec.autoencoder, scaling_factor=scale["scaling_factor"])
  return Autoencoder(path, cfg, jax.device_get(state.ema_params["autoencoder"]), found.latest)


def load(path: str) -> Autoencoder:
  """The autoencoder of `latent.autoencoder`: a workdir or a weight file (ConfigError
  if it is neither, has no checkpoint or no latent scale)."""
  p = epath.Path(path)
  if p.is_dir():
    return _from_workdir(path)
  if p.exists():
    return _from_file(path)
  raise ConfigError(f"latent.autoencoder={path!r}: no such autoencoder workdir or weight file")


def check_data(ae: Autoencoder, image_size: int, channels: int) -> None:
  """The autoencoder takes the dataset's images."""
  cfg, where = ae.config, f"latent.autoencoder={ae.source!r}"
  require(cfg.in_channels == channels and cfg.out_channels == channels,
          f"{where} takes images of {cfg.in_channels} channels; data.channels={channels}")
  require(image_size % cfg.factor == 0,
          f"data.image_size={image_size} is not divisible by {where}'s downsampling factor "
          f"f={cfg.factor}")


def encoder(cfg: ae_lib.AutoencoderConfig, chunks: int = 1) -> Callable:
  """fn(params, images, key) -> the diffusion model's latents of images in [-1, 1]: a
  posterior sample, or with key None the posterior mean (image conditions). With
  `chunks` k > 1 the posteriors are computed for k chunks of the batch one after
  another (chunk i = examples i, i + k, ...: each device's share splits evenly when k
  divides it), then sampled as one batch: the same latents."""
  net = ae_lib.AutoencoderKL(cfg)

  def posterior_of(params, images):
    return net.apply({"params": params}, images, method="encode")

  def chunked(params, images):
    parts = jax.lax.map(lambda x: posterior_of(params, x),
                        mesh_lib.split_per_device(images, chunks))
    return jax.tree.map(mesh_lib.merge_per_device, parts)

  def encode(params, images, key=None):
    posterior = (chunked if chunks > 1 else posterior_of)(params, images)
    z = posterior.mode() if key is None else posterior.sample(key)
    return jax.lax.stop_gradient(ae_lib.normalize_latents(cfg, z))
  return encode


def cached_sampler(cfg: ae_lib.AutoencoderConfig) -> Callable:
  """fn(moments, key) -> the diffusion model's latents of a latent cache's posteriors
  (mean and log variance along channels): the same sample `encoder` draws with `key`."""

  def sample(moments, key):
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    z = ae_lib.DiagonalGaussian(mean, logvar).sample(key)
    return ae_lib.normalize_latents(cfg, z)
  return sample


def decoder(cfg: ae_lib.AutoencoderConfig) -> Callable:
  """fn(params, latents) -> images in [-1, 1] (clipped) of the diffusion model's latents."""
  net = ae_lib.AutoencoderKL(cfg)

  def decode(params, z):
    x = net.apply({"params": params}, ae_lib.unnormalize_latents(cfg, z), method="decode")
    return jnp.clip(x, -1.0, 1.0)
  return decode


__all__ = ["Autoencoder", "LatentConfig", "cached_sampler", "check_data", "decoder", "encoder",
           "load"]
