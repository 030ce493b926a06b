"""Model shapes for every config (jax.eval_shape, no real init), parameter counts of the
published networks, and the score_sde / EDM / VDM blocks on tiny networks."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import config as config_lib
from diffusion_jax.config.errors import ConfigError
from diffusion_jax.models import layers, unet
from diffusion_jax.models.unet import Cond, UNet, UNetConfig, count_params
from diffusion_jax.run import spec as spec_lib, workdir as workdir_lib
from diffusion_jax.training import state as state_lib
from tests.conftest import ROOT

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
CONFIGS = [c for c in CONFIGS if not os.path.basename(c).startswith("_")]  # _x.py: shared parts.


def load_config(path, arg=None):
  return config_lib.load(f"{path}:{arg}" if arg else path)


def abstract_apply(config, batch=2):
  model = UNet(UNetConfig.from_config(config.model))
  x, t, cond = state_lib.dummy_inputs(model, batch, config.data.image_size, config.data.channels)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, cond))
  out = jax.eval_shape(lambda v: model.apply(v, x, t, cond), variables)
  return variables["params"], out


# Latent configs: the config of the autoencoder run their latent.autoencoder names
# (configs naming a converted weight file, *.npz, use SD's VAE).
LATENT_AUTOENCODERS = {"photo_latent.py": "photo_autoencoder.py",
                       "photo64_latent.py": "photo64_autoencoder.py"}


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_validates_and_has_the_right_output_shape(path):
  from diffusion_jax.models import autoencoder as ae_lib
  from diffusion_jax.run import autoencoder as ae_run, build
  config = load_config(path)
  d = config.data
  # As many devices as the config's mesh.fsdp needs (the pod configs split over 4).
  devices = max(1, config.mesh.fsdp)
  spec = build.kind_of(config).parse(config, num_devices=devices)
  if spec.kind == "autoencoder":  # Reconstructions of the images, through latents.
    net = ae_lib.AutoencoderKL(spec.autoencoder)
    x = jnp.zeros((2, d.image_size, d.image_size, d.channels))
    out, posterior = jax.eval_shape(lambda p: net.apply({"params": p}, x),
                                    ae_lib.param_shapes(spec.autoencoder))
    assert out.shape == x.shape and posterior.mean.shape[1:] == (
        d.image_size // spec.autoencoder.factor, d.image_size // spec.autoencoder.factor,
        spec.autoencoder.latent_channels)
    return
  if config.latent.autoencoder:  # The U-Net's input is the latent of its autoencoder.
    if config.latent.autoencoder.endswith(".npz"):  # A converted SD VAE (not shipped):
      ae = ae_lib.AutoencoderConfig()  # the defaults are SD's VAE.
    else:
      ae_config = load_config(os.path.join(ROOT, "configs", LATENT_AUTOENCODERS[os.path.basename(path)]))
      ae = ae_run.parse(ae_config, 1).autoencoder
      assert ae_config.data.name == d.name and ae_config.data.image_size == d.image_size
    spec = spec_lib.parse(config, num_devices=devices)
    # As run/build.py does once the autoencoder is loaded: out_channels is the latent's.
    d.image_size, d.channels = d.image_size // ae.factor, ae.latent_channels
    spec.model.__class__(**{**vars(spec.model), "out_channels": ae.latent_channels}
                         ).check_input(d.image_size, d.channels, d.num_classes)
  params, out = abstract_apply(config)
  assert out.shape == (2, d.image_size, d.image_size, d.channels)
  assert out.dtype == jnp.float32
  assert count_params(params) > 0


def ddpm_unet_count(ch=128, mult=(1, 2, 2, 2), blocks=2, attn_res=(16,), size=32, c_in=3):
  """Parameters of Ho et al.'s (2020) network, counted by hand from their architecture
  (diffusion_tf's unet: a 4 ch time MLP, residual blocks with a time projection and a
  1x1 shortcut where channels change, self-attention with q, k, v and output 1x1
  layers, convolutional down- and upsampling), independently of models/unet.py."""
  emb = 4 * ch

  def res(c, o):  # Two GroupNorms, two 3x3 convs, the time projection, the shortcut.
    return 2 * c + 9 * c * o + o + emb * o + o + 2 * o + 9 * o * o + o + (c * o + o) * (c != o)

  attn = lambda c: 2 * c + 4 * (c * c + c)
  n = (ch * emb + emb) + (emb * emb + emb) + (9 * c_in * ch + ch)
  skips, c = [ch], ch
  for i, m in enumerate(mult):
    for _ in range(blocks):
      n, c = n + res(c, ch * m) + attn(ch * m) * (size >> i in attn_res), ch * m
      skips.append(c)
    if i < len(mult) - 1:
      n += 9 * c * c + c
      skips.append(c)
  n += 2 * res(c, c) + attn(c)
  for i, m in reversed(list(enumerate(mult))):
    for _ in range(blocks + 1):
      n, c = n + res(c + skips.pop(), ch * m) + attn(ch * m) * (size >> i in attn_res), ch * m
    if i:
      n += 9 * c * c + c
  return n + 2 * c + 9 * c * c_in + c_in


def vdm_score_unet_count(ch=128, layers=32, fourier=2, c_in=3):
  """Parameters of VDM's ScoreUNet (google-research/vdm model_vdm.py, configs/cifar10.py),
  counted by hand: a 2-layer MLP on [time embedding, 1 conditioning scalar], the input
  with 2 c_in * fourier Fourier features, `layers` residual blocks down, two around one
  attention in the middle, layers + 1 up on concatenated skips (1x1 shortcut), and
  embedding projections without bias."""
  emb = 4 * ch

  def res(c, o):
    return 2 * c + 9 * c * o + o + emb * o + 2 * o + 9 * o * o + o + (c * o + o) * (c != o)

  n = ((ch + 1) * emb + emb) + (emb * emb + emb) + 9 * c_in * (1 + 2 * fourier) * ch + ch
  n += layers * res(ch, ch) + 2 * res(ch, ch) + 2 * ch + 4 * (ch * ch + ch)
  n += (layers + 1) * res(2 * ch, ch)
  return n + 2 * ch + 9 * ch * c_in + c_in


def test_cifar10_ddpm_is_the_35_7m_network():
  params, _ = abstract_apply(load_config(os.path.join(ROOT, "configs", "cifar10_ddpm.py")))
  # Ho et al. (2020): "35.7 million parameters"; counted from their architecture here
  # (also diffusers' UNet2DModel of that layout, google/ddpm-cifar10-32): 35,746,307.
  assert ddpm_unet_count() == 35_746_307
  assert count_params(params) == ddpm_unet_count()


def test_class_conditional_model_needs_labels():
  model = UNet(UNetConfig(out_channels=1, ch=8, ch_mult=(1,), attn_resolutions=(),
                          num_groups=4, num_classes=3))
  x, t = jnp.zeros((1, 4, 4, 1)), jnp.zeros((1,))
  with pytest.raises(ValueError, match="class-conditional"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, Cond()))


def test_labels_change_the_output_and_null_label_exists():
  model = UNet(UNetConfig(out_channels=1, ch=8, ch_mult=(1,), attn_resolutions=(),
                          num_groups=4, num_classes=3, dropout=0.0))
  x, t = jnp.ones((4, 4, 4, 1)), jnp.full((4,), 0.5)
  labels = jnp.array([0, 1, 2, 3])  # 3 is the null label.
  params = model.init(jax.random.key(0), x, t, Cond(labels=labels))["params"]
  assert params["label_emb"]["embedding"].shape == (4, 32)
  # Zero-initialised output layer: perturb it so labels can show in the output.
  params = jax.tree.map(lambda p: p + 0.05, params)
  out = model.apply({"params": params}, x, t, Cond(labels=labels))
  assert not jnp.allclose(out[0], out[1])


def test_image_conditioning_hook_concatenates_channels():
  model = UNet(UNetConfig(out_channels=3, ch=8, ch_mult=(1, 2), attn_resolutions=(),
                          num_groups=4, cond_image_channels=1))
  x, t = jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t,
                                             Cond(image=jnp.zeros((2, 8, 8, 1)))))["params"]
  assert params["conv_in"]["kernel"].shape == (3, 3, 4, 8)
  with pytest.raises(ValueError, match="1-channel conditioning image"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, Cond()))


def test_unknown_model_field_is_an_error():
  with pytest.raises(ValueError, match="model: unknown fields \\['width'\\]"):
    UNetConfig.from_config({"width": 3})


# --- Published networks. Published counts are rounded to the million, so ours must be
# within 1% of them (the exact `ours` only pins the code's own output against change).
PUBLISHED = [
    # config, our count, published count, tolerance. Sources: Karras et al. (2022)
    # App. C ("62 / 63 million trainable parameters" of the released score_sde
    # checkpoints) and App. F.3 ("about 56 million" for EDM's 32x32 models).
    ("cifar10_ddpmpp_vp.py", 61_804_419, 62_000_000, 0.01),
    ("cifar10_ncsnpp_ve.py", 62_758_787, 63_000_000, 0.01),
    ("cifar10_edm_cond.py", 55_738_371, 56_000_000, 0.01),
    # With EDM's 9 augmentation labels: + a bias-free 9 x 128 layer.
    ("cifar10_edm_aug.py", 55_738_371 + 9 * 128, 56_000_000, 0.01),
]


@pytest.mark.parametrize("name,ours,published,tol", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_published_networks_have_their_published_size(name, ours, published, tol):
  params, _ = abstract_apply(load_config(os.path.join(ROOT, "configs", name)))
  n = count_params(params)
  assert n == ours  # The number each config's docstring states.
  assert abs(n - published) <= tol * published


def test_cifar10_vdm_is_vdms_score_unet():
  """VDM publishes no count: its ScoreUNet for configs/cifar10.py, counted by hand
  above, has 30,578,179 (+2 learnable schedule endpoints). Ours differs by exactly
  the documented changes: a bias on each of the 67 blocks' embedding projections, and
  no scalar conditioning input to the first dense layer (512 weights)."""
  params, _ = abstract_apply(load_config(os.path.join(ROOT, "configs", "cifar10_vdm.py")))
  assert vdm_score_unet_count() == 30_578_179
  assert count_params(params) == vdm_score_unet_count() + 67 * 128 - 512


# --- The blocks, on tiny networks.

def tiny(**kw):
  base = {"out_channels": 3, "ch": 8, "ch_mult": (1, 2), "num_res_blocks": 1,
          "attn_resolutions": (4,), "num_groups": 4, "dropout": 0.0}
  return UNetConfig(**{**base, **kw})


def shapes(cfg, size=8, **apply_kw):
  model = UNet(cfg)
  x, t = jnp.zeros((2, size, size, 3)), jnp.zeros((2,))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t))
  out = jax.eval_shape(lambda v: model.apply(v, x, t, **apply_kw), variables)
  return variables["params"], out


def test_fir_box_filter_is_average_pooling_and_nearest_upsampling():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  pooled = x.reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(layers.downsample_2d(x, (1, 1)), pooled, atol=1e-6)
  nearest = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  np.testing.assert_allclose(layers.upsample_2d(x, (1, 1)), nearest, atol=1e-6)


def test_fir_filter_keeps_constants_away_from_the_border():
  x = jnp.ones((1, 8, 8, 2))
  down, up = layers.downsample_2d(x, (1, 3, 3, 1)), layers.upsample_2d(x, (1, 3, 3, 1))
  assert down.shape == (1, 4, 4, 2) and up.shape == (1, 16, 16, 2)
  np.testing.assert_allclose(down[:, 1:-1, 1:-1], 1.0, atol=1e-6)  # Zero padding at the edge.
  np.testing.assert_allclose(up[:, 2:-2, 2:-2], 1.0, atol=1e-6)


@pytest.mark.parametrize("resample,size", [("down", 4), ("up", 16), ("none", 8)])
def test_biggan_resblock_resamples_both_paths(resample, size):
  block = unet.ResBlock(8, 0.0, 4, False, jnp.float32, resample, (1, 3, 3, 1))
  x, emb = jnp.ones((2, 8, 8, 8)), jnp.ones((2, 16))
  params = jax.eval_shape(lambda: block.init(jax.random.key(0), x, emb, False))["params"]
  out = jax.eval_shape(lambda p: block.apply({"params": p}, x, emb, False), params)
  assert out.shape == (2, size, size, 8)
  # Equal channels: the skip path has a 1x1 conv only when it is resampled.
  assert ("skip" in params) == (resample != "none")


def test_skip_rescale_divides_residual_sums_by_sqrt2():
  x, emb = jax.random.normal(jax.random.key(1), (2, 4, 4, 8)), jnp.ones((2, 16))
  # Zero-initialised output layers: at init each block's branch is 0, so out = x / sqrt(2).
  for block, args in [
      (unet.ResBlock(8, 0.0, 4, False, jnp.float32, skip_rescale=True), (emb, False)),
      (unet.AttnBlock(1, 4, jnp.float32, skip_rescale=True), ())]:
    out, _ = block.init_with_output(jax.random.key(0), x, *args)
    np.testing.assert_allclose(out, x / np.sqrt(2.0), rtol=1e-6)


def test_fourier_embedding_is_fixed_and_has_2n_features():
  t = jnp.linspace(0.0, 1.0, 5)
  emb = layers.fourier_embedding(t, 16, scale=16.0)
  assert emb.shape == (5, 32)
  np.testing.assert_allclose(emb[:, :16] ** 2 + emb[:, 16:] ** 2, 1.0, rtol=1e-5)
  np.testing.assert_array_equal(emb, layers.fourier_embedding(t, 16, scale=16.0))
  params, out = shapes(tiny(embedding="fourier"))
  assert params["Dense_0"]["kernel"].shape == (16, 32)  # 2 ch features in.
  assert out.shape == (2, 8, 8, 3)


def test_input_fourier_features_append_sin_cos_channels():
  x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3), minval=-1, maxval=1)
  h = layers.with_input_fourier_features(x, (6, 7))
  assert h.shape == (2, 4, 4, 15)
  np.testing.assert_array_equal(h[..., :3], x)
  np.testing.assert_allclose(h[..., 3], jnp.sin(2 ** 6 * 2 * np.pi * x[..., 0]), atol=1e-4)
  params, _ = shapes(tiny(input_fourier=(6, 7)))
  assert params["conv_in"]["kernel"].shape == (3, 3, 15, 8)


@pytest.mark.parametrize("progressive_input", ["input_skip", "residual"])
def test_progressive_paths_keep_the_output_shape(progressive_input):
  cfg = tiny(ch_mult=(1, 2, 2), resblock_updown=True, resample_filter=(1, 3, 3, 1),
             progressive_input=progressive_input, progressive="output_skip")
  params, out = shapes(cfg, size=16)
  assert out.shape == (2, 16, 16, 3)
  assert {"ProgressiveInput_0", "ProgressiveInput_1", "OutputSkip_2"} <= set(params)
  assert "conv_out" not in params  # The output pyramid is the output.


def test_up_attn_once_puts_one_attention_per_up_level():
  count = lambda cfg: sum(k.startswith("AttnBlock") for k in shapes(cfg)[0])
  # Attention at 4x4: one per down block, the middle one, then per up block or per level.
  assert count(tiny(num_res_blocks=2)) == 2 + 1 + 3
  assert count(tiny(num_res_blocks=2, up_attn_once=True)) == 2 + 1 + 1


def test_single_level_unet_never_downsamples():
  cfg = tiny(ch_mult=(1,), num_res_blocks=3, attn_resolutions=())
  _, (out, state) = shapes(cfg, capture_intermediates=True, mutable=["intermediates"])
  blocks = {k: v["__call__"][0] for k, v in state["intermediates"].items() if "Block" in k}
  assert len(blocks) == 3 + 3 + 4  # Down, middle (two blocks and attention), up.
  assert all(v.shape[1:3] == (8, 8) for v in blocks.values())
  assert out.shape == (2, 8, 8, 3)


@pytest.mark.parametrize("field,value,match", [
    ("embedding", "sinusoid", "model.embedding='sinusoid' is unknown"),
    ("progressive", "residual", "model.progressive='residual' is unknown"),
    ("progressive_input", "skip", "model.progressive_input='skip' is unknown"),
    ("resample_filter", (1,), "model.resample_filter=\\(1,\\) needs at least two taps"),
    ("resample_filter", (1, 3, 3, 1), "resample_filter only acts with resblock_updown"),
    ("fourier_scale", 0.0, "model.fourier_scale=0.0 must be a finite number in \\(0"),
])
def test_bad_architecture_options_are_config_errors(field, value, match):
  config = load_config(os.path.join(ROOT, "configs", "digits.py"))
  config.model[field] = value
  with pytest.raises(ConfigError, match=match):
    spec_lib.parse(config, num_devices=1)


def test_checkpoint_meta_from_before_the_new_fields_still_matches(monkeypatch, tmp_path):
  config = load_config(os.path.join(ROOT, "configs", "digits.py"))
  old = workdir_lib.model_meta(spec_lib.parse(config, 1))
  for k in ("embedding", "resblock_updown", "progressive", "input_fourier"):
    del old["model"][k]
  found = workdir_lib.checkpoint.Found(usable=(7,), meta=old)
  monkeypatch.setattr(workdir_lib.checkpoint, "find", lambda workdir, with_iterator: found)
  assert workdir_lib.check(spec_lib.parse(config, 1), str(tmp_path), "train").latest == 7
  config.model.resblock_updown = True  # A real difference is still refused.
  with pytest.raises(ConfigError, match="model.resblock_updown differ"):
    workdir_lib.check(spec_lib.parse(config, 1), str(tmp_path), "train")
