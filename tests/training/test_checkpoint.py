"""The train state's checkpoint handler: orbax's standard files, so checkpoints written
before it (by orbax's StandardCheckpointHandler) restore, and its own read with that."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from diffusion_jax.training import checkpoint

STATE = {"params": {"w": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones((4,), jnp.bfloat16)},
         "step": jnp.asarray(7, jnp.int32), "rng": jnp.asarray([1, 2], jnp.uint32)}


def abstract():
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      STATE)


def assert_equal(got):
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               got, STATE)
  assert jax.tree.map(lambda x: x.dtype, got) == jax.tree.map(lambda x: x.dtype, STATE)


def standard_manager(workdir, read_only=False):
  """A manager as orbax's standard handler writes the state (this project until now)."""
  return ocp.CheckpointManager(
      checkpoint.checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(create=not read_only, read_only=read_only,
                                           enable_async_checkpointing=False),
      item_names=(checkpoint.STATE, checkpoint.ITERATOR, checkpoint.META),
      item_handlers={checkpoint.STATE: ocp.StandardCheckpointHandler(),
                     checkpoint.ITERATOR: ocp.JsonCheckpointHandler(),
                     checkpoint.META: ocp.JsonCheckpointHandler()})


def test_a_checkpoint_of_the_standard_handler_restores(tmp_path):
  manager = standard_manager(str(tmp_path))
  manager.save(3, args=ocp.args.Composite(**{
      checkpoint.STATE: ocp.args.StandardSave(STATE),
      checkpoint.ITERATOR: ocp.args.JsonSave({"position": 24}),
      checkpoint.META: ocp.args.JsonSave({"model": "tiny"})}))
  manager.close()
  found = checkpoint.find(str(tmp_path), with_iterator=True)
  assert found.latest == 3 and found.meta == {"model": "tiny"}
  manager = checkpoint.reader(str(tmp_path))
  state, position = checkpoint.restore(manager, 3, abstract(), with_iterator=True)
  manager.close()
  assert position == {"position": 24}
  assert_equal(state)


def test_its_checkpoint_restores_with_the_standard_handler(tmp_path):
  manager = checkpoint.make_manager(str(tmp_path), keep=1, async_save=False)
  checkpoint.save(manager, 5, STATE, {"position": 40}, {"model": "tiny"})
  manager.close()
  manager = standard_manager(str(tmp_path), read_only=True)
  state = manager.restore(5, args=ocp.args.Composite(**{
      checkpoint.STATE: ocp.args.StandardRestore(abstract())}))[checkpoint.STATE]
  manager.close()
  assert_equal(state)
