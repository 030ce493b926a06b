"""CPU demo: class-conditional DDPM on scikit-learn's 8x8 digits (bundled, offline).

Command:
  python -m diffusion_jax.main --config=configs/digits.py --workdir=runs/digits
Expected: finishes in under 10 minutes on 2 CPU cores and writes
runs/digits/samples/step_<N>.png (one row per digit). Measured result (1,000 samples,
`python experiments/digits_eval.py --workdir=runs/digits`): see experiments/README.md.

Smoke-test variant (a few steps, seconds): --config=configs/digits.py:runlocal
"""

from diffusion_jax.config import defaults as default


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
