"""The local engine: runners on one machine, or on several sharing the sweep
directory, claim trials one at a time (sweep.claims) and run each as an ordinary
training run in DIR/trials/<id>/, in their own process.

Re-running the command skips finished trials (result.json) and resumes unfinished
ones from their checkpoints; a trial whose loss becomes non-finite, or that raises, is
recorded as failed with the reason and the runner goes on; early stopping (ASHA) stops
a trial whose metric falls behind at a rung. `--parallel=N` starts N runner processes
(the same command, one trial at a time each); a runner killed hard while holding a
trial is recorded as a failure of that trial by its parent.
"""

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Callable, TextIO

from diffusion_jax.config.errors import ConfigError, require
from diffusion_jax.sweep import claims, records, results
from diffusion_jax.sweep.plan import Study, Trial


@dataclasses.dataclass(frozen=True)
class Options:
  parallel: int = 1
  stale_after: float = 120.0  # Seconds without heartbeat before another machine's claim is stale.
  heartbeat_s: float = 5.0
  poll_s: float = 2.0  # How often a runner looks at trials running elsewhere.
  retry_failed: bool = False


# Set by SIGTERM. Its handler raises KeyboardInterrupt, but an exception raised while
# a garbage-collection callback runs is dropped: the next report raises it again.
TERMINATING = threading.Event()


class StopTrial(Exception):
  """Early stopping: the trial's metric fell behind at a rung."""


class ClaimLost(Exception):
  """Another runner took this trial over (this runner's heartbeat stalled)."""


def _fmt_s(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# --- The directory: one sweep, never mixed.

def check_dir(study: Study, workdir: str, engine: str) -> None:
  """Refuses a DIR that holds anything but this sweep (reads only)."""
  if not os.path.exists(workdir):
    return
  require(os.path.isdir(workdir), f"--workdir={workdir!r} exists and is not a directory")
  saved = records.read_json(os.path.join(workdir, records.SWEEP))
  if saved is None:
    entries = sorted(os.listdir(workdir))
    require(not entries, f"--workdir={workdir!r} is not empty and holds no sweep "
            f"({', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}): use a new directory")
    return
  want = study.identity(engine)
  have = saved.get("identity", {})
  diff = sorted(k for k in set(want) | set(have)
                if k != "base_config" and want.get(k) != have.get(k))
  # Fields only one side has come from another version of the library (a section added
  # since the sweep began): not a different sweep. Fields both have must agree.
  a, b = have.get("base_config") or {}, want["base_config"]
  fields = sorted(k for k in set(a) & set(b) if a[k] != b[k])
  if fields:
    diff.append(f"base config ({', '.join(fields[:6])})")
  require(not diff, f"--workdir={workdir!r} holds another sweep (of {saved.get('config')}; "
          f"its {', '.join(diff)} differ): use a new directory, or the command that made it")


def prepare(study: Study, workdir: str, engine: str) -> None:
  """Records the sweep and its trials in DIR (after every check has passed)."""
  os.makedirs(os.path.join(workdir, records.TRIALS), exist_ok=True)
  record = {"identity": study.identity(engine), "config": study.config,
            "base_overrides": study.base_overrides, "fields": study.sweep.fields,
            "metric": study.sweep.metric, "mode": study.sweep.mode, "created": time.time()}
  path = os.path.join(workdir, records.SWEEP)
  if not records.create_json(path, record):
    check_dir(study, workdir, engine)  # Another runner made it first: the same sweep?
  if engine != "local":
    return  # Other engines name their own trials.
  for t in study.trials:
    tdir = records.trial_dir(workdir, t.id)
    os.makedirs(tdir, exist_ok=True)
    if not os.path.exists(os.path.join(tdir, "trial.json")):
      records.write_json(os.path.join(tdir, "trial.json"), {
          "id": t.id, "overrides": t.overrides, "command": study.command(t, tdir)})


def reset_failed(study: Study, workdir: str) -> list[str]:
  """--retry_failed: failed trials lose their result (kept as result.failed.<k>.json)."""
  reset = []
  for t in study.trials:
    tdir = records.trial_dir(workdir, t.id)
    r = records.result(tdir)
    if r and r["status"] == "failed":
      k = sum(n.startswith("result.failed.") for n in os.listdir(tdir))
      os.replace(os.path.join(tdir, "result.json"), os.path.join(tdir, f"result.failed.{k}.json"))
      reset.append(t.id)
  return reset


# --- Progress.

def counts(study: Study, workdir: str, stale_after: float) -> dict:
  c = {"done": 0, "running": 0, "failed": 0, "stopped": 0, "left": 0}
  walls = []
  for t in study.trials:
    tdir = records.trial_dir(workdir, t.id)
    r = records.result(tdir)
    if r:
      c[r["status"]] += 1
      if r["status"] == "done" and r.get("wall_s"):
        walls.append(r["wall_s"])
    elif claims.is_live(claims.read(tdir), stale_after):
      c["running"] += 1
    else:
      c["left"] += 1
  running = max(c["running"], 1)
  c["eta"] = (sum(walls) / len(walls) * (c["left"] + 0.5 * c["running"]) / running
              if walls and (c["left"] or c["running"]) else None)
  return c


class Progress:
  """One line per trial event, with the running count."""

  def __init__(self, study: Study, workdir: str, opts: Options, stream: TextIO | None = None):
    self.study, self.workdir, self.opts = study, workdir, opts
    self.stream = stream or sys.stdout  # Resolved now: trials redirect stdout to their log.

  def __call__(self, msg: str) -> None:
    c = counts(self.study, self.workdir, self.opts.stale_after)
    tally = ", ".join(f"{c[k]} {k}" for k in ("done", "running", "failed", "stopped", "left"))
    eta = f" | ETA ~{_fmt_s(c['eta'])}" if c["eta"] is not None else ""
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg} | {tally}{eta}", file=self.stream,
          flush=True)


