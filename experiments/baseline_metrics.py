"""Sample metrics of the simple baselines of the image-to-image tasks, measured exactly
as `--mode=eval` measured the run's model: the same conditions (the first
eval.num_samples examples of sample.cond_split, degraded with sample.seed), the same
feature network and reference split.

  python experiments/baseline_metrics.py --workdir=runs/photo_sr
  python experiments/baseline_metrics.py --workdir=runs/photo_colorize
  python experiments/baseline_metrics.py --workdir=runs/photo_inpaint

The protocol is read from the run's newest eval result (eval/step_*_<net>.json, or
--eval_json). Baselines, by the run's cond.image:
  sr:      bicubic upsampling of the low-resolution input;
  gray:    the input's luminance with the training split's mean chroma added (the
           per-pixel regression to a constant colour: what MSE gives without context);
  inpaint: scikit-image's biharmonic inpainting of the hole (known pixels kept).
Besides the set metrics, `paired_feature_distance` is the mean distance between each
output's features and those of its own true image (a perceptual distance with the
offline network; 0 = the truth). Appends one JSON line per baseline, and one for the
model's recorded result, to --out.
"""

import argparse
import dataclasses
import glob
import json
import os
import sys

import numpy as np
from skimage.restoration import inpaint_biharmonic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax.conditioning import conditions  # noqa: E402
from diffusion_jax.config import files  # noqa: E402
from diffusion_jax.data import pipeline  # noqa: E402
from diffusion_jax.evaluation import features, metrics, reference  # noqa: E402
from diffusion_jax.run import evaluate, spec as spec_lib  # noqa: E402
from diffusion_jax.sampling import inputs as inputs_lib  # noqa: E402

SET_METRICS = ("fd", "kid", "precision", "recall")


def u8(x) -> np.ndarray:
  return np.clip(np.round((np.asarray(x, np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def bicubic(spec, inputs: dict) -> np.ndarray:
  return u8(conditions.upsample(inputs["lowres"], spec.data.image_size))


def mean_chroma(spec, inputs: dict) -> np.ndarray:
  train = pipeline.load_split_numpy(spec.data, "train", 20_000)["image"]
  x = train.astype(np.float32) / 127.5 - 1.0
  chroma = (x - np.asarray(conditions.luminance(x))).mean(axis=(0, 1, 2))
  return u8(inputs["gray"] + chroma)


def biharmonic(spec, inputs: dict) -> np.ndarray:
  del spec
  out = [inpaint_biharmonic(np.asarray(img, np.float64), np.asarray(m[..., 0]) < 0.5,
                            channel_axis=-1)
         for img, m in zip(inputs["masked"], inputs["mask"])]
  return u8(np.stack(out))


BASELINES = {"sr": ("bicubic", bicubic), "gray": ("dataset-mean chroma", mean_chroma),
             "inpaint": ("biharmonic (scikit-image)", biharmonic)}


def _has_fd(path: str) -> bool:
  with open(path) as f:
    return "fd" in json.load(f)


def newest_eval(workdir: str) -> str:
  found = sorted(glob.glob(os.path.join(workdir, "eval", "step_*.json")), key=os.path.getmtime)
  found = [f for f in found if _has_fd(f)]
  if not found:
    sys.exit(f"error: {workdir}/eval holds no sample-metric result; run --mode=eval first")
  return found[-1]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--eval_json", default=None, help="the model's result (default: newest)")
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results",
                                               "photo_baselines.jsonl"))
  args = p.parse_args()
  eval_json = args.eval_json or newest_eval(args.workdir)
  with open(eval_json) as f:
    model = json.load(f)
  config = files.load_saved(args.workdir)
  if config is None:
    sys.exit(f"error: {args.workdir} holds no run")
  with config.unlocked():
    config.eval.num_samples = model["num_samples"]
    config.eval.reference_split = model["reference_split"]
    config.eval.feature_net = model["feature_net"]
    config.eval.metrics = ",".join(SET_METRICS)
  spec = spec_lib.parse(config, 1)
  if spec.cond.image not in BASELINES:
    sys.exit(f"error: no baseline for cond.image={spec.cond.image!r}")
  extractor = evaluate.load_extractor(spec)
  if extractor.sha256 != model["feature_net_sha256"]:
    sys.exit("error: the feature network's weights differ from those of the model's result")
  ref = reference.reference_features(spec.data, spec.eval.reference_split,
                                     spec.eval.reference_examples, extractor,
                                     spec.eval.batch_size)
  # The conditions of the model's result (older results do not name their seed: the
  # run's own sample.seed made them).
  spec = dataclasses.replace(spec, sample_set=dataclasses.replace(
      spec.sample_set, num_samples=model["num_samples"],
      seed=model.get("sample_seed", spec.sample_set.seed)))
  inputs, record = inputs_lib.gather(spec, inputs_lib.Given(), None)
  truth = features.extract(extractor, record["reference"], spec.eval.batch_size)["features"]
  name, fn = BASELINES[spec.cond.image]
  images = fn(spec, inputs)
  feats = features.extract(extractor, images, spec.eval.batch_size)["features"]
  scalars = metrics.sample_metrics(SET_METRICS, metrics.SampleSets(ref.features, feats))
  paired = np.linalg.norm(feats - truth, axis=1)
  rows = [{"run": os.path.basename(os.path.normpath(args.workdir)), "task": spec.cond.image,
           "output": f"baseline: {name}", **{k: scalars[k] for k in SET_METRICS},
           "paired_feature_distance": float(paired.mean()),
           "paired_feature_distance_sem": float(paired.std(ddof=1) / np.sqrt(len(paired))),
           "num_samples": len(images), "feature_net": extractor.name},
          {"run": os.path.basename(os.path.normpath(args.workdir)), "task": spec.cond.image,
           "output": f"model (step {model['step']}, {model['sampler']} {model['sampler_steps']})",
           **{k: model[k] for k in SET_METRICS}, "num_samples": model["num_samples"],
           "feature_net": model["feature_net"]}]
  with open(args.out, "a") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
      print(json.dumps(r))


if __name__ == "__main__":
  main()
