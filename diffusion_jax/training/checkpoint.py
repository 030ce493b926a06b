"""Checkpoints: orbax CheckpointManager over the train state, the input pipeline's
position (a small JSON dict, the same on every process) and the model's config, in
WORKDIR/checkpoints/<step>/."""

import json
import os

import orbax.checkpoint as ocp

from diffusion_jax.config.errors import ConfigError


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, keep: int, create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=create, enable_async_checkpointing=False)
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=options,
      item_names=("state", "iterator", "meta"))


def latest_step(workdir: str) -> int | None:
  """The latest complete checkpoint step in the workdir, without creating anything."""
  d = checkpoint_dir(workdir)
  if not os.path.isdir(d):
    return None
  steps = [int(n) for n in os.listdir(d) if n.isdigit()
           and os.path.isdir(os.path.join(d, n, "meta"))]
  return max(steps) if steps else None


def read_meta(workdir: str, step: int) -> dict:
  """The metadata saved with a checkpoint (model config, data shape), read directly."""
  path = os.path.join(checkpoint_dir(workdir), str(step), "meta", "metadata")
  with open(path) as f:
    return json.load(f)


def check_iterator_item(workdir: str, step: int) -> None:
  """Checkpoint `step` must hold the input position as JSON: checkpoints written
  before it did (one tf.data iterator per process) cannot be resumed."""
  if os.path.isdir(os.path.join(checkpoint_dir(workdir), str(step), "iterator", "process_0")):
    raise ConfigError(
        f"checkpoint {step} in {checkpoint_dir(workdir)!r} holds a tf.data iterator "
        "(written before the input pipeline read by index) and cannot be resumed; sample "
        "or evaluate it, or train in a new workdir")


def save(manager: ocp.CheckpointManager, step: int, state, iterator_state: dict,
         meta: dict) -> None:
  """Saves the train state, the input position (`InputIterator.state()`) and `meta`."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      iterator=ocp.args.JsonSave(iterator_state),
      meta=ocp.args.JsonSave(meta)), force=True)
  manager.wait_until_finished()


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
  """The train state, restored into the shardings of `abstract_state`."""
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored["state"]


def restore_iterator_state(manager: ocp.CheckpointManager, step: int) -> dict:
  """The input position saved with checkpoint `step` (for `InputIterator.restore`)."""
  restored = manager.restore(step, args=ocp.args.Composite(iterator=ocp.args.JsonRestore()))
  return restored["iterator"]
