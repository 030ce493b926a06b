"""Command line: python -m diffusion_jax.main --config=configs/digits.py --workdir=DIR.

  --mode=train   train (resuming from DIR's latest checkpoint), then sample;
  --mode=sample  write a sample set from DIR's latest checkpoint (EMA params), for
                 the conditions given by --labels, --prompt/--prompts_file, --cond
                 or --cascade_from (else taken from the dataset's sample.cond_split),
                 autoguided by --guide_from=WORKDIR[:STEP] if given;
  --mode=eval    the metrics of config.eval (bits/dim of a split, sample metrics) of
                 DIR's latest checkpoint.
Config fields are overridden with --config.<field>=<value> (unknown fields are errors).
Sampling and evaluation use the config the run was trained with (DIR's saved config);
--config is then optional, and only the fields of SAMPLING_FIELDS may be overridden.

Several processes (a TPU pod slice, a GPU cluster, local processes) run the same
command, one per host: where JAX detects the cluster (Cloud TPU VMs, SLURM, Open MPI)
nothing more is needed; elsewhere each process gets --coordinator_address=HOST:PORT,
--num_processes=N and its --process_id=I (docs/pods.md).

Every bad input stops with one `error: ...` line per problem and exit status 2, before
anything is compiled or written (on every process); a run that diverges exits with
status 1; SIGTERM saves a checkpoint, prints `preempted at step N` and exits with 0.
"""

import sys

from diffusion_jax.run import tf_setup

tf_setup.configure()

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffusion_jax.config import files  # noqa: E402
from diffusion_jax.config.errors import ConfigError  # noqa: E402

SAMPLE_FLAGS = ("labels", "prompt", "prompts_file", "cond", "cascade_from", "guide_from")
# The modes each of those flags applies to (--mode=sample only unless named here).
FLAG_MODES = {"guide_from": ("sample", "eval")}


class _Exit(Exception):
  def __init__(self, code: int):
    self.code = code


def _fail(*problems: str, code: int = 2) -> None:
  for p in problems:
    print(f"error: {p}", file=sys.stderr, flush=True)
  raise _Exit(code)


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).replace("\\'", "'").replace("\\n", " ").split())


def _flag_value(argv: list[str], name: str) -> str | None:
  """The value of --name=V or --name V in argv, before the flags are parsed."""
  for i, a in enumerate(argv):
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
    if a == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _no_config(mode: str, workdir: str) -> str:
  return ("--config is required, e.g. --config=configs/digits.py"
          + ("" if mode == "train" else f" (or a --workdir holding a run; {workdir!r} holds "
             "no saved config)"))


def _define_flags(fv: flags.FlagValues, argv: list[str]) -> str | None:
  """Defines the flags on `fv`. --config is a config file or, when sampling or
  evaluating without --config, the run's saved config: returns that file's path."""
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.",
                      flag_values=fv)
  flags.DEFINE_string("mode", "train", "train | sample | eval", flag_values=fv)
  flags.DEFINE_list("labels", None, "--mode=sample: class labels to sample, e.g. 0,0,7.",
                    flag_values=fv)
  flags.DEFINE_multi_string("prompt", None, "--mode=sample: a text prompt (repeatable).",
                            flag_values=fv)
  flags.DEFINE_string("prompts_file", None, "--mode=sample: a text file of prompts, one per "
                      "line.", flag_values=fv)
  flags.DEFINE_string("cond", None, "--mode=sample: conditioning images: an .npz (keys "
                      "lowres | gray | masked + mask, uint8) or a directory of PNGs.",
                      flag_values=fv)
  flags.DEFINE_string("cascade_from", None, "--mode=sample with a super-resolution model: "
                      "the base model's workdir, whose samples are upsampled.", flag_values=fv)
  flags.DEFINE_string("guide_from", None, "--mode=sample: WORKDIR[:STEP] of a weaker model "
                      "of the same task (fewer parameters or steps) that autoguides this one "
                      "(sample.autoguidance_scale); STEP: its checkpoint (default: latest).",
                      flag_values=fv)
  flags.DEFINE_string("coordinator_address", None, "Several processes, where JAX does not "
                      "detect the cluster: HOST:PORT of process 0 (the same on every process).",
                      flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Several processes: how many.", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "Several processes: this one's index, 0..N-1.",
                       flag_values=fv)
  flags.DEFINE_integer("initialization_timeout", 300, "Several processes: seconds to wait "
                       "for all of them to start and connect.", flag_values=fv)
  workdir, mode = _flag_value(argv, "workdir"), _flag_value(argv, "mode") or "train"
  if _flag_value(argv, "config") is None and mode != "train" and workdir:
    try:
      saved = files.load_saved(workdir)
    except ConfigError as e:
      _fail(*e.problems)
    if saved is not None:
      config_flags.DEFINE_config_dict("config", saved, "The run's saved config.",
                                      flag_values=fv, lock_config=True, sys_argv=argv)
      return files.saved_config_paths(workdir)[-1]
    if any(a.startswith("--config.") for a in argv):  # Else absl: "unknown flag".
      _fail(_no_config(mode, workdir))
  config_flags.DEFINE_config_file("config", None, "Config file.", flag_values=fv,
                                  lock_config=True, sys_argv=argv)
  return None


