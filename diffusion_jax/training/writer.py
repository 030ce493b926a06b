"""Metrics to TensorBoard event files and a progress line on stdout (process 0 only)."""

import sys
import time

import jax
from etils import epath


def _fmt_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class MetricWriter:
  """Scalars to TensorBoard and a progress line (process 0), and to `listeners`
  (callables (step, scalars), e.g. a sweep's reporter) on every process."""

  def __init__(self, logdir: str, total_steps: int, listeners=()):
    self.total_steps = total_steps
    self.listeners = list(listeners)
    self.primary = jax.process_index() == 0
    self._tb = None
    if self.primary:
      import tensorflow as tf  # Lazy: only the writer needs it here.
      epath.Path(logdir).mkdir(parents=True, exist_ok=True)
      self._tf = tf
      self._tb = tf.summary.create_file_writer(logdir)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    for listener in self.listeners:
      listener(step, dict(scalars))
    if not self.primary:
      return
    with self._tb.as_default():
      for k, v in scalars.items():
        self._tf.summary.scalar(k, v, step=step)
    self._tb.flush()
    rate = scalars.get("steps_per_s", 0.0)
    eta = (self.total_steps - step) / rate if rate > 0 else 0.0
    parts = [f"step {step}/{self.total_steps}"]
    parts += [f"{k} {v:.4g}" for k, v in scalars.items()
              if k not in ("steps_per_s", "images_per_s")
              and not (k.startswith("skipped") and v == 0)]  # Shown once there are any.
    if rate:
      parts += [f"{rate:.2f} steps/s", f"{scalars.get('images_per_s', 0):.0f} img/s",
                f"ETA {_fmt_duration(eta)}"]
    print(" | ".join(parts), flush=True)

  def log(self, msg: str) -> None:
    if self.primary:
      print(msg, file=sys.stdout, flush=True)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class Timer:
  """Wall-clock rate between logs."""

  def __init__(self, steps_done: int = 0):
    self.t, self.steps = time.perf_counter(), steps_done

  def rate(self, steps_done: int) -> float:
    now = time.perf_counter()
    r = (steps_done - self.steps) / max(now - self.t, 1e-9)
    self.t, self.steps = now, steps_done
    return r
