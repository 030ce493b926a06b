"""The best checkpoint by an evaluation metric: DIR/checkpoints_best/<step>/, beside the
latest checkpoints (DIR/checkpoints/), which it never touches.

It holds the train state and the checkpoint metadata (the model's config), plus the
metric's name and value under "best"; only the best step is kept. A resumed run reads
the value back, so it keeps improving on the same best.
"""

import json

import orbax.checkpoint as ocp
from etils import epath

from diffusion_jax.training import checkpoint

BEST_DIR = "checkpoints_best"


def best_dir(workdir: str) -> epath.Path:
  path = epath.Path(workdir)  # orbax needs an absolute path (gs://... is one).
  return (path if path.is_absolute() else path.absolute()) / BEST_DIR


def read_best(workdir: str) -> dict | None:
  """{"step", "metric", "value"} of the kept best checkpoint, or None."""
  d = best_dir(workdir)
  if not d.is_dir():
    return None
  steps = sorted((int(p.name) for p in d.iterdir() if p.name.isdigit()
                  and (p / "meta" / "metadata").exists()), reverse=True)
  for step in steps:
    best = json.loads((d / str(step) / "meta" / "metadata").read_text()).get("best")
    if best is not None:
      return best
  return None


class BestCheckpoint:
  """Saves the state when `metric` improves (lower or higher is better)."""

  def __init__(self, workdir: str, metric: str, lower_is_better: bool, meta: dict):
    self.workdir, self.metric, self.lower = workdir, metric, lower_is_better
    self.meta = meta
    self.best = read_best(workdir)
    if self.best is not None and self.best.get("metric") != metric:
      self.best = None  # Another metric's best: the new metric starts afresh.

  def improves(self, value: float) -> bool:
    if self.best is None:
      return True
    old = self.best["value"]
    return value < old if self.lower else value > old

  def update(self, step: int, state, scalars: dict) -> bool:
    """Saves `state` as the best if scalars[metric] improves on the kept value."""
    value = float(scalars[self.metric])
    if not self.improves(value):
      return False
    best = {"step": int(step), "metric": self.metric, "value": value}
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                           enable_async_checkpointing=False)
    manager = ocp.CheckpointManager(best_dir(self.workdir), options=options,
                                    item_names=("state", "meta"),
                                    item_handlers={"state": checkpoint.state_handler(),
                                                   "meta": ocp.JsonCheckpointHandler()})
    manager.save(step, args=ocp.args.Composite(
        state=checkpoint.save_state(state), meta=ocp.args.JsonSave({**self.meta, "best": best})),
        force=True)
    manager.wait_until_finished()
    manager.close()
    self.best = best
    return True