def _parse(fv: flags.FlagValues, argv: list[str]) -> None:
  try:
    files.parse_flags(fv, argv)
  except ConfigError as e:
    _fail(*e.problems)


def _check_overrides(argv: list[str], mode: str, saved: str) -> None:
  """With the run's saved config, only what sampling reads may be overridden."""
  from diffusion_jax.run.workdir import SAMPLING_FIELDS
  fields = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  bad = [f for f in fields if not any(f == s or f.startswith(s + ".") for s in SAMPLING_FIELDS)]
  if bad:
    _fail(f"--config.{', --config.'.join(bad)}: --mode={mode} uses the run's saved config "
          f"({saved}); only {', '.join(SAMPLING_FIELDS)} may be overridden")


def _check_given_config(config, workdir: str) -> None:
  """--config given for sampling: it must describe the model the run trained."""
  from diffusion_jax.run import workdir as workdir_lib
  saved = files.load_saved(workdir)
  if saved is None:
    return
  diff = workdir_lib.changed(saved, config, workdir_lib.MEANING)
  if diff:
    raise ConfigError(f"--config differs from the run's saved config "
                      f"({files.saved_config_paths(workdir)[-1]}) in {', '.join(diff)}: "
                      "sampling and evaluation use what the run was trained with; "
                      "drop --config to use it")


def _run_train(fv, given, run_id):
  from diffusion_jax.run import train
  train.train_and_evaluate(fv.config, fv.workdir, run_id=run_id)


def _run_sample(fv, given, run_id):
  from diffusion_jax.run import sample
  sample.sample_from_workdir(fv.config, fv.workdir, given, cascade_from=fv.cascade_from,
                             guide_from=fv.guide_from)


def _run_eval(fv, given, run_id):
  from diffusion_jax.run import evaluate
  evaluate.evaluate(fv.config, fv.workdir, guide_from=fv.guide_from)


MODES = {"train": _run_train, "sample": _run_sample, "eval": _run_eval}


def _sample_inputs(fv):
  import numpy as np
  from diffusion_jax.sampling import inputs
  labels = None
  if fv.labels is not None:
    try:
      labels = np.asarray([int(v) for v in fv.labels], np.int32)
    except ValueError:
      raise ConfigError(f"--labels must be integers, got {','.join(fv.labels)}") from None
  prompts = fv.prompt
  if fv.prompts_file is not None:
    prompts = inputs.read_prompts(fv.prompts_file)
  return inputs.Given(labels=labels, prompts=prompts, cond_path=fv.cond)


def _main(argv: list[str]) -> None:
  fv = flags.FlagValues()
  saved = _define_flags(fv, argv)
  if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
    print(__doc__ + "\n" + fv.get_help())
    raise _Exit(0)
  _parse(fv, argv)
  mode, workdir, config = fv.mode, fv.workdir, fv.config
  if mode not in MODES:
    _fail(f"unknown --mode={mode!r}; known: {sorted(MODES)}")
  if not workdir:
    _fail("--workdir is required")
  if config is None:
    _fail(_no_config(mode, workdir))
  misplaced = [k for k in SAMPLE_FLAGS
               if fv[k].value is not None and mode not in FLAG_MODES.get(k, ("sample",))]
  if misplaced:
    _fail(*(f"--{k} applies to --mode={' and --mode='.join(FLAG_MODES.get(k, ('sample',)))} "
            "only" for k in misplaced))
  if fv.prompt is not None and fv.prompts_file is not None:
    _fail("give prompts with --prompt or --prompts_file, not both")
  if saved:
    _check_overrides(argv, mode, saved)

  # Imported only now: a bad flag fails fast, before JAX starts.
  from diffusion_jax.training import distributed, loop
  try:
    launch = distributed.Launch.from_flags(fv.coordinator_address, fv.num_processes,
                                           fv.process_id, fv.initialization_timeout)
    distributed.initialize(launch)  # Before anything touches devices.
    run_id = distributed.agree_on_run(
        config.to_json_best_effort(sort_keys=True) + f"\n{workdir}\n{mode}")
  except ConfigError as e:
    _fail(*e.problems)
  try:
    given = distributed.checked(_sample_inputs, fv) if mode == "sample" else None
    if mode != "train" and not saved:
      distributed.checked(_check_given_config, config, workdir)
    # Every mode checks config, data and workdir before compiling or writing anything.
    MODES[mode](fv, given, run_id)
  except ConfigError as e:
    _fail(*e.problems)
  except loop.Preempted as e:  # Saved at a step every process agreed on: resume later.
    print(str(e), flush=True)
  except FloatingPointError as e:  # Diverged: the last good checkpoint is kept.
    _fail(str(e), code=1)


def run(argv: list[str]) -> int:
  """Runs the command line `argv` (argv[0] is the program); returns the exit status."""
  try:
    _main(list(argv))
  except _Exit as e:
    return e.code
  return 0


def main() -> None:
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    logging.set_verbosity(logging.WARNING)  # orbax logs every file op at INFO.
  sys.exit(run(sys.argv))


if __name__ == "__main__":
  main()
