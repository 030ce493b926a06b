"""model.conv_impl (models/conv.py): every kernel-gradient implementation gives nn.Conv's
outputs and gradients under nn.Conv's parameters, and off the CPU "auto" is exactly
nn.Conv's program."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models import conv
from diffusion_jax.models.unet import Cond, UNet, UNetConfig
from diffusion_jax.training import state as state_lib

# (batch, size, c_in, c_out, kernel, stride, padding): SAME at strides 1 and 2 with
# even and odd sizes, VALID and explicit pads as unet's progressive paths use them.
CASES = [
    (5, 8, 3, 4, 3, 1, "SAME"),
    (5, 7, 4, 6, 3, 2, "SAME"),
    (4, 6, 5, 3, 1, 1, "SAME"),
    (5, 9, 4, 4, 3, 2, "VALID"),
    (3, 8, 4, 4, 3, 1, ((2, 0), (1, 1))),
]
# Output positions per chunk in these tests: small, so that each case above is cut
# into several chunks (of 1 or 2 examples; the last one shorter where the batch is odd).
CHUNK = 40


def _loss_and_inputs(case, impl, dtype=jnp.float32):
  batch, size, cin, cout, k, stride, padding = case
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, size, size, cin)), jnp.float32)
  kw = dict(strides=(stride, stride), padding=padding, dtype=dtype)
  layer = (nn.Conv(cout, (k, k), **kw) if impl is None
           else conv.make_conv(impl, cout, (k, k), **kw))
  params = nn.Conv(cout, (k, k), **kw).init(jax.random.key(0), x)["params"]
  # A nonlinear loss, so that the output gradient varies over the batch and pixels.
  loss = lambda p, x: jnp.sum(jnp.sin(layer.apply({"params": p}, x).astype(jnp.float32)) ** 2)
  return loss, params, x


@pytest.mark.parametrize("impl", sorted(conv.CONV_IMPLS))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradients_equal_flax_conv(case, impl, monkeypatch):
  monkeypatch.setattr(conv, "CHUNK_POSITIONS", CHUNK)
  loss, params, x = _loss_and_inputs(case, impl)
  ref_loss, _, _ = _loss_and_inputs(case, None)
  got = jax.grad(loss, argnums=(0, 1))(params, x)
  want = jax.grad(ref_loss, argnums=(0, 1))(params, x)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  # Forward mode (the likelihood's trace estimate) too.
  tangent = jnp.cos(x)
  jvp = lambda f: jax.jvp(lambda v: f(params, v), (x,), (tangent,))[1]
  np.testing.assert_allclose(jvp(loss), jvp(ref_loss), rtol=1e-5)


def _kernel_grad_convs(case, impl) -> int:
  loss, params, x = _loss_and_inputs(case, impl)
  text = jax.jit(jax.grad(loss)).lower(params, x).as_text()
  return text.count("stablehlo.convolution")


def test_chunked_cuts_the_kernel_gradient_into_chunks(monkeypatch):
  monkeypatch.setattr(conv, "CHUNK_POSITIONS", CHUNK)
  case = CASES[0]  # 5 examples of 64 positions, 1 per chunk: 5 kernel-gradient convs.
  assert _kernel_grad_convs(case, "xla") == 2  # forward, kernel gradient
  assert _kernel_grad_convs(case, "chunked") == 1 + case[0]
  # Batches that fit in one chunk keep XLA's single convolution.
  monkeypatch.setattr(conv, "CHUNK_POSITIONS", 4096)
  assert _kernel_grad_convs(case, "chunked") == 2


def test_bfloat16_gradients_match_flax_conv(monkeypatch):
  monkeypatch.setattr(conv, "CHUNK_POSITIONS", CHUNK)
  case = CASES[1]
  loss, params, x = _loss_and_inputs(case, "chunked", jnp.bfloat16)
  ref_loss, _, _ = _loss_and_inputs(case, None, jnp.bfloat16)
  got, want = jax.grad(loss)(params, x), jax.grad(ref_loss)(params, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    # bfloat16 keeps ~3 significant digits; the chunks are summed in it.
    np.testing.assert_allclose(g, w, rtol=3e-2, atol=3e-2 * float(jnp.max(jnp.abs(w))))


# A tiny U-Net with every conv the model has: strided downsampling, upsampling,
# a progressive residual input path (VALID, stride 2) and a conditioning image (1x1).
TINY = dict(out_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
            num_groups=4, dropout=0.0, progressive_input="residual",
            cond_image_channels=1, cond_image_resolutions=(4,))


def _unet_grad_program(conv_impl: str, monkeypatch, flax_conv: bool = False):
  """The lowered StableHLO of a U-Net's gradient, and its parameter shapes."""
  if flax_conv:  # The network as it was before model.conv_impl: plain nn.Conv.
    monkeypatch.setattr(conv, "make_conv", lambda impl, *a, **k: nn.Conv(*a, **k))
  model = UNet(UNetConfig(**TINY, conv_impl=conv_impl))
  x, t, _ = state_lib.dummy_inputs(model, 4, 8, 1)
  cond = Cond(image=x)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, cond)["params"])
  params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes)
  loss = lambda p: jnp.mean(model.apply({"params": p}, x, t, cond, train=True) ** 2)
  text = jax.jit(jax.grad(loss)).lower(params).as_text()
  monkeypatch.undo()
  return text, shapes


