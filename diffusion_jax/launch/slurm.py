"""`python -m diffusion_jax.launch slurm --nodes=N [--gpus_per_node=G] [--partition=P]
[--time=HH:MM:SS] [--script=PATH] [--dry_run] -- <main's flags>`: writes an sbatch
script that runs diffusion_jax.main as one task per GPU (N x G processes), and submits
it with `sbatch`. JAX's SLURM detection (SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID,
SLURM_LOCALID, SLURM_STEP_NODELIST) makes each task one process of the run, using its
node's GPU number SLURM_LOCALID; no process flags are given.
"""

import os
import shlex

from diffusion_jax.config.errors import require
from diffusion_jax.launch import (Parser, check_run_flags, main_command, run_commands,
                                  split_run_flags)


def script(nodes: int, gpus_per_node: int, run_flags: list[str], workdir_of_job: str,
           python: str, partition: str | None = None, time: str | None = None,
           job_name: str = "diffusion_jax") -> str:
  """The sbatch script's text."""
  lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --nodes={nodes}",
           f"#SBATCH --ntasks-per-node={gpus_per_node}"]
  if gpus_per_node:
    lines.append(f"#SBATCH --gpus-per-node={gpus_per_node}")
  if partition:
    lines.append(f"#SBATCH --partition={partition}")
  if time:
    lines.append(f"#SBATCH --time={time}")
  lines += ["#SBATCH --output=slurm-%j.out",
            "# One task per GPU: JAX's SLURM detection makes each task one process of the",
            "# run (the coordinator is the first node; the GPU is SLURM_LOCALID).",
            f"cd {shlex.quote(workdir_of_job)}",
            f"srun {main_command(run_flags, python)}", ""]
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  own, run_flags = split_run_flags(argv)
  p = Parser(prog="slurm", description=__doc__)
  p.add_argument("--nodes", type=int, required=True)
  p.add_argument("--gpus_per_node", type=int, default=8)
  p.add_argument("--partition", default=None)
  p.add_argument("--time", default=None, help="Time limit, HH:MM:SS.")
  p.add_argument("--job_name", default="diffusion_jax")
  p.add_argument("--python", default="python3", help="The Python of the job's environment.")
  p.add_argument("--script", default="diffusion_jax.sbatch", help="Where to write the script.")
  p.add_argument("--dry_run", action="store_true", help="Write the script; do not submit.")
  args = p.parse_args(own)
  require(args.nodes > 0, f"slurm: --nodes={args.nodes} must be > 0")
  require(args.gpus_per_node > 0, f"slurm: --gpus_per_node={args.gpus_per_node} must be > 0")
  check_run_flags("slurm", run_flags, "--config=configs/cifar10_ddpm.py "
                  "--workdir=/shared/runs/cifar10", "JAX finds the SLURM tasks itself")
  text = script(args.nodes, args.gpus_per_node, run_flags, os.getcwd(), args.python,
                args.partition, args.time, args.job_name)
  with open(args.script, "w") as f:  # A local file for sbatch, not a run path.
    f.write(text)
  print(f"wrote {args.script}", flush=True)
  return run_commands([["sbatch", args.script]], args.dry_run)
