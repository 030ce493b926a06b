"""model.conv_impl (models/conv.py): every kernel-gradient implementation gives nn.Conv's
outputs and gradients under nn.Conv's parameters, the upsampling convolution gives those
of upsampling first, and off the CPU "auto" is exactly nn.Conv's program."""

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


class _Up(nn.Module):
  """The U-Net's upsampling layer under `impl`; None: resizing first, then nn.Conv."""
  impl: str | None
  features: int
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.impl is None:
      b, h, w, c = x.shape
      up = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="nearest")
      return nn.Conv(self.features, (3, 3), dtype=self.dtype)(up)
    return conv.upsample_and_conv(self.impl, x, self.features, dtype=self.dtype)


def _upsample_loss(impl, batch, h, w, cin, cout):
  """A loss of _Up(impl), and the parameters (nn.Conv's) and input it is taken at."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((batch, h, w, cin)), jnp.float32)
  params = _Up(None, cout).init(jax.random.key(0), x)["params"]
  params = jax.tree.map(lambda a: a + 0.1, params)  # A non-zero bias too.
  layer = _Up(impl, cout)
  loss = lambda p, x: jnp.sum(jnp.sin(layer.apply({"params": p}, x)) ** 2)
  return loss, params, x


@pytest.mark.parametrize("shape", [(3, 8, 8, 4, 5), (5, 9, 8, 3, 2), (2, 8, 11, 6, 6)],
                         ids=str)
def test_the_upsampling_conv_equals_upsampling_first(shape, monkeypatch):
  """At the source resolution (even and odd sizes, chunked kernel gradients): the same
  values, gradients and forward-mode tangents as resizing first; the same parameters."""
  monkeypatch.setattr(conv, "CHUNK_POSITIONS", CHUNK)
  assert conv.uses_upsampling_conv("auto", shape[1:3])
  loss, params, x = _upsample_loss("auto", *shape)
  ref_loss, _, _ = _upsample_loss(None, *shape)
  init = lambda: _Up("auto", shape[-1]).init(jax.random.key(0), x)["params"]
  assert jax.tree.map(jnp.shape, jax.eval_shape(init)) == jax.tree.map(jnp.shape, params)
  np.testing.assert_allclose(loss(params, x), ref_loss(params, x), rtol=1e-5)
  got = jax.grad(loss, argnums=(0, 1))(params, x)
  want = jax.grad(ref_loss, argnums=(0, 1))(params, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    # Sums in another order: float32 rounding relative to the largest entry.
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-6 * float(jnp.max(jnp.abs(w))))
  tangent = jnp.cos(x)
  jvp = lambda f: jax.jvp(lambda v: f(params, v), (x,), (tangent,))[1]
  np.testing.assert_allclose(jvp(loss), jvp(ref_loss), rtol=1e-5)


def test_the_upsampling_conv_is_used_where_it_pays():
  """Only "auto" on the CPU, from PHASE_MIN_SIZE; a 4x4 source is upsampled first."""
  x = jnp.zeros((2, 8, 8, 3))
  program = lambda impl, x: jax.jit(lambda x: _Up(impl, 4).init_with_output(
      jax.random.key(0), x)[0]).lower(x).as_text()
  assert program("auto", x).count("stablehlo.convolution") == 4  # One per phase.
  for impl in ("xla", "chunked"):
    assert program(impl, x).count("stablehlo.convolution") == 1
  assert program("auto", jnp.zeros((2, 4, 8, 3))).count("stablehlo.convolution") == 1
  assert not conv.uses_upsampling_conv("auto", (7, 16))


def test_the_upsampling_conv_refuses_what_it_cannot_compute():
  up = conv.upsampling_conv(jax.lax.conv_general_dilated)
  x, k = jnp.zeros((1, 8, 8, 2)), jnp.zeros((3, 3, 2, 2))
  dn = ("NHWC", "HWIO", "NHWC")
  for strides, padding, kernel in [((2, 2), "SAME", k), ((1, 1), "VALID", k),
                                   ((1, 1), "SAME", jnp.zeros((1, 1, 2, 2)))]:
    with pytest.raises(ValueError, match="3x3, stride-1, SAME convolution in NHWC"):
      up(x, kernel, strides, padding, dimension_numbers=dn)


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
  # (On this CPU "auto" is "chunked" with the upsampling conv, here at 4x4.) The same
  # parameter tree, names and shapes:
  for impl in ("xla", "chunked", "auto"):
    monkeypatch.setattr(conv, "CHUNK_POSITIONS", 64)
    monkeypatch.setattr(conv, "PHASE_MIN_SIZE", 4)
    text, shapes = _unet_grad_program(impl, monkeypatch)
    assert shapes == ref_shapes, impl
    assert (text == ref_text) == (impl == "xla"), impl  # The others cut it up.
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
  the same loss and parameters with XLA's program and with "auto"'s on this CPU (chunked
  kernel gradients, the upsampling conv at the source resolution)."""
  from diffusion_jax.config import defaults
  from diffusion_jax.run import build, spec as spec_lib
  from diffusion_jax.training import mesh as mesh_lib
  from tests.conftest import apply_overrides, tiny_overrides

  monkeypatch.setattr(conv, "CHUNK_POSITIONS", 256)  # 4 chunks of the 8x8 level at batch 16.
  monkeypatch.setattr(conv, "PHASE_MIN_SIZE", 4)  # The tiny U-Net upsamples 4x4 to 8x8.
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32),
           "label": rng.integers(0, 10, 16).astype(np.int32)}
  mesh = mesh_lib.make_mesh(1)
  results = {}
  for impl in ("xla", "auto"):
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
  (l_xla, p_xla, n_xla), (l_auto, p_auto, n_auto) = results["xla"], results["auto"]
  assert n_auto > n_xla  # Cut into chunks (and phases: test_..._is_used_where_it_pays).
  np.testing.assert_allclose(l_auto, l_xla, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               p_auto, p_xla)
