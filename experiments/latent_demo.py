"""The 64x64 latent-diffusion demo's measures (issue 15; configs/photo64_*.py):

- the autoencoder's reconstruction PSNR on held-out crops (the test split's photographs
  were never trained on), against bicubic upsampling from 16x16 (768 numbers per crop;
  the latent holds 1,024);
- each diffusion model's training throughput (the median img/s of its training log,
  from runs made one after the other on a quiet machine), sampling throughput (timed
  here, one model after the other, after a call that compiles) and its sample metrics
  (the workdir's `--mode=eval` result).

  python experiments/latent_demo.py --ae=runs/photo64_ae \
      --run=latent:runs/photo64_latent:runs/photo64_latent.log \
      --run=pixel:runs/photo64_pixel:runs/photo64_pixel.log
"""

import argparse
import glob
import json
import os
import re
import statistics
import sys
import time

import jax
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax.config import files  # noqa: E402
from diffusion_jax.data import pipeline  # noqa: E402
from diffusion_jax.run import build, latent, sample as sample_run  # noqa: E402
from diffusion_jax.sampling import inputs as inputs_lib  # noqa: E402
from diffusion_jax.training import mesh as mesh_lib  # noqa: E402
from experiments import machine  # noqa: E402
from experiments.cond_eval import psnr, stats, to_float, u8  # noqa: E402


def reconstruction(ae_workdir: str, num: int, batch: int = 50) -> dict:
  ae = latent.load(ae_workdir)
  config = files.load_saved(ae_workdir)
  ref = pipeline.load_split_numpy(config.data, "test", num)["image"]
  encode, decode = jax.jit(latent.encoder(ae.config)), jax.jit(latent.decoder(ae.config))
  out = []
  for i in range(0, len(ref), batch):
    x = to_float(ref[i:i + batch])
    out.append(u8(decode(ae.params, encode(ae.params, x))))
  rec = np.concatenate(out)
  size = ref.shape[1] // ae.config.factor
  bicubic = np.stack([np.asarray(Image.fromarray(r).resize((size, size), Image.BICUBIC)
                                 .resize(r.shape[:2], Image.BICUBIC)) for r in ref])
  return {"workdir": ae_workdir, "step": ae.step, "test_crops": int(len(ref)),
          "latent_shape": list(ae.latent_shape(ref.shape[1])),
          "scaling_factor": ae.config.scaling_factor,
          "psnr": stats(psnr(rec, ref)),
          f"bicubic_from_{size}x{size}_psnr": stats(psnr(bicubic, ref))}, rec[:8], ref[:8]


def train_speed(log: str) -> dict:
  """From a training log's lines 'step N/M | ... | X img/s | ...' (the first interval,
  which includes compiling, left out)."""
  rates, steps = [], []
  for line in open(log):
    m = re.search(r"step (\d+)/(\d+) .*\| ([\d.]+) img/s", line)
    if m:
      steps.append(int(m.group(1)))
      rates.append(float(m.group(3)))
  compile_s = [float(m.group(1)) for m in re.finditer(r"first step \(with compilation\) "
                                                     r"took ([\d.]+)s", open(log).read())]
  return {"train_img_per_s": statistics.median(rates[1:]) if len(rates) > 1 else None,
          "logged_intervals": len(rates), "steps": steps[-1] if steps else None,
          "first_step_s": compile_s[0] if compile_s else None}


def sample_speed(workdir: str, num: int) -> dict:
  mesh = mesh_lib.make_mesh()
  spec, state, tokenizer = build.restore_run(workdir, mesh)
  params = state.ema_params
  inputs, record = inputs_lib.gather(spec, inputs_lib.Given(), tokenizer)
  inputs = {k: v[:num] for k, v in inputs.items()}
  record = dict(record, count=num)
  t0 = time.perf_counter()
  sample_run.sample_images(spec, params, mesh, inputs, record)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  images = sample_run.sample_images(spec, params, mesh, inputs, record)
  seconds = time.perf_counter() - t0
  return {"sampler": spec.config.sample.sampler, "sampler_steps": spec.config.sample.num_steps,
          "sample_img_per_s": len(images) / seconds, "sample_first_call_s": first,
          "sample_batch": spec.config.sample.batch_size}, images


def metrics(workdir: str) -> dict:
  paths = sorted(glob.glob(os.path.join(workdir, "eval", "step_*_photos-v1.json")))
  if not paths:
    return {}
  with open(paths[-1]) as f:
    res = json.load(f)
  keep = ("step", "fd", "kid", "precision", "recall", "num_samples", "sample_seed")
  return {k: res[k] for k in keep if k in res}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--ae", required=True, help="the autoencoder's workdir")
  p.add_argument("--run", action="append", default=[],
                 help="NAME:WORKDIR:TRAIN_LOG of a diffusion model (repeat)")
  p.add_argument("--num", type=int, default=1000, help="test crops for the reconstruction")
  p.add_argument("--sample-num", type=int, default=64, help="samples timed per model")
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "latent_demo"))
  args = p.parse_args()
  res = {"machine": machine.cpu_model()}
  res["autoencoder"], rec, ref = reconstruction(args.ae, args.num)
  panels = [np.concatenate(list(ref), 1), np.concatenate(list(rec), 1)]
  for spec in args.run:
    name, workdir, log = spec.split(":")
    row = {"workdir": workdir, **train_speed(log), **metrics(workdir)}
    speed, images = sample_speed(workdir, args.sample_num)
    row.update(speed)
    res[name] = row
    panels.append(np.concatenate(list(images[:8]), 1))
  with open(args.out + ".json", "w") as f:
    json.dump(res, f, indent=2)
  Image.fromarray(np.concatenate(panels, 0)).save(args.out + ".png")
  print(json.dumps(res, indent=2))


if __name__ == "__main__":
  main()
