"""Image conditions with a latent U-Net (conditioning.conditions: `latent_image`): the
U-Net's conditioning input at the latent's size for each condition, through the real
train step and sampler (shapes by jax.eval_shape), and what each holds, with a tiny
RGB autoencoder (f = 2, 4 latent channels) of random weights. (The command line:
tests/run/test_latent.py trains and samples an inpainting model.)"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.conditioning import conditions
from diffusion_jax.config import defaults
from diffusion_jax.config.errors import ConfigError
from diffusion_jax.models import autoencoder as ae_lib
from diffusion_jax.models import convert_vae
from diffusion_jax.run import build, latent as latent_lib, sample as sample_run, spec as spec_lib
from diffusion_jax.training import mesh as mesh_lib, state as state_lib
from tests.conftest import apply_overrides, tiny_overrides

AE = ae_lib.AutoencoderConfig(block_out_channels=(4, 4), layers_per_block=1, norm_num_groups=4)
# cond.image -> the latent U-Net's conditioning channels (RGB data, 4 latent channels).
CHANNELS = {"sr": 3, "gray": 4, "inpaint": 5}


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory):
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32),
                        ae_lib.param_shapes(AE))
  path = str(tmp_path_factory.mktemp("latent_cond") / "vae.npz")
  convert_vae.save(path, AE, params)
  return path


def latent_spec(weight_file: str, cond: str, channels: int, **over):
  """A checked spec of an 8x8 RGB latent run with image condition `cond`, as
  run/build.py makes it once the autoencoder is loaded."""
  c = apply_overrides(defaults.get_config(), {
      **tiny_overrides(), "data.channels": 3, "model.out_channels": 3, "data.image_size": 8,
      "latent.autoencoder": weight_file, "cond.image": cond, "cond.sr_factor": 2,
      "model.cond_image_channels": channels, **over})
  spec = spec_lib.parse(c, num_devices=1)
  ae = latent_lib.load(weight_file)
  net_cfg = dataclasses.replace(spec.model, out_channels=AE.latent_channels)
  spec.cond.check_latent(net_cfg, 8, 3, AE.latent_channels)
  return dataclasses.replace(spec, autoencoder=ae, model=net_cfg)


@pytest.mark.parametrize("cond", sorted(conditions.IMAGE_CONDITIONS))
def test_image_conditions_reach_a_latent_unet_at_the_latents_size(weight_file, cond):
  spec = latent_spec(weight_file, cond, CHANNELS[cond])
  net, tx = build.model(spec), build.optimizer_of(spec)
  state = jax.eval_shape(
      lambda key: state_lib.create_train_state(key, net, tx, 4, AE.latent_channels),
      jax.random.key(0))
  ae_params = spec.autoencoder.params
  sds = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype)
  labels = sds((2,), jnp.int32)
  # The condition as the train step makes it: from the clean pixels, then to latent size.
  spec_img = conditions.IMAGE_CONDITIONS[cond]
  encode = latent_lib.encoder(spec.autoencoder.config)

  def model_cond(params, x, key):
    inputs = {"label": jnp.zeros((2,), jnp.int32), **spec_img.degrade(x, key, spec.cond)}
    return conditions.make_cond(spec.model, spec.cond, inputs, 4, lambda y: encode(params, y))

  made = jax.eval_shape(model_cond, ae_params, sds((2, 8, 8, 3)), jax.random.key(1))
  assert made.image.shape == (2, 4, 4, CHANNELS[cond])
  # The real train step on pixel batches, with the encoder's parameters.
  _, metrics = jax.eval_shape(build.train_step(spec, net, tx), state,
                              {"image": sds((2, 8, 8, 3)), "label": labels}, ae_params)
  assert metrics["loss"].shape == ()
  # The sampler takes the pixel-space conditions sampling reads from files or the
  # dataset, and gives decoded images.
  mesh = mesh_lib.make_mesh(1)
  fn = sample_run.make_sample_fn(spec, net, mesh)
  given = {k: sds((2, *s)) for k, s in spec_img.shapes(8, 3, spec.cond).items()}
  out = jax.eval_shape(fn, sample_run.sampling_params(spec, state.ema_params),
                       jax.random.key(2), {**given, "label": labels})
  assert out.shape == (2, 8, 8, 3)


def test_what_each_latent_image_condition_holds(weight_file):
  ae = latent_lib.load(weight_file)
  net, encode = ae_lib.AutoencoderKL(ae.config), latent_lib.encoder(ae.config)
  enc = jax.jit(lambda x: encode(ae.params, x))
  mean = lambda x: ae_lib.normalize_latents(
      ae.config, net.apply({"params": ae.params}, x, method="encode").mean)
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
  latent = lambda cond, inputs: np.asarray(
      conditions.IMAGE_CONDITIONS[cond].latent_image(inputs, 4, enc))
  # Super-resolution (sr_factor = f): the low-resolution image is the latent's size.
  lowres = rng.uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
  np.testing.assert_allclose(latent("sr", {"lowres": lowres}), lowres, atol=1e-6)
  # Colourisation: the encoding (posterior mean) of the gray image as a gray RGB image.
  gray = np.asarray(conditions.luminance(x))
  np.testing.assert_allclose(latent("gray", {"gray": gray}), mean(np.repeat(gray, 3, -1)),
                             atol=1e-5)
  # Inpainting: the masked image's encoding and the known fraction of each 2x2 block.
  mask = np.ones((2, 8, 8, 1), np.float32)
  mask[:, 2:5, 2:6] = 0  # Block rows 1 (a hole) and 2 (half a hole), columns 1 and 2.
  got = latent("inpaint", {"masked": x, "mask": mask})
  np.testing.assert_allclose(got[..., :4], mean(x * mask), atol=1e-5)
  want = np.ones((2, 4, 4), np.float32)
  want[:, 1, 1:3], want[:, 2, 1:3] = 0.0, 0.5
  np.testing.assert_array_equal(got[..., 4], want)


@pytest.mark.parametrize("cond,channels,message", [
    ("inpaint", 4, "cond.image='inpaint' gives 5 channels in latent space"),
    ("gray", 1, "cond.image='gray' gives 4 channels in latent space"),
    ("sr", 4, "cond.image='sr' gives 3 channels in latent space"),
])
def test_a_latent_unets_conditioning_channels_are_checked(weight_file, cond, channels, message):
  with pytest.raises(ConfigError, match=message):
    latent_spec(weight_file, cond, channels)
