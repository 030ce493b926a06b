"""Wall time and resources of whole commands on this machine (the README's demo and
test suite, an evaluation), read from their `/usr/bin/time -v` logs: one JSON line per
log, with this machine's CPU model. Run it on the machine that ran the commands.

  /usr/bin/time -v python -m diffusion_jax.main --config=configs/digits.py \
      --workdir=runs/digits > demo.log 2>&1
  /usr/bin/time -v python -m diffusion_jax.main --workdir=runs/digits --mode=eval \
      --config.eval.metrics=fd,kid,precision,recall > eval.log 2>&1
  /usr/bin/time -v pytest -q > tests.log 2>&1
  python experiments/timed_runs.py --commit=ca920fd \
      --out=experiments/results/two_commands_cpu.jsonl demo.log eval.log tests.log

Also read from each log where it has them: a training run's first step (with its
compilation) and last logged steps/s, an evaluation's metrics, pytest's summary. The
logs are kept beside their rows (results/two_commands_cpu_*.log); a test reads them
again.
"""

import argparse
import datetime
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import machine  # noqa: E402

METRICS = ("fd", "kid", "precision", "recall", "fid", "is", "bpd")


def log_row(text: str) -> dict:
  """The resources of the timed command, and what its output says about the run."""
  row = machine.time_report(text)
  found = re.search(r"first step \(with compilation\) took ([\d.]+)s", text)
  if found:
    row["first_step_s"] = float(found.group(1))
  rates = re.findall(r"^step (\d+)/\d+ .*\| ([\d.]+) steps/s", text, re.M)
  if rates:
    row["last_step"], row["last_steps_per_s"] = int(rates[-1][0]), float(rates[-1][1])
  for line in text.splitlines():  # An evaluation prints its result as one JSON object.
    if line.startswith("{") and '"step"' in line:
      result = json.loads(line)
      row.update({k: result[k] for k in ("step", "num_samples", *METRICS) if k in result})
  found = re.search(r"^=*\s*(.*\b(?:passed|failed)\b.*) in ([\d.]+)s", text, re.M)
  if found:
    for count, what in re.findall(r"(\d+) (passed|failed|skipped|errors?)", found.group(1)):
      row[f"tests_{what}"] = int(count)
    row["pytest_s"] = float(found.group(2))
  return row


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("logs", nargs="+", help="`/usr/bin/time -v` logs, one per command")
  p.add_argument("--commit", required=True, help="the commit the commands ran at")
  p.add_argument("--out", required=True, help="JSON lines to append to")
  args = p.parse_args(argv)
  cpu = machine.cpu_model()
  for log in args.logs:
    with open(log) as f:
      text = f.read()
    if "Command being timed:" not in text:
      p.error(f"{log}: no `/usr/bin/time -v` report in it")
    finished = datetime.datetime.fromtimestamp(os.path.getmtime(log), datetime.timezone.utc)
    machine.emit({"cpu": cpu, "commit": args.commit,
                  "finished": finished.strftime("%Y-%m-%d %H:%M UTC"), **log_row(text)},
                 args.out)


if __name__ == "__main__":
  main()
