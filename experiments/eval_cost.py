"""The cost of periodic evaluation in a run: seconds per evaluation against training time.

  python experiments/eval_cost.py runs/registry_digits --out=experiments/results/eval_cost.json

Reads the run's eval/step_<N>_<net>.json files (sample and metric seconds of each
evaluation) and its run_info.jsonl (the start time); the run's span is from that start
to the last evaluation file, and training time is the span less the evaluations.
"""

import argparse
import datetime
import glob
import json
import os
import re


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("workdir")
  p.add_argument("--out", required=True)
  args = p.parse_args()
  with open(os.path.join(args.workdir, "run_info.jsonl")) as f:
    start = datetime.datetime.fromisoformat(json.loads(f.readline())["time_utc"]).timestamp()
  paths = [q for q in glob.glob(os.path.join(args.workdir, "eval", "step_*.json"))
           if re.fullmatch(r"step_\d+_[\w-]+\.json", os.path.basename(q))]
  evals = []
  for path in paths:
    with open(path) as f:
      r = json.load(f)
    if "sample_seconds" in r:
      evals.append((r, os.path.getmtime(path)))
  evals.sort(key=lambda e: e[0]["step"])
  span = max(t for _, t in evals) - start
  eval_total = sum(r["sample_seconds"] + r["metric_seconds"] for r, _ in evals)
  train = span - eval_total
  rows = [{"step": r["step"], "num_samples": r["num_samples"],
           "sample_seconds": r["sample_seconds"], "metric_seconds": r["metric_seconds"],
           "fraction_of_training": round((r["sample_seconds"] + r["metric_seconds"]) / train, 3)}
          for r, _ in evals]
  rows.append({"step": "all", "num_samples": sum(r["num_samples"] for r, _ in evals),
               "sample_seconds": round(sum(r["sample_seconds"] for r, _ in evals), 1),
               "metric_seconds": round(sum(r["metric_seconds"] for r, _ in evals), 1),
               "fraction_of_training": round(eval_total / train, 3),
               "training_seconds": round(train, 1)})
  with open(args.out, "w") as f:
    json.dump(rows, f, indent=2)
  print(json.dumps(rows, indent=2))


if __name__ == "__main__":
  main()
