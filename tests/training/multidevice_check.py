"""Run by test_train_step.py with 8 simulated CPU devices: 3 steps of training's own jitted
train step on a mesh of 8 devices and on a mesh of 1, from the same state and batches,
must agree."""

import jax
import numpy as np

from diffusion_jax.run import build, spec as spec_lib
from diffusion_jax.training import mesh as mesh_lib
from tests.training.test_train_step import fake_batch, tiny_config


def run(mesh):
  """Three steps of the jitted train step that training runs, on `mesh`."""
  config = tiny_config(**{"model.dropout": 0.1, "sample.batch_size": 8})
  spec = spec_lib.parse(config, mesh.devices.size)
  net, tx = build.model(spec), build.optimizer_of(spec)
  init, key, _ = build.init_fns(spec, net, tx, mesh)
  state, step = init(key), build.jitted_train_step(spec, net, tx, mesh)
  losses = []
  for i in range(3):
    state, m = step(state, mesh_lib.global_batch(fake_batch(16, seed=i), mesh))
    losses.append(float(m["loss"]))
  return state, losses


def main():
  assert jax.device_count() == 8, jax.devices()
  s8, l8 = run(mesh_lib.make_mesh(8))
  s1, l1 = run(mesh_lib.make_mesh(1))
  assert len(s8.params["conv_in"]["kernel"].sharding.device_set) == 8
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                                       s8.params, s1.params))
  assert max(diffs) < 1e-5, max(diffs)
  print(f"devices=8 losses={l8} vs {l1} max_param_diff={max(diffs):.2e}")


if __name__ == "__main__":
  main()
