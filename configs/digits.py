"""CPU demo: class-conditional DDPM on scikit-learn's 8x8 digits (bundled, offline).

Command:
  python -m diffusion_jax.main --config=configs/digits.py --workdir=runs/digits
Expected: finishes in under 10 minutes on 2 CPU cores and writes
runs/digits/samples/step_<N>.png (one row per digit). Measured result (1,000 samples,
`python experiments/digits_eval.py --workdir=runs/digits`): see experiments/README.md.

Smoke-test variant (a few steps, seconds): --config=configs/digits.py:runlocal

Sweep (`get_sweep`, docs/sweeps.md): the example study of experiments/README.md,
learning rate x loss weighting, 4 trials of 600 steps ranked by the sample quality each
run measures (FD of 500 DDIM-20 samples in digits-v1 features, at steps 300 and 600):
  python -m diffusion_jax.sweep --config=configs/digits.py --workdir=runs/digits_sweep
"""

from diffusion_jax.config import defaults as default
from diffusion_jax.sweep import space


def get_config(arg: str = ""):
  c = default.get_config()
  # 16 channels for 3,500 steps: the 32-channel U-Net's quality (FD, KID, precision,
  # recall) at about half its training time, so the demo keeps its time on slower CPUs
  # (experiments/README.md, "Less compute for the same quality?").
  c.model.ch = 16
  c.training.num_steps = 3500
  c.sample.guidance_scale = 1.5  # Agreement vs diversity: see experiments/README.md.
  if arg == "runlocal":
    c.training.num_steps = 6
    c.training.log_every = 2
    c.training.checkpoint_every = 3
    c.optim.warmup_steps = 2
    c.sample.num_samples = 20
    c.sample.batch_size = 20
    c.sample.num_steps = 5
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/digits.py (known: runlocal)")
  return c


def get_sweep(arg: str = ""):
  """Learning rate x loss weighting (simple vs min-SNR, gamma 5), ranked by the final FD
  (digits-v1 features, periodic evaluation): the training loss cannot rank runs whose
  weightings differ. The :runlocal sweep is the smoke test with two seeds (one program:
  a seed is data, where a learning rate or EMA decay is compiled in)."""
  if arg == "runlocal":
    return space.Sweep(grid=space.product({"seed": [0, 1]}), metric="loss", mode="min")
  study = {"training.num_steps": [600], "training.checkpoint_every": [300],
           "training.sample_at_end": [False], "eval.every_steps": [300],
           "eval.metrics": ["fd,kid"], "eval.num_samples": [500],
           "sample.num_steps": [20], "sample.batch_size": [250]}
  return space.Sweep(
      grid=space.product({"optim.lr": [1e-3, 3e-3],
                          "diffusion.weighting": ["simple", "min_snr"], **study}),
      metric="eval/fd", mode="min")
