"""The training loop: step, log, count skipped updates, checkpoint, stop on preemption."""

import dataclasses
import time
from typing import Callable, Iterator, Sequence

import jax
import numpy as np

from diffusion_jax.config.errors import finite, require
from diffusion_jax.training import mesh as mesh_lib
from diffusion_jax.training.state import TrainState
from diffusion_jax.training.writer import MetricWriter, Timer


# Called after every step with (step, state); returns scalars to log at that step, or
# None. Periodic evaluation is a hook: it decides itself when to run.
Hook = Callable[[int, TrainState], dict | None]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The loop's fields of the `training` section (the dropout rates are conditioning's)."""
  batch_size: int  # Global batch, split over all devices of all processes.
  # Gradient accumulation: each device's share of the batch is split into this many
  # microbatches, whose gradients are averaged into one update.
  microbatches: int
  num_steps: int
  ema_decay: float
  log_every: int
  checkpoint_every: int
  keep_checkpoints: int
  sample_at_end: bool
  max_consecutive_skips: int  # Non-finite updates in a row before the run stops.
  async_checkpoints: bool
  compilation_cache_dir: str  # "" = $JAX_COMPILATION_CACHE_DIR or WORKDIR/compilation_cache.
  lock_stale_minutes: float  # A workdir lock of another host, not refreshed for this long, is free.

  @classmethod
  def from_config(cls, training_cfg) -> "TrainConfig":
    t = cls(**{f.name: training_cfg[f.name] for f in dataclasses.fields(cls)})
    require(t.batch_size > 0, f"training.batch_size={t.batch_size} must be > 0")
    require(t.num_steps > 0, f"training.num_steps={t.num_steps} must be > 0")
    require(isinstance(t.microbatches, int) and t.microbatches >= 1,
            f"training.microbatches={t.microbatches!r} must be an integer >= 1")
    finite("training.ema_decay", t.ema_decay, 0, 1, high_open=True)
    require(t.log_every > 0 and t.checkpoint_every > 0 and t.keep_checkpoints > 0,
            "training.log_every, checkpoint_every and keep_checkpoints must be > 0")
    require(t.max_consecutive_skips > 0,
            f"training.max_consecutive_skips={t.max_consecutive_skips} must be > 0")
    finite("training.lock_stale_minutes", t.lock_stale_minutes, 0, low_open=True)
    return t


  def check_devices(self, num_devices: int) -> None:
    """Microbatches split each device's share of the batch evenly."""
    mesh_lib.check_per_device_split(self.microbatches, "training.microbatches",
                                    self.batch_size, num_devices)


class Preempted(Exception):
  """Training stopped at an agreed step (a checkpoint of it is being saved)."""

  def __init__(self, step: int):
    super().__init__(f"preempted at step {step}")
    self.step = step


class Diverged(FloatingPointError):
  """Too many non-finite updates in a row."""


class _Skips:
  """Counts the skipped (non-finite) updates, in total and in a row."""

  def __init__(self, limit: int):
    self.limit, self.total, self.in_a_row = limit, 0, 0

  def add(self, flags: list[float], last_step: int) -> None:
    for i, skipped in enumerate(flags):
      self.in_a_row = self.in_a_row + 1 if skipped else 0
      self.total += bool(skipped)
      if self.in_a_row >= self.limit:
        step = last_step - len(flags) + 1 + i
        raise Diverged(f"{self.in_a_row} non-finite updates in a row, up to step {step} "
                       f"(training.max_consecutive_skips={self.limit}): the run diverged; "
                       "every checkpoint holds the last finite parameters")


def _scalars(host: list[dict]) -> dict[str, float]:
  """Means over the logged steps; loss and gradient norm over the applied ones."""
  applied = [m for m in host if not m["skipped"]]
  out = {}
  for k in host[0]:
    if k == "skipped":
      out[k] = float(sum(m[k] for m in host))
    else:
      out[k] = float(np.mean([m[k] for m in applied])) if applied else float("nan")
  return out


def train(state: TrainState, step_fn: Callable, batches: Iterator[dict], cfg: TrainConfig,
          writer: MetricWriter, save: Callable[[int, TrainState], None],
          extra_scalars: Callable[[int], dict] = lambda step: {},
          hooks: Sequence[Hook] = (),
          preempted: Callable[[int], bool] = lambda step: False,
          started: float | None = None) -> TrainState:
  """Runs step_fn from state.step to cfg.num_steps; `hooks` run after every step.

  Metrics are fetched from the device only when logged (and before every
  checkpoint). Updates with non-finite values are skipped by the step itself (its
  `skipped` metric); cfg.max_consecutive_skips of them in a row raise Diverged when
  the metrics are next fetched. `preempted(step)`, asked after every step, is true at
  a step all processes agree on: the state is saved and Preempted raised. `started`
  (time.perf_counter) is when compiling the step began, where it was compiled before.
  """
  step = int(state.step)
  t_start = time.perf_counter() if started is None else started
  pending, timer = [], None
  skips = _Skips(cfg.max_consecutive_skips)
  while step < cfg.num_steps:
    state, metrics = step_fn(state, next(batches))
    step += 1
    if timer is None:  # Rates exclude the first step, which compiles.
      jax.block_until_ready(metrics)
      writer.log(f"first step (with compilation) took {time.perf_counter() - t_start:.1f}s")
      timer = Timer(step)
    pending.append(metrics)
    stop = preempted(step)
    is_checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.num_steps or stop
    if step % cfg.log_every == 0 or is_checkpoint:
      host = jax.device_get(pending)
      pending = []
      skips.add([m["skipped"] for m in host], step)
      scalars = _scalars(host)
      rate = timer.rate(step)
      scalars.update(extra_scalars(step), skipped_total=float(skips.total),
                     steps_per_s=rate, images_per_s=rate * cfg.batch_size)
      writer.write(step, scalars)
    for hook in hooks:
      out = hook(step, state)
      if out:
        writer.write(step, out)
    if is_checkpoint:
      save(step, state)
    if stop:
      raise Preempted(step)
  return state