def _shown(overrides: dict) -> str:
  return ", ".join(f"{k}={v!r}" for k, v in overrides.items())


# --- One trial, in this process.

class Reporter:
  """The run's listener: records every set of scalars, applies early stopping at the
  metric's rungs, and stops the run if the claim was lost."""

  def __init__(self, study: Study, trial: Trial, workdir: str, claim: claims.Claim | None):
    self.study, self.trial, self.workdir, self.claim = study, trial, workdir, claim
    self.tdir = records.trial_dir(workdir, trial.id)
    self.path = os.path.join(self.tdir, "metrics.jsonl")

  def __call__(self, step: int, scalars: dict) -> None:
    if TERMINATING.is_set():
      raise KeyboardInterrupt("terminated")
    if self.claim is not None and self.claim.lost.is_set():
      raise ClaimLost(f"trial {self.trial.id} was taken over by another runner")
    sweep = self.study.sweep
    own = records.history(self.tdir, sweep.metric)
    records.append_jsonl(self.path, {"step": step, **scalars})
    if sweep.early_stopping is None or sweep.metric not in scalars:
      return
    value = scalars[sweep.metric]
    before = max((s for s in own if s < step), default=0)
    for rung in sweep.early_stopping.rungs(self.study.max_steps):
      if not before < rung <= step:
        continue
      others = []
      for t in self.study.trials:
        if t.id != self.trial.id:
          h = records.history(records.trial_dir(self.workdir, t.id), sweep.metric)
          at = [v for s, v in h.items() if s >= rung]
          if at:
            others.append(at[0])
      if not sweep.early_stopping.keeps(value, others, sweep.mode):
        raise StopTrial(f"early stopping at step {step} (rung {rung}): {sweep.metric} "
                        f"{value:.4g} is not among the best 1/{sweep.early_stopping.reduction_factor:g} "
                        f"of {len(others) + 1} trials there")


def _summary(tdir: str, metric: str, mode: str) -> str:
  h = records.history(tdir, metric)
  if not h:
    return f"{metric} not reported"
  best = (min if mode == "min" else max)(h.values())
  return f"{metric} {list(h.values())[-1]:.4g} at step {list(h)[-1]} (best {best:.4g})"


