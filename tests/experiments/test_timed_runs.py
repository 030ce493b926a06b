"""The recorded wall times are read from the kept `/usr/bin/time -v` logs, not typed."""

import glob
import json
import os

import pytest

from experiments import large_configs, timed_runs
from tests.conftest import ROOT

RESULTS = os.path.join(ROOT, "experiments", "results")


def rows(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_the_two_commands_rows_are_their_logs():
  recorded = rows(os.path.join(RESULTS, "two_commands_cpu.jsonl"))
  logs = sorted(glob.glob(os.path.join(RESULTS, "two_commands_cpu_*.log")))
  assert len(logs) == len(recorded) == 3
  for log in logs:
    with open(log) as f:
      row = timed_runs.log_row(f.read())
    match = [r for r in recorded if r["command"] == row["command"]]
    assert match and {k: match[0][k] for k in row} == row, (log, row)
  demo, evaluation, tests = (next(r for r in recorded if key in r)
                             for key in ("first_step_s", "fd", "tests_passed"))
  assert demo["last_step"] == 3500 and evaluation["num_samples"] == 1000
  assert tests["tests_passed"] > 1000 and "tests_failed" not in tests


def test_the_launch_check_rows_are_their_logs():
  logs = sorted(glob.glob(os.path.join(RESULTS, "launch_check_*.log")))
  assert logs
  for log in logs:
    row = large_configs.time_row(log)
    recorded = rows(log[:-len(".log")] + ".jsonl")
    assert any({k: r.get(k) for k in row} == row for r in recorded), (log, row)


def test_a_log_without_a_time_report_is_refused(tmp_path, capsys):
  log, out = tmp_path / "run.log", tmp_path / "out.jsonl"
  log.write_text("step 1/2 | loss 1.0 | 3.0 steps/s\n")
  with pytest.raises(SystemExit) as e:
    timed_runs.main([str(log), "--commit=abc", f"--out={out}"])
  assert e.value.code == 2 and "no `/usr/bin/time -v` report" in capsys.readouterr().err
  assert not out.exists()
