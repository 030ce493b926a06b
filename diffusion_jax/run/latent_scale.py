"""The latent scale of an autoencoder weight file (e.g. a converted Stable Diffusion
VAE) over a config's training data, written beside the file:

  python -m diffusion_jax.run.latent_scale --config=configs/photo_latent.py --autoencoder=vae.npz

reads latent.scale_batches batches of training.batch_size images of the config's
`data` section, and writes vae.npz.latent_scale.json ({"scaling_factor": 1 / std of
their posterior samples, ...}), which latent diffusion runs with
latent.autoencoder=vae.npz then use instead of the file's own factor. An existing
scale file is never overwritten (remove it first). Config fields may be overridden
with --config.<field>=<value>; one `error: ...` line and exit status 2 for bad input.
(An autoencoder run computes its own scale at the end of training.)
"""

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from diffusion_jax.config import files
from diffusion_jax.config.errors import ConfigError, require
from diffusion_jax.data import pipeline
from diffusion_jax.models import autoencoder as ae_lib
from diffusion_jax.run import autoencoder as ae_run
from diffusion_jax.run import latent as latent_lib
from diffusion_jax.training import mesh as mesh_lib


def write_scale(config, weight_file: str, mesh=None) -> dict:
  """Computes the scale of `weight_file` over the config's data and writes it beside
  the file; returns it. ConfigError for bad input, before anything is written."""
  require(os.path.isfile(weight_file), f"--autoencoder={weight_file!r}: no such weight file")
  dest = latent_lib.scale_file(weight_file)
  require(not os.path.exists(dest), f"{dest} exists: remove it to compute the scale again")
  mesh = mesh or mesh_lib.make_mesh()
  data = pipeline.DataConfig.from_config(config.data)
  batch, batches = config.training.batch_size, config.latent.scale_batches
  require(isinstance(batches, int) and batches >= 1,
          f"latent.scale_batches={batches!r} must be an integer >= 1")
  mesh_lib.check_batch(batch, mesh.devices.size, "training.batch_size")
  pipeline.check(data, {"data.split": (data.split, batch)})
  ae = latent_lib.load(weight_file)
  latent_lib.check_data(ae, data.image_size, data.channels)
  scale = ae_run.scale_of(ae_lib.AutoencoderKL(ae.config), ae.params, data, batch, batches,
                          config.seed, mesh)
  scale.update(data=data.name, split=data.split, image_size=data.image_size)
  with open(dest, "x") as f:  # Never over a file written meanwhile.
    f.write(json.dumps(scale, indent=2) + "\n")
  return scale


def run(argv: list[str]) -> int:
  """The command line (argv[0] is the program); returns the exit status."""
  fv = flags.FlagValues()
  flags.DEFINE_string("autoencoder", None, "A converted autoencoder weight file (.npz).",
                      flag_values=fv)
  config_flags.DEFINE_config_file("config", None, "Config file (its data section).",
                                  flag_values=fv, lock_config=True, sys_argv=argv)
  try:
    files.parse_flags(fv, argv)
    require(fv.config is not None, "--config is required, e.g. --config=configs/photo_latent.py")
    require(bool(fv.autoencoder), "--autoencoder is required (a converted weight file)")
    scale = write_scale(fv.config, fv.autoencoder)
  except ConfigError as e:
    for p in e.problems:
      print(f"error: {p}", file=sys.stderr, flush=True)
    return 2
  print(f"latent scale {scale['scaling_factor']:.5f} (std {scale['std']:.4f} of "
        f"{scale['examples']} examples' latents): {latent_lib.scale_file(fv.autoencoder)}",
        flush=True)
  return 0


if __name__ == "__main__":
  from diffusion_jax.run import tf_setup
  tf_setup.configure()
  sys.exit(run(sys.argv))
