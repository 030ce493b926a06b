"""The Ray engine: the sweep as a Ray Tune study, on an existing Ray cluster
(`--ray_address=auto|HOST:PORT`) or a Ray started on this machine (no address).

The grid becomes a Tune grid search (over the grid's points, which may be zipped or
listed rather than a product); the search space becomes Tune's distributions, searched
by Optuna's TPE (OptunaSearch) when there is no grid, or sampled at random for each
grid point when there is one (Optuna cannot take grid axes); early stopping is Tune's
ASHA scheduler, on the metric as the run reports it, with the training step as time.
Each trial runs the project's training function in its Ray worker, with its workdir
in DIR/trials/<Tune trial id>/, and reports the metric (and the latest checkpoint) to
Tune at each report; the driver records each trial in DIR as the local engine does
(sweep.records), so the results and `--report` are the same. Re-running the command
restores the interrupted study (Tuner.restore): finished trials are kept, unfinished
ones resume from their last checkpoint.

Ray is optional (`pip install -e '.[sweep]'`); this module imports it only when used.
"""

import dataclasses
import os
import shutil
import socket
import time
from typing import Callable

from diffusion_jax.config import files
from diffusion_jax.config.errors import ConfigError, require
from diffusion_jax.sweep import plan, records, results, space
from diffusion_jax.sweep.plan import Study

# Environment variables a trial needs as the driver has them (Ray workers on other
# machines do not inherit the driver's environment).
FORWARDED_ENV = ("TFDS_DATA_DIR", "JAX_PLATFORMS", "JAX_COMPILATION_CACHE_DIR",
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                 "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL",
                 "TF_USE_LEGACY_KERAS", "PYTHONPATH")


def _installed() -> None:
  try:
    import optuna  # noqa: F401
    import ray  # noqa: F401
    from ray import tune  # noqa: F401
  except ImportError as e:
    raise ConfigError(f"--engine=ray needs ray[tune] and optuna ({e}): "
                      "pip install -e '.[sweep]'") from None


def _auto_address() -> str | None:
  """The address `ray.init(address="auto")` would use: $RAY_ADDRESS, else the cluster
  started on this machine by `ray start`."""
  if os.environ.get("RAY_ADDRESS"):
    return os.environ["RAY_ADDRESS"]
  try:
    with open("/tmp/ray/ray_current_cluster") as f:
      return f.read().strip() or None
  except OSError:
    return None


def check(address: str) -> None:
  """Ray is installed and the cluster answers, before anything is written."""
  _installed()
  if not address:
    return
  where = address
  if address == "auto":
    found = _auto_address()
    require(found is not None, "--ray_address=auto: no Ray cluster runs on this machine "
            "($RAY_ADDRESS is unset and `ray start --head` has not been run)")
    where = found
  host, _, port = where.removeprefix("ray://").rpartition(":")
  require(bool(host) and port.isdigit(), f"--ray_address={address!r}: expected HOST:PORT or auto")
  try:
    socket.create_connection((host, int(port)), timeout=5).close()
  except OSError as e:
    raise ConfigError(f"--ray_address={address!r}: cannot reach a Ray cluster at "
                      f"{host}:{port} ({e.strerror or e})") from None


def _label(point: dict) -> str:
  return ",".join(f"{k}={v!r}" for k, v in point.items()) or "base"


def _plain(v):
  return v.item() if hasattr(v, "item") else v


@dataclasses.dataclass(frozen=True)
class Context:
  """What each Tune trial needs (sent to the workers)."""
  config: str
  base_overrides: dict
  grid: dict  # label -> overrides
  search_fields: tuple
  metric: str
  workdir: str
  train_fn: Callable | None  # (config, workdir, listeners=[...]); None: the project's.


def overrides_of(ctx: Context, params: dict) -> dict:
  out = dict(ctx.grid[params["grid"]]) if "grid" in params else {}
  out.update({k: _plain(params[k]) for k in ctx.search_fields})
  return out


def _tune_checkpoint(tdir: str, step: int):
  """The run's checkpoint of `step` as a Tune checkpoint: a staging folder that holds
  it under its step (hard links where the filesystem allows, else copies)."""
  from ray import tune
  stage = os.path.join(tdir, "tune_checkpoint")
  shutil.rmtree(stage, ignore_errors=True)
  src = os.path.join(tdir, "checkpoints", str(step))

  def link(s, d):
    try:
      os.link(s, d)
    except OSError:
      shutil.copy2(s, d)
  shutil.copytree(src, os.path.join(stage, str(step)), copy_function=link)
  return tune.Checkpoint.from_directory(stage)


def _restore_tune_checkpoint(tdir: str) -> None:
  """A trial that moved to a machine without its workdir resumes from Tune's copy."""
  from ray import tune

  from diffusion_jax.training import checkpoint
  ckpt = tune.get_checkpoint()
  if ckpt is None or checkpoint.latest_step(tdir) is not None:
    return
  with ckpt.as_directory() as d:
    for step in os.listdir(d):
      if step.isdigit():
        shutil.copytree(os.path.join(d, step), os.path.join(tdir, "checkpoints", step),
                        dirs_exist_ok=True)


