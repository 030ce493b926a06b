"""Latent diffusion end to end through the command line: an autoencoder run (kind
"autoencoder") trains, resumes exactly and stores its latent scale; a class-conditional
diffusion run trains in its latent space and samples decoded images; bad inputs fail
with one line before anything is written. All on the bundled 8x8 digits, with one tiny
autoencoder (f=2, 4 latent channels) whose programs every test shares."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models import autoencoder as ae_lib
from diffusion_jax.models import convert_vae
from diffusion_jax.run import latent as latent_lib
from tests.conftest import cli
from tests.models.test_autoencoder import numpy_params

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
  # Step 1 encoded in 2 chunks, then resumed to step 2 encoded whole: how the encoder is
  # split is no part of what a checkpoint means (a run moved to a machine of less memory
  # resumes with more chunks). test_latent_diffusion_trains_from_a_latent_cache finds
  # the cached run's two losses (its latents sampled from one batch of posteriors) equal
  # to these.
  over = {"latent.autoencoder": resumed, "training.log_every": 1, "optim.warmup_steps": 1}
  r1 = cli(wd, overrides={**over, "training.num_steps": 1, "latent.encode_chunks": 2,
                          "training.sample_at_end": False}, data_dir=data_dir)
  assert r1.returncode == 0, r1.stderr[-3000:]
  r2 = cli(wd, overrides={**over, "training.num_steps": 2}, data_dir=data_dir)
  assert r2.returncode == 0, r2.stderr[-3000:]
  assert "steps 1->2" in r2.stdout, r2.stdout
  return wd, r2._replace(stdout=r1.stdout + r2.stdout)


def test_encoding_in_chunks_gives_the_same_latents_with_a_chunk_s_activations():
  cfg = ae_lib.AutoencoderConfig(in_channels=1, out_channels=1, block_out_channels=(16, 16),
                                 norm_num_groups=4, layers_per_block=1)
  params = jax.tree.map(jnp.asarray, numpy_params(ae_lib.param_shapes(cfg)))
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 1)), jnp.float32)
  key = jax.random.key(1)
  whole, chunked = latent_lib.encoder(cfg), latent_lib.encoder(cfg, chunks=4)
  for k in (key, None):  # A posterior sample, and the mean (image conditions).
    np.testing.assert_allclose(chunked(params, images, k), whole(params, images, k),
                               rtol=1e-5, atol=1e-6)
  temps = [jax.jit(f).lower(params, images, key).compile().memory_analysis().temp_size_in_bytes
           for f in (whole, chunked)]
  assert temps[1] < temps[0] / 2, temps


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
                                  "bad_kind", "ae_mode", "bpd", "cache_other_ae",
                                  "cache_other_data", "cache_missing", "cache_image_cond",
                                  "cache_no_ae", "cond_channels", "cond_project",
                                  "chunks_uneven", "chunks_cache"])
def test_bad_latent_inputs_fail_cleanly_and_write_nothing(case, autoencoder, latent_run,
                                                          latent_cache_dir, tmp_path, data_dir):
  _, resumed, _, _ = autoencoder
  cache = latent_cache_dir[0]
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
  elif case == "cache_other_ae":  # The cache is of `resumed`'s latents.
    other = other_autoencoder(str(tmp_path / "other.npz"), latent_lib.load(resumed))
    over.update({"latent.autoencoder": other, "latent.cache": cache})
    message = "was built from another autoencoder or other data than this run's " \
              "(autoencoder.weights_sha256: cache '"
  elif case == "cache_other_data":
    over.update({"latent.autoencoder": resumed, "latent.cache": cache,
                 "data.random_flip": True})
    message = "data.random_flip: cache False, run True"
  elif case == "cache_missing":
    over.update({"latent.autoencoder": resumed, "latent.cache": str(tmp_path / "none")})
    message = "no such directory; build it with python -m diffusion_jax.run.latent_cache"
  elif case == "cache_image_cond":
    over.update({"latent.autoencoder": resumed, "latent.cache": cache, "cond.image": "sr",
                 "cond.sr_factor": 2, "model.cond_image_channels": 1})
    message = "latent.cache with cond.image='sr'"
  elif case == "cache_no_ae":
    over["latent.cache"], message = cache, "latent.cache="
  elif case == "cond_channels":  # In latent space inpainting gives 4 + 1 channels.
    over.update({"latent.autoencoder": resumed, "cond.image": "inpaint",
                 "model.cond_image_channels": 2})
    message = "gives 5 channels in latent space"
  elif case == "cond_project":
    over.update({"latent.autoencoder": resumed, "cond.image": "inpaint",
                 "model.cond_image_channels": 5, "sample.project": True})
    message = "the projection is onto images"
  elif case == "chunks_uneven":
    over.update({"latent.autoencoder": resumed, "latent.encode_chunks": 3})
    message = "latent.encode_chunks=3 does not divide the per-device batch 16"
  elif case == "chunks_cache":
    over.update({"latent.autoencoder": resumed, "latent.cache": cache,
                 "latent.encode_chunks": 2})
    message = "latent.encode_chunks=2 needs a train step that encodes"
  before = sorted(os.listdir(wd)) if os.path.isdir(wd) else None
  r = cli(wd, *args, overrides=over, data_dir=data_dir,
          config=None if case == "ae_mode" else "configs/digits.py",
          tiny=case != "ae_mode")
  errors = _errors(r)
  assert r.returncode == 2 and len(errors) == 1 and message in errors[0], r.stderr[-2000:]
  assert (sorted(os.listdir(wd)) if os.path.isdir(wd) else None) == before


# --- The latent cache (run/latent_cache.py, data/latent_cache.py).

# The latent run's overrides (latent_run): the cached run's programs are the same but
# for the encoder.
LATENT_RUN = {"training.num_steps": 2, "training.log_every": 1, "optim.warmup_steps": 1}


def build_cache(*argv):
  """`python -m diffusion_jax.run.latent_cache ARGV` in this process, output captured."""
  import contextlib
  import io
  from diffusion_jax.run import latent_cache
  from tests.conftest import Result
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = latent_cache.run(["diffusion_jax.run.latent_cache", *argv])
  return Result(code, out.getvalue(), err.getvalue())


def cache_args(autoencoder_path: str, cache: str, *more) -> list[str]:
  from tests.conftest import ROOT
  return [f"--config={os.path.join(ROOT, 'configs/digits.py')}",
          f"--config.latent.autoencoder={autoencoder_path}", f"--config.latent.cache={cache}",
          "--config.training.batch_size=16", *more]


def other_autoencoder(path: str, like) -> str:
  """A weight file of `like`'s autoencoder with one weight changed: another autoencoder."""
  params = jax.tree.map(np.array, like.params)
  leaf = jax.tree.leaves(params)[0]
  leaf.flat[0] += 0.5
  convert_vae.save(path, like.config, params)
  return path


