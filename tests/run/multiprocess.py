"""Several local processes of one `python -m diffusion_jax.main` command, as on a pod:
each with its own simulated CPU devices (JAX_NUM_CPU_DEVICES), a free port per run,
and every child killed when the test ends, whatever happens."""

import os
import signal
import socket
import subprocess
import sys
import time
from typing import NamedTuple

from tests.conftest import ROOT, fmt, tiny_overrides


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def tiny_flags(workdir: str, **overrides) -> list[str]:
  """The digits config with the tiny U-Net, a global batch of 8 and no sampling."""
  over = {**tiny_overrides(), "training.batch_size": 8, "training.sample_at_end": False,
          "sample.batch_size": 8, "sample.num_samples": 8,
          "training.log_every": 1, "optim.warmup_steps": 1, "optim.lr_schedule": "constant",
          **overrides}
  return [f"--config={os.path.join(ROOT, 'configs', 'digits.py')}", f"--workdir={workdir}",
          *[f"--config.{k}={fmt(v)}" for k, v in over.items()]]


class Exit(NamedTuple):
  returncode: int
  stdout: str
  stderr: str
  seconds: float


class Processes:
  """`with Processes(argv, n, devices, logdir) as p:` starts n processes of
  diffusion_jax.main (process flags added, unless `explicit=False`); `p.wait()`
  returns their exits. Leaving the block kills any still running."""

  def __init__(self, argv: list[str], num_processes: int, devices: int, logdir: str,
               explicit: bool = True, timeout_s: int = 60, ids=None, env=None,
               extra: dict | None = None):
    self.argv, self.n, self.devices, self.logdir = argv, num_processes, devices, logdir
    self.extra = extra or {}  # slot -> flags added last (absl keeps a flag's last value).
    self.explicit, self.timeout_s = explicit, timeout_s
    self.ids = list(range(num_processes)) if ids is None else ids
    self.extra_env = env or {}
    self.procs: list[subprocess.Popen] = []
    self.port = free_port()

  def _env(self, i: int) -> dict:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1",
               JAX_NUM_CPU_DEVICES=str(self.devices), PYTHONPATH=ROOT)
    env.update({k: v.format(i=i, port=self.port) for k, v in self.extra_env.items()})
    return env

  def log(self, i: int, stream: str = "stdout") -> str:
    path = os.path.join(self.logdir, f"{self.tag}.{i}.{stream}")
    return open(path).read() if os.path.exists(path) else ""

  def __enter__(self) -> "Processes":
    os.makedirs(self.logdir, exist_ok=True)
    self.tag = f"run{self.port}"
    self.t0 = time.monotonic()
    for slot, i in enumerate(self.ids):
      flags = list(self.argv)
      if self.explicit:
        flags += [f"--coordinator_address=localhost:{self.port}",
                  f"--num_processes={self.n}", f"--process_id={i}",
                  f"--initialization_timeout={self.timeout_s}"]
      flags += self.extra.get(slot, [])
      out = open(os.path.join(self.logdir, f"{self.tag}.{slot}.stdout"), "w")
      err = open(os.path.join(self.logdir, f"{self.tag}.{slot}.stderr"), "w")
      self.procs.append(subprocess.Popen(
          [sys.executable, "-m", "diffusion_jax.main", *flags], stdout=out, stderr=err,
          cwd=ROOT, env=self._env(i), start_new_session=True))
    return self

  def wait_for(self, slot: int, text: str, timeout_s: float = 900) -> None:
    """Waits until process `slot` has printed `text` (or has exited)."""
    deadline = time.monotonic() + timeout_s
    while text not in self.log(slot) and self.procs[slot].poll() is None:
      assert time.monotonic() < deadline, f"no {text!r} from process {slot}"
      time.sleep(0.1)

  def signal(self, slot: int, sig: int) -> None:
    self.procs[slot].send_signal(sig)

  def wait(self, timeout_s: float = 1800) -> list[Exit]:
    deadline = time.monotonic() + timeout_s
    exits = []
    for slot, p in enumerate(self.procs):
      try:
        p.wait(max(deadline - time.monotonic(), 1))
      except subprocess.TimeoutExpired:
        self.kill()
        raise AssertionError(f"process {slot} still running after {timeout_s}s:\n"
                             f"{self.log(slot, 'stderr')[-3000:]}") from None
      exits.append(Exit(p.returncode, self.log(slot), self.log(slot, "stderr"),
                        time.monotonic() - self.t0))
    return exits

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()

  def __exit__(self, *exc) -> None:
    self.kill()


def run(argv, num_processes: int, devices: int, logdir: str, **kwargs) -> list[Exit]:
  """Runs the processes to the end; their exits, in process order."""
  with Processes(argv, num_processes, devices, logdir, **kwargs) as p:
    return p.wait()


def errors(exit: Exit) -> list[str]:
  return [line for line in exit.stderr.splitlines() if line.startswith("error:")]
