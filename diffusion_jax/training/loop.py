"""The training loop: step, log, check for divergence, checkpoint."""

import dataclasses
import time
from typing import Callable, Iterator, Sequence

import jax
import numpy as np

from diffusion_jax.config.errors import finite, require
from diffusion_jax.training.state import TrainState
from diffusion_jax.training.writer import MetricWriter, Timer


# Called after every step with (step, state); returns scalars to log at that step, or
# None. Periodic evaluation is a hook: it decides itself when to run.
Hook = Callable[[int, TrainState], dict | None]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The loop's fields of the `training` section (the dropout rates are conditioning's)."""
  batch_size: int  # Global batch, split over all devices of all processes.
  num_steps: int
  ema_decay: float
  log_every: int
  checkpoint_every: int
  keep_checkpoints: int
  sample_at_end: bool

  @classmethod
  def from_config(cls, training_cfg) -> "TrainConfig":
    t = cls(**{f.name: training_cfg[f.name] for f in dataclasses.fields(cls)})
    require(t.batch_size > 0, f"training.batch_size={t.batch_size} must be > 0")
    require(t.num_steps > 0, f"training.num_steps={t.num_steps} must be > 0")
    finite("training.ema_decay", t.ema_decay, 0, 1, high_open=True)
    require(t.log_every > 0 and t.checkpoint_every > 0 and t.keep_checkpoints > 0,
            "training.log_every, checkpoint_every and keep_checkpoints must be > 0")
    return t


def train(state: TrainState, step_fn: Callable, batches: Iterator[dict], cfg: TrainConfig,
          writer: MetricWriter, save: Callable[[int, TrainState], None],
          extra_scalars: Callable[[int], dict] = lambda step: {},
          hooks: Sequence[Hook] = ()) -> TrainState:
  """Runs step_fn from state.step to cfg.num_steps; `hooks` run after every step.

  Metrics are fetched from the device only when logged. They are checked before every
  checkpoint, so a non-finite state is never saved: a non-finite metric raises
  FloatingPointError, keeping the last good checkpoint.
  """
  step = int(state.step)
  t_start = time.perf_counter()
  pending, timer = [], None
  while step < cfg.num_steps:
    state, metrics = step_fn(state, next(batches))
    step += 1
    if timer is None:  # Rates exclude the first step, which compiles.
      jax.block_until_ready(metrics)
      writer.log(f"first step (with compilation) took {time.perf_counter() - t_start:.1f}s")
      timer = Timer(step)
    pending.append(metrics)
    is_checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.num_steps
    if step % cfg.log_every == 0 or is_checkpoint:
      host = jax.device_get(pending)
      pending = []
      scalars = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
      if not all(np.isfinite(v) for v in scalars.values()):
        raise FloatingPointError(f"non-finite metrics at step {step}: {scalars}")
      rate = timer.rate(step)
      scalars.update(extra_scalars(step), steps_per_s=rate, images_per_s=rate * cfg.batch_size)
      writer.write(step, scalars)
    for hook in hooks:
      out = hook(step, state)
      if out:
        writer.write(step, out)
    if is_checkpoint:
      save(step, state)
  return state
