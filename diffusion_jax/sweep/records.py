"""What a sweep directory holds, read and written in one place.

  DIR/sweep.json                 the sweep's identity (a DIR holds one sweep)
  DIR/trials/<id>/               an ordinary run's workdir (config.json, checkpoints/,
                                 tensorboard/, samples/), plus:
      trial.json                 its overrides and the command that runs it alone
      metrics.jsonl              every reported set of scalars, {"step": N, ...}
      attempts.jsonl             one line per start and end of an attempt
      result.json                its final status: done | stopped | failed (+ reason)
      log.txt                    the run's output
      claim.<N>                  claims (sweep.claims)
  DIR/results.{csv,md,json,png}  the table and plot (sweep.results)
  DIR/compile_cache/             the persistent compilation cache the trials share

JSON files are written whole (to a temporary name, then renamed); JSONL files are
appended a line at a time.
"""

import json
import os
import time
from typing import Any

SWEEP = "sweep.json"
TRIALS = "trials"
STATUSES = ("done", "stopped", "failed")  # Final: a trial with a result is not run again.


def trial_dir(workdir: str, trial_id: str) -> str:
  return os.path.join(workdir, TRIALS, trial_id)


def trial_ids(workdir: str) -> list[str]:
  d = os.path.join(workdir, TRIALS)
  return sorted(n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n))) \
      if os.path.isdir(d) else []


def write_json(path: str, value: Any) -> None:
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True, default=list)
    f.write("\n")
  os.replace(tmp, path)


def create_json(path: str, value: Any) -> bool:
  """Writes `path` only if it does not exist (atomically); False if it did."""
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True, default=list)
    f.write("\n")
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  finally:
    os.remove(tmp)


def read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def append_jsonl(path: str, value: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(value, sort_keys=True) + "\n")


def read_jsonl(path: str) -> list[dict]:
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return []
  out = []
  for line in lines:
    try:
      out.append(json.loads(line))
    except ValueError:  # A line cut short by a kill.
      pass
  return out


def history(tdir: str, metric: str) -> dict[int, float]:
  """{step: value} of a metric over a trial's reports; a resumed attempt's report of
  a step replaces the earlier one."""
  out = {}
  for r in read_jsonl(os.path.join(tdir, "metrics.jsonl")):
    if metric in r and "step" in r:
      out[int(r["step"])] = float(r[metric])
  return dict(sorted(out.items()))


def result(tdir: str) -> dict | None:
  return read_json(os.path.join(tdir, "result.json"))


def write_result(tdir: str, status: str, reason: str = "", **extra) -> dict:
  assert status in STATUSES, status
  r = {"status": status, "reason": reason, "time": time.time(), **extra}
  write_json(os.path.join(tdir, "result.json"), r)
  return r


def attempts(tdir: str) -> list[dict]:
  return read_jsonl(os.path.join(tdir, "attempts.jsonl"))


def add_attempt_event(tdir: str, event: str, **fields) -> None:
  append_jsonl(os.path.join(tdir, "attempts.jsonl"), {"event": event, "time": time.time(),
                                                      **fields})


__all__ = ["STATUSES", "SWEEP", "TRIALS", "add_attempt_event", "append_jsonl", "attempts",
           "create_json", "history", "read_json", "read_jsonl", "result", "trial_dir",
           "trial_ids", "write_json", "write_result"]
