"""Measures the conditioning applications on their test splits.

  python experiments/cond_eval.py sr --workdir=runs/photo_sr
  python experiments/cond_eval.py gray --workdir=runs/photo_colorize
  python experiments/cond_eval.py inpaint --workdir=runs/photo_inpaint
  python experiments/cond_eval.py text --workdir=runs/shapes_text

Each loads the workdir's config and latest checkpoint, takes the first --num examples
of the test split (photo_patches test crops come from photos held out of training;
shapes_captions test captions use prompts held out of training; --split=train shows the
fit to the training data), samples, scores and writes <out>/<tag>.json and a PNG panel.
Pixel errors are on the 0-255 scale.
"""

import argparse
import ast
import json
import os
import sys
import time

import jax
import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax.conditioning import conditions  # noqa: E402
from diffusion_jax.data import pipeline, shapes  # noqa: E402
from diffusion_jax.evaluation import features  # noqa: E402
from diffusion_jax.models.layers import area_downsample  # noqa: E402
from diffusion_jax.run import build, sample as sample_run, spec as spec_lib  # noqa: E402
from diffusion_jax.sampling import images as images_lib, inputs as inputs_lib  # noqa: E402
from diffusion_jax.sweep import plan  # noqa: E402
from diffusion_jax.training import mesh as mesh_lib  # noqa: E402
from diffusion_jax.run import evaluate  # noqa: E402
from experiments import baseline_metrics, shapes_detector  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
  """Per-image PSNR (dB) over all pixels, or where mask (N, H, W, 1) is 1."""
  err = (a.astype(np.float64) - b.astype(np.float64)) ** 2
  if mask is None:
    mse = err.mean(axis=(1, 2, 3))
  else:
    m = np.broadcast_to(mask, err.shape)
    mse = (err * m).sum(axis=(1, 2, 3)) / np.maximum(m.sum(axis=(1, 2, 3)), 1)
  return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.array([structural_similarity(x, y, channel_axis=-1, data_range=255)
                   for x, y in zip(a, b)])


def detail(x: np.ndarray) -> np.ndarray:
  """Per-image high-frequency energy: mean squared 4-neighbour Laplacian."""
  x = x.astype(np.float64)
  lap = (4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2]
         - x[:, 1:-1, 2:])
  return (lap**2).mean(axis=(1, 2, 3))


def detail_ratio(x: np.ndarray, ref: np.ndarray) -> float:
  """High-frequency energy of x over the reference's, over the whole set (1 = as much
  detail as the truth; blur gives < 1, leftover noise > 1)."""
  return float(detail(x).sum() / detail(ref).sum())


def colourfulness(x: np.ndarray) -> np.ndarray:
  """Hasler and Suesstrunk's colourfulness per image (0 for grayscale)."""
  x = x.astype(np.float64)
  rg = x[..., 0] - x[..., 1]
  yb = 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
  std = np.sqrt(rg.std(axis=(1, 2)) ** 2 + yb.std(axis=(1, 2)) ** 2)
  mean = np.sqrt(rg.mean(axis=(1, 2)) ** 2 + yb.mean(axis=(1, 2)) ** 2)
  return std + 0.3 * mean


def feature_distance(config, mesh, ref: np.ndarray):
  """images -> per-image distance between their features and their own true image's,
  with the dataset's offline feature network (a perceptual distance; 0 = the truth)."""
  spec = spec_of(config, mesh)
  extractor = evaluate.load_extractor(spec)
  feats = lambda x: features.extract(extractor, x, 256)["features"]
  truth = feats(ref)
  return lambda x: np.linalg.norm(feats(x) - truth, axis=1)


def chroma(x: np.ndarray) -> np.ndarray:
  """BT.601 chroma (Cb, Cr) of uint8 RGB, in [-0.5, 0.5]."""
  x = x.astype(np.float64) / 255.0
  y = x @ np.array([0.299, 0.587, 0.114])
  return np.stack([(x[..., 2] - y) / 1.772, (x[..., 0] - y) / 1.402], -1)


def chroma_hellinger(x: np.ndarray, ref: np.ndarray, bins: int = 32) -> float:
  """Hellinger distance between the 2-D chroma histograms of two image sets (0 = the
  same colour distribution, 1 = disjoint)."""
  edges = np.linspace(-0.5, 0.5, bins + 1)
  hist = lambda a: np.histogram2d(*chroma(a).reshape(-1, 2).T, bins=[edges, edges])[0]
  p, q = hist(x), hist(ref)
  p, q = p / p.sum(), q / q.sum()
  return float(np.sqrt(max(0.0, 1.0 - np.sqrt(p * q).sum())))


