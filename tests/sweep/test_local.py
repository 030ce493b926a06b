"""The local engine: claims, resume after SIGKILL, two runners on one directory,
failures, early stopping, results, and the command line's bad input."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from diffusion_jax.config import files
from diffusion_jax.sweep import claims, cli, local, plan, records, results
from tests.conftest import ROOT, run_main
from tests.sweep import objectives

TINY = os.path.join(ROOT, "tests", "sweep", "tiny_sweep.py")


def sweep_cli(*argv) -> tuple[int, str, str]:
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.run(["diffusion_jax.sweep", *argv])
  return code, out.getvalue(), err.getvalue()


def sweep_process(workdir, variant="seeds", *extra) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.Popen(
      [sys.executable, "-m", "diffusion_jax.sweep", f"--config={TINY}:{variant}",
       f"--workdir={workdir}", *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)


def ends(workdir, tid) -> list[dict]:
  return [a for a in records.attempts(records.trial_dir(workdir, tid)) if a["event"] == "end"]


def starts(workdir, tid) -> list[dict]:
  return [a for a in records.attempts(records.trial_dir(workdir, tid)) if a["event"] == "start"]


# --- Claims.

def test_a_claim_is_taken_once_and_freed_when_its_owner_is_gone(tmp_path):
  d = str(tmp_path)
  first = claims.try_claim(d, stale_after=60, heartbeat_s=0.05)
  assert first is not None and claims.try_claim(d, 60, 0.05) is None
  first.release()
  second = claims.try_claim(d, 60, 0.05)  # Released: free at once.
  assert second is not None and second.gen == 1
  # A process of this machine that died holding a claim frees it.
  dead = subprocess.Popen(["true"])
  dead.wait()
  path = os.path.join(d, "claim.2")
  with open(path, "w") as f:
    json.dump({**claims.owner_record(), "pid": dead.pid, "start": "0"}, f)
  assert not claims.is_live(claims.read(d), 60)
  # Another machine's claim is live while its heartbeat is fresh, stale after.
  with open(path, "w") as f:
    json.dump({"host": "elsewhere", "pid": 1, "boot": "another-boot"}, f)
  assert claims.is_live(claims.read(d), 60)
  os.utime(path, (time.time() - 120,) * 2)
  assert not claims.is_live(claims.read(d), 60)
  # Its takeover makes the old owner's heartbeat see the loss.
  third = claims.try_claim(d, 60, 0.05)
  assert third.gen == 3
  time.sleep(0.2)
  assert second.lost.is_set() and not third.lost.is_set()
  third.release()
  second.release()


# --- The engine with a cheap stand-in for training (no compilation).

def _study(variant: str, **base) -> plan.Study:
  spec = f"{TINY}:{variant}"
  config = files.load(spec)
  for k, v in base.items():
    section, field = k.split(".")
    config[section][field] = v
  return plan.make(spec, config, 1)


def test_early_stopping_and_a_crash_are_recorded_and_the_sweep_goes_on(tmp_path):
  wd = str(tmp_path / "s")
  study = _study("search_asha", **{"training.num_steps": 16})
  local.check_dir(study, wd, "local")
  local.prepare(study, wd, "local")
  crash_lr = study.trials[2].overrides["optim.lr"]

  def train(config, workdir, listeners=()):
    if config.optim.lr == crash_lr:
      raise RuntimeError("out of cheese")
    objectives.quadratic(config, workdir, listeners)

  out = io.StringIO()
  code = local.run(study, wd, local.Options(), [], stream=out, train_fn=train)
  assert code == 0
  rows = {r.id: r for r in results.collect(wd)}
  assert rows["t002"].status == "failed"
  assert rows["t002"].reason == "crashed: RuntimeError: out of cheese"
  stopped = [r for r in rows.values() if r.status == "stopped"]
  done = [r for r in rows.values() if r.status == "done"]
  assert stopped and done and len(stopped) + len(done) == 5
  for r in stopped:  # Stopped at a rung (4, 8), behind the trials there before it.
    assert "early stopping at step" in r.reason and max(r.history) in (4, 8)
  for r in done:
    assert max(r.history) == 16
  # ASHA in trial order: the first trial always goes on; each stopped one was worse at
  # its rung than the best 1/2 of those that reached it before it.
  assert rows["t000"].status == "done"
  text = out.getvalue()
  assert "t002 failed in" in text and "crashed: RuntimeError: out of cheese" in text
  assert any(", 1 failed," in line for line in text.splitlines())
  md = open(os.path.join(wd, "results.md")).read()
  assert md.count("| t0") == 6 and "stopped: early stopping" in md


def test_a_preempted_trial_stops_the_sweep_and_resumes_on_the_next_run(tmp_path):
  from diffusion_jax.training.loop import Preempted
  wd = str(tmp_path / "s")
  study = _study("seeds", **{"training.num_steps": 4})
  local.check_dir(study, wd, "local")
  local.prepare(study, wd, "local")
  calls = []

  def train(config, workdir, listeners=()):  # Trial t001 is preempted on its first try.
    calls.append(os.path.basename(workdir))
    if calls.count("t001") == 1 and calls[-1] == "t001":
      raise Preempted(2)
    objectives.quadratic(config, workdir, listeners)

  out = io.StringIO()
  with pytest.raises(KeyboardInterrupt):
    local.run(study, wd, local.Options(), [], stream=out, train_fn=train)
  assert calls == ["t000", "t001"] and "t001 preempted at step 2; it resumes" in out.getvalue()
  assert records.result(records.trial_dir(wd, "t001")) is None  # Not failed: unfinished.
  assert [a["event"] for a in records.attempts(records.trial_dir(wd, "t001"))] == \
      ["start", "interrupted"]
  assert local.run(study, wd, local.Options(), [], stream=io.StringIO(), train_fn=train) == 0
  assert calls == ["t000", "t001", "t001", "t002", "t003"]
  assert {r.id: r.status for r in results.collect(wd)} == {f"t00{i}": "done" for i in range(4)}


# --- Real training runs (the tiniest config; the trials share compiled programs).

def _wait_for(cond, timeout=600, what="", process=None):
  t0 = time.time()
  while not cond():
    assert time.time() - t0 < timeout, f"timed out waiting for {what}"
    if process is not None and process.poll() is not None:
      raise AssertionError(f"the sweep ended (status {process.returncode}) before "
                           f"{what}:\n{process.stdout.read()[-3000:]}")
    time.sleep(0.1)


def _running_with_checkpoint(wd) -> str | None:
  for tid in records.trial_ids(wd):
    tdir = records.trial_dir(wd, tid)
    if not records.result(tdir) and os.path.isdir(os.path.join(tdir, "checkpoints", "2", "meta")):
      return tid
  return None


def test_sigkill_mid_way_then_rerun_finishes_every_trial_once(tmp_path, data_dir):
  wd = str(tmp_path / "sweep")
  p = sweep_process(wd, "pair")
  try:
    _wait_for(lambda: records.result(records.trial_dir(wd, "t000")) is not None
              and _running_with_checkpoint(wd), what="a trial mid-way", process=p)
  finally:
    killed = _running_with_checkpoint(wd)
    p.send_signal(signal.SIGKILL)
    p.wait()
  assert killed is not None
  code, out, err = sweep_cli(f"--config={TINY}:pair", f"--workdir={wd}")
  assert code == 0, err
  assert records.trial_ids(wd) == ["t000", "t001"]
  for tid in records.trial_ids(wd):
    assert records.result(records.trial_dir(wd, tid))["status"] == "done"
    assert [e["status"] for e in ends(wd, tid)] == ["done"], tid  # Finished once.
  assert f"{killed} resumed from step" in out
  resumed = starts(wd, killed)
  assert len(resumed) == 2 and resumed[1]["resume_step"] >= 2
  # Trials finished before the kill were not run again.
  assert len(starts(wd, "t000")) == 1
  csv = open(os.path.join(wd, "results.csv")).read().splitlines()
  assert len(csv) == 3 and all(",done," in line for line in csv[1:])
  table = json.load(open(os.path.join(wd, "results.json")))
  assert sorted(table["trials"]) == ["t000", "t001"]
  finals = {t: v["final"] for t, v in table["trials"].items()}
  pick = min if table["mode"] == "min" else max
  assert table["best"]["value"] == pick(finals.values())
  assert finals[table["best"]["trial"]] == table["best"]["value"]
  # --report prints the same table, running nothing.
  code, report, _ = sweep_cli(f"--workdir={wd}", "--report")
  assert code == 0 and report == open(os.path.join(wd, "results.md")).read()
  # A trial is an ordinary run: its recorded command resumes it with the normal CLI.
  command = records.read_json(os.path.join(records.trial_dir(wd, "t001"), "trial.json"))
  argv = command["command"].split()[3:]
  r = run_main(argv)
  assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr


def test_two_runners_share_the_work_without_running_a_trial_twice(tmp_path, data_dir):
  wd = str(tmp_path / "sweep")
  procs = [sweep_process(wd), sweep_process(wd)]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  owners = set()
  for tid in records.trial_ids(wd):
    s, e = starts(wd, tid), ends(wd, tid)
    assert len(s) == 1 and [x["status"] for x in e] == ["done"], (tid, s, e)
    owners.add(s[0]["owner"])
  assert records.trial_ids(wd) == ["t000", "t001", "t002", "t003"]
  assert len(owners) == 2, f"one runner did every trial: {outs}"


def test_a_diverging_trial_fails_with_its_reason_and_the_others_finish(tmp_path, data_dir):
  wd = str(tmp_path / "sweep")
  code, out, err = sweep_cli(f"--config={TINY}:diverge", f"--workdir={wd}")
  assert code == 0, err
  ok, bad = (records.result(records.trial_dir(wd, t)) for t in ("t000", "t001"))
  assert ok["status"] == "done"
  assert bad["status"] == "failed" and bad["reason"].startswith("diverged: 3 non-finite updates in a row")
  # The table's columns are the fields that vary; the others are named once.
  assert "t001 failed in" in out and "| t001 | 1e+30 | failed: diverged" in out
  assert "Every trial: seed=0." in out


# --- Bad input: one line, exit status 2, nothing written.

@pytest.mark.parametrize("variant,extra,message", [
    ("unknown_field", (), "error: sweep: 'optim.lrr' is not a config field"),
    ("wrong_type", (), "error: trial t000 (optim.lr='fast'): sweep: optim.lr='fast' has the "
     "wrong type: the field holds a float (0.002)"),
    ("bad_metric", (), "error: sweep: metric 'eval/fd' is not reported by the run of trial t000"),
    ("empty_grid", (), "error: sweep: product: 'seed' needs a non-empty list of values, got []"),
    ("seeds", ("--engine=ray", "--ray_address=127.0.0.1:9"),
     "error: --ray_address='127.0.0.1:9': cannot reach a Ray cluster at 127.0.0.1:9"),
    ("seeds", ("--engine=slurm",), "error: unknown --engine='slurm'; known: ['local', 'ray']"),
    ("seeds", ("--parallel=0",), "error: --parallel=0 must be >= 1"),
    ("seeds", ("--config.optim.lrr=1",), "error: bad config override (--config.optim.lrr=1)"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, variant, extra, message):
  wd = str(tmp_path / "sweep")
  code, out, err = sweep_cli(f"--config={TINY}:{variant}", f"--workdir={wd}", *extra)
  assert code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1, err
  assert not os.path.exists(wd)


def test_a_directory_holding_another_sweep_is_refused(tmp_path):
  wd = str(tmp_path / "sweep")
  study = _study("seeds")
  local.prepare(study, wd, "local")
  before = sorted(os.listdir(os.path.join(wd, "trials")))
  code, _, err = sweep_cli(f"--config={TINY}:diverge", f"--workdir={wd}")
  assert code == 2 and err.startswith(f"error: --workdir={wd!r} holds another sweep (of "
                                       f"{TINY}:seeds; its trials differ)"), err
  assert sorted(os.listdir(os.path.join(wd, "trials"))) == before
  # The same sweep with another base config is another sweep too.
  code, _, err = sweep_cli(f"--config={TINY}:seeds", f"--workdir={wd}",
                           "--config.optim.lr=0.01")
  assert code == 2 and "base config (optim.lr)" in err
  # Made by a version of the library without one config section: the same sweep.
  record = os.path.join(wd, "sweep.json")
  saved = json.load(open(record))
  base = saved["identity"]["base_config"]
  section = [k for k in base if k.startswith("autoencoder.")]
  assert section
  for k in section:
    del base[k]
  json.dump(saved, open(record, "w"))
  local.check_dir(study, wd, "local")
  # A directory that holds something else is not taken either.
  other = tmp_path / "run"
  other.mkdir()
  (other / "config.json").write_text("{}")
  code, _, err = sweep_cli(f"--config={TINY}:seeds", f"--workdir={other}")
  assert code == 2 and "is not empty and holds no sweep (config.json)" in err
  code, _, err = sweep_cli(f"--workdir={other}", "--report")
  assert code == 2 and "holds no sweep" in err
