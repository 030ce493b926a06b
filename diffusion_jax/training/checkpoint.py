"""Checkpoints: orbax CheckpointManager over the train state, the input iterator
position and the model's config, in WORKDIR/checkpoints/<step>/."""

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
import tensorflow as tf
from etils import epath


class TfIteratorHandler(ocp.CheckpointHandler):
  """Saves each process's tf.data iterator (position and shuffle buffer)."""

  def _prefix(self, directory: epath.Path) -> str:
    return os.fspath(directory / f"process_{jax.process_index()}" / "iterator")

  def save(self, directory: epath.Path, args: "IteratorSave"):
    tf.train.Checkpoint(iterator=args.iterator).write(self._prefix(directory))

  def restore(self, directory: epath.Path, args: "IteratorRestore"):
    tf.train.Checkpoint(iterator=args.iterator).read(self._prefix(directory)).assert_consumed()
    return args.iterator


@ocp.args.register_with_handler(TfIteratorHandler, for_save=True)
@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(TfIteratorHandler, for_restore=True)
@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
  iterator: Any


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, keep: int, create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=create, enable_async_checkpointing=False)
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=options,
      item_names=("state", "iterator", "meta"),
      item_handlers={"iterator": TfIteratorHandler()})


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


def save(manager: ocp.CheckpointManager, step: int, state, iterator, meta: dict) -> None:
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      iterator=IteratorSave(iterator),
      meta=ocp.args.JsonSave(meta)), force=True)
  manager.wait_until_finished()


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, iterator=None):
  """Restores the state (into the shardings of `abstract_state`) and the iterator."""
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if iterator is not None:
    items["iterator"] = IteratorRestore(iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored["state"]