def flat_chroma_noise(x: np.ndarray, ref: np.ndarray, quantile: float = 0.25) -> float:
  """Chroma high-frequency energy where the true image is flat (the quarter of pixels
  with the least luminance detail), over the truth's there: 1 = as in the truth,
  > 1 colour noise, < 1 smoother."""
  lap = lambda c: (4 * c[:, 1:-1, 1:-1] - c[:, :-2, 1:-1] - c[:, 2:, 1:-1]
                   - c[:, 1:-1, :-2] - c[:, 1:-1, 2:])
  luma = ref.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  flat = np.abs(lap(luma)) <= np.quantile(np.abs(lap(luma)), quantile)
  energy = lambda a: (lap(chroma(a)) ** 2).sum(-1)[flat].mean()
  return float(energy(x) / energy(ref))


def u8(x) -> np.ndarray:
  return np.clip(np.round((np.asarray(x) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_float(x: np.ndarray) -> np.ndarray:
  return x.astype(np.float32) / 127.5 - 1.0


def stats(v) -> dict:
  v = np.asarray(v, np.float64)
  return {"mean": float(v.mean()), "sem": float(v.std(ddof=1) / np.sqrt(len(v)))}


def setup(workdir: str):
  mesh = mesh_lib.make_mesh()
  spec, state, tokenizer = build.restore_run(workdir, mesh)
  return spec.config, mesh, int(state.step), state.ema_params, tokenizer


def spec_of(config, mesh) -> spec_lib.Spec:
  return spec_lib.parse(config, mesh.devices.size)


def sample_repeated(config, mesh, params, inputs: dict, record: dict, k: int,
                    guide=None) -> np.ndarray:
  """k samples per input row: (k, N, H, W, C) uint8."""
  n = len(next(iter(inputs.values())))
  rep = {key: np.concatenate([v] * k) for key, v in inputs.items()}
  images = sample_run.sample_images(spec_of(config, mesh), params, mesh, rep, record,
                                    guide=guide)
  return images.reshape((k, n) + images.shape[1:])


def projected(config, samples: np.ndarray, inputs: dict) -> np.ndarray:
  """The samples moved to satisfy their condition exactly (what sample.project does)."""
  spec = conditions.IMAGE_CONDITIONS[config.cond.image]
  return u8(np.clip(spec.project(to_float(samples), inputs, config.cond), -1, 1))


def split_images(config, num: int, split: str) -> np.ndarray:
  return pipeline.load_split_numpy(config.data, split, num)["image"]


def eval_sr(config, mesh, params, args) -> tuple[dict, list]:
  ref = split_images(config, args.num, args.split)
  f = config.cond.sr_factor
  low = np.asarray(area_downsample(to_float(ref), f))
  bicubic = u8(conditions.upsample(low, config.data.image_size))
  samples = sample_repeated(config, mesh, params, {"lowres": low}, {}, args.samples,
                             args.guide)
  mean = np.round(samples.astype(np.float64).mean(0)).astype(np.uint8)
  low_u8 = u8(low)

  def consistency(x):  # Downsample the output: how far from the input (0-255 levels)?
    d = u8(area_downsample(to_float(x), f)).astype(np.float64) - low_u8
    return np.abs(d).mean(axis=(1, 2, 3)), np.abs(d).max(axis=(1, 2, 3))

  fdist = feature_distance(config, mesh, ref)
  psnr_bicubic = psnr(bicubic, ref)

  def row(x):
    c_mean, c_max = consistency(x)
    return {"psnr": stats(psnr(x, ref)), "psnr_gain_over_bicubic": stats(psnr(x, ref)
                                                                          - psnr_bicubic),
            "ssim": stats(ssim(x, ref)), "feature_distance": stats(fdist(x)),
            "consistency_mae": stats(c_mean), "consistency_max": float(c_max.max()),
            "detail_ratio": detail_ratio(x, ref)}

  res = {"factor": f, "lowres": low.shape[1], "samples_per_input": args.samples,
         "bicubic": row(bicubic),
         "single_sample": row(samples[0]),
         "mean_of_samples": row(mean),
         "single_sample_projected": row(projected(config, samples[0], {"lowres": low})),
         "mean_of_projected_samples": row(np.round(np.mean(
             [projected(config, s_, {"lowres": low}) for s_ in samples], 0)).astype(np.uint8)),
         "sample_diversity_std": float(samples.astype(np.float64).std(0).mean())}
  panel = [low_u8, bicubic, samples[0], samples[1 % args.samples], mean, ref]
  return res, panel


def eval_gray(config, mesh, params, args) -> tuple[dict, list]:
  ref = split_images(config, args.num, args.split)
  gray = np.asarray(conditions.luminance(to_float(ref)))
  samples = sample_repeated(config, mesh, params, {"gray": gray}, {}, args.samples,
                             args.guide)
  gray_u8 = u8(gray)

  def luma_error(x):  # The known part: the output's luminance against the input.
    return np.abs(u8(conditions.luminance(to_float(x))).astype(np.float64) - gray_u8).mean(
        axis=(1, 2, 3))

  fdist = feature_distance(config, mesh, ref)

  def row(x):
    return {"psnr": stats(psnr(x, ref)), "luminance_mae": stats(luma_error(x)),
            "colourfulness": stats(colourfulness(x)),
            "chroma_hellinger": chroma_hellinger(x, ref),
            "flat_chroma_noise": flat_chroma_noise(x, ref),
            "feature_distance": stats(fdist(x))}

  baseline = gray_u8.repeat(3, -1)
  regression = baseline_metrics.mean_chroma(spec_of(config, mesh), {"gray": gray})
  res = {"grayscale_baseline": row(baseline), "mean_chroma_baseline": row(regression),
         "single_sample": row(samples[0]),
         "single_sample_projected": row(projected(config, samples[0], {"gray": gray})),
         "reference_colourfulness": stats(colourfulness(ref)),
         "sample_diversity_std": float(samples.astype(np.float64).std(0).mean())}
  return res, [baseline, regression, samples[0], samples[1 % args.samples], ref]


def eval_inpaint(config, mesh, params, args) -> tuple[dict, list]:
  ref = split_images(config, args.num, args.split)
  x = to_float(ref)
  key = jax.random.key(config.sample.seed)
  masks = np.asarray(conditions.box_masks(key, len(x), x.shape[1], config.cond.hole_min,
                                          config.cond.hole_max))
  masked = x * masks
  samples = sample_repeated(config, mesh, params, {"masked": masked, "mask": masks}, {},
                            args.samples, args.guide)
  hole = 1.0 - masks
  # Baseline: the hole filled with the mean colour of each image's known pixels.
  fill = (ref * masks).sum((1, 2), keepdims=True) / masks.sum((1, 2), keepdims=True)
  baseline = np.round(ref * masks + fill * hole).astype(np.uint8)

  def known_mae(y):
    m = np.broadcast_to(masks, y.shape)
    return (np.abs(y.astype(np.float64) - ref) * m).sum((1, 2, 3)) / m.sum((1, 2, 3))

  def hole_detail(y):  # Texture with the hole filled, against the truth's (1 = as detailed).
    return detail_ratio(np.round(y * hole + ref * masks), ref)

  fdist = feature_distance(config, mesh, ref)
  biharmonic = baseline_metrics.biharmonic(None, {"masked": masked, "mask": masks})

  def row(y):  # The feature distance of the hole: known pixels set to the truth.
    return {"known_mae": stats(known_mae(y)), "hole_psnr": stats(psnr(y, ref, hole)),
            "hole_feature_distance": stats(fdist(np.round(y * hole + ref * masks)
                                                 .astype(np.uint8))),
            "detail_ratio": hole_detail(y)}

  res = {"hole_fraction": float(hole.mean()), "mean_fill_baseline": row(baseline),
         "biharmonic_baseline": row(biharmonic),
         "single_sample": row(samples[0]),
         "single_sample_projected": row(projected(
             config, samples[0], {"masked": masked, "mask": masks})),
         "sample_diversity_std_in_hole": float(
             (samples.astype(np.float64).std(0) * hole).sum() / (hole.sum() * 3))}
  return res, [u8(masked), biharmonic, samples[0], samples[1 % args.samples], ref]


def eval_text(config, mesh, params, args) -> tuple[dict, list]:
  tok = args.tokenizer
  if args.split == "held_out":  # Every held-out single-shape phrase, --samples times each.
    prompts = [shapes.phrase_text(*p) for p in sorted(shapes.HELD_OUT)] * args.samples
    split = {"image": np.stack([shapes.render([p]) for p in sorted(shapes.HELD_OUT)]
                               * args.samples)}
  else:
    split = pipeline.load_split_numpy(config.data, args.split, args.num, captions=True)
    prompts = list(split["caption"])
  spec = spec_of(config, mesh)
  inputs, record = inputs_lib.gather(spec, inputs_lib.Given(prompts=prompts), tok)
  images = sample_run.sample_images(spec, params, mesh, inputs, record, guide=args.guide)
  res = shapes_detector.score(images, prompts)
  args.by_value = shapes_detector.score_by_value(images, prompts)
  res["split"] = args.split
  res["text_guidance_scale"] = config.sample.text_guidance_scale
  return res, [images, split["image"]]


EVALS = {"sr": eval_sr, "gray": eval_gray, "inpaint": eval_inpaint, "text": eval_text}


def save_panel(columns: list, path: str, rows: int = 12, scale: int = 3) -> None:
  """Columns side by side, one example per row."""
  rows = min(rows, len(columns[0]))
  cols = [images_lib.as_rgb(c[:rows], c.shape[1] if c.shape[1] >= 32 else 32) for c in columns]
  h, pad = cols[0].shape[1] * scale, 2
  canvas = np.zeros((rows * (h + pad) + pad, len(cols) * (h + pad) + pad, 3), np.uint8)
  for r in range(rows):
    for j, c in enumerate(cols):
      y, x = pad + r * (h + pad), pad + j * (h + pad)
      canvas[y:y + h, x:x + h] = c[r].repeat(scale, 0).repeat(scale, 1)
  Image.fromarray(canvas).save(path)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("task", choices=sorted(EVALS))
  p.add_argument("--workdir", required=True)
  p.add_argument("--num", type=int, default=200, help="test examples")
  p.add_argument("--samples", type=int, default=2, help="samples per input (image tasks)")
  p.add_argument("--split", default="test",
                 help="the split (train measures fit to the training data); text: also held_out "
                      "(the held-out phrases)")
  p.add_argument("--guidance", type=float, default=None, help="override the guidance scale")
  p.add_argument("--sampler", default=None, help="override sample.sampler")
  p.add_argument("--steps", type=int, default=None, help="override sample.num_steps")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="override a config field, e.g. sample.guidance_interval=(0.28,5.42)")
  p.add_argument("--guide_from", default=None,
                 help="WORKDIR[:STEP] of a weaker model: autoguidance, as in main")
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results"))
  p.add_argument("--tag", default=None)
  args = p.parse_args()
  config, mesh, step, params, args.tokenizer = setup(args.workdir)
  args.step = step
  config.sample.project = False  # Raw samples; the projection is scored separately.
  if args.guidance is not None:
    key = {"text": "text_guidance_scale"}.get(args.task, "image_guidance_scale")
    config.sample[key] = args.guidance
  if args.sampler:
    config.sample.sampler = args.sampler
  if args.steps:
    config.sample.num_steps = args.steps
  overrides = {}
  for item in args.set:
    field, value = item.split("=", 1)
    try:
      overrides[field] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[field] = value  # A string.
  plan.apply(config, overrides)  # Unknown fields and wrong types: config errors.
  spec = spec_of(config, mesh)
  guide = sample_run.checked_guide(spec, args.guide_from, mesh.devices.size, args.tokenizer)
  args.guide = sample_run.load_guide(spec, guide, args.guide_from, mesh)
  config.sample.batch_size = min(config.sample.batch_size, 256)
  t0 = time.perf_counter()
  res, panel = EVALS[args.task](config, mesh, params, args)
  res.update(workdir=args.workdir, step=step, split=args.split, num=args.num,
             sampler=config.sample.sampler, overrides=args.set, guide_from=args.guide_from,
             sampler_steps=config.sample.num_steps, seconds=round(time.perf_counter() - t0, 1))
  tag = args.tag or f"cond_{args.task}"
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, tag + ".json"), "w") as f:
    json.dump(res, f, indent=2)
  if getattr(args, "by_value", None):  # Text: per attribute value, a table of its own.
    with open(os.path.join(args.out, tag + "_by_value.json"), "w") as f:
      json.dump(args.by_value, f, indent=2)
  save_panel(panel, os.path.join(args.out, tag + ".png"))
  print(json.dumps(res, indent=2))


if __name__ == "__main__":
  main()
