"""Command line: python -m diffusion_jax.sweep --config=configs/X.py[:variant] --workdir=DIR
    [--engine=local|ray] [--parallel=N] [--config.FIELD=VALUE ...]

Runs the sweep that the config file declares (`get_sweep`, docs/sweeps.md): each trial
is an ordinary training run in DIR/trials/<id>/. Re-running the same command skips
finished trials and resumes the others; DIR/results.md, .csv, .json and .png
are rewritten as trials finish. `--report` prints DIR's table without running anything.
--config.FIELD=VALUE overrides apply to every trial (a swept field takes the trial's).

Every bad input (an unknown field, a value of the wrong type, a metric the run does not
report, an empty grid, an unreachable Ray cluster, a DIR holding another sweep) stops
with one `error: ...` line and exit status 2, before anything is started or written.
Exit status 1: every trial failed.
"""

import dataclasses
import os
import sys
from typing import Callable

from diffusion_jax.run import tf_setup

tf_setup.configure()

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffusion_jax.config import files  # noqa: E402
from diffusion_jax.config.errors import ConfigError  # noqa: E402


class _Exit(Exception):
  def __init__(self, code: int):
    self.code = code


def _fail(*problems: str, code: int = 2) -> None:
  for p in problems:
    print(f"error: {p}", file=sys.stderr, flush=True)
  raise _Exit(code)


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).replace("\\'", "'").replace("\\n", " ").split())


@dataclasses.dataclass(frozen=True)
class Engine:
  check: Callable  # (flags) -> None: raises ConfigError before anything is written.
  run: Callable  # (study, workdir, flags, argv) -> exit status.


def _local_check(fv) -> None:
  if fv.ray_address:
    raise ConfigError("--ray_address applies to --engine=ray only")


def _local_run(study, workdir, fv, argv) -> int:
  from diffusion_jax.sweep import local
  opts = local.Options(parallel=fv.parallel, stale_after=fv.stale_after,
                       retry_failed=fv.retry_failed)
  return local.run(study, workdir, opts, argv, child=fv.child)


def _ray_check(fv) -> None:
  from diffusion_jax.sweep import ray_engine
  if fv.retry_failed:
    raise ConfigError("--retry_failed applies to --engine=local (Tune restores a study "
                      "as it was)")
  ray_engine.check(fv.ray_address)


def _ray_run(study, workdir, fv, argv) -> int:
  from diffusion_jax.sweep import ray_engine
  return ray_engine.run(study, workdir, address=fv.ray_address, parallel=fv.parallel,
                        resources=fv.ray_resources)


# Engines by name (--engine).
ENGINES: dict[str, Engine] = {"local": Engine(_local_check, _local_run),
                              "ray": Engine(_ray_check, _ray_run)}


def _define_flags(fv: flags.FlagValues, argv: list[str]) -> None:
  flags.DEFINE_string("workdir", None, "The sweep's directory.", flag_values=fv)
  flags.DEFINE_string("engine", "local", f"One of {sorted(ENGINES)}.", flag_values=fv)
  flags.DEFINE_integer("parallel", 1, "Trials run at once (local: runner processes; ray: "
                       "Tune's max_concurrent_trials, 0 = as the cluster allows).",
                       flag_values=fv)
  flags.DEFINE_bool("report", False, "Print DIR's results table; run nothing.", flag_values=fv)
  flags.DEFINE_string("ray_address", "", "--engine=ray: 'auto' or HOST:PORT of a running "
                      "cluster; '' starts Ray on this machine.", flag_values=fv)
  flags.DEFINE_string("ray_resources", "cpu=1", "--engine=ray: resources of one trial, e.g. "
                      "cpu=8,gpu=1 or cpu=100,TPU=4 (one TPU VM host).", flag_values=fv)
  flags.DEFINE_bool("retry_failed", False, "Run failed trials again.", flag_values=fv)
  flags.DEFINE_float("stale_after", 120.0, "Seconds after which another machine's claim "
                     "whose heartbeat stopped is taken over.", flag_values=fv)
  flags.DEFINE_bool("child", False, "Internal: a runner started by --parallel.",
                    flag_values=fv)
  config_flags.DEFINE_config_file("config", None, "Config file declaring get_sweep.",
                                  flag_values=fv, lock_config=True, sys_argv=argv)


def _parse(fv: flags.FlagValues, argv: list[str]) -> None:
  try:
    files.parse_flags(fv, argv)
  except ConfigError as e:
    _fail(*e.problems)


def _config_arg(argv: list[str]) -> str | None:
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _main(argv: list[str]) -> int:
  fv = flags.FlagValues()
  _define_flags(fv, argv)
  if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
    print(__doc__ + "\n" + fv.get_help())
    return 0
  _parse(fv, argv)
  if not fv.workdir:
    _fail("--workdir is required")
  workdir = os.path.abspath(fv.workdir)
  from diffusion_jax.sweep import results
  if fv.report:
    try:
      print(results.markdown(workdir), end="")
    except ConfigError as e:
      _fail(*e.problems)
    return 0
  if fv.engine not in ENGINES:
    _fail(f"unknown --engine={fv.engine!r}; known: {sorted(ENGINES)}")
  if fv.config is None:
    _fail("--config is required, e.g. --config=configs/digits.py (a config file with "
          "get_sweep)")
  if fv.parallel < (0 if fv.engine == "ray" else 1):
    _fail(f"--parallel={fv.parallel} must be >= 1" + (" (0: as the cluster allows)"
                                                       if fv.engine == "ray" else ""))
  if fv.stale_after <= 0:
    _fail(f"--stale_after={fv.stale_after} must be > 0 seconds")
  engine = ENGINES[fv.engine]
  from diffusion_jax.sweep import local, plan
  try:
    engine.check(fv)
    import jax
    study = plan.make(_config_arg(argv), fv.config, jax.device_count())
    local.check_dir(study, workdir, fv.engine)
    # The trials share DIR's compilation cache (set once DIR is known to be this
    # sweep's: the checks above compile too).
    local.use_compile_cache(workdir)
    if not fv.child:
      local.prepare(study, workdir, fv.engine)
    # The runners --parallel starts are this command, less --parallel.
    child_argv, skip = [], False
    for a in argv[1:]:
      if not skip and not a.startswith(("--parallel", "--child", "--noretry_failed",
                                        "--retry_failed")):
        child_argv.append(a)
      skip = a == "--parallel" and not skip  # Its value is the next word.
    return engine.run(study, workdir, fv, child_argv)
  except ConfigError as e:
    _fail(*e.problems)
  return 0


def run(argv: list[str]) -> int:
  """Runs the command line `argv` (argv[0] is the program); returns the exit status."""
  try:
    return _main(list(argv))
  except _Exit as e:
    return e.code
  except KeyboardInterrupt:
    print("interrupted: re-run the same command to resume", file=sys.stderr, flush=True)
    return 130


def main() -> None:
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # orbax logs every file op at INFO.
  sys.exit(run(sys.argv))


__all__ = ["ENGINES", "Engine", "main", "run"]
