"""Launching on a pod or cluster: `python -m diffusion_jax.launch {tpu-vm,slurm,check}`.

Each command takes its own options, then `--`, then the diffusion_jax.main flags of the
run, which every worker runs unchanged.
"""

import argparse
import shlex
import subprocess
import sys

from diffusion_jax.config.errors import ConfigError


class Parser(argparse.ArgumentParser):
  """argparse whose errors are ConfigErrors (one `error: ...` line, exit status 2)."""

  def error(self, message):
    raise ConfigError(f"{self.prog}: {message}")


def split_run_flags(argv: list[str]) -> tuple[list[str], list[str]]:
  """(the command's own arguments, the main flags after `--`)."""
  if "--" not in argv:
    return argv, []
  i = argv.index("--")
  return argv[:i], argv[i + 1:]


PROCESS_FLAGS = ("--coordinator_address", "--num_processes", "--process_id")


def check_run_flags(prog: str, run_flags: list[str], example: str, finder: str) -> None:
  """The run's flags are given, and without process flags: `finder` finds the processes."""
  if not run_flags:
    raise ConfigError(f"{prog}: give the run's flags after `--`, e.g. -- {example}")
  given = [f for f in PROCESS_FLAGS if any(a.startswith(f) for a in run_flags)]
  if given:
    raise ConfigError(f"{prog}: {', '.join(given)}: {finder}; drop these flags")


def main_command(flags: list[str], python: str = "python3") -> str:
  """The shell command that runs diffusion_jax.main with `flags`."""
  return shlex.join([python, "-m", "diffusion_jax.main", *flags])


def run_commands(commands: list[list[str]], dry_run: bool) -> int:
  """Prints each command; runs them in order unless dry_run (stops at the first that
  fails, with its exit status)."""
  for cmd in commands:
    print(shlex.join(cmd), flush=True)
    if dry_run:
      continue
    try:
      code = subprocess.run(cmd).returncode
    except FileNotFoundError:
      raise ConfigError(f"{cmd[0]!r} is not installed (not on PATH)") from None
    if code:
      print(f"error: `{shlex.join(cmd[:4])} ...` exited with status {code}", file=sys.stderr,
            flush=True)
      return code
  return 0
