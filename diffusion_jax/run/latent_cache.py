"""A latent cache (as EDM2 precomputes its latents): a config's training split encoded
once by its autoencoder, which latent diffusion runs then read instead of encoding
each batch:

  python -m diffusion_jax.run.latent_cache --config=configs/photo_latent.py \
      --config.latent.autoencoder=runs/photo_ae --config.latent.cache=runs/photo_latents

writes the directory latent.cache (data/latent_cache.py): for every record of
data.split, the posterior q(z | x) of its image (and of its mirror image where
data.random_flip), as mean and log variance, so that training still draws a new
z ~ q(z | x) each time it reads the record, the sample encoding would have drawn.
It records what it was built from: the autoencoder (a hash of its weights and its
architecture; its source, step and latent scale for information: the cache holds
un-normalised posteriors, so the scale the run uses applies to it) and the data
(dataset and version, split, its size, keys, image size, channels, flips,
preprocessing). A run with latent.cache checks them against its own before anything
is compiled; another autoencoder or other data is an error, never mixed in. Building
again is a no-op if the cache matches, an error if it does not, unless --rebuild
(the new cache replaces the old only once it is complete). One process builds it.
Config fields may be overridden with --config.<field>=<value>; one `error: ...` line
and exit status 2 for bad input.
"""

import dataclasses
import hashlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from etils import epath
from ml_collections import config_flags

from diffusion_jax.config import files
from diffusion_jax.config.errors import ConfigError, require
from diffusion_jax.data import latent_cache as cache_data
from diffusion_jax.data import pipeline
from diffusion_jax.data.preprocess import Preprocess
from diffusion_jax.data.source import read
from diffusion_jax.models import autoencoder as ae_lib
from diffusion_jax.run import autoencoder as ae_run
from diffusion_jax.run import latent as latent_lib
from diffusion_jax.training import mesh as mesh_lib

# How a record becomes the encoder's input (data/preprocess.py); a change of it is a
# change of the data.
PREPROCESS = "central square, box-resized to data.image_size, [-1, 1]; mirror: columns reversed"
COMMAND = "python -m diffusion_jax.run.latent_cache"


def weights_hash(params) -> str:
  """sha256 of the parameters: every array's path, dtype, shape and bytes."""
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def identity(ae: latent_lib.Autoencoder, data_cfg, source) -> dict:
  """What a cache's contents depend on (a run's cache must agree on every field)."""
  arch = {k: v for k, v in dataclasses.asdict(ae.config).items()
          if k not in ("scaling_factor", "shift_factor")}
  labels = bool(data_cfg.num_classes)
  return json.loads(json.dumps({
      "autoencoder": {"weights_sha256": weights_hash(ae.params), "architecture": arch},
      "data": {"dataset": source.name, "split": data_cfg.split,
               "examples": source.split_size(data_cfg.split, "data.split"),
               "image_key": data_cfg.image_key,
               "label_key": data_cfg.label_key if labels else "",
               "num_classes": data_cfg.num_classes, "image_size": data_cfg.image_size,
               "channels": data_cfg.channels, "random_flip": data_cfg.random_flip,
               "preprocess": PREPROCESS}}))


