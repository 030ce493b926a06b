"""Digits with rectified flow / flow matching: x_t = (1 - t) x_0 + t eps, velocity
target, uniform t; sampled with Euler on the probability-flow ODE.

Command:
  python -m diffusion_jax.main --config=configs/digits_flow.py --workdir=runs/digits_flow
Result: experiments/README.md (NFE study). Smoke test: --config=configs/digits_flow.py:runlocal
"""

from diffusion_jax.config import import_sibling

digits = import_sibling(__file__, "digits.py")


def get_config(arg: str = ""):
  c = digits.get_config(arg)
  f = c.diffusion
  f.schedule = "flow"
  f.num_steps = 0
  f.prediction = "flow"
  f.t_min = 1e-3
  s = c.sample
  s.sampler = "euler"
  s.grid = "uniform"
  s.num_steps = 5 if arg == "runlocal" else 50
  # The grid starts where sigma/alpha = sample.lambda_max (default 160: t = 0.9938);
  # alpha(1) = 0, so t = 1 is never a start. The likelihood's prior likewise
  # (eval.lambda_max).
  return c