@pytest.fixture(scope="module")
def latent_cache_dir(autoencoder, data_dir):
  root, resumed, _, _ = autoencoder
  path = str(root / "digits_latents")
  r = build_cache(*cache_args(resumed, path))
  assert r.returncode == 0, r.stderr[-3000:]
  return path, r


def test_latent_cache_holds_each_records_posterior_and_is_built_once(autoencoder,
                                                                     latent_cache_dir):
  from diffusion_jax.data import latent_cache as cache_data
  from diffusion_jax.data import pipeline
  from diffusion_jax.run import latent_cache
  _, resumed, _, _ = autoencoder
  path, r = latent_cache_dir
  info = cache_data.read_info(path)
  n = info["examples"]
  assert f"latent cache: {n} examples" in r.stdout
  assert info["moments_shape"] == [n, 1, 4, 4, 8]  # No flips: one variant; mean | logvar.
  ae = latent_lib.load(resumed)
  assert info["identity"]["autoencoder"]["weights_sha256"] == latent_cache.weights_hash(ae.params)
  assert info["built_from"]["scaling_factor"] == ae.config.scaling_factor
  # Record i: the posterior of record i's image, and its label.
  from diffusion_jax.config import files
  from tests.conftest import ROOT
  data = pipeline.DataConfig.from_config(files.load(os.path.join(ROOT, "configs/digits.py")).data)
  first = pipeline.load_split_numpy(data, data.split, 20)
  images = first["image"].astype(np.float32) / 127.5 - 1.0
  post = ae_lib.AutoencoderKL(ae.config).apply({"params": ae.params}, images, method="encode")
  moments = np.load(os.path.join(path, cache_data.MOMENTS))[:20, 0]
  np.testing.assert_allclose(moments, np.concatenate([post.mean, post.logvar], -1), atol=1e-5)
  np.testing.assert_array_equal(np.load(os.path.join(path, cache_data.LABELS))[:20],
                                first["label"])
  # The same pipeline: the same records at the same positions, and a saved position of
  # one continues the other (a run may resume with or without the cache).
  cached = pipeline.make_iterator(data, 16, 3, cache=path)
  pixels = pipeline.make_iterator(data, 16, 3)
  a = next(cached)
  np.testing.assert_array_equal(a["label"], next(pixels)["label"])
  assert sorted(a) == ["label", "moments"] and a["moments"].shape == (16, 4, 4, 8)
  resumed_pixels = pipeline.make_iterator(data, 16, 0)
  resumed_pixels.restore(cached.state())
  np.testing.assert_array_equal(next(resumed_pixels)["label"], next(cached)["label"])
  # Each of 2 processes reads its half of every global batch.
  halves = [pipeline.make_iterator(data, 16, 3, process_index=p, process_count=2, cache=path)
            for p in (0, 1)]
  whole = pipeline.make_iterator(data, 16, 3, cache=path)
  np.testing.assert_array_equal(np.concatenate([next(h)["moments"] for h in halves]),
                                next(whole)["moments"])
  for it in (cached, pixels, resumed_pixels, whole, *halves):
    it.close()
  # Built again for the same autoencoder and data: nothing to do.
  before = os.stat(os.path.join(path, cache_data.MOMENTS)).st_mtime_ns
  again = build_cache(*cache_args(resumed, path))
  assert again.returncode == 0 and "up to date" in again.stdout, again.stderr[-2000:]
  assert os.stat(os.path.join(path, cache_data.MOMENTS)).st_mtime_ns == before


