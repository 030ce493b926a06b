"""Claims on trials by atomic lock files, so that runners on one machine or on several
sharing a filesystem work one sweep without ever running a trial twice at once.

A trial's claims are the files claim.0, claim.1, ... in its directory, each created
with O_CREAT | O_EXCL (atomic, also on NFS v3+): of several runners trying to create
the same one, exactly one succeeds. The newest claim holds the trial. Its owner keeps
the file's mtime fresh (a heartbeat thread); a claim is stale, and the next may be
taken, when its owner released it (mtime 0), when its process is gone (same machine:
checked by pid, its start time and the boot id), or when its heartbeat is older than
`stale_after` seconds (another machine). An owner whose claim was superseded (its
heartbeat stalled that long) has lost the trial and must stop it.
"""

import dataclasses
import json
import os
import socket
import threading
import time


def _boot_id() -> str:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return ""


def _start_time(pid: int) -> str:
  """The process's start time (clock ticks since boot), to tell a reused pid apart."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return ""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def owner_record() -> dict:
  """Who this process is, as a claim records it."""
  pid = os.getpid()
  return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid),
          "boot": _boot_id(), "since": time.time()}


def owner_name(owner: dict) -> str:
  return f"{owner.get('host', '?')}:{owner.get('pid', '?')}"


def _claims(trial_dir: str) -> list[int]:
  gens = []
  for name in os.listdir(trial_dir) if os.path.isdir(trial_dir) else ():
    stem, _, gen = name.partition(".")
    if stem == "claim" and gen.isdigit():
      gens.append(int(gen))
  return sorted(gens)


def _path(trial_dir: str, gen: int) -> str:
  return os.path.join(trial_dir, f"claim.{gen}")


def read(trial_dir: str) -> tuple[int, dict, float] | None:
  """The newest claim: (generation, owner record, heartbeat mtime), or None."""
  gens = _claims(trial_dir)
  if not gens:
    return None
  path = _path(trial_dir, gens[-1])
  try:
    mtime = os.stat(path).st_mtime
    with open(path) as f:
      text = f.read()
  except FileNotFoundError:
    return None
  try:
    owner = json.loads(text)
  except ValueError:  # Being written by its creator right now.
    owner = {}
  return gens[-1], owner, mtime


def is_live(claim: tuple[int, dict, float] | None, stale_after: float) -> bool:
  """Whether a claim still holds its trial."""
  if claim is None:
    return False
  _, owner, mtime = claim
  if mtime == 0:  # Released.
    return False
  if owner and owner.get("boot") and owner.get("boot") == _boot_id():
    pid = owner.get("pid")
    return isinstance(pid, int) and _alive(pid) and _start_time(pid) == owner.get("start")
  return time.time() - mtime < stale_after


@dataclasses.dataclass
class Claim:
  """A held claim and its heartbeat."""
  trial_dir: str
  gen: int
  heartbeat_s: float
  lost: threading.Event = dataclasses.field(default_factory=threading.Event)
  _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
  _thread: threading.Thread | None = None

  @property
  def path(self) -> str:
    return _path(self.trial_dir, self.gen)

  def start(self) -> "Claim":
    self._thread = threading.Thread(target=self._beat, daemon=True)
    self._thread.start()
    return self

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      if os.path.exists(_path(self.trial_dir, self.gen + 1)):
        self.lost.set()  # Taken over: this owner's heartbeat stalled too long.
        return
      try:
        os.utime(self.path)
      except OSError:
        pass

  def release(self) -> None:
    """Gives the trial up (at once: others need not wait for the heartbeat to age)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if not self.lost.is_set():
      try:
        os.utime(self.path, (0, 0))
      except OSError:
        pass


def try_claim(trial_dir: str, stale_after: float, heartbeat_s: float) -> Claim | None:
  """Claims the trial if no live claim holds it; None if another runner has it."""
  current = read(trial_dir)
  if is_live(current, stale_after):
    return None
  gen = 0 if current is None else current[0] + 1
  try:
    fd = os.open(_path(trial_dir, gen), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return None
  with os.fdopen(fd, "w") as f:
    json.dump(owner_record(), f)
  return Claim(trial_dir, gen, heartbeat_s).start()


__all__ = ["Claim", "is_live", "owner_name", "owner_record", "read", "try_claim"]
