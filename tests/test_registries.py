"""Every name of every registry goes through its config section; an unknown name's
error lists exactly the registry's names; the docs list every name."""

import os
import re

import pytest

from diffusion_jax import main
from diffusion_jax.conditioning import conditions
from diffusion_jax.config import defaults
from diffusion_jax.config.errors import ConfigError
from diffusion_jax.core import diffusion, parameterisation, samplers, schedules
from diffusion_jax.data import pipeline
from diffusion_jax.evaluation import eval_config, features, likelihood
from diffusion_jax.models import autoencoder, autoencoder_losses, conv, unet
from diffusion_jax.run import autoencoder as ae_run, build
from diffusion_jax.run import spec as spec_lib
from diffusion_jax.sweep import cli as sweep_cli, space as sweep_space
from diffusion_jax.training import augment, optimizer
from tests.conftest import ROOT


def parse(overrides: dict) -> spec_lib.Spec:
  c = defaults.get_config()
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return spec_lib.parse(c, num_devices=1)


def continuous(**extra):
  return {"diffusion.num_steps": 0, "sample.num_steps": 10, **extra}


# (registry, config field, the overrides that make each name valid).
CASES = [
    (schedules.SCHEDULES, "diffusion.schedule",
     lambda n: {} if n in ("linear", "cosine") else continuous(
         **({"diffusion.weighting": "elbo"} if n == "learned" else {}))),
    (parameterisation.PREDICTIONS, "diffusion.prediction", lambda n: {}),
    (diffusion.WEIGHTINGS, "diffusion.weighting", lambda n: {}),
    (diffusion.TIME_SAMPLING, "diffusion.time_sampling",
     lambda n: continuous(**{"diffusion.schedule": "vp", "diffusion.weighting": "elbo"})),
    (samplers.SAMPLERS, "sample.sampler", lambda n: {}),
    (samplers.GRIDS, "sample.grid", lambda n: {}),
    (samplers.DDPM_VARIANCES, "sample.ddpm_variance", lambda n: {"sample.sampler": "ddpm"}),
    (unet.EMBEDDINGS, "model.embedding", lambda n: {}),
    (unet.PROGRESSIVE_INPUTS, "model.progressive_input", lambda n: {}),
    (unet.PROGRESSIVES, "model.progressive", lambda n: {"model.resample_filter": (1, 3, 3, 1)}),
    (unet.DTYPES, "model.dtype", lambda n: {}),
    (unet.REMAT_POLICIES, "model.remat", lambda n: {}),
    (conv.CONV_IMPLS, "model.conv_impl", lambda n: {}),
    (optimizer.LR_SCHEDULES, "optim.lr_schedule", lambda n: {}),
    (likelihood.METHODS, "eval.method", lambda n: {}),
    (eval_config.METRICS, "eval.metrics",
     lambda n: {"eval.feature_net": "inception", "eval.num_samples": 4096}),
    (features.FEATURE_NETS, "eval.feature_net",
     lambda n: {"eval.metrics": "kid", "data.channels": features.FEATURE_NETS[n].channels
                if n != "inception" else 1}),
]


def _unknown(field: str) -> str:
  return f"{field}=(.*) is unknown; known: (\\[.*\\])"


@pytest.mark.parametrize("registry,field,overrides", CASES, ids=[c[1] for c in CASES])
def test_every_registered_name_parses_and_unknown_names_list_them(registry, field, overrides):
  names = [n for n in registry if n != "none"]
  for name in names:
    spec = parse({**overrides(name), field: name})
    assert spec is not None
  with pytest.raises(ConfigError) as e:
    parse({**overrides(names[0]), field: "no_such_name"})
  listed = re.search(_unknown(field), str(e.value)).group(2)
  assert eval(listed) == sorted(set(registry) | ({"none"} if "progressive" in field else set()))


def test_every_run_kind_and_autoencoder_option_parses():
  for name in build.KINDS:
    c = defaults.get_config()
    c.kind, c.autoencoder_loss.disc_layers = name, 1  # The 8x8 digits of the defaults.
    assert build.kind_of(c).parse(c, 1).kind == name
  c = defaults.get_config()
  c.kind = "vae"
  with pytest.raises(ConfigError) as e:
    build.kind_of(c)
  assert eval(re.search(_unknown("kind"), str(e.value)).group(2)) == sorted(build.KINDS)
  for registry, field in ((autoencoder_losses.RECONSTRUCTIONS, "reconstruction"),
                          (autoencoder_losses.DISC_LOSSES, "disc_loss"),
                          ({n: n for n in autoencoder.DTYPES}, "dtype")):
    section = "autoencoder" if field == "dtype" else "autoencoder_loss"
    for name in registry:
      c = defaults.get_config()
      c.kind, c[section][field] = "autoencoder", name
      c.autoencoder_loss.disc_layers = 1
      ae_run.parse(c, 1)
    c[section][field] = "no_such_name"
    with pytest.raises(ConfigError, match=f"{section}.{field}='no_such_name' is unknown"):
      ae_run.parse(c, 1)


def test_every_param_dtype_parses_where_the_platform_runs_it():
  import jax
  for name, dtype in unet.PARAM_DTYPES.items():
    # float64 needs 64-bit JAX, off in the tests; the error says so.
    with jax.enable_x64(jax.numpy.dtype(dtype).itemsize == 8):
      assert parse({"model.param_dtype": name}).model.param_dtype == name
  with pytest.raises(ConfigError, match=r"model.param_dtype='float64' needs 64-bit JAX "
                     r"\(JAX_ENABLE_X64=1\)"):
    parse({"model.param_dtype": "float64"})
  with pytest.raises(ConfigError) as e:
    parse({"model.param_dtype": "int8"})
  listed = re.search(_unknown("model.param_dtype"), str(e.value)).group(2)
  assert eval(listed) == sorted(unet.PARAM_DTYPES)


