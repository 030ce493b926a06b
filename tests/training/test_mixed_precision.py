"""Mixed precision (model.dtype=bfloat16 with float32 parameters): training on the
digits tracks float32 training, through the train step that training runs."""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.data.digits import digits_arrays
from diffusion_jax.run import build, spec as spec_lib
from diffusion_jax.training import mesh as mesh_lib
# The optimizer of the accumulation test: its float32 programs are compiled once.
from tests.training.test_accumulation import LINEAR_ADAM, QUICK
from tests.training.test_train_step import tiny_config

STEPS, WINDOW = 100, 20


def digit_batches(n: int, batch: int = 16):
  images, labels = digits_arrays()
  rng = np.random.default_rng(0)
  order = np.concatenate([rng.permutation(len(images)) for _ in range(-(-n * batch // len(images)))])
  order = order[: n * batch].reshape(n, batch)  # Epochs of the 1,797 digits, shuffled.
  x = images.astype(np.float32) / 127.5 - 1.0
  return [{"image": x[i], "label": labels[i].astype(np.int32)} for i in order]


def train(dtype: str, batches):
  """(loss per step, final state) of the tiny digits U-Net computing in `dtype`."""
  mesh = mesh_lib.make_mesh(1)
  spec = spec_lib.parse(tiny_config(**{**QUICK, **LINEAR_ADAM, "model.dtype": dtype}), 1)
  net, tx = build.model(spec), build.optimizer_of(spec)
  init, key, _ = build.init_fns(spec, net, tx, mesh)
  state, step = init(key), build.jitted_train_step(spec, net, tx, mesh)
  losses = []
  for b in batches:
    state, m = step(state, mesh_lib.global_batch(b, mesh))
    losses.append(m["loss"])
  return np.asarray(jax.device_get(losses)), state


def test_bfloat16_compute_tracks_float32_training():
  batches = digit_batches(STEPS)
  f32, _ = train("float32", batches)
  bf16, state = train("bfloat16", batches)
  # Parameters, their EMA and Adam's moments stay float32; the loss is float32.
  for leaf in jax.tree.leaves((state.params, state.ema_params, state.opt_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32, leaf.dtype
  assert bf16.dtype == np.float32 and np.all(np.isfinite(bf16))
  # bfloat16 did compute something else (a test of float32 against itself passes trivially).
  assert np.max(np.abs(bf16 - f32)) > 1e-4
  # Both learn: the last window's mean loss is well below the first's.
  windows = lambda l: l.reshape(-1, WINDOW).mean(axis=1)
  w32, w16 = windows(f32), windows(bf16)
  assert w32[-1] < 0.6 * w32[0] and w16[-1] < 0.6 * w16[0], (w32, w16)
  # Same noise and data at every step: the curves' windowed means agree within 1% (on
  # this CPU they differ by < 0.1%).
  np.testing.assert_allclose(w16, w32, rtol=0.01)
