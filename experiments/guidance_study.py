"""Classifier-free guidance everywhere, within an interval of noise levels, and
autoguidance, on one trained class-conditional run, at the same sampler steps.

  python experiments/guidance_study.py --workdir=runs/digits_sweep/trials/t000 \
      --guide_step=300 --num_samples=1000 --out=experiments/results/guidance_digits

Each variant is `python -m diffusion_jax.main --mode=eval` on the run's latest
checkpoint (its sample metrics in the feature network the run's config names, the same
seed and sampler for all), with the variant's overrides and, for autoguidance,
`--guide_from=WORKDIR:GUIDE_STEP` (the run's own earlier checkpoint as the weaker
model). Writes OUT.jsonl: one line per variant, its result file's contents.

A text-to-image run (shapes_captions) is scored by the shapes detector instead, the text
guidance scale in place of the class one (experiments/cond_eval.py text, on the
held-out phrases and on the test split's captions):

  python experiments/guidance_study.py --text --workdir=runs/shapes_text \
      --guide_step=2000 --out=experiments/results/guidance_shapes
"""

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax import main as cli  # noqa: E402

METRICS = ("fd", "kid", "precision", "recall")
# name -> (overrides, autoguided); the interval is EDM2's, in sigma = sigma_t / alpha_t.
VARIANTS = {
    "no guidance": ({"sample.guidance_scale": 1.0}, False),
    "CFG 1.5": ({"sample.guidance_scale": 1.5}, False),
    "CFG 3": ({"sample.guidance_scale": 3.0}, False),
    "CFG 3 in (0.28, 5.42]": ({"sample.guidance_scale": 3.0,
                               "sample.guidance_interval": "(0.28,5.42)"}, False),
    "autoguidance 1.5": ({"sample.guidance_scale": 1.0, "sample.autoguidance_scale": 1.5}, True),
    "autoguidance 2": ({"sample.guidance_scale": 1.0, "sample.autoguidance_scale": 2.0}, True),
}


# The same study for text (cond_eval.py's flags).
TEXT_VARIANTS = {
    "no guidance": ["--guidance=1.0"],
    "CFG 2": ["--guidance=2.0"],
    "CFG 3": ["--guidance=3.0"],
    "CFG 3 in (0.28, 5.42]": ["--guidance=3.0", "--set=sample.guidance_interval=(0.28,5.42)"],
    "autoguidance 2": ["--guidance=1.0", "--set=sample.autoguidance_scale=2.0", "GUIDE"],
}
TEXT_SPLITS = {"held_out": ["--split=held_out", "--samples=10"],
               "test": ["--split=test", "--num=300"]}


def text_study(args) -> list[dict]:
  """Each text variant on each split: the detector's fractions right."""
  import subprocess
  import tempfile
  rows = []
  for name, flags in TEXT_VARIANTS.items():
    flags = [f"--guide_from={args.workdir}:{args.guide_step}" if f == "GUIDE" else f
             for f in flags]
    for split, split_flags in TEXT_SPLITS.items():
      with tempfile.TemporaryDirectory() as out:
        t0 = time.time()
        subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "cond_eval.py"),
                        "text", f"--workdir={args.workdir}", *split_flags, *flags,
                        f"--out={out}", "--tag=r"], check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "r.json")) as f:
          r = json.load(f)
      row = {"variant": name, "split": split, "step": r["step"],
             **{f"{group}_{k}": r[group][k] for group in ("one_shape", "two_shapes")
                if group in r for k in ("images", "fully_right", "color", "shape", "size",
                                        "position")},
             "wall_s": round(time.time() - t0, 1)}
      rows.append(row)
      print(json.dumps(row), flush=True)
  return rows


def cpu_model() -> str:
  for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
      return line.split(":", 1)[1].strip()
  return platform.processor()


def evaluate(workdir: str, overrides: dict, guide: str | None) -> dict:
  """One --mode=eval; returns its result file's contents."""
  before = set(os.listdir(os.path.join(workdir, "eval"))) if os.path.isdir(
      os.path.join(workdir, "eval")) else set()
  argv = ["diffusion_jax.main", f"--workdir={workdir}", "--mode=eval",
          f"--config.eval.metrics={','.join(METRICS)}",
          *[f"--config.{k}={v}" for k, v in overrides.items()]]
  if guide:
    argv.append(f"--guide_from={guide}")
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = cli.run(argv)
  if code:
    raise SystemExit(f"{' '.join(argv)} failed ({code}):\n{err.getvalue()[-3000:]}")
  (new,) = set(os.listdir(os.path.join(workdir, "eval"))) - before
  with open(os.path.join(workdir, "eval", new)) as f:
    return json.load(f)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--guide_step", type=int, required=True)
  p.add_argument("--num_samples", type=int, default=1000)
  p.add_argument("--out", required=True, help="Path stem of the .json and .md written.")
  p.add_argument("--text", action="store_true",
                 help="a text-to-image run: text guidance, scored by the shapes detector")
  args = p.parse_args()
  if args.text:
    rows = text_study(args)
    with open(args.out + ".jsonl", "w") as f:
      for r in rows:
        f.write(json.dumps({**r, "workdir": args.workdir, "guide_step": args.guide_step,
                            "cpu": cpu_model()}) + "\n")
    print(f"wrote {args.out}.jsonl")
    return
  rows = {}
  for name, (over, autoguided) in VARIANTS.items():
    t0 = time.time()
    r = evaluate(args.workdir, {**over, "eval.num_samples": args.num_samples},
                 f"{args.workdir}:{args.guide_step}" if autoguided else None)
    r["wall_s"] = round(time.time() - t0, 1)
    rows[name] = r
    print(name, {m: round(r[m], 4) for m in METRICS}, f"{r['wall_s']} s", flush=True)
  with open(args.out + ".jsonl", "w") as f:
    for name, r in rows.items():
      f.write(json.dumps({"variant": name, "workdir": args.workdir,
                          "guide_step": args.guide_step, "cpu": cpu_model(), **r}) + "\n")
  print(f"wrote {args.out}.jsonl")


if __name__ == "__main__":
  main()
