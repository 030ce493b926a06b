"""The pure train step: deterministic, learns, and independent of the device count."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.config import defaults as default
from diffusion_jax.core import diffusion
from diffusion_jax.models.unet import Cond
from diffusion_jax.run import build, spec as spec_lib
from diffusion_jax.training import mesh as mesh_lib, step as step_lib
from tests.conftest import ROOT, apply_overrides, tiny_overrides


def tiny_config(**extra):
  c = apply_overrides(default.get_config(), tiny_overrides())
  return apply_overrides(c, extra)


def setup(config, mesh=None):
  """The model, process, initial state and (jitted) train step the run builds."""
  mesh = mesh or mesh_lib.make_mesh(1)
  spec = spec_lib.parse(config, mesh.devices.size)
  model, tx = build.model(spec), build.optimizer_of(spec)
  init, key, _ = build.init_fns(spec, model, tx, mesh)
  step = build.train_step(spec, model, tx)
  return model, spec.diffusion, init(key), jax.jit(step), mesh


def fake_batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.uniform(-1, 1, (n, 8, 8, 1)).astype(np.float32),
          "label": rng.integers(0, 10, n).astype(np.int32)}


def test_train_step_is_deterministic():
  _, _, state, step, _ = setup(tiny_config(**{"model.dropout": 0.1}))
  batch = fake_batch()
  s1, m1 = step(state, batch)
  s2, m2 = step(state, batch)
  assert float(m1["loss"]) == float(m2["loss"])
  jax.tree.map(np.testing.assert_array_equal, s1.params, s2.params)
  assert int(s1.step) == 1
  # The next step draws fresh noise: the loss on the same batch differs.
  _, m3 = step(s1, batch)
  assert float(m3["loss"]) != float(m1["loss"])


STEPS = 150


def test_tiny_model_overfits_one_batch():
  config = tiny_config(**{"optim.lr": 3e-3, "optim.warmup_steps": 10,
                          "optim.lr_schedule": "constant", "training.label_dropout": 0.0})
  model, diff, state, step, _ = setup(config)
  batch = fake_batch(8, seed=1)

  @jax.jit
  def eval_loss(params):
    apply = lambda x, t: model.apply({"params": params}, x, t,
                                     Cond(labels=jnp.asarray(batch["label"])))
    return jnp.mean(jnp.stack([diffusion.denoising_loss(
        apply, diff, jnp.asarray(batch["image"]), jax.random.key(k))[0] for k in range(8)]))

  before = float(eval_loss(state.params))
  for _ in range(STEPS):
    state, _ = step(state, batch)
  after = float(eval_loss(state.params))
  print(f"loss {before:.4f} -> {after:.4f} ({after / before:.3f}x) after {STEPS} steps")
  # An untrained eps-model scores ~1 (E[eps^2]); memorising 8 images brings it far lower.
  assert before > 0.8
  assert after < 0.35 * before, (before, after)


def test_same_result_on_8_devices_as_on_1():
  """multidevice_check.py: data parallelism, the fsdp-split state, guided sampling and
  the chunked latent encoder on 8 devices."""
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="8",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  check = os.path.join(ROOT, "tests", "training", "multidevice_check.py")
  out = subprocess.run([sys.executable, check], env=env, capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  for line in ("devices=8", "fsdp=2 losses", "restored on data=8 and on fsdp=8",
               "samples from the EMA split 8 ways", "guided sampling on data=8: no collective",
               "the encoder in chunks on data=8: one go's latents, no collective"):
    assert line in out.stdout, out.stdout


def test_a_non_finite_update_is_skipped_and_the_next_applies():
  """Through the train step as training compiles it."""
  # No warmup: the optimizer's count stays at 0 after a skip, where warmup's rate is 0.
  spec = spec_lib.parse(tiny_config(**{"optim.warmup_steps": 0}), 1)
  mesh = mesh_lib.make_mesh(1)
  net, tx = build.model(spec), build.optimizer_of(spec)
  init, key, abstract = build.init_fns(spec, net, tx, mesh)
  step = build.compiled_train_step(spec, net, tx, mesh, abstract, fake_batch())
  before = jax.device_get(init(key))  # The step donates (deletes) its input state.
  bad = fake_batch()
  bad["image"][3, 2, 2, 0] = np.nan
  s1, m1 = step(before, bad)
  assert float(m1["skipped"]) == 1.0 and int(s1.step) == 1
  s1 = jax.device_get(s1)
  for a, b in ((s1.params, before.params), (s1.ema_params, before.ema_params),
               (s1.opt_state, before.opt_state)):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  s2, m2 = step(s1, fake_batch())
  assert float(m2["skipped"]) == 0.0 and np.isfinite(float(m2["loss"]))
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)),
                                         s2.params, s1.params))
  assert any(changed)


def test_all_finite_finds_one_bad_value_in_any_array():
  big = step_lib.CHECK_TOGETHER_BELOW
  tree = {"big": jnp.ones((big,)), "a": jnp.ones((3, 4)), "b": jnp.ones((5,), jnp.bfloat16),
          "c": jnp.zeros(()), "big_bf16": jnp.ones((2, big), jnp.bfloat16),
          "count": jnp.arange(3)}
  check = jax.jit(step_lib.all_finite)
  assert bool(check(tree))
  for name, index, bad in (("big", 7, np.nan), ("a", (2, 1), np.nan), ("b", 4, np.inf),
                           ("c", (), -np.inf), ("big_bf16", (1, 3), np.inf)):
    broken = {**tree, name: tree[name].at[index].set(bad)}
    assert not bool(check(broken)), name


def test_small_arrays_are_checked_in_one_reduction():
  """One is_finite per dtype over the small arrays, one per large array: a kernel per
  array made the check 40% of the tiny U-Net's compile time (step.all_finite)."""
  spec, mesh = spec_lib.parse(tiny_config(**{"model.ch": 64}), 1), mesh_lib.make_mesh(1)
  net, tx = build.model(spec), build.optimizer_of(spec)
  params = build.init_fns(spec, net, tx, mesh)[2].params
  sizes = [x.size for x in jax.tree.leaves(params)]
  large = sum(n >= step_lib.CHECK_TOGETHER_BELOW for n in sizes)
  assert 0 < large < len(sizes) // 2, sizes
  text = jax.jit(step_lib.all_finite).lower(params).as_text()
  assert text.count("stablehlo.is_finite") == large + 1
