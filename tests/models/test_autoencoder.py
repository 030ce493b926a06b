"""The KL autoencoder: shapes for every factor (jax.eval_shape), SD's parameter count,
the KL term against a Monte-Carlo estimate, the losses against hand computations,
the latent scale, and the converter: equality with diffusers' AutoencoderKL on the
same random weights (skipped without torch and diffusers), both attention spellings,
and errors that name the tensor."""

import dataclasses
import functools
import importlib.util
import json
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models import autoencoder as ae
from diffusion_jax.models import autoencoder_losses as losses
from diffusion_jax.models import convert_vae
from diffusion_jax.models.autoencoder import AutoencoderConfig, AutoencoderKL
from tests.conftest import torch_reference

HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "diffusers", "safetensors"))
needs_torch = pytest.mark.skipif(
    not HAVE_TORCH, reason="the comparison needs torch, diffusers and safetensors "
    "(pip install torch==2.13.0 diffusers safetensors)")
needs_safetensors = pytest.mark.skipif(
    importlib.util.find_spec("safetensors") is None,
    reason="writing .safetensors needs the safetensors package (pip install safetensors)")

# The brief's tiny VAE (f = 2); a narrower one; a one-level one (f = 1: no resampling,
# the fewest layers to compile) for the losses.
TINY = AutoencoderConfig(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8)
NARROW = AutoencoderConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)
FLAT = AutoencoderConfig(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4)


def numpy_params(shapes, seed=0):
  """Random parameters of the shapes of `shapes`, drawn by numpy: compiling JAX's random
  initialisers takes longer than every test here. Kernels ~ N(0, 1 / fan_in); GroupNorm
  scales 1 + N(0, 0.1^2) and biases N(0, 0.1^2), so that none is trivial."""
  rng = np.random.default_rng(seed)
  def draw(path, s):
    if path[-1].key == "scale":
      return 1.0 + 0.1 * rng.standard_normal(s.shape)
    if path[-1].key == "bias":
      return 0.1 * rng.standard_normal(s.shape)
    return rng.standard_normal(s.shape) / math.sqrt(np.prod(s.shape[:-1]))
  return jax.tree_util.tree_map_with_path(
      lambda p, s: jnp.asarray(draw(p, s), jnp.float32), shapes)


@functools.cache
def rand_params(cfg, seed=0):
  return numpy_params(ae.param_shapes(cfg), seed)


def to_torch_layout(params) -> dict:
  """A diffusers-style state dict (numpy) of Flax parameters: the converter's inverse."""
  out = {}
  for path, v in flax.traverse_util.flatten_dict(params).items():
    v = np.asarray(v)
    v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T if v.ndim == 2 else v
    out[convert_vae.torch_name(path)] = np.ascontiguousarray(v)
  return out


