"""The workdir lock of a training run: WORKDIR/lock/holder.json names the run that
writes the workdir (host, process id, start time, run id), so that a second run
started on it is refused instead of both writing checkpoints.

The lock directory is created with an exclusive mkdir (atomic on local and network
filesystems; on object stores such as gs:// a race between two runs starting in the
same second is not excluded). A holder whose process is gone on this host, or, on
another host, whose heartbeat is older than training.lock_stale_minutes, is taken over
with a warning. Process 0 holds the lock for the whole run and refreshes it.
"""

import dataclasses
import json
import os
import socket
import time

from etils import epath

from diffusion_jax.config.errors import ConfigError, warn

LOCK_DIR = "lock"
HOLDER = "holder.json"
REFRESH_S = 60.0  # Heartbeat period.


def _proc_start(pid: int) -> str | None:
  """The start time of process `pid` (Linux, in clock ticks since boot), to tell a
  live holder from a new process that reuses its id; None where unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:  # Not a run path: the local process table.
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive_here(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # Exists, owned by another user.
  now = _proc_start(pid)
  return start is None or now is None or now == start


@dataclasses.dataclass(frozen=True)
class Holder:
  host: str
  pid: int
  started: float  # Unix time.
  heartbeat: float  # Unix time of the last refresh.
  run_id: str
  proc_start: str | None = None

  def describe(self) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
    return f"run {self.run_id}, pid {self.pid} on host {self.host}, started {when}"

  def alive(self, stale_s: float) -> bool:
    if self.host == socket.gethostname():
      return _alive_here(self.pid, self.proc_start)
    return time.time() - self.heartbeat < stale_s


def _read(path: epath.Path) -> Holder | None:
  try:
    return Holder(**json.loads(path.read_text()))
  except (OSError, ValueError, TypeError):
    return None  # Missing or half-written: an interrupted start.


class Lock:
  """The held lock: `refresh` (a loop hook) keeps it live; `release` removes it."""

  def __init__(self, workdir: str, holder: Holder):
    self.dir = epath.Path(workdir) / LOCK_DIR
    self.holder = holder
    self._last = time.monotonic()

  def _write(self) -> None:
    tmp = self.dir / f".{HOLDER}.{self.holder.pid}"
    tmp.write_text(json.dumps(dataclasses.asdict(self.holder)))
    tmp.replace(self.dir / HOLDER)

  def refresh(self, step=None, state=None) -> None:
    """Updates the heartbeat at most every REFRESH_S (a training.loop.Hook)."""
    if time.monotonic() - self._last >= REFRESH_S:
      self._last = time.monotonic()
      self.holder = dataclasses.replace(self.holder, heartbeat=time.time())
      self._write()

  def release(self) -> None:
    """Removes the lock if this run still holds it."""
    current = _read(self.dir / HOLDER)
    if current is not None and (current.host, current.pid) != (self.holder.host,
                                                               self.holder.pid):
      return
    (self.dir / HOLDER).unlink(missing_ok=True)
    try:
      self.dir.rmdir()
    except OSError:
      pass  # Something else was put there: leave it.


def acquire(workdir: str, run_id: str, stale_minutes: float) -> Lock:
  """Takes the workdir's lock for this run, or raises ConfigError naming the live
  holder. A holder that is gone is taken over with a warning."""
  now = time.time()
  me = Holder(host=socket.gethostname(), pid=os.getpid(), started=now, heartbeat=now,
              run_id=run_id, proc_start=_proc_start(os.getpid()))
  lock = Lock(workdir, me)
  try:
    lock.dir.mkdir(parents=True, exist_ok=False)
  except FileExistsError:
    other = _read(lock.dir / HOLDER)
    if other is not None and other.alive(stale_minutes * 60):
      raise ConfigError(f"workdir {workdir!r} is in use by another run ({other.describe()}); "
                        "wait for it to finish or stop it, or use another --workdir") from None
    gone = (f"of {other.describe()}, which is no longer running" if other is not None
            else "left by an interrupted start")
    warn(f"taking over the workdir lock {lock.dir / HOLDER} {gone}")
  lock._write()
  if _read(lock.dir / HOLDER) != me:
    raise ConfigError(f"workdir {workdir!r}: another run took its lock at the same time; "
                      "use another --workdir")
  return lock