def run_trial(study: Study, trial: Trial, workdir: str, claim: claims.Claim | None,
              progress: Callable[[str], None],
              train_fn: Callable | None = None) -> str | None:
  """Runs (or resumes) a trial in this process and records its result; returns its
  status, or None if it was interrupted (it will be resumed)."""
  from diffusion_jax.training import checkpoint
  from diffusion_jax.training.loop import Preempted
  if train_fn is None:
    from diffusion_jax.run.train import train_and_evaluate as train_fn
  tdir = records.trial_dir(workdir, trial.id)
  resume = checkpoint.latest_step(tdir)
  owner = claims.owner_name(claims.owner_record())
  records.add_attempt_event(tdir, "start", owner=owner, resume_step=resume)
  progress(f"{trial.id} {'resumed from step ' + str(resume) if resume else 'started'}"
           f" ({_shown(trial.overrides)}) on {owner}")
  t0 = time.time()
  status, reason = "done", ""
  try:
    config = study.config_of(trial.overrides)
    with open(os.path.join(tdir, "log.txt"), "a") as log, contextlib.redirect_stdout(log):
      train_fn(config, tdir, listeners=[Reporter(study, trial, workdir, claim)])
  except StopTrial as e:
    status, reason = "stopped", str(e)
  except FloatingPointError as e:
    status, reason = "failed", f"diverged: {e}"
  except ConfigError as e:
    status, reason = "failed", f"config: {' / '.join(e.problems)}"
  except ClaimLost as e:
    records.add_attempt_event(tdir, "lost", owner=owner, wall_s=time.time() - t0)
    progress(f"{trial.id} abandoned: {e}")
    return None
  except (KeyboardInterrupt, SystemExit):
    records.add_attempt_event(tdir, "interrupted", owner=owner, wall_s=time.time() - t0)
    raise
  except Preempted as e:  # Its checkpoint is saved: the trial resumes on the next run.
    records.add_attempt_event(tdir, "interrupted", owner=owner, wall_s=time.time() - t0)
    progress(f"{trial.id} {e}; it resumes when the sweep is run again")
    TERMINATING.set()
    raise KeyboardInterrupt(str(e)) from e
  except Exception as e:  # A crash of this trial is its result; the sweep goes on.
    with open(os.path.join(tdir, "error.txt"), "a") as f:
      f.write(traceback.format_exc())
    status, reason = "failed", f"crashed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
  wall = time.time() - t0
  records.add_attempt_event(tdir, "end", owner=owner, status=status, wall_s=wall)
  total = sum(a.get("wall_s", 0.0) for a in records.attempts(tdir) if a["event"] != "start")
  records.write_result(tdir, status, reason, wall_s=total)
  if claim is not None:
    claim.release()
  results.write(workdir)
  what = _summary(tdir, study.sweep.metric, study.sweep.mode)
  progress(f"{trial.id} {status} in {_fmt_s(wall)}: " + (f"{reason}" if reason else what))
  return status


# --- Runners.

def _next_claim(study: Study, workdir: str, opts: Options) -> tuple[Trial, claims.Claim] | None:
  for t in study.trials:
    tdir = records.trial_dir(workdir, t.id)
    if records.result(tdir):
      continue
    claim = claims.try_claim(tdir, opts.stale_after, opts.heartbeat_s)
    if claim is None:
      continue
    if records.result(tdir):  # Finished by its last owner just before we looked.
      claim.release()
      continue
    return t, claim
  return None


def _running_elsewhere(study: Study, workdir: str, opts: Options) -> list[str]:
  out = []
  for t in study.trials:
    tdir = records.trial_dir(workdir, t.id)
    c = claims.read(tdir)
    if not records.result(tdir) and claims.is_live(c, opts.stale_after):
      out.append(f"{t.id} on {claims.owner_name(c[1])}")
  return out


def work(study: Study, workdir: str, opts: Options, progress: Callable[[str], None],
         train_fn: Callable | None = None) -> None:
  """Claims and runs trials until none is left; waits for trials that other runners
  hold (taking over any whose runner dies)."""
  waiting_for: list[str] = []
  while True:
    if TERMINATING.is_set():
      raise KeyboardInterrupt("terminated")
    nxt = _next_claim(study, workdir, opts)
    if nxt is not None:
      trial, claim = nxt
      try:
        run_trial(study, trial, workdir, claim, progress, train_fn)
      finally:
        claim.release()
      continue
    elsewhere = _running_elsewhere(study, workdir, opts)
    if not elsewhere:
      return
    if elsewhere != waiting_for:
      progress(f"waiting for trials running elsewhere: {', '.join(elsewhere)}")
      waiting_for = elsewhere
    time.sleep(opts.poll_s)


