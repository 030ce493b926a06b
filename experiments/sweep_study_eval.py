"""Sample quality of each trial of a digits sweep, measured after the fact: classifier
agreement and pixel Frechet distance (experiments/digits_eval.py) of the sample set each
trial wrote at its end.

  python experiments/sweep_study_eval.py runs/digits_sweep --out=experiments/results/sweep_digits.json

Until periodic evaluation reports a sample-quality metric during training (then the
sweep's own metric), this is how the example study's trials are compared on samples.
"""

import argparse
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits_eval import evaluate  # noqa: E402


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("workdir")
  p.add_argument("--out", default="")
  args = p.parse_args()
  rows = []
  for tdir in sorted(glob.glob(os.path.join(args.workdir, "trials", "*"))):
    with open(os.path.join(tdir, "trial.json")) as f:
      trial = json.load(f)
    with open(os.path.join(tdir, "result.json")) as f:
      result = json.load(f)
    samples = sorted(glob.glob(os.path.join(tdir, "samples", "step_*.npz")))
    if not samples:
      continue
    data = np.load(samples[-1])
    m = evaluate(data["images"], data["labels"])
    rows.append({"trial": trial["id"], **trial["overrides"], "status": result["status"],
                 "wall_s": result.get("wall_s"), "agreement": m["classifier_agreement"],
                 "frechet_pixels": m["frechet_pixels"],
                 "frechet_real_vs_real": m["frechet_real_vs_real"],
                 "frechet_size": m["frechet_size"]})
  rows.sort(key=lambda r: r["frechet_pixels"])
  keys = [k for k in rows[0] if k not in ("frechet_real_vs_real", "frechet_size")]
  print("| " + " | ".join(keys) + " |")
  print("|" + "---|" * len(keys))
  for r in rows:
    print("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k])
                            for k in keys) + " |")
  print(f"real vs real at the same size ({rows[0]['frechet_size']}): "
        f"{rows[0]['frechet_real_vs_real']:.4g}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=2)
      f.write("\n")


if __name__ == "__main__":
  main()
