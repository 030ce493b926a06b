"""Preemption: SIGTERM to any one process (TPU maintenance, a reclaimed spot VM) stops
training at a step that every process agrees on; the run saves that step and exits
with status 0, and the same command resumes it.

Several processes: JAX's preemption service, started by jax.distributed.initialize,
catches SIGTERM and agrees on the step (multihost_utils.reached_preemption_sync_point,
asked at every step by every process). One process catches SIGTERM itself.
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils


class Watch:
  """`with Watch() as preempted:` ... `preempted(step)` is true at the agreed step."""

  def __init__(self):
    self._signalled = False
    self._previous = None

  def _handler(self, signum, frame):
    self._signalled = True
    if callable(self._previous):  # A caller's own handler (e.g. reproduce) hears it too.
      self._previous(signum, frame)

  def __enter__(self) -> "Watch":
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def __call__(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled
