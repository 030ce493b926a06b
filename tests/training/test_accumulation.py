"""Gradient accumulation (training.microbatches): k microbatches make the update of
the whole batch, through the train step that training runs."""

import jax
import numpy as np

from diffusion_jax.run import build, spec as spec_lib
from diffusion_jax.training import mesh as mesh_lib
from tests.training.test_train_step import fake_batch, tiny_config

# A constant learning rate from the second step: updates that change the parameters.
QUICK = {"optim.warmup_steps": 1, "optim.lr_schedule": "constant", "optim.lr": 3e-3}
# Adam with a large epsilon steps by ~lr * gradient, so the parameters compare the
# gradients. (With eps=1e-8 Adam divides each gradient by its own size: where one is
# near zero, its rounding, summed in another order, can flip the sign of a whole step.)
LINEAR_ADAM = {"optim.eps": 1.0, "optim.lr": 0.3}


def train(microbatches: int, steps: int = 3):
  """(initial params, final state, metrics of each step)."""
  mesh = mesh_lib.make_mesh(1)
  # Dropout off: each microbatch draws its own dropout masks (everything else matches).
  config = tiny_config(**{**QUICK, **LINEAR_ADAM, "model.dropout": 0.0,
                          "training.microbatches": microbatches})
  spec = spec_lib.parse(config, 1)
  net, tx = build.model(spec), build.optimizer_of(spec)
  init, key, _ = build.init_fns(spec, net, tx, mesh)
  state, step = init(key), build.jitted_train_step(spec, net, tx, mesh)
  initial = jax.device_get(state.params)
  metrics = []
  for i in range(steps):
    state, m = step(state, mesh_lib.global_batch(fake_batch(16, seed=i), mesh))
    metrics.append(jax.device_get(m))
  return initial, jax.device_get(state), metrics


def test_microbatches_make_the_full_batch_update():
  initial, full, full_metrics = train(1)
  _, acc, acc_metrics = train(4)  # 4 microbatches of 4 examples.
  assert int(acc.step) == int(full.step) == 3
  for name in ("loss", "grad_norm"):
    np.testing.assert_allclose([m[name] for m in acc_metrics],
                               [m[name] for m in full_metrics], rtol=2e-5, err_msg=name)
  for a, f, a0 in zip(jax.tree.leaves((acc.params, acc.ema_params)),
                      jax.tree.leaves((full.params, full.ema_params)),
                      jax.tree.leaves((initial, initial))):
    np.testing.assert_allclose(a - a0, f - a0, rtol=1e-3, atol=1e-4 * np.max(np.abs(f - a0)))
  for a, f in zip(jax.tree.leaves(acc.opt_state), jax.tree.leaves(full.opt_state)):
    np.testing.assert_allclose(a, f, rtol=1e-3, atol=1e-9)
  # The parameters did move (two updates of zero would match trivially).
  moved = max(float(np.max(np.abs(a - b))) for a, b in
              zip(jax.tree.leaves(full.params), jax.tree.leaves(initial)))
  assert moved > 1e-3, moved