def _die_with_parent() -> None:
  """In a child runner: be killed when the parent runner dies (Linux)."""
  try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def _children(argv: list[str], n: int) -> list[subprocess.Popen]:
  cmd = [sys.executable, "-m", "diffusion_jax.sweep", *argv, "--parallel=1", "--child"]
  return [subprocess.Popen(cmd, preexec_fn=_die_with_parent) for _ in range(n)]


def _record_crash(study: Study, workdir: str, pid: int, code: int, progress) -> None:
  """A child runner died hard: the trial it held fails with that reason."""
  why = (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}")
  for t in study.trials:
    tdir = records.trial_dir(workdir, t.id)
    c = claims.read(tdir)
    if c and c[1].get("pid") == pid and c[1].get("boot") == claims.owner_record()["boot"] \
        and not records.result(tdir):
      records.add_attempt_event(tdir, "end", owner=claims.owner_name(c[1]), status="failed")
      records.write_result(tdir, "failed", f"crashed: the runner process was {why} "
                           "(out of memory?)", wall_s=sum(
                               a.get("wall_s", 0.0) for a in records.attempts(tdir)))
      os.utime(os.path.join(tdir, f"claim.{c[0]}"), (0, 0))
      results.write(workdir)
      progress(f"{t.id} failed: its runner process was {why}")


def _run_runners(study: Study, workdir: str, opts: Options, argv: list[str], progress,
                 train_fn: Callable | None) -> None:
  """This process's runner, or --parallel runner processes and their watch."""
  if opts.parallel == 1:
    work(study, workdir, opts, progress, train_fn)
  else:
    procs = _children(argv, opts.parallel)
    restarts = len(study.trials)
    try:
      while procs:
        time.sleep(opts.poll_s / 2)
        for p in list(procs):
          code = p.poll()
          if code is None:
            continue
          procs.remove(p)
          if code not in (0, 130):  # 130: interrupted; its trial is resumed later.
            _record_crash(study, workdir, p.pid, code, progress)
            if restarts > 0 and counts(study, workdir, opts.stale_after)["left"]:
              restarts -= 1
              procs += _children(argv, 1)
    except KeyboardInterrupt:
      for p in procs:
        p.terminate()
      for p in procs:
        p.wait()
      raise


def run(study: Study, workdir: str, opts: Options, argv: list[str], child: bool = False,
        stream: TextIO | None = None, train_fn: Callable | None = None) -> int:
  """The local engine: runs the sweep to the end (0), or to the end with every trial
  failed (1)."""
  progress = Progress(study, workdir, opts, stream)
  if not child:
    n_failed = reset_failed(study, workdir) if opts.retry_failed else []
    if n_failed:
      progress(f"retrying failed trials {', '.join(n_failed)}")
    progress(f"sweep of {len(study.trials)} trials in {workdir} ({study.config}), "
             f"{study.sweep.metric} ({study.sweep.mode})")

  def on_term(signum, frame):
    TERMINATING.set()
    raise KeyboardInterrupt(f"signal {signum}")
  main_thread = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGTERM, on_term) if main_thread else None
  try:
    _run_runners(study, workdir, opts, argv, progress, train_fn)
  finally:
    if main_thread:
      signal.signal(signal.SIGTERM, previous)
      TERMINATING.clear()
  if child:
    return 0
  rows = results.write(workdir)
  c = counts(study, workdir, opts.stale_after)
  progress(f"sweep finished; results in {os.path.join(workdir, 'results.md')}")
  print(results.markdown(workdir, rows), file=progress.stream, flush=True)
  finished = c["done"] + c["stopped"]
  return 0 if finished else 1


def use_compile_cache(workdir: str) -> None:
  """Trials share one persistent compilation cache: identical programs compile once
  (an environment that set its own keeps it)."""
  import jax
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir),
                                                              "compile_cache"))
  # The default (1 s) would leave out the small programs that every trial builds.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


__all__ = ["ClaimLost", "Options", "Reporter", "StopTrial", "check_dir", "counts", "prepare",
           "reset_failed", "run", "run_trial", "use_compile_cache", "work"]