def assert_trees_equal(a, b, atol=0.0):
  fa, fb = flax.traverse_util.flatten_dict(a), flax.traverse_util.flatten_dict(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_allclose(np.asarray(fa[k]), np.asarray(fb[k]), atol=atol, err_msg=str(k))


# --- Architecture.

@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("latent", [4, 3])
def test_encoder_and_decoder_shapes(factor, latent):
  levels = int(math.log2(factor)) + 1
  cfg = AutoencoderConfig(block_out_channels=(8,) + (16,) * (levels - 1), layers_per_block=1,
                          latent_channels=latent, norm_num_groups=4)
  assert cfg.factor == factor
  x = jnp.zeros((2, 32, 48, 3))  # Not square on purpose.
  # One trace: init runs encode (mean, logvar) and decode (of a posterior sample).
  (out, post), variables = jax.eval_shape(
      lambda: AutoencoderKL(cfg).init_with_output(jax.random.key(0), x, jax.random.key(1)))
  params = variables["params"]
  lat = (2, 32 // factor, 48 // factor, latent)
  assert post.mean.shape == post.logvar.shape == lat == ae.latent_shape(cfg, x.shape)
  assert out.shape == (2, 32, 48, 3) and out.dtype == jnp.float32
  assert params["decoder"]["conv_in"]["kernel"].shape[2] == latent
  assert params["encoder"]["conv_out"]["kernel"].shape == (3, 3, 16 if levels > 1 else 8,
                                                           2 * latent)


def test_default_config_is_sd_vae_with_its_parameter_count():
  cfg = AutoencoderConfig()
  assert cfg.factor == 8
  # diffusers' AutoencoderKL of SD v1's VAE config (counted with torch).
  assert ae.count_params(ae.param_shapes(cfg)) == 83_653_863


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_params():
  cfg = dataclasses.replace(NARROW, dtype="bfloat16")
  params = ae.param_shapes(cfg)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
  rec, post = jax.eval_shape(lambda p, x: AutoencoderKL(cfg).apply({"params": p}, x),
                             params, x)
  assert rec.dtype == post.mean.dtype == jnp.float32


def test_image_size_not_divisible_by_factor_is_a_clear_error():
  cfg = dataclasses.replace(NARROW, block_out_channels=(8, 16, 16))  # f = 4.
  params = ae.param_shapes(cfg)
  x = jnp.zeros((1, 16, 18, 3))
  with pytest.raises(ValueError, match="image size 16x18 is not divisible by .* f=4"):
    jax.eval_shape(lambda p: AutoencoderKL(cfg).apply({"params": p}, x), params)
  with pytest.raises(ValueError, match=r"\(batch, H, W, 3\) \(NHWC\)"):
    ae.latent_shape(cfg, (1, 3, 16, 16))
  with pytest.raises(ValueError, match=r"latents must be \(batch, h, w, 4\)"):
    jax.eval_shape(lambda p: AutoencoderKL(cfg).apply(
        {"params": p}, jnp.zeros((1, 4, 4, 3)), method="decode"), params)


@pytest.mark.parametrize("section,match", [
    ({"width": 3}, r"unknown AutoencoderConfig fields: \['width'\]"),
    ({"block_out_channels": (32, 48), "norm_num_groups": 32}, "multiples of norm_num_groups"),
    ({"block_out_channels": ()}, "one or more positive"),
    ({"block_out_channels": "64"}, "must be a tuple of ints"),
    ({"layers_per_block": 1.5}, "layers_per_block=1.5 must be an int"),
    ({"latent_channels": 0}, "latent_channels=0 must be >= 1"),
    ({"scaling_factor": 0.0}, "scaling_factor=0.0 must be"),
    ({"use_quant_conv": "yes"}, "must be a bool"),
    ({"dtype": "float8"}, "dtype='float8' is unknown"),
])
def test_bad_config_values_are_errors_naming_the_field(section, match):
  with pytest.raises(ValueError, match=match):
    AutoencoderConfig.from_config(section)


def test_from_config_takes_lists_and_derives_the_factor():
  cfg = AutoencoderConfig.from_config({"block_out_channels": [32, 64, 64], "norm_num_groups": 8,
                                       "scaling_factor": 1})
  assert cfg.block_out_channels == (32, 64, 64) and cfg.factor == 4
  assert cfg.scaling_factor == 1.0 and isinstance(cfg.scaling_factor, float)


# --- Posterior, KL and latent scale.

def test_posterior_splits_channels_and_clamps_logvar():
  moments = jnp.concatenate([jnp.full((1, 1, 1, 2), 0.5), jnp.array([[[[-50.0, 40.0]]]])], -1)
  post = ae.DiagonalGaussian.from_moments(moments)
  np.testing.assert_array_equal(post.mean, 0.5)
  np.testing.assert_array_equal(post.logvar, [[[[-30.0, 20.0]]]])


def test_kl_against_hand_values_and_monte_carlo():
  # Hand: N(1, 1) -> 0.5; N(0, e^2) -> 0.5 (e^2 - 1 - 2); zero for the prior itself.
  mean = jnp.array([[1.0, 0.0, 0.0]])
  logvar = jnp.array([[0.0, 2.0, 0.0]])
  expected = 0.5 + 0.5 * (math.exp(2.0) - 3.0)
  np.testing.assert_allclose(losses.kl_to_standard_normal(mean, logvar), [expected], rtol=1e-6)
  # Monte-Carlo: E_q[log q(z) - log p(z)] over posterior samples, summed over dims.
  rng = np.random.default_rng(0)
  mean = rng.standard_normal((2, 2, 2, 3))
  logvar = rng.uniform(-1.5, 1.0, (2, 2, 2, 3))
  z = mean + np.exp(0.5 * logvar) * rng.standard_normal((100_000, *mean.shape))
  log_q = -0.5 * (np.square(z - mean) / np.exp(logvar) + logvar)
  log_p = -0.5 * np.square(z)
  mc = np.mean(np.sum((log_q - log_p).reshape(*z.shape[:2], -1), axis=-1), axis=0)
  post = ae.DiagonalGaussian(jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32))
  closed = losses.kl_to_standard_normal(post.mean, post.logvar)
  np.testing.assert_allclose(mc, closed, rtol=0.02)
  np.testing.assert_allclose(losses.kl_loss(post), jnp.mean(closed), rtol=1e-6)


def test_latent_normalisation_round_trips_and_has_unit_std():
  z = jnp.asarray(3.0 * np.random.default_rng(0).standard_normal((64, 4, 4, 4)) + 0.7,
                  jnp.float32)
  s = ae.scaling_factor_from_latents(z)
  np.testing.assert_allclose(s, 1 / 3.0, rtol=0.03)
  cfg = dataclasses.replace(NARROW, scaling_factor=s, shift_factor=0.7)
  n = ae.normalize_latents(cfg, z)
  np.testing.assert_allclose(jnp.std(n), 1.0, rtol=1e-5)
  np.testing.assert_allclose(ae.unnormalize_latents(cfg, n), z, atol=1e-5)
  np.testing.assert_allclose(ae.normalize_latents(cfg, ae.unnormalize_latents(cfg, n)), n,
                             atol=1e-5)


def test_estimate_scaling_factor_is_one_over_std_of_encoded_samples():
  params = rand_params(FLAT)
  model = AutoencoderKL(FLAT)
  images = np.random.default_rng(3).uniform(-1, 1, (6, 8, 8, 3)).astype(np.float32)
  key = jax.random.key(4)
  s = ae.estimate_scaling_factor(model, params, images, key, batch_size=2)
  keys = jax.random.split(key, 3)  # Batches of 2, one key each.
  z = [ae.sample_latents(model, params, images[2 * i:2 * i + 2], keys[i]) for i in range(3)]
  np.testing.assert_allclose(s, 1.0 / np.std(np.concatenate(z)), rtol=1e-5)
  assert len({float(np.std(v)) for v in z}) == 3  # A different key for each batch.


# --- Losses.

LOSS = losses.AutoencoderLossConfig(kl_weight=1e-3, disc_start=10, disc_channels=8,
                                    disc_layers=2, disc_norm_groups=4)


def test_reconstruction_losses_by_hand():
  x, y = jnp.array([[1.0, -1.0]]), jnp.array([[0.5, 1.0]])
  np.testing.assert_allclose(losses.RECONSTRUCTIONS["l1"](x, y), [[0.5, 2.0]])
  np.testing.assert_allclose(losses.RECONSTRUCTIONS["l2"](x, y), [[0.25, 4.0]])
  images, rec = jnp.ones((2, 2, 2, 3)), jnp.zeros((2, 2, 2, 3))
  nll, metrics = losses.nll_loss(dataclasses.replace(LOSS, reconstruction="l2"), images, 2 * rec)
  assert float(nll) == 12.0 and float(metrics["rec"]) == 1.0  # Sum over pixels, mean over batch.


def test_hinge_and_vanilla_losses_by_hand():
  real, fake = jnp.array([2.0, 0.5]), jnp.array([-3.0, 0.0])
  # relu(1 - real) = (0, 0.5); relu(1 + fake) = (0, 1).
  np.testing.assert_allclose(losses.hinge_d_loss(real, fake), 0.5 * (0.25 + 0.5))
  sp = lambda v: math.log1p(math.exp(v))
  np.testing.assert_allclose(losses.vanilla_d_loss(real, fake),
                             0.5 * ((sp(-2) + sp(-0.5)) / 2 + (sp(-3) + sp(0)) / 2), rtol=1e-6)


def test_discriminator_patch_logits_and_too_small_images():
  cfg = dataclasses.replace(LOSS, disc_layers=3)
  init = lambda shape: jax.eval_shape(
      lambda: losses.init_discriminator(jax.random.key(0), cfg, shape))
  params = init((1, 32, 32, 3))
  assert params["Conv_1"]["kernel"].shape == (4, 4, 8, 16) and "bias" not in params["Conv_1"]
  out = jax.eval_shape(lambda p: losses.make_discriminator(cfg).apply(
      {"params": p}, jnp.zeros((2, 32, 32, 3))), params)
  assert out.shape == (2, 2, 2, 1) and losses.discriminator_output_size(32, 3) == 2
  with pytest.raises(ValueError, match="too small for a 3-layer discriminator"):
    init((1, 16, 16, 3))


def test_autoencoder_loss_adaptive_weight_and_disc_start():
  model = AutoencoderKL(FLAT)
  params = rand_params(FLAT)
  disc_params = numpy_params(jax.eval_shape(
      lambda: losses.init_discriminator(jax.random.key(1), LOSS, (1, 16, 16, 3))), seed=1)
  images = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  key = jax.random.key(3)
  disc = losses.make_discriminator(LOSS)

  @jax.jit
  def run(params, step):
    loss_fn = lambda p: losses.autoencoder_loss(p, disc_params, images, key, step, model, LOSS)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    # The gradient of each term with respect to the decoder's last kernel, by definition.
    z = model.apply({"params": params}, images, method="encode").sample(key)

    def terms(kernel):
      conv_out = {**params["decoder"]["conv_out"], "kernel": kernel}
      p = {**params, "decoder": {**params["decoder"], "conv_out": conv_out}}
      rec = model.apply({"params": p}, z, method="decode")
      return {"nll": losses.nll_loss(LOSS, images, rec)[0],
              "g_loss": -jnp.mean(disc.apply({"params": disc_params}, rec))}
    last = jax.jacrev(terms)(params["decoder"]["conv_out"]["kernel"])
    rec = aux["reconstruction"]
    d_loss, _ = losses.discriminator_loss(disc_params, images, rec, step, LOSS)
    logits = disc.apply({"params": disc_params}, images), disc.apply({"params": disc_params}, rec)
    return loss, aux["metrics"], grads, last, d_loss, logits

  before, m, _, _, d_before, _ = run(params, jnp.int32(9))
  after, m_on, grads, last, d_loss, logits = run(params, jnp.int32(10))
  assert float(m["disc_factor"]) == 0.0 and float(m_on["disc_factor"]) == 1.0
  np.testing.assert_allclose(before, m["nll"] + 1e-3 * m["kl"], rtol=1e-6)
  np.testing.assert_allclose(after, before + m_on["d_weight"] * m_on["g_loss"], rtol=1e-5)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  norm = lambda k: jnp.linalg.norm(last[k])
  np.testing.assert_allclose(m_on["d_weight"], 0.5 * norm("nll") / (norm("g_loss") + 1e-4),
                             rtol=1e-4)
  assert float(d_before) == 0.0
  np.testing.assert_allclose(d_loss, losses.hinge_d_loss(*logits), rtol=1e-6)
  # No discriminator: no adversarial terms and no discriminator parameters needed.
  plain = dataclasses.replace(LOSS, disc_weight=0.0)
  aux = jax.eval_shape(lambda p: losses.autoencoder_loss(p, None, images, key, jnp.int32(10),
                                                         model, plain)[1], params)
  assert "g_loss" not in aux["metrics"]


def test_lpips_needs_weights():
  with pytest.raises(ValueError, match="perceptual_weight=1.0 needs LPIPS's VGG16 weights"):
    losses.AutoencoderLossConfig(perceptual_weight=1.0)
  with pytest.raises(ValueError, match="no such file"):
    losses.load_lpips("/nonexistent/lpips.npz")
  cfg = losses.AutoencoderLossConfig(perceptual_weight=1.0, lpips_weights="x.npz")
  with pytest.raises(ValueError, match="pass lpips_weights=load_lpips"):
    losses.nll_loss(cfg, jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16, 16, 3)))