def test_every_image_condition_parses_with_its_channels():
  for name, spec in conditions.IMAGE_CONDITIONS.items():
    parse({"data.channels": 3, "cond.image": name, "cond.sr_factor": 2,
           "model.cond_image_channels": spec.channels(3)})
  with pytest.raises(ConfigError, match=r"cond.image='blur' is unknown; known: \['', 'gray', "
                     r"'inpaint', 'sr'\]"):
    parse({"cond.image": "blur"})


def test_every_augmentation_parses_with_its_label_size():
  for name, op in augment.AUGMENTATIONS.items():
    spec = parse({"augment.p": 0.5, "augment.ops": (name,), "model.augment_dim": op.dims})
    assert spec.augment.label_dim == op.dims
  with pytest.raises(ConfigError) as e:
    parse({"augment.p": 0.5, "augment.ops": ("cutout",), "model.augment_dim": 1})
  listed = re.search(_unknown("augment.ops"), str(e.value)).group(2)
  assert eval(listed) == sorted(augment.AUGMENTATIONS)


def test_every_guided_condition_has_its_fields():
  c = defaults.get_config()
  for g in conditions.GUIDED.values():
    assert g.dropout_field in c.training and g.guidance_field in c.sample


def test_every_bundled_dataset_is_a_builder(tmp_path):
  for name in pipeline.BUNDLED:
    assert pipeline.get_builder(name, str(tmp_path)).name == name


def test_every_source_reads_its_data_dir(tmp_path):
  for name in pipeline.SOURCES:
    c = defaults.get_config().data
    c.name, c.data_dir = name, str(tmp_path / "missing")
    with pytest.raises(pipeline.DataError, match=f"data.data_dir='{c.data_dir}'"):
      pipeline.check(pipeline.DataConfig.from_config(c), {})


def test_modes_of_the_command_line(capsys):
  assert main.run(["main", "--mode=score", "--workdir=/nonexistent",
                   "--config=" + os.path.join(ROOT, "configs", "digits.py")]) == 2
  assert f"unknown --mode='score'; known: {sorted(main.MODES)}" in capsys.readouterr().err


def test_engines_of_the_sweep_command(capsys):
  assert sweep_cli.run(["sweep", "--engine=slurm", "--workdir=/nonexistent",
                        "--config=" + os.path.join(ROOT, "configs", "digits.py")]) == 2
  assert f"unknown --engine='slurm'; known: {sorted(sweep_cli.ENGINES)}" in capsys.readouterr().err


def test_every_search_distribution_checks_samples_and_names_its_extremes():
  import random
  made = {"uniform": sweep_space.uniform(0.5, 2.0), "loguniform": sweep_space.loguniform(0.5, 2.0),
          "randint": sweep_space.randint(1, 3), "choice": sweep_space.choice([0.5, 2.0])}
  assert sorted(made) == sorted(sweep_space.DISTRIBUTIONS)
  for name, dist in made.items():
    assert isinstance(dist, sweep_space.DISTRIBUTIONS[name])
    dist.check(name)
    lo, hi = min(dist.extremes()), max(dist.extremes())
    samples = [dist.sample(random.Random(i)) for i in range(50)]
    assert all(lo <= v <= hi for v in samples), name


DOCS = [  # (page, registry): the page's tables list every name.
    ("processes-and-samplers.md", schedules.SCHEDULES),
    ("processes-and-samplers.md", parameterisation.PREDICTIONS),
    ("processes-and-samplers.md", diffusion.WEIGHTINGS),
    ("processes-and-samplers.md", diffusion.TIME_SAMPLING),
    ("processes-and-samplers.md", samplers.SAMPLERS),
    ("processes-and-samplers.md", samplers.GRIDS),
    ("processes-and-samplers.md", samplers.DDPM_VARIANCES),
    ("configs.md", unet.DTYPES),
    ("configs.md", unet.PARAM_DTYPES),
    ("configs.md", unet.REMAT_POLICIES),
    ("configs.md", conv.CONV_IMPLS),
    ("configs.md", augment.AUGMENTATIONS),
    ("conditioning.md", conditions.IMAGE_CONDITIONS),
    ("datasets.md", pipeline.BUNDLED),
    ("datasets.md", pipeline.SOURCES),
    ("evaluation.md", likelihood.METHODS),
    ("evaluation.md", eval_config.METRICS),
    ("evaluation.md", features.FEATURE_NETS),
    ("sweeps.md", sweep_cli.ENGINES),
    ("sweeps.md", sweep_space.DISTRIBUTIONS),
    ("latent.md", build.KINDS),
    ("latent.md", autoencoder_losses.RECONSTRUCTIONS),
    ("latent.md", autoencoder_losses.DISC_LOSSES),
]


@pytest.mark.parametrize("page,registry", DOCS, ids=[f"{p}:{sorted(r)[0]}" for p, r in DOCS])
def test_docs_list_every_registered_name(page, registry):
  text = open(os.path.join(ROOT, "docs", page)).read()
  missing = [n for n in registry if f"`{n}`" not in text]
  assert not missing, f"docs/{page} does not list {missing}"
