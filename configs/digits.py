"""CPU demo: class-conditional DDPM on scikit-learn's 8x8 digits (bundled, offline).

Command:
  python -m diffusion_jax.main --config=configs/digits.py --workdir=runs/digits
Expected: finishes in under 10 minutes on 2 CPU cores and writes
runs/digits/samples/step_<N>.png (one row per digit). Measured result (1,000 samples,
`python experiments/digits_eval.py --workdir=runs/digits`): see experiments/README.md.

Smoke-test variant (a few steps, seconds): --config=configs/digits.py:runlocal

Sweep (`get_sweep`, docs/sweeps.md): the example study of experiments/README.md,
learning rate x EMA decay x loss weighting, 8 trials of 1,000 steps:
  python -m diffusion_jax.sweep --config=configs/digits.py --workdir=runs/digits_sweep \
      --config.training.num_steps=1000 --config.sample.num_samples=500 \
      --config.sample.batch_size=500
"""

from diffusion_jax.config import defaults as default
from diffusion_jax.sweep import space


def get_config(arg: str = ""):
  c = default.get_config()
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
  """Learning rate x EMA decay x loss weighting (simple vs min-SNR, gamma 5), ranked by
  the final training loss: the one metric every run reports until periodic
  evaluation does. The :runlocal sweep is two trials of the smoke test."""
  if arg == "runlocal":
    return space.Sweep(grid=space.product({"training.ema_decay": [0.99, 0.999]}),
                       metric="loss", mode="min")
  return space.Sweep(
      grid=space.product({"optim.lr": [1e-3, 3e-3], "training.ema_decay": [0.99, 0.999],
                          "diffusion.weighting": ["simple", "min_snr"]}),
      metric="loss", mode="min")