def narrow_lpips_state(widths=(4, 8, 8, 8, 8), seed=0) -> dict:
  """Random LPIPS tensors in torch names and layout, VGG16's layout at small widths."""
  rng = np.random.default_rng(seed)
  state, c = {}, 3
  for k, (stage, w) in enumerate(zip(losses.VGG16_STAGES, widths)):
    for i in stage:
      state[f"features.{i}.weight"] = rng.normal(0, math.sqrt(2 / (9 * c)), (w, c, 3, 3))
      state[f"features.{i}.bias"] = rng.normal(0, 0.1, (w,))
      c = w
    state[f"lin{k}.model.1.weight"] = rng.uniform(0, 1, (1, w, 1, 1))
  return {k: v.astype(np.float32) for k, v in state.items()}


def test_lpips_from_a_weight_file(tmp_path):
  state = narrow_lpips_state()
  np.savez(tmp_path / "lpips.npz", **state)
  weights = losses.load_lpips(str(tmp_path / "lpips.npz"))
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
  cfg = losses.AutoencoderLossConfig(perceptual_weight=2.0, lpips_weights="given")

  @jax.jit
  def run(weights, x, y):
    d = losses.lpips(weights, jnp.concatenate([x, x, y]), jnp.concatenate([y, x, x]))
    return *jnp.split(d, 3), losses.nll_loss(cfg, x, y, weights)[0]
  d, same, swapped, nll = run(weights, x, y)
  assert d.shape == (2,) and bool(jnp.all(d > 0))
  np.testing.assert_allclose(same, 0.0, atol=1e-6)
  np.testing.assert_allclose(swapped, d, rtol=1e-5)
  np.testing.assert_allclose(nll, jnp.sum(jnp.abs(x - y)) / 2 + 2.0 * 16 * 16 * 3 * jnp.mean(d),
                             rtol=1e-5)
  if importlib.util.find_spec("torch"):  # An independent NCHW computation of the same.
    np.testing.assert_allclose(d, torch_lpips(state, np.asarray(x), np.asarray(y)), rtol=1e-4)
  del state["lin3.model.1.weight"]
  np.savez(tmp_path / "bad.npz", **state)
  with pytest.raises(ValueError, match="missing tensor 'lin3.model.1.weight'"):
    losses.load_lpips(str(tmp_path / "bad.npz"))


