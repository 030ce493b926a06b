"""Process start-up of a multi-process run (a TPU pod slice, a GPU cluster, local
processes): JAX's distributed runtime, started before anything touches devices, and
the processes' agreement on the launch, the config, a run id and every error.

One program runs per host. Where JAX detects the cluster (Cloud TPU VMs, SLURM, Open
MPI) nothing needs to be given; elsewhere every process gets the same
--coordinator_address=HOST:PORT (process 0's host and a free port) and
--num_processes=N, and its own --process_id=I. With explicit flags the processes
first meet at the coordinator's port and compare them, so that a mismatch or a
missing peer is one error line on every process instead of JAX's abort; every wait is
bounded by the initialization timeout.
"""

import dataclasses
import hashlib
import json
import os
import secrets
import socket
import sys
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from diffusion_jax.config.errors import ConfigError, require

# JAX's own connection timeout is set this much later than ours, so that a process
# that cannot connect stops with our error line, not JAX's abort.
_JAX_TIMEOUT_MARGIN_S = 30
_MESSAGE_BYTES = 4096  # Longest error text exchanged between processes.


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process was started: explicit flags, or None for JAX's detection."""
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  timeout_s: int = 300  # Bound on every wait for the other processes.

  @classmethod
  def from_flags(cls, coordinator_address: str | None, num_processes: int | None,
                 process_id: int | None, timeout_s: int) -> "Launch":
    given = [coordinator_address is not None, num_processes is not None,
             process_id is not None]
    require(all(given) or not any(given),
            "give --coordinator_address, --num_processes and --process_id together "
            "(or none of them, where JAX detects the cluster: Cloud TPU, SLURM, Open MPI)")
    require(timeout_s > 0, f"--initialization_timeout={timeout_s} must be > 0 seconds")
    launch = cls(coordinator_address, num_processes, process_id, timeout_s)
    if any(given):
      host, port = launch.host_port()
      require(bool(host) and 0 < port < 65536,
              f"--coordinator_address={coordinator_address!r} must be HOST:PORT")
      require(num_processes > 0, f"--num_processes={num_processes} must be > 0")
      require(0 <= process_id < num_processes,
              f"--process_id={process_id} must be in [0, {num_processes - 1}] "
              f"(--num_processes={num_processes})")
    return launch

  def host_port(self) -> tuple[str, int]:
    host, _, port = (self.coordinator_address or "").rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else -1


def initialize(launch: Launch) -> None:
  """Starts JAX's distributed runtime if this is one process of several.

  Explicit flags: the processes meet at the coordinator first (`rendezvous`), then
  connect JAX's runtime. No flags: JAX's cluster detection; where it finds none,
  this is a single-process run and nothing happens. Raises ConfigError on a bad
  launch (on every process that is running); a process that cannot connect within
  the timeout prints one error line and exits with status 1.
  """
  if jax.distributed.is_initialized():
    return
  if launch.coordinator_address is None:
    with _watchdog(launch.timeout_s, "JAX's cluster detection found a cluster, but its "
                   "processes did not all connect"):
      try:
        jax.distributed.initialize(
            initialization_timeout=launch.timeout_s + _JAX_TIMEOUT_MARGIN_S)
      except ValueError as e:
        if "coordinator_address" not in str(e):  # Anything but "no cluster found".
          raise ConfigError(f"JAX's cluster detection: {e}") from None
      except RuntimeError as e:
        # JAX already runs in this process (a caller of main.run that used devices):
        # it is one process, and stays one.
        if "must be called before" not in str(e):
          raise
    return
  if launch.num_processes == 1:
    return
  rendezvous(launch)
  with _watchdog(launch.timeout_s, f"the {launch.num_processes} processes did not all "
                 f"connect to JAX's runtime at {launch.coordinator_address}"):
    jax.distributed.initialize(
        launch.coordinator_address, launch.num_processes, launch.process_id,
        initialization_timeout=launch.timeout_s + _JAX_TIMEOUT_MARGIN_S)


class _watchdog:
  """Stops the process with one error line if the block has not ended in time:
  JAX's runtime aborts with a stack trace where it times out itself."""

  def __init__(self, timeout_s: float, what: str):
    self.timeout_s, self.what = timeout_s, what

  def _fire(self):
    print(f"error: {self.what} within {self.timeout_s}s (--initialization_timeout)",
          file=sys.stderr, flush=True)
    os._exit(1)

  def __enter__(self):
    self.timer = threading.Timer(self.timeout_s, self._fire)
    self.timer.daemon = True
    self.timer.start()

  def __exit__(self, *exc):
    self.timer.cancel()


# --- The rendezvous: the processes compare their launch flags at process 0.

def _send(conn: socket.socket, message: dict) -> None:
  try:
    conn.sendall((json.dumps(message) + "\n").encode())
  except OSError:
    pass  # That process is gone; the others still get the answer.


def _read_line(conn: socket.socket, deadline: float) -> dict | None:
  data = b""
  while not data.endswith(b"\n"):
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      return None
    conn.settimeout(remaining)
    try:
      chunk = conn.recv(4096)
    except (socket.timeout, OSError):
      return None
    if not chunk:
      return None
    data += chunk
  try:
    return json.loads(data)
  except ValueError:
    return None


def _listen(port: int) -> socket.socket:
  try:
    if socket.has_dualstack_ipv6():
      return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
    return socket.create_server(("", port))
  except OSError as e:
    raise ConfigError(f"process 0 cannot listen on port {port} of --coordinator_address: "
                      f"{e.strerror or e}; choose a free port") from None


