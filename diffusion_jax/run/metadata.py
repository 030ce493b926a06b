"""What a run ran on: appended to WORKDIR/run_info.jsonl, one JSON line per invocation
(train, eval), never overwritten.

Each line: the mode, the start step, the resolved config's file (config.json or a
config_resumed_at_step_<N>.json beside it), the seed, package versions, the device
kind and counts, the process count, the CPU model, and the git commit of the source
(with a flag for uncommitted changes) when it is a git checkout.
"""

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import jax
from etils import epath

from diffusion_jax.config import files

RUN_INFO = "run_info.jsonl"
PACKAGES = ("diffusion_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
            "ml-collections", "numpy", "scipy", "tensorflow-cpu", "tensorflow",
            "tensorflow-datasets")
SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def package_versions() -> dict[str, str]:
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def git_commit(path: str = SOURCE) -> dict | None:
  """{"commit", "dirty"} of the git checkout holding `path`, or None."""
  try:
    commit = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True,
                            text=True, timeout=120)
    if commit.returncode != 0:
      return None
    status = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=120)
  except (OSError, subprocess.SubprocessError):
    return None
  return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def hardware() -> dict:
  devices = jax.devices()
  return {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
          "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
          "process_count": jax.process_count(), "cpu": cpu_model(),
          "cpu_count": os.cpu_count()}


def run_info(mode: str, step: int | None, seed: int, config_file: str = "") -> dict:
  return {"mode": mode, "start_step": step, "seed": seed, "config_file": config_file,
          "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "argv": sys.argv, "python": platform.python_version(),
          "packages": package_versions(), **hardware(), "git": git_commit()}


def record(workdir: str, spec, mode: str, step: int | None) -> dict:
  """Appends this invocation's run_info line to the workdir (process 0)."""
  saved = files.saved_config_paths(workdir)
  info = run_info(mode, step, spec.seed, epath.Path(saved[-1]).name if saved else "")
  if jax.process_index() == 0:
    with (epath.Path(workdir) / RUN_INFO).open("a") as f:
      f.write(json.dumps(info) + "\n")
  return info