def test_unet_parameters_are_nn_conv_s_and_off_cpu_auto_is_its_program(monkeypatch):
  monkeypatch.setattr(conv, "CHUNK_POSITIONS", 64)  # So "chunked" chunks at batch 4.
  ref_text, ref_shapes = _unet_grad_program("xla", monkeypatch, flax_conv=True)
  # ("auto" is "chunked" on this CPU.) The same parameter tree, names and shapes:
  for impl in ("xla", "chunked"):
    monkeypatch.setattr(conv, "CHUNK_POSITIONS", 64)
    text, shapes = _unet_grad_program(impl, monkeypatch)
    assert shapes == ref_shapes, impl
    assert (text == ref_text) == (impl == "xla"), impl  # "chunked" cuts it up.
  # Traced for a GPU (or TPU: the same branch), "auto" is nn.Conv's program.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(conv, "CHUNK_POSITIONS", 64)
  assert _unet_grad_program("auto", monkeypatch)[0] == ref_text


def test_unknown_conv_impl_is_a_config_error():
  from diffusion_jax.config.errors import ConfigError
  with pytest.raises(ConfigError, match=r"model.conv_impl='im2col' is unknown; known: "):
    UNetConfig.from_config({"conv_impl": "im2col"})


def test_the_run_s_train_step_is_the_same_under_every_conv_impl(monkeypatch):
  """build.jitted_train_step, as training runs it: two steps from the same state give
  the same loss and parameters with XLA's and with the chunked kernel gradient."""
  from diffusion_jax.config import defaults
  from diffusion_jax.run import build, spec as spec_lib
  from diffusion_jax.training import mesh as mesh_lib
  from tests.conftest import apply_overrides, tiny_overrides

  monkeypatch.setattr(conv, "CHUNK_POSITIONS", 256)  # 4 chunks of the 8x8 level at batch 16.
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32),
           "label": rng.integers(0, 10, 16).astype(np.int32)}
  mesh = mesh_lib.make_mesh(1)
  results = {}
  for impl in ("xla", "chunked"):
    config = apply_overrides(defaults.get_config(),
                             {**tiny_overrides(), "model.conv_impl": impl})
    spec = spec_lib.parse(config, 1)
    net, tx = build.model(spec), build.optimizer_of(spec)
    init, key, _ = build.init_fns(spec, net, tx, mesh)
    state, step = init(key), build.jitted_train_step(spec, net, tx, mesh)
    program = step.lower(state, mesh_lib.global_batch(batch, mesh)).as_text()
    losses = []
    for _ in range(2):  # The first step moves the zero-initialised output convs.
      state, m = step(state, mesh_lib.global_batch(batch, mesh))
      losses.append(float(m["loss"]))
    results[impl] = losses, jax.device_get(state.params), program.count("stablehlo.convolution")
  (l_xla, p_xla, n_xla), (l_chunked, p_chunked, n_chunked) = results["xla"], results["chunked"]
  assert n_chunked > n_xla  # The kernel gradients really are cut into chunks.
  np.testing.assert_allclose(l_chunked, l_xla, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               p_chunked, p_xla)
