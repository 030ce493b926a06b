"""Sample quality against NFE for every sampler, on trained digits models.

  python experiments/nfe_study.py --out=experiments/results \
      vp_eps=configs/digits.py:runs/digits edm=configs/digits_edm.py:runs/digits_edm \
      flow=configs/digits_flow.py:runs/digits_flow

For each model and sampler it draws --num-samples digits (balanced classes, no guidance)
and scores them with experiments/digits_eval.py (classifier agreement, pixel Frechet
distance). Writes <tag>.json, <tag>.md and <tag>.png under --out. A second pass with
stochastic samplers: --samplers=ddpm,heun_churn --nfes=10,20,50,100 --no-reference
--tag=nfe_study_stochastic.
"""

import argparse
import json
import os
import sys
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

from diffusion_jax import config as config_lib  # noqa: E402
from diffusion_jax.core import samplers  # noqa: E402
from diffusion_jax.run import build  # noqa: E402
from diffusion_jax.sampling import generate  # noqa: E402
from diffusion_jax.sampling.inputs import balanced_labels  # noqa: E402
from diffusion_jax.training import mesh as mesh_lib  # noqa: E402
import digits_eval  # noqa: E402

# label -> (sampler, grid, options); NFE -> grid steps N per sampler (heun: NFE = 2N - 1).
SAMPLERS = {
    "ddim": ("ddim", "uniform", {}),
    "euler": ("euler", "edm", {}),
    "heun": ("heun", "edm", {}),
    "dpmpp_2m": ("dpmpp_2m", "edm", {}),
    "ddpm": ("ddpm", "uniform", {}),
    # EDM's stochastic Heun (their ImageNet settings).
    "heun_churn": ("heun", "edm", {"churn": 40.0, "churn_min": 0.05, "churn_max": 50.0,
                                   "churn_noise": 1.003}),
}
NFES = [5, 10, 20, 50, 100]
REFERENCE = ("ddpm", "uniform", 1000)


def load_config(spec: str):
  return config_lib.load(os.path.join(ROOT, spec))


def steps_for(name: str, nfe: int) -> int:
  return (nfe + 1) // 2 if name == "heun" else nfe


def run_model(config, workdir, num_samples, mesh, labels_used, nfes, reference=True):
  run, state, _ = build.restore_run(workdir, mesh, config)
  model, diff = build.model(run), run.diffusion
  labels = balanced_labels(num_samples, config.data.num_classes)
  shape = (config.data.image_size,) * 2 + (config.data.channels,)
  rows = []
  settings = [(label, *SAMPLERS[label], steps_for(SAMPLERS[label][0], k))
              for label in labels_used for k in nfes]
  if reference:
    settings.append(("ddpm_1000", REFERENCE[0], REFERENCE[1], {}, REFERENCE[2]))
  for label, name, grid, opts, steps in settings:
    if diff.schedule.num_steps and steps > diff.schedule.num_steps:
      continue
    cfg = samplers.SamplerConfig(sampler=name, num_steps=steps, grid=grid,
                                 lambda_max=80.0 if grid == "edm" else config.sample.lambda_max,
                                 t_max=min(1.0, config.sample.t_max), **opts)
    fn = generate.make_sample_fn(model, diff, cfg, shape, mesh)
    t0 = time.perf_counter()
    images = generate.generate(fn, state.ema_params, {"label": labels}, num_samples, 7, mesh)
    scores = digits_eval.evaluate(images, labels)
    rows.append({"sampler": label, "grid": grid, "steps": steps, "nfe": samplers.nfe(cfg),
                 "seconds": time.perf_counter() - t0,
                 **{k: scores[k] for k in ("classifier_agreement", "frechet_pixels",
                                           "frechet_real_vs_real")}})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def write_outputs(results: dict, out: str, tag: str, labels_used, nfes) -> None:
  with open(os.path.join(out, f"{tag}.json"), "w") as f:
    json.dump(results, f, indent=2)
  lines = ["| model | sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " | ancestral, NFE 1000 |",
           "|---|---|" + "---|" * (len(nfes) + 1)]
  for model, rows in results.items():
    ref = [r for r in rows if r["sampler"] == "ddpm_1000"]
    ref_s = f"{ref[0]['frechet_pixels']:.1f} / {100 * ref[0]['classifier_agreement']:.0f}%" if ref else "-"
    for name in labels_used:
      cells = []
      for n in nfes:
        # heun's NFE is 2N - 1: shown in the column of 2N.
        r = [r for r in rows if r["sampler"] == name and r["nfe"] in (n, n - 1)]
        cells.append(f"{r[0]['frechet_pixels']:.1f} / {100 * r[0]['classifier_agreement']:.0f}%"
                     if r else "-")
      lines.append(f"| {model} | {name} | " + " | ".join(cells) + f" | {ref_s} |")
  with open(os.path.join(out, f"{tag}.md"), "w") as f:
    ref = next(iter(results.values()))[0]["frechet_real_vs_real"]
    f.write("Pixel Frechet distance / classifier agreement (500 samples, no guidance; "
            f"real vs real at this size: {ref:.1f}). heun's NFE is 2N - 1 (5, 9, 19, 49, 99).\n\n")
    f.write("\n".join(lines) + "\n")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
  for ax, (model, rows) in zip(axes[0], results.items()):
    for name in labels_used:
      rs = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["nfe"])
      ax.plot([r["nfe"] for r in rs], [r["frechet_pixels"] for r in rs], "o-", label=name)
    for r in rows:
      if r["sampler"] == "ddpm_1000":
        ax.axhline(r["frechet_pixels"], color="k", ls="--", label="ancestral, 1000")
      ax.axhline(r["frechet_real_vs_real"], color="gray", ls=":")
    ax.set_xscale("log"); ax.set_yscale("log")
    ax.set_xlabel("NFE"); ax.set_ylabel("pixel Frechet distance"); ax.set_title(model)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, f"{tag}.png"), dpi=100)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("models", nargs="+", help="name=config[:arg]:workdir")
  p.add_argument("--out", required=True)
  p.add_argument("--num-samples", type=int, default=500)
  p.add_argument("--samplers", default="ddim,euler,heun,dpmpp_2m",
                 help=f"comma-separated, from {sorted(SAMPLERS)}")
  p.add_argument("--nfes", default=",".join(map(str, NFES)))
  p.add_argument("--no-reference", action="store_true", help="skip ancestral at NFE 1000")
  p.add_argument("--tag", default="nfe_study", help="output file names")
  args = p.parse_args()
  labels_used = args.samplers.split(",")
  unknown = [l for l in labels_used if l not in SAMPLERS]
  if unknown:
    sys.exit(f"error: unknown samplers {unknown}; known: {sorted(SAMPLERS)}")
  nfes = [int(v) for v in args.nfes.split(",")]
  os.makedirs(args.out, exist_ok=True)
  mesh = mesh_lib.make_mesh()
  results = {}
  for spec in args.models:
    name, _, rest = spec.partition("=")
    cfg_spec, _, workdir = rest.rpartition(":")
    results[name] = run_model(load_config(cfg_spec), workdir, args.num_samples, mesh,
                              labels_used, nfes, not args.no_reference)
    write_outputs(results, args.out, args.tag, labels_used, nfes)


if __name__ == "__main__":
  main()