def _coordinate(launch: Launch, deadline: float) -> None:
  """Process 0: waits for every other process's flags, then answers them all."""
  n, addr = launch.num_processes, launch.coordinator_address
  server = _listen(launch.host_port()[1])
  peers: dict[int, socket.socket] = {}
  error = None
  try:
    while len(peers) < n - 1 and error is None:
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        missing = sorted(set(range(1, n)) - set(peers))
        error = (f"process{'es' if len(missing) > 1 else ''} "
                 f"{', '.join(map(str, missing))} of --num_processes={n} did not reach "
                 f"the coordinator {addr} within {launch.timeout_s}s "
                 "(--initialization_timeout): start every process with the same "
                 f"--coordinator_address and --num_processes={n}")
        break
      server.settimeout(remaining)
      try:
        conn, _ = server.accept()
      except (socket.timeout, OSError):
        continue
      hello = _read_line(conn, min(deadline, time.monotonic() + 10))
      if not isinstance(hello, dict) or "process_id" not in hello:
        conn.close()  # Not one of ours.
        continue
      pid, their_n = hello["process_id"], hello["num_processes"]
      if their_n != n:
        error = (f"--num_processes differs between processes: process 0 has {n}, "
                 f"process {pid} has {their_n}")
      elif pid in peers or pid == 0:
        error = f"two processes were started with --process_id={pid}"
      peers.setdefault(pid, conn)
      if error is not None and peers[pid] is not conn:
        _send(conn, {"error": error})
        conn.close()
  finally:
    server.close()
  for conn in peers.values():
    _send(conn, {"error": error} if error else {"ok": True})
  for conn in peers.values():
    conn.close()
  if error:
    raise ConfigError(error)


def _join(launch: Launch, deadline: float) -> None:
  """Process I > 0: reports its flags to process 0 and waits for the answer."""
  host, port = launch.host_port()
  addr = launch.coordinator_address
  conn = None
  while conn is None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      raise ConfigError(f"cannot reach the coordinator {addr} (process 0) within "
                        f"{launch.timeout_s}s (--initialization_timeout): start process "
                        f"0 with the same --coordinator_address, or check the address")
    try:
      conn = socket.create_connection((host, port), timeout=min(remaining, 2.0))
    except OSError:
      time.sleep(min(0.25, max(remaining, 0)))
  with conn:
    _send(conn, {"num_processes": launch.num_processes, "process_id": launch.process_id})
    # Process 0 may have started later: it reports a missing peer a little after us.
    answer = _read_line(conn, deadline + 5)
  if answer is None:
    raise ConfigError(f"the coordinator {addr} did not answer within "
                      f"{launch.timeout_s}s (--initialization_timeout): not every process "
                      "of the run started, or process 0 stopped")
  if "error" in answer:
    raise ConfigError(answer["error"])


def rendezvous(launch: Launch) -> None:
  """The processes compare --num_processes and --process_id at process 0 before
  JAX's runtime starts: a mismatch, a missing process or an unreachable coordinator
  raises ConfigError (the same one on every process that is running)."""
  deadline = time.monotonic() + launch.timeout_s
  if launch.process_id == 0:
    _coordinate(launch, deadline)
  else:
    _join(launch, deadline)


# --- Agreement once JAX's runtime is up (collectives over every process's devices).

def _encode(text: str) -> np.ndarray:
  raw = text.encode()[:_MESSAGE_BYTES]
  return np.frombuffer(raw.ljust(_MESSAGE_BYTES, b"\0"), np.uint8)


def _decode(row: np.ndarray) -> str:
  return bytes(np.asarray(row, np.uint8)).rstrip(b"\0").decode(errors="replace")


def gather_text(text: str) -> list[str]:
  """Every process's `text`, in process order (a collective: all must call it)."""
  if jax.process_count() == 1:
    return [text]
  rows = multihost_utils.process_allgather(_encode(text))
  return [_decode(r) for r in np.asarray(rows).reshape(jax.process_count(), -1)]


def agree(error: ConfigError | None) -> None:
  """Raises on every process if any process has an error (a collective: all must call
  it at the same point). Each line names the process where processes differ."""
  texts = gather_text("\n".join(error.problems) if error else "")
  if not any(texts):
    return
  if len(set(texts)) == 1:
    raise ConfigError(*texts[0].splitlines())
  raise ConfigError(*[f"process {i}: {line}" for i, t in enumerate(texts)
                      for line in t.splitlines()])


def checked(fn, *args, primary_first: bool = False, **kwargs):
  """fn(*args, **kwargs), its ConfigError raised on every process if any process
  raised one. `primary_first`: process 0 runs it before the others (it may write
  what they then read, e.g. prepare a bundled dataset)."""
  def attempt(run: bool):
    try:
      return (fn(*args, **kwargs) if run else None), None
    except ConfigError as e:
      return None, e

  if primary_first and jax.process_count() > 1:
    result, error = attempt(is_primary())
    agree(error)
    if is_primary():
      agree(None)
      return result
  result, error = attempt(True)
  agree(error)
  return result


def agree_on_run(config_text: str) -> str:
  """Checks that every process runs the same config (a hash of `config_text`,
  compared across processes) and returns the run id that process 0 chose."""
  digest = hashlib.sha256(config_text.encode()).hexdigest()
  digests = gather_text(digest)
  differ = [i for i, d in enumerate(digests) if d != digests[0]]
  if differ:
    raise ConfigError(f"process{'es' if len(differ) > 1 else ''} "
                      f"{', '.join(map(str, differ))} "
                      f"{'were' if len(differ) > 1 else 'was'} started with another config, "
                      "--workdir or --mode than process 0: start every process with the "
                      "same command")
  run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
  if jax.process_count() > 1:
    run_id = _decode(multihost_utils.broadcast_one_to_all(_encode(run_id)))
  return run_id


def is_primary() -> bool:
  """Process 0: the one that writes logs, TensorBoard, samples and tables."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Every process waits here for the others."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
