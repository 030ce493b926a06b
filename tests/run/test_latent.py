"""Latent diffusion end to end through the command line: an autoencoder run (kind
"autoencoder") trains, resumes exactly and stores its latent scale; a class-conditional
diffusion run trains in its latent space and samples decoded images; bad inputs fail
with one line before anything is written. All on the bundled 8x8 digits, with one tiny
autoencoder (f=2, 4 latent channels) whose programs every test shares."""

import json
import os

import jax
import numpy as np
import pytest

from diffusion_jax.models import autoencoder as ae_lib
from diffusion_jax.models import convert_vae
from diffusion_jax.run import latent as latent_lib
from tests.conftest import cli

# A tiny autoencoder on digits: 8x8x1 -> 4x4x4, the discriminator on from step 2.
AE = {
    "kind": "autoencoder", "autoencoder.block_out_channels": (8, 8),
    "autoencoder.norm_num_groups": 4, "autoencoder.latent_channels": 4,
    "autoencoder_loss.disc_start": 2, "autoencoder_loss.disc_channels": 8,
    "autoencoder_loss.disc_layers": 1, "autoencoder_loss.disc_norm_groups": 4,
    "training.batch_size": 16, "training.log_every": 1, "training.checkpoint_every": 2,
    "optim.warmup_steps": 1, "optim.lr_schedule": "constant", "optim.lr": 1e-3,
    "training.ema_decay": 0.9, "latent.scale_batches": 2,
}


def train_ae(workdir, steps: int, data_dir):
  return cli(workdir, overrides={**AE, "training.num_steps": steps}, tiny=False,
             data_dir=data_dir)


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory, data_dir):
  """An autoencoder trained 2 steps, then resumed to 4; and one trained 4 steps at once."""
  root = tmp_path_factory.mktemp("latent")
  resumed, straight = str(root / "ae_resumed"), str(root / "ae_straight")
  r1 = train_ae(resumed, 2, data_dir)
  assert r1.returncode == 0, r1.stderr[-3000:]
  r2 = train_ae(resumed, 4, data_dir)
  assert r2.returncode == 0, r2.stderr[-3000:]
  r3 = train_ae(straight, 4, data_dir)
  assert r3.returncode == 0, r3.stderr[-3000:]
  return root, resumed, straight, (r1, r2, r3)


def test_autoencoder_trains_resumes_exactly_and_stores_its_latent_scale(autoencoder):
  root, resumed, straight, (r1, r2, r3) = autoencoder
  assert "new run" in r1.stdout and "resumed from" in r2.stdout and "steps 2->4" in r2.stdout
  # The losses of losses.autoencoder_loss are logged; the adversarial term is off
  # before autoencoder_loss.disc_start = 2 and on after.
  for name in ("rec", "kl", "psnr", "g_loss", "disc_loss", "d_weight"):
    assert f"| {name} " in r3.stdout, (name, r3.stdout)
  assert "disc_factor 0 " in r1.stdout and "disc_factor 1 " in r2.stdout
  assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["2", "4"]
  assert os.listdir(os.path.join(straight, "tensorboard"))
  a, b = latent_lib.load(resumed), latent_lib.load(straight)
  assert a.step == b.step == 4
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  # The latent scale: 1 / std of posterior samples of 2 batches, for the final step.
  for wd, result in ((resumed, r2), (straight, r3)):
    scale = json.load(open(os.path.join(wd, "latent_scale.json")))
    assert scale["step"] == 4 and scale["examples"] == 32
    assert scale["scaling_factor"] == pytest.approx(1.0 / scale["std"])
    assert "latent scale" in result.stdout
  assert a.config.scaling_factor == scale["scaling_factor"]
  assert a.config.factor == 2 and a.latent_shape(8) == (4, 4, 4)


def test_latent_scale_matches_its_definition(autoencoder):
  """The stored factor is 1 / std of the posterior samples of the first batches, as
  recomputed here from the restored parameters and the same input order and keys."""
  from diffusion_jax.config import files
  from diffusion_jax.data import pipeline
  from diffusion_jax.run import autoencoder as ae_run
  _, _, straight, _ = autoencoder
  spec = ae_run.parse(files.load_saved(straight), 1)
  loaded = latent_lib.load(straight)
  it = pipeline.make_iterator(spec.data, spec.training.batch_size, spec.seed)
  key = jax.random.fold_in(jax.random.key(spec.seed), 0x5CA1E)
  net = ae_lib.AutoencoderKL(spec.autoencoder)
  zs = [ae_lib.sample_latents(net, loaded.params, next(it)["image"], jax.random.fold_in(key, i))
        for i in range(spec.scale_batches)]
  it.close()
  expected = ae_lib.scaling_factor_from_latents(np.concatenate(zs))
  assert loaded.config.scaling_factor == pytest.approx(expected, rel=1e-4)