def differences(cached: dict, want: dict) -> list[str]:
  """'field: cache X, run Y' for each field of the identities that differs."""
  a, b = ae_run.flatten(cached), ae_run.flatten(want)
  short = lambda v: v[:12] if isinstance(v, str) and len(v) == 64 else v  # Hashes.
  return [f"{k}: cache {short(a.get(k))!r}, run {short(b.get(k))!r}"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check(path: str, ae: latent_lib.Autoencoder, data_cfg, config=None) -> None:
  """A run's latent.cache against its autoencoder and data (ConfigError, one line)."""
  where = f"latent.cache={path!r}"
  require(epath.Path(path).is_dir(), f"{where}: no such directory; build it with {COMMAND} "
          "and this run's config")
  info = cache_data.read_info(path)
  require(info is not None, f"{where} is not a latent cache (no {cache_data.INFO}); "
          f"build it with {COMMAND} and this run's config")
  require(info.get("format") == cache_data.FORMAT,
          f"{where} has format {info.get('format')}; this version reads format "
          f"{cache_data.FORMAT}: build it again ({COMMAND} --rebuild)")
  diff = differences(info["identity"], identity(ae, data_cfg, pipeline.open_source(data_cfg)))
  require(not diff, f"{where} was built from another autoencoder or other data than this "
          f"run's ({'; '.join(diff)}): rebuild it ({COMMAND} --rebuild with this run's "
          "config) or train without it (latent.cache=\"\")")


def _encode_fn(cfg: ae_lib.AutoencoderConfig, mesh):
  """A compiled fn(params, images) -> the posteriors' (mean, log variance) along channels."""
  net = ae_lib.AutoencoderKL(cfg)

  def fn(params, images):
    posterior = net.apply({"params": params}, images, method="encode")
    return jnp.concatenate([posterior.mean, posterior.logvar], axis=-1)

  return jax.jit(fn, in_shardings=(mesh_lib.replicated(mesh), mesh_lib.data_sharded(mesh)),
                 out_shardings=mesh_lib.data_sharded(mesh))


def build(config, rebuild: bool = False, mesh=None, log=print) -> tuple[str, dict]:
  """Builds the cache latent.cache of `config` (see the module docstring); returns
  ("built" or "up to date", its cache.json). ConfigError before anything is written."""
  data = pipeline.DataConfig.from_config(config.data)
  lat = latent_lib.LatentConfig.from_config(config.latent)
  require(bool(lat.autoencoder), "latent.autoencoder is empty: name the autoencoder whose "
          "latents to cache (a workdir or a converted weight file)")
  require(bool(lat.cache), "latent.cache is empty: name the directory to build, e.g. "
          "--config.latent.cache=runs/latents")
  require(jax.process_count() == 1, f"{COMMAND} runs on one process "
          f"({jax.process_count()} here); the cache it writes serves any number")
  mesh = mesh or mesh_lib.make_mesh()
  batch = config.training.batch_size
  mesh_lib.check_batch(batch, mesh.devices.size, "training.batch_size")
  source = pipeline.check(data, {"data.split": (data.split, 1)})
  ae = latent_lib.load(lat.autoencoder)
  latent_lib.check_data(ae, data.image_size, data.channels)
  want = identity(ae, data, source)
  where = f"latent.cache={lat.cache!r}"
  if os.path.exists(lat.cache):
    info = cache_data.read_info(lat.cache)
    require(info is not None, f"{where} exists and is not a latent cache: name another "
            "directory (nothing is overwritten)")
    diff = differences(info.get("identity", {}), want)
    if not diff and info.get("format") == cache_data.FORMAT:
      return "up to date", info
    require(rebuild, f"{where} was built from another autoencoder or other data "
            f"({'; '.join(diff) or 'an older format'}): give --rebuild to replace it")
  n = want["data"]["examples"]
  h, w, c = ae.latent_shape(data.image_size)
  variants = 2 if data.random_flip else 1
  labels = bool(data.num_classes)
  prep = Preprocess(image_key=data.image_key, label_key=data.label_key if labels else "",
                    text_key="", image_size=data.image_size, random_flip=False, seed=0)
  records = source.records(data.split, skip=[k for k in source.features
                                             if k not in (data.image_key, prep.label_key)])
  built_from = {"autoencoder": lat.autoencoder, "autoencoder_step": ae.step,
                "scaling_factor": ae.config.scaling_factor,
                "shift_factor": ae.config.shift_factor, "data_dir": data.data_dir}
  writer = cache_data.Writer(lat.cache, {"identity": want, "built_from": built_from},
                             (n, variants, h, w, 2 * c), data.split,
                             data.num_classes if labels else 0)
  encode, start = _encode_fn(ae.config, mesh), time.perf_counter()
  params = jax.device_put(ae.params, mesh_lib.replicated(mesh))
  try:
    for lo in range(0, n, batch):
      idx = list(range(lo, min(n, lo + batch)))
      examples = [prep((0, r)) for r in read(records, idx)]
      images = np.stack([e["image"] for e in examples])
      images = np.concatenate([images, np.repeat(images[:1], batch - len(idx), 0)])
      for v in range(variants):  # Variant 1: the mirror image, as the pipeline flips.
        x = images if v == 0 else images[:, :, ::-1]
        out = encode(params, mesh_lib.global_batch({"image": x}, mesh)["image"])
        writer.moments[lo:lo + len(idx), v] = np.asarray(jax.device_get(out))[:len(idx)]
      if labels:
        writer.labels[lo:lo + len(idx)] = [e["label"] for e in examples]
    writer.commit()
  except BaseException:
    writer.abort()
    raise
  log(f"latent cache: {n} examples{' (and their mirror images)' if variants == 2 else ''} "
      f"of {source.name} split {data.split!r} as {h}x{w}x{c} posteriors in {lat.cache} "
      f"({time.perf_counter() - start:.1f}s)")
  return "built", cache_data.read_info(lat.cache)


def run(argv: list[str]) -> int:
  """The command line (argv[0] is the program); returns the exit status."""
  fv = flags.FlagValues()
  flags.DEFINE_bool("rebuild", False, "Replace a cache built from another autoencoder "
                    "or other data.", flag_values=fv)
  config_flags.DEFINE_config_file("config", None, "Config file (its data and latent "
                                  "sections).", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  try:
    files.parse_flags(fv, argv)
    require(fv.config is not None, "--config is required, e.g. --config=configs/photo_latent.py")
    status, info = build(fv.config, fv.rebuild, log=lambda s: print(s, flush=True))
  except ConfigError as e:
    for p in e.problems:
      print(f"error: {p}", file=sys.stderr, flush=True)
    return 2
  if status == "up to date":
    print(f"latent cache {fv.config.latent.cache} is up to date ({info['examples']} "
          "examples): nothing to do", flush=True)
  return 0


__all__ = ["PREPROCESS", "build", "check", "differences", "identity", "run", "weights_hash"]


if __name__ == "__main__":
  from diffusion_jax.run import tf_setup
  tf_setup.configure()
  sys.exit(run(sys.argv))
