"""Metrics to TensorBoard event files and a progress line on stdout (process 0 only)."""

import itertools
import os
import socket
import sys
import time

import jax
import numpy as np
from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

_FILE_NUMBERS = itertools.count()


def _fmt_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class EventFile:
  """One TensorBoard event file of scalars, as `tf.summary.scalar` writes them, written
  with tensorboard's protos: importing TensorFlow would cost every run ~5 s of start-up."""

  def __init__(self, logdir: str):
    name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}."
            f"{next(_FILE_NUMBERS)}.v2")
    self._file = (epath.Path(logdir) / name).open("wb")
    self._records = RecordWriter(self._file)
    self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
    self._metadata = scalar_metadata.create_summary_metadata(display_name="", description="")

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())

  def scalars(self, step: int, scalars: dict[str, float]) -> None:
    values = [summary_pb2.Summary.Value(
        tag=k, metadata=self._metadata,
        tensor=tensor_util.make_tensor_proto(np.float32(v))) for k, v in scalars.items()]
    self._write(event_pb2.Event(wall_time=time.time(), step=step,
                                summary=summary_pb2.Summary(value=values)))
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class MetricWriter:
  """Scalars to TensorBoard and a progress line (process 0), and to `listeners`
  (callables (step, scalars), e.g. a sweep's reporter) on every process."""

  def __init__(self, logdir: str, total_steps: int, listeners=()):
    self.total_steps = total_steps
    self.listeners = list(listeners)
    self.primary = jax.process_index() == 0
    self._tb = None
    if self.primary:
      epath.Path(logdir).mkdir(parents=True, exist_ok=True)
      self._tb = EventFile(logdir)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    for listener in self.listeners:
      listener(step, dict(scalars))
    if not self.primary:
      return
    self._tb.scalars(step, scalars)
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
