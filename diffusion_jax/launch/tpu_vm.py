"""`python -m diffusion_jax.launch tpu-vm --name=NAME --zone=ZONE [--project=P]
[--dry_run] -- <main's flags>`: copies this source tree to every worker of a Cloud TPU
VM, installs it with the `tpu` extra, and runs the same diffusion_jax.main command on
all workers at once (`gcloud compute tpus tpu-vm ... --worker=all`). The workers find
each other through JAX's Cloud TPU detection, so no process flags are given.
"""

import os
import tarfile
import tempfile

from diffusion_jax.config.errors import ConfigError, warn
from diffusion_jax.launch import (Parser, check_run_flags, main_command, run_commands,
                                  split_run_flags)

ARCHIVE = "diffusion_jax_src.tar.gz"  # On each worker, in the home directory.
REMOTE_DIR = "diffusion_jax"
SKIP = {".git", ".venv", "runs", "__pycache__", "build", "dist"}


def source_root() -> str:
  """The source tree this package was installed from (editable install)."""
  return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_archive(root: str, dest: str) -> str:
  """The source tree as a .tar.gz, without version control, environments or runs."""
  if not os.path.isfile(os.path.join(root, "pyproject.toml")):
    raise ConfigError(f"--source={root!r} holds no pyproject.toml: not a diffusion_jax "
                      "source tree")

  def keep(info: tarfile.TarInfo):
    parts = info.name.split("/")
    return None if any(p in SKIP or p.endswith(".egg-info") for p in parts) else info

  with tarfile.open(dest, "w:gz") as tar:
    tar.add(root, arcname=".", filter=keep)
  return dest


def commands(name: str, zone: str, project: str | None, archive: str,
             run_flags: list[str]) -> list[list[str]]:
  """The gcloud commands: copy the source, install it, run main on every worker."""
  base = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = [f"--zone={zone}"] + ([f"--project={project}"] if project else [])
  install = (f"mkdir -p {REMOTE_DIR} && tar -xzf {ARCHIVE} -C {REMOTE_DIR} && "
             f"python3 -m pip install -q -e './{REMOTE_DIR}[tpu]'")
  run = f"cd {REMOTE_DIR} && {main_command(run_flags)}"
  return [base + ["scp", archive, f"{name}:{ARCHIVE}", "--worker=all", *where],
          base + ["ssh", name, "--worker=all", *where, f"--command={install}"],
          base + ["ssh", name, "--worker=all", *where, f"--command={run}"]]


def main(argv: list[str]) -> int:
  own, run_flags = split_run_flags(argv)
  p = Parser(prog="tpu-vm", description=__doc__)
  p.add_argument("--name", required=True, help="The TPU VM (`gcloud compute tpus tpu-vm list`).")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default=None)
  p.add_argument("--source", default=source_root(), help="Source tree to copy.")
  p.add_argument("--dry_run", action="store_true", help="Print the commands only.")
  args = p.parse_args(own)
  check_run_flags("tpu-vm", run_flags, "--config=configs/cifar10_ddpm.py "
                  "--workdir=gs://BUCKET/runs/cifar10", "JAX finds the TPU VM's workers itself")
  workdir = next((a.split("=", 1)[1] for a in run_flags if a.startswith("--workdir=")), None)
  if workdir is not None and "://" not in workdir:
    warn(f"--workdir={workdir} is on each worker's own disk: a slice of several hosts "
         "needs storage they all see (gs://...)")
  archive = os.path.join(tempfile.mkdtemp(prefix="diffusion_jax_launch_"), ARCHIVE)
  if not args.dry_run:
    make_archive(args.source, archive)
  return run_commands(commands(args.name, args.zone, args.project, archive, run_flags),
                      args.dry_run)
