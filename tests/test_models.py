"""Model shapes for every config (jax.eval_shape, no real init) and parameter counts."""

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from diffusion_jax import train_state, validate
from diffusion_jax.models.unet import Cond, UNet, UNetConfig, count_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
CONFIGS = [c for c in CONFIGS if not c.endswith("__init__.py")]


def load_config(path, arg=None):
  spec = importlib.util.spec_from_file_location("cfg_" + os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg else mod.get_config()


def abstract_apply(config, batch=2):
  model = UNet(validate.model_config(config))
  x, t, cond = train_state.dummy_inputs(model, batch, config.data.image_size, config.data.channels)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, cond))
  out = jax.eval_shape(lambda v: model.apply(v, x, t, cond), variables)
  return variables["params"], out


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_validates_and_has_the_right_output_shape(path):
  config = load_config(path)
  validate.check_config(config, num_devices=1)
  params, out = abstract_apply(config)
  d = config.data
  assert out.shape == (2, d.image_size, d.image_size, d.channels)
  assert out.dtype == jnp.float32
  assert count_params(params) > 0


def test_cifar10_ddpm_is_the_35_7m_network():
  params, _ = abstract_apply(load_config(os.path.join(ROOT, "configs", "cifar10_ddpm.py")))
  # Ho et al. (2020) CIFAR-10: 35.7M; diffusers' UNet2DModel of that layout: 35,746,307.
  assert count_params(params) == 35_746_307


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
  with pytest.raises(ValueError, match="unknown model config fields: \\['width'\\]"):
    UNetConfig.from_config({"width": 3})