def trainable(params: dict, ctx: Context) -> None:
  """One Tune trial: the project's training run, reporting to Tune."""
  import contextlib

  from ray import tune

  from diffusion_jax.training import checkpoint
  tid = tune.get_context().get_trial_id()
  tdir = records.trial_dir(ctx.workdir, tid)
  os.makedirs(tdir, exist_ok=True)
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    import jax
    jax.config.update("jax_compilation_cache_dir", os.path.join(ctx.workdir, "compile_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  _restore_tune_checkpoint(tdir)
  overrides = overrides_of(ctx, params)
  config = plan.apply(plan.apply(files.load(ctx.config), ctx.base_overrides), overrides)
  reported = {"checkpoint": None}

  def report(step: int, scalars: dict) -> None:
    if ctx.metric not in scalars:
      return
    latest = checkpoint.latest_step(tdir)
    ckpt = None
    if latest is not None and latest != reported["checkpoint"]:
      ckpt, reported["checkpoint"] = _tune_checkpoint(tdir, latest), latest
    tune.report({"step": step, **scalars}, checkpoint=ckpt)

  train_fn = ctx.train_fn
  if train_fn is None:
    from diffusion_jax.run.train import train_and_evaluate as train_fn
  with open(os.path.join(tdir, "log.txt"), "a") as log, contextlib.redirect_stdout(log):
    train_fn(config, tdir, listeners=[report])


def _error_reason(trial) -> str:
  text = ""
  try:
    text = trial.get_error() or ""
  except Exception:  # The error file may not be readable from here.
    pass
  lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
  for ln in reversed(lines):
    if ln.startswith("FloatingPointError"):
      return "diverged: " + ln.split(":", 1)[1].strip()
  for ln in reversed(lines):
    if "Error" in ln.split(":", 1)[0]:
      return "crashed: " + ln[:300]
  return "crashed: " + (lines[-1][:300] if lines else "unknown error (see Ray's trial logs)")


try:  # Ray is optional: without it this module still imports (and the engine says why).
  from ray.tune import Callback as _TuneCallback
except ImportError:
  _TuneCallback = object


class Recorder(_TuneCallback):
  """A Tune callback on the driver: records each trial in DIR (sweep.records), prints
  one line per trial event with the running count, and rewrites the results. Tune
  saves it with the study, so a restored study keeps recording."""

  def __init__(self, study: Study, workdir: str, ctx: Context, total: int):
    self.study, self.workdir, self.ctx, self.total = study, workdir, ctx, total
    self.t0: dict[str, float] = {}

  def _tdir(self, trial) -> str:
    tdir = records.trial_dir(self.workdir, trial.trial_id)
    os.makedirs(tdir, exist_ok=True)
    return tdir

  def _line(self, trials, msg: str) -> None:
    c = {"done": 0, "stopped": 0, "failed": 0}
    running = 0
    for tid in records.trial_ids(self.workdir):
      r = records.result(records.trial_dir(self.workdir, tid))
      if r:
        c[r["status"]] += 1
      else:
        running += 1
    left = max(self.total - sum(c.values()) - running, 0)
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg} | {c['done']} done, {running} running, "
          f"{c['failed']} failed, {c['stopped']} stopped, {left} left", flush=True)

  def on_trial_start(self, iteration, trials, trial, **info):
    tdir = self._tdir(trial)
    over = overrides_of(self.ctx, trial.config)
    t = plan.Trial(trial.trial_id, over)
    records.write_json(os.path.join(tdir, "trial.json"), {
        "id": t.id, "overrides": over, "command": self.study.command(t, tdir)})
    records.add_attempt_event(tdir, "start", owner="ray")
    self.t0[trial.trial_id] = time.time()
    self._line(trials, f"{trial.trial_id} started ({_label(over)})")

  def on_trial_result(self, iteration, trials, trial, result, **info):
    keep = {k: v for k, v in result.items() if k == "step" or k == self.ctx.metric
            or k in ("loss", "grad_norm", "lr") or k.startswith("eval/")}
    records.append_jsonl(os.path.join(self._tdir(trial), "metrics.jsonl"), keep)

  def _end(self, trials, trial, status: str, reason: str) -> None:
    tdir = self._tdir(trial)
    wall = time.time() - self.t0.pop(trial.trial_id, time.time())
    records.add_attempt_event(tdir, "end", owner="ray", status=status, wall_s=wall)
    total = sum(a.get("wall_s", 0.0) for a in records.attempts(tdir))
    records.write_result(tdir, status, reason, wall_s=total)
    results.write(self.workdir)
    h = records.history(tdir, self.ctx.metric)
    what = reason or (f"{self.ctx.metric} {list(h.values())[-1]:.4g} at step {list(h)[-1]}"
                      if h else "no report")
    self._line(trials, f"{trial.trial_id} {status}: {what}")

  def on_trial_complete(self, iteration, trials, trial, **info):
    over = overrides_of(self.ctx, trial.config)
    steps = self.study.config_of(over).training.num_steps
    last = (trial.last_result or {}).get("step", 0)
    if last >= steps:
      self._end(trials, trial, "done", "")
    else:
      self._end(trials, trial, "stopped", f"early stopping (ASHA) at step {last}")

  def on_trial_error(self, iteration, trials, trial, **info):
    self._end(trials, trial, "failed", _error_reason(trial))


def _resources(spec: str) -> dict:
  """'cpu=1,gpu=0,TPU=4' -> a Tune bundle {"CPU": 1, "GPU": 0, "TPU": 4}."""
  out = {}
  for part in filter(None, spec.split(",")):
    k, sep, v = part.partition("=")
    try:
      out[{"cpu": "CPU", "gpu": "GPU"}.get(k.strip(), k.strip())] = float(v)
    except ValueError:
      raise ConfigError(f"--ray_resources={spec!r}: expected NAME=NUMBER,... e.g. cpu=1,gpu=1") \
          from None
    require(bool(sep), f"--ray_resources={spec!r}: expected NAME=NUMBER,...")
  return out


def _param_space(sweep: space.Sweep) -> dict:
  from ray import tune
  to_tune = {space.Uniform: lambda d: tune.uniform(d.low, d.high),
             space.LogUniform: lambda d: tune.loguniform(d.low, d.high),
             space.RandInt: lambda d: tune.randint(d.low, d.high),
             space.Choice: lambda d: tune.choice(list(d.values))}
  params = {f: to_tune[type(d)](d) for f, d in sweep.search.items()}
  if sweep.grid is not None:
    params["grid"] = tune.grid_search([_label(p) for p in sweep.grid])
  return params


def run(study: Study, workdir: str, address: str = "", parallel: int = 0,
        resources: str = "cpu=1", train_fn: Callable | None = None) -> int:
  """Runs (or resumes) the study with Ray Tune; 0 when it finished with at least one
  trial done or stopped, 1 when every trial failed."""
  import ray
  from ray import tune
  from ray.tune.schedulers import ASHAScheduler
  from ray.tune.search.optuna import OptunaSearch

  workdir = os.path.abspath(workdir)
  sweep = study.sweep
  # Tune's own progress tables are off (verbose=0 below is honoured by its older
  # reporter only): the sweep prints one line per trial event instead.
  os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
  bundle = _resources(resources)
  env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
  ray.init(address=address or None, runtime_env={"env_vars": env} if env else None,
           include_dashboard=False, log_to_driver=False, configure_logging=False)
  try:
    ctx = Context(config=study.config, base_overrides=study.base_overrides,
                  grid={_label(p): p for p in (sweep.grid or [])},
                  search_fields=tuple(sweep.search), metric=sweep.metric, workdir=workdir,
                  train_fn=train_fn)
    fn = tune.with_resources(tune.with_parameters(trainable, ctx=ctx),
                             tune.PlacementGroupFactory([bundle]))
    total = (len(sweep.grid) if sweep.grid is not None else 1) * sweep.num_trials
    recorder = Recorder(study, workdir, ctx, total)
    path = os.path.join(workdir, "ray", "tune")
    if tune.Tuner.can_restore(path):
      print(f"[sweep {time.strftime('%H:%M:%S')}] resuming the Tune study in {path}", flush=True)
      tuner = tune.Tuner.restore(path, trainable=fn, resume_unfinished=True,
                                 resume_errored=False)
    else:
      search_alg = None
      if sweep.search and sweep.grid is None:
        search_alg = OptunaSearch(seed=sweep.seed)
      scheduler = None
      if sweep.early_stopping is not None:
        es = sweep.early_stopping
        scheduler = ASHAScheduler(time_attr="step", max_t=study.max_steps,
                                  grace_period=es.grace_steps,
                                  reduction_factor=es.reduction_factor)
      tuner = tune.Tuner(
          fn, param_space=_param_space(sweep),
          tune_config=tune.TuneConfig(
              metric=sweep.metric, mode=sweep.mode, search_alg=search_alg,
              scheduler=scheduler, num_samples=sweep.num_trials,
              max_concurrent_trials=parallel or None, reuse_actors=True),
          run_config=tune.RunConfig(
              name="tune", storage_path=os.path.join(workdir, "ray"), verbose=0,
              failure_config=tune.FailureConfig(max_failures=0), callbacks=[recorder],
              checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    print(f"[sweep {time.strftime('%H:%M:%S')}] Tune study of {total} trials in {workdir} "
          f"({study.config}), {sweep.metric} ({sweep.mode}), on Ray at "
          f"{ray.get_runtime_context().gcs_address}", flush=True)
    tuner.fit()
  finally:
    ray.shutdown()
  rows = results.write(workdir)
  print(results.markdown(workdir, rows), flush=True)
  return 0 if any(r.status in ("done", "stopped") for r in rows) else 1


__all__ = ["Context", "FORWARDED_ENV", "Recorder", "check", "overrides_of", "run", "trainable"]