@pytest.fixture(scope="module")
def latent_run(autoencoder, data_dir):
  root, resumed, _, _ = autoencoder
  wd = str(root / "latent_digits")
  r = cli(wd, overrides={"latent.autoencoder": resumed, "training.num_steps": 2,
                         "training.log_every": 1, "optim.warmup_steps": 1},
          data_dir=data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  return wd, r


def test_latent_diffusion_trains_and_samples_decoded_images(latent_run, data_dir):
  wd, r = latent_run
  assert "step 2/2" in r.stdout
  data = np.load(os.path.join(wd, "samples", "step_2.npz"))
  # Decoded by the autoencoder: digits' 8x8 grayscale images, one per label.
  assert data["images"].shape == (10, 8, 8, 1) and data["images"].dtype == np.uint8
  np.testing.assert_array_equal(data["labels"], np.arange(10))
  assert len(np.unique(data["images"])) > 2
  meta = json.load(open(os.path.join(wd, "config.json")))
  assert meta["latent"]["autoencoder"].endswith("ae_resumed")
  # Sampling again from the saved run finds the autoencoder by itself.
  r2 = cli(wd, "--mode=sample", "--labels=3,5", config=None, tiny=False, data_dir=data_dir)
  assert r2.returncode == 0, r2.stderr[-3000:]
  again = np.load(os.path.join(wd, "samples", "step_2-1.npz"))
  assert again["images"].shape == (2, 8, 8, 1)


def test_sample_metrics_of_a_latent_run_are_of_decoded_images(latent_run, data_dir):
  wd, _ = latent_run
  r = cli(wd, "--mode=eval", config=None, tiny=False, data_dir=data_dir,
          overrides={"eval.metrics": "kid", "eval.num_samples": 20})
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.load(open(os.path.join(wd, "eval", "step_2_digits-v1.json")))
  # digits-v1 takes 8x8 grayscale images: the decoded samples, not 4x4x4 latents.
  assert result["num_samples"] == 20 and result["feature_net"] == "digits-v1"
  assert np.isfinite(result["kid"])


def test_latent_diffusion_on_a_converted_weight_file(autoencoder, latent_run, tmp_path,
                                                     data_dir):
  """A weight file of the converter's format is an autoencoder too; its scale is its own
  or FILE.latent_scale.json beside it; the run's checkpoint is of the same U-Net."""
  _, resumed, _, _ = autoencoder
  loaded = latent_lib.load(resumed)
  path = str(tmp_path / "vae.npz")
  convert_vae.save(path, loaded.config, loaded.params)
  assert latent_lib.load(path).config.scaling_factor == loaded.config.scaling_factor
  with open(latent_lib.scale_file(path), "w") as f:
    json.dump({"scaling_factor": 0.5}, f)
  assert latent_lib.load(path).config.scaling_factor == 0.5
  # Resuming a run with another autoencoder changes what its checkpoint means.
  wd, _ = latent_run
  r = cli(wd, overrides={"latent.autoencoder": path, "training.num_steps": 3},
          data_dir=data_dir)
  assert r.returncode == 2 and "latent.autoencoder" in r.stderr, r.stderr[-2000:]


def _errors(result):
  return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("case", ["missing", "channels", "size", "not_an_autoencoder", "no_scale",
                                  "bad_kind", "ae_mode", "bpd"])
def test_bad_latent_inputs_fail_cleanly_and_write_nothing(case, autoencoder, latent_run,
                                                          tmp_path, data_dir):
  _, resumed, _, _ = autoencoder
  wd = str(tmp_path / "wd")
  over, args, message = {"training.num_steps": 2}, (), ""
  if case == "missing":
    over["latent.autoencoder"], message = str(tmp_path / "nope"), "no such autoencoder"
  elif case == "channels":  # An RGB autoencoder (a weight file) for grayscale digits.
    cfg = ae_lib.AutoencoderConfig(block_out_channels=(4, 4), norm_num_groups=4,
                                   layers_per_block=1)
    path = str(tmp_path / "rgb_vae.npz")
    zeros = jax.tree.map(lambda a: np.zeros(a.shape, np.float32), ae_lib.param_shapes(cfg))
    convert_vae.save(path, cfg, zeros)
    over["latent.autoencoder"], message = path, "takes images of 3 channels; data.channels=1"
  elif case == "size":
    over.update({"latent.autoencoder": resumed, "data.image_size": 9})
    message = "data.image_size=9 is not divisible by"
  elif case == "not_an_autoencoder":
    over["latent.autoencoder"], message = latent_run[0], "not an autoencoder"
  elif case == "no_scale":
    fake = tmp_path / "ae_unfinished"
    fake.mkdir()
    import shutil
    shutil.copytree(os.path.join(resumed, "checkpoints"), fake / "checkpoints")
    shutil.copy(os.path.join(resumed, "config.json"), fake / "config.json")
    over["latent.autoencoder"], message = str(fake), "no latent scale"
  elif case == "bad_kind":
    over["kind"], message = "vae", "kind='vae' is unknown; known: ['autoencoder', 'diffusion']"
  elif case == "ae_mode":  # An autoencoder run only trains.
    wd, over, args, message = resumed, {}, ("--mode=sample",), "only trains"
  elif case == "bpd":
    over.update({"latent.autoencoder": resumed, "eval.every_steps": 1})
    message = "'bpd' with latent.autoencoder"
  before = sorted(os.listdir(wd)) if os.path.isdir(wd) else None
  r = cli(wd, *args, overrides=over, data_dir=data_dir,
          config=None if case == "ae_mode" else "configs/digits.py",
          tiny=case != "ae_mode")
  errors = _errors(r)
  assert r.returncode == 2 and len(errors) == 1 and message in errors[0], r.stderr[-2000:]
  assert (sorted(os.listdir(wd)) if os.path.isdir(wd) else None) == before