def test_latent_cache_of_another_autoencoder_is_refused_unless_rebuilt(
    autoencoder, latent_cache_dir, tmp_path):
  import shutil
  from diffusion_jax.data import latent_cache as cache_data
  from diffusion_jax.run import latent_cache
  _, resumed, _, _ = autoencoder
  cache = str(tmp_path / "cache")
  shutil.copytree(latent_cache_dir[0], cache)
  other = other_autoencoder(str(tmp_path / "other.npz"), latent_lib.load(resumed))
  before = open(os.path.join(cache, cache_data.INFO)).read()
  r = build_cache(*cache_args(other, cache))
  errors = _errors(r)
  assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
  assert "another autoencoder" in errors[0] and "weights_sha256" in errors[0]
  assert "--rebuild" in errors[0]
  assert open(os.path.join(cache, cache_data.INFO)).read() == before
  r = build_cache(*cache_args(other, cache, "--rebuild"))
  assert r.returncode == 0, r.stderr[-2000:]
  info = cache_data.read_info(cache)
  assert info["identity"]["autoencoder"]["weights_sha256"] == latent_cache.weights_hash(
      latent_lib.load(other).params)
  assert sorted(os.listdir(tmp_path)) == ["cache", "other.npz"]  # No leftovers.


def test_latent_diffusion_trains_from_a_latent_cache(autoencoder, latent_run, latent_cache_dir,
                                                     tmp_path, data_dir):
  _, resumed, _, _ = autoencoder
  wd = str(tmp_path / "cached")
  r = cli(wd, overrides={"latent.autoencoder": resumed, "latent.cache": latent_cache_dir[0],
                         **LATENT_RUN}, data_dir=data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  # The logged losses are the encoding run's (same seed, same latents).
  loss = lambda out: [line.split("| loss ")[1].split()[0] for line in out.splitlines()
                      if line.startswith("step ") and "| loss " in line]
  assert loss(r.stdout) == loss(latent_run[1].stdout) and len(loss(r.stdout)) == 2
  assert os.path.exists(os.path.join(wd, "samples", "step_2.npz"))


def test_latent_inpainting_trains_and_samples_through_the_command_line(autoencoder, tmp_path,
                                                                       data_dir):
  """An image condition in latent space (tests/run/test_latent_conditions.py has each):
  the masked digit encoded, the mask at the latent's 4x4; samples decoded."""
  _, resumed, _, _ = autoencoder
  wd = str(tmp_path / "inpaint")
  r = cli(wd, overrides={"latent.autoencoder": resumed, "cond.image": "inpaint",
                         "model.cond_image_channels": 5, **LATENT_RUN}, data_dir=data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  data = np.load(os.path.join(wd, "samples", "step_2.npz"))
  assert data["images"].shape == (10, 8, 8, 1)
  assert len(np.unique(data["images"])) > 2