def torch_lpips(state, x, y):
  import torch
  import torch.nn.functional as F
  t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
  shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
  scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
  total = 0.0
  hx, hy = (t(x) - shift) / scale, (t(y) - shift) / scale
  for k, stage in enumerate(losses.VGG16_STAGES):
    if k:
      hx, hy = F.max_pool2d(hx, 2), F.max_pool2d(hy, 2)
    for i in stage:
      w, b = (torch.from_numpy(state[f"features.{i}.{n}"]) for n in ("weight", "bias"))
      hx, hy = F.relu(F.conv2d(hx, w, b, padding=1)), F.relu(F.conv2d(hy, w, b, padding=1))
    nx = hx / (hx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    ny = hy / (hy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    lin = torch.from_numpy(state[f"lin{k}.model.1.weight"])
    total = total + F.conv2d((nx - ny) ** 2, lin).mean(dim=(2, 3))[:, 0]
  return total.numpy()


# --- Converter.

def test_torch_names_of_flax_paths():
  name = convert_vae.torch_name
  assert name(("encoder", "down_blocks_0", "resnets_1", "norm1", "scale")) == \
      "encoder.down_blocks.0.resnets.1.norm1.weight"
  assert name(("decoder", "mid_block", "attentions_0", "to_out_0", "kernel")) == \
      "decoder.mid_block.attentions.0.to_out.0.weight"
  assert name(("decoder", "up_blocks_0", "upsamplers_0", "conv", "bias")) == \
      "decoder.up_blocks.0.upsamplers.0.conv.bias"
  assert name(("post_quant_conv", "kernel")) == "post_quant_conv.weight"


def test_state_dict_round_trip_and_errors_name_the_tensor():
  cfg = NARROW
  params = rand_params(cfg)
  state = to_torch_layout(params)
  assert_trees_equal(convert_vae.convert_state_dict(state, cfg), params)
  # Pre-0.14 attention names, with the projections stored as 1x1 convs.
  old = {}
  for k, v in state.items():
    for new, was in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"),
                     ("to_out.0", "proj_attn")):
      k = k.replace(f".{new}.", f".{was}.")
    old[k] = v[:, :, None, None] if v.ndim == 2 else v
  assert "encoder.mid_block.attentions.0.proj_attn.weight" in old
  assert_trees_equal(convert_vae.convert_state_dict(old, cfg), params)

  missing = dict(state)
  del missing["decoder.up_blocks.1.resnets.0.conv2.weight"]
  with pytest.raises(convert_vae.ConversionError,
                     match=r"missing tensor 'decoder.up_blocks.1.resnets.0.conv2.weight' "
                           r"\(shape \(8, 8, 3, 3\)\)"):
    convert_vae.convert_state_dict(missing, cfg)
  bad = dict(state, **{"encoder.conv_in.weight": np.zeros((8, 3, 5, 5), np.float32)})
  with pytest.raises(convert_vae.ConversionError,
                     match=r"tensor 'encoder.conv_in.weight' has shape \(8, 3, 5, 5\), "
                           r"expected \(8, 3, 3, 3\)"):
    convert_vae.convert_state_dict(bad, cfg)
  extra = dict(state, **{"encoder.down_blocks.0.resnets.1.norm1.weight": np.ones(8, np.float32)})
  with pytest.raises(convert_vae.ConversionError,
                     match="unexpected tensor 'encoder.down_blocks.0.resnets.1.norm1.weight'"):
    convert_vae.convert_state_dict(extra, cfg)
  with pytest.raises(convert_vae.ConversionError, match="missing tensor 'decoder.conv_in.weight'"):
    convert_vae.convert_state_dict({"time_embedding.linear_1.weight": np.zeros((4, 4))}, cfg)


def test_diffusers_config_is_read_and_checked():
  d = {"_class_name": "AutoencoderKL", "_diffusers_version": "0.30.0", "act_fn": "silu",
       "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
       "up_block_types": ["UpDecoderBlock2D"] * 4, "in_channels": 3, "out_channels": 3,
       "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 512,
       "scaling_factor": 0.18215, "force_upcast": True, "shift_factor": None,
       "latents_mean": None, "latents_std": None}
  assert convert_vae.config_from_diffusers(d) == AutoencoderConfig()
  with pytest.raises(convert_vae.ConversionError, match="config is a UNet2DConditionModel"):
    convert_vae.config_from_diffusers({**d, "_class_name": "UNet2DConditionModel"})
  with pytest.raises(convert_vae.ConversionError, match="down_block_types="):
    convert_vae.config_from_diffusers({**d, "down_block_types": ["DownBlock2D"] * 4})
  with pytest.raises(convert_vae.ConversionError, match=r"config: unknown .*\['foo'\]"):
    convert_vae.config_from_diffusers({**d, "foo": 1})


@needs_safetensors
def test_cli_converts_a_safetensors_file_and_load_reads_it(tmp_path, capsys):
  from safetensors.numpy import save_file
  params = rand_params(NARROW)
  save_file(to_torch_layout(params), str(tmp_path / "vae.safetensors"))
  (tmp_path / "config.json").write_text(json.dumps(
      {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
       "scaling_factor": 0.5}))
  dst = str(tmp_path / "vae.npz")
  args = [f"--src={tmp_path / 'vae.safetensors'}", f"--config={tmp_path / 'config.json'}",
          f"--dst={dst}"]
  assert convert_vae.main(args) == 0
  cfg, loaded = convert_vae.load(dst)
  assert cfg == dataclasses.replace(NARROW, scaling_factor=0.5)
  assert_trees_equal(loaded, params)

  # Not a VAE: one line naming the first missing tensor.
  save_file({"conv_in.weight": np.zeros((4, 3, 3, 3), np.float32)},
            str(tmp_path / "unet.safetensors"))
  args[0] = f"--src={tmp_path / 'unet.safetensors'}"
  assert convert_vae.main(args) == 1
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "missing tensor 'decoder.conv_in.weight'" in err
  args[1] = "--config="
  assert convert_vae.main(args) == 1
  assert "needs --config=config.json" in capsys.readouterr().err

  with np.load(dst) as f:  # A converted file with a parameter missing.
    arrays = {k: f[k] for k in f.files if k != "params/quant_conv/bias"}
  np.savez(tmp_path / "broken.npz", **arrays)
  with pytest.raises(convert_vae.ConversionError, match="missing parameter quant_conv/bias"):
    convert_vae.load(str(tmp_path / "broken.npz"))


@needs_torch
@pytest.mark.parametrize("cfg", [
    dataclasses.replace(TINY, scaling_factor=0.3),
    # f = 4, two blocks per level (three per up block), 3 latent channels.
    AutoencoderConfig(block_out_channels=(16, 32, 32), layers_per_block=2, latent_channels=3,
                      norm_num_groups=8, scaling_factor=0.3),
], ids=["f2", "f4"])
def test_equal_to_diffusers_autoencoder_kl(tmp_path, cfg):
  torch = torch_reference("needs torch and diffusers (the test extra) as the reference")
  from diffusers import AutoencoderKL as TorchVAE

  torch.manual_seed(0)
  n = len(cfg.block_out_channels)
  vae = TorchVAE(block_out_channels=cfg.block_out_channels,
                 down_block_types=("DownEncoderBlock2D",) * n,
                 up_block_types=("UpDecoderBlock2D",) * n, layers_per_block=cfg.layers_per_block,
                 norm_num_groups=cfg.norm_num_groups, latent_channels=cfg.latent_channels,
                 scaling_factor=cfg.scaling_factor).eval()
  with torch.no_grad():  # Non-trivial GroupNorm affines and biases (init: 1 and 0).
    for p in vae.parameters():
      if p.ndim == 1:
        p.add_(0.2 * torch.randn_like(p))
  vae.save_pretrained(str(tmp_path / "vae"))  # config.json + .safetensors
  assert convert_vae.convert(str(tmp_path / "vae"), str(tmp_path / "vae.npz")) == cfg
  loaded_cfg, params = convert_vae.load(str(tmp_path / "vae.npz"))
  assert loaded_cfg == cfg

  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 3, 16, 24)).astype(np.float32)  # Not square on purpose.
  f = cfg.factor
  z = rng.normal(size=(2, cfg.latent_channels, 16 // f, 24 // f)).astype(np.float32)
  with torch.no_grad():
    post = vae.encode(torch.from_numpy(x)).latent_dist
    dec = vae.decode(torch.from_numpy(z)).sample.numpy()
  nhwc = lambda a: np.asarray(a).transpose(0, 2, 3, 1)
  model = AutoencoderKL(cfg)

  @jax.jit
  def run(params, x, z):
    return (model.apply({"params": params}, x, method="encode"),
            model.apply({"params": params}, z, method="decode"))
  ours, out = run(params, nhwc(x), nhwc(z))
  assert np.abs(np.asarray(ours.mean) - nhwc(post.mean.numpy())).max() < 1e-4
  assert np.abs(np.asarray(ours.logvar) - nhwc(post.logvar.numpy())).max() < 1e-4
  assert np.abs(np.asarray(out) - nhwc(dec)).max() < 1e-4

  # A torch .bin of the same weights converts to the same parameters.
  torch.save(vae.state_dict(), str(tmp_path / "vae.bin"))
  state = convert_vae.read_state_dict(str(tmp_path / "vae.bin"))
  assert_trees_equal(convert_vae.convert_state_dict(state, cfg), params)
