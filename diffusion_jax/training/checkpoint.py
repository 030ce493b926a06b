"""Checkpoints: orbax's CheckpointManager over the train state, the input position (the
iterator's JSON state) and the model's metadata, in WORKDIR/checkpoints/<step>/.

Every process saves its shards, asynchronously: `save` returns once the arrays are
copied off the devices and training goes on while the files are written. A step
appears in `all_steps` only once orbax has committed it, so a process killed during a
save leaves the previous checkpoints as they were. A checkpoint that does not read
back (a missing or truncated file) is skipped with a warning; when training, it is
moved aside (never deleted) so that the run can write that step again. Checkpoints are
read through orbax's public API only: all_steps, item metadata, restore.
"""

import dataclasses
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from diffusion_jax.config.errors import ConfigError, warn

STATE, ITERATOR, META = "state", "iterator", "meta"
UNREADABLE_DIR = "checkpoints_unreadable"  # Beside checkpoints/: what could not be read.


def checkpoint_dir(workdir: str) -> epath.Path:
  path = epath.Path(workdir)  # orbax needs an absolute path (gs://... is one).
  return (path if path.is_absolute() else path.absolute()) / "checkpoints"


# Replicated arrays are written by all their replicas together (each a part) only where a
# part is at least this large. Below it, cutting the parts costs one eager compile per
# array shape on the first save (52 compiles, 2.5 s, for the tiny test U-Net on 2
# devices) and saves no write time.
MIN_REPLICA_PARALLEL_BYTES = 1 << 20


def state_handler() -> ocp.PyTreeCheckpointHandler:
  """The train state's handler: orbax's standard one (the same files), with the
  replica-parallel threshold above."""
  scalar, arrays = ocp.type_handlers.ScalarHandler(), ocp.type_handlers.ArrayHandler(
      min_slice_bytes_for_replica_parallel=MIN_REPLICA_PARALLEL_BYTES)
  registry = ocp.type_handlers.create_type_handler_registry(
      (int, scalar), (float, scalar), (np.number, scalar),
      (np.ndarray, ocp.type_handlers.NumpyHandler()), (jax.Array, arrays))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def save_state(state) -> ocp.args.PyTreeSave:
  return ocp.args.PyTreeSave(state)


def restore_state(abstract_state) -> ocp.args.PyTreeRestore:
  """Restores into the shapes, dtypes and shardings of `abstract_state`."""
  return ocp.args.PyTreeRestore(
      abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))


def _handlers() -> dict:
  return {STATE: state_handler(), ITERATOR: ocp.JsonCheckpointHandler(),
          META: ocp.JsonCheckpointHandler()}


def make_manager(workdir: str, keep: int, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """The run's manager: `keep` newest checkpoints; read_only creates and deletes
  nothing (sampling, evaluation)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=(STATE, ITERATOR, META), item_handlers=_handlers())


def reader(workdir: str) -> ocp.CheckpointManager | None:
  """A read-only manager of the workdir's checkpoints; None if it has none."""
  if not checkpoint_dir(workdir).is_dir():
    return None
  return make_manager(workdir, keep=1, async_save=False, read_only=True)


def latest_step(workdir: str) -> int | None:
  """The newest committed checkpoint step (not read back), or None."""
  manager = reader(workdir)
  if manager is None:
    return None
  try:
    return manager.latest_step()
  finally:
    manager.close()


def _one_line(e: BaseException) -> str:
  return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def _probe(manager: ocp.CheckpointManager, step: int, with_iterator: bool
           ) -> tuple[dict | None, str | None]:
  """(its metadata, None) if checkpoint `step` looks whole from its metadata alone (the
  arrays' manifest and metadata, the input position, the model's metadata), else
  (None, why not)."""
  try:
    if manager.item_metadata(step)[STATE] is None:
      return None, "no array metadata"
    items = {META: ocp.args.JsonRestore()}
    if with_iterator:
      items[ITERATOR] = ocp.args.JsonRestore()
    return manager.restore(step, args=ocp.args.Composite(**items))[META], None
  except Exception as e:  # Whatever orbax or the filesystem raise: the step is unusable.
    return None, _one_line(e)


@dataclasses.dataclass(frozen=True)
class Found:
  """A workdir's checkpoints: the usable ones (newest first), the newer ones that could
  not be read, and the newest usable one's metadata."""
  usable: tuple[int, ...] = ()
  skipped: tuple[tuple[int, str], ...] = ()  # (step, why)
  meta: dict | None = None

  @property
  def latest(self) -> int | None:
    return self.usable[0] if self.usable else None


def find(workdir: str, with_iterator: bool) -> Found:
  """The newest checkpoint that reads back, warning about each newer one that does
  not. Reads only metadata (cheap); `restore` falls back further if the arrays fail."""
  manager = reader(workdir)
  if manager is None:
    return Found()
  steps = sorted(manager.all_steps(), reverse=True)
  skipped = []
  try:
    for i, step in enumerate(steps):
      meta, why = _probe(manager, step, with_iterator)
      if why is None:
        return Found(tuple(steps[i:]), tuple(skipped), meta)
      older = steps[i + 1] if i + 1 < len(steps) else None
      warn(f"checkpoint {checkpoint_dir(workdir) / str(step)} cannot be read ({why}); "
           + (f"falling back to step {older}" if older is not None else "none is older"))
      skipped.append((step, why))
  finally:
    manager.close()
  return Found((), tuple(skipped))


def set_aside(workdir: str, step: int) -> epath.Path:
  """Moves an unreadable checkpoint out of orbax's directory (process 0 only), so that
  the run can save that step again; nothing is deleted. Returns where it went."""
  dest_dir = epath.Path(workdir) / UNREADABLE_DIR
  dest_dir.mkdir(parents=True, exist_ok=True)
  dest, k = dest_dir / str(step), 0
  while dest.exists():
    k += 1
    dest = dest_dir / f"{step}-{k}"
  (checkpoint_dir(workdir) / str(step)).rename(dest)
  return dest


def save(manager: ocp.CheckpointManager, step: int, state, iterator_state: dict,
         meta: dict) -> None:
  """Starts saving (every process); returns once the arrays are off the devices.
  The input position and metadata are JSON, written once (by process 0)."""
  manager.save(step, args=ocp.args.Composite(**{
      STATE: save_state(state),
      ITERATOR: ocp.args.JsonSave(iterator_state),
      META: ocp.args.JsonSave(meta)}), force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state,
            with_iterator: bool = False) -> tuple[Any, dict | None]:
  """(state in the shardings of `abstract_state`, the input position or None). The
  checkpoint may come from any number of processes and devices."""
  items = {STATE: restore_state(abstract_state)}
  if with_iterator:
    items[ITERATOR] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored[STATE], (restored[ITERATOR] if with_iterator else None)


def refuse_tf_data_iterators(workdir: str) -> None:
  """ConfigError if the newest checkpoint holds one tf.data iterator per process (written
  before the input position was JSON): it cannot be resumed."""
  where = checkpoint_dir(workdir)
  steps = [int(p.name) for p in where.iterdir() if p.name.isdigit()] if where.is_dir() else []
  if steps and (where / str(max(steps)) / ITERATOR / "process_0").is_dir():
    raise ConfigError(
        f"checkpoint {max(steps)} in {str(where)!r} holds a tf.data iterator (written before "
        "the input pipeline read by index) and cannot be resumed; sample or evaluate it, "
        "or train in a new workdir")
