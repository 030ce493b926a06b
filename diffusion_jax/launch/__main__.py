"""python -m diffusion_jax.launch COMMAND ...: start a run on every worker of a TPU VM
(`tpu-vm`), write and submit a SLURM batch script (`slurm`), or check before paying
for a pod that the train step compiles and fits a TPU topology (`check`).

Each command's options come first; the diffusion_jax.main flags of the run follow
`--`. Every bad input is one `error: ...` line and exit status 2.
"""

import importlib
import os
import sys

from diffusion_jax.config.errors import ConfigError

COMMANDS = {"tpu-vm": "tpu_vm", "slurm": "slurm", "check": "check"}  # name -> module


def run(argv: list[str]) -> int:
  """Runs `python -m diffusion_jax.launch ARGV[1:]`; returns the exit status."""
  if len(argv) < 2 or argv[1] in ("-h", "--help"):
    print(__doc__ + f"\ncommands: {', '.join(COMMANDS)}")
    return 0 if len(argv) >= 2 else 2
  name = argv[1]
  if name not in COMMANDS:
    print(f"error: unknown command {name!r}; known: {sorted(COMMANDS)}", file=sys.stderr)
    return 2
  if name == "check":  # Compiles for a TPU it does not have: JAX's own devices are CPUs.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  module = importlib.import_module(f"diffusion_jax.launch.{COMMANDS[name]}")
  try:
    return module.main(argv[2:])
  except ConfigError as e:
    for p in e.problems:
      print(f"error: {p}", file=sys.stderr, flush=True)
    return 2


if __name__ == "__main__":
  sys.exit(run(sys.argv))
