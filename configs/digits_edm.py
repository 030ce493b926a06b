"""Digits with EDM (Karras et al. 2022): sigma in [0.002, 80], preconditioned F target
(whose plain loss is EDM's lambda(sigma)-weighted loss), log-normal training sigmas,
sampled with Heun on the rho = 7 grid (18 steps, 35 NFE).

Command:
  python -m diffusion_jax.main --config=configs/digits_edm.py --workdir=runs/digits_edm
Result: experiments/README.md (NFE study). Smoke test: --config=configs/digits_edm.py:runlocal
"""

from diffusion_jax.config import import_sibling

digits = import_sibling(__file__, "digits.py")


def get_config(arg: str = ""):
  c = digits.get_config(arg)
  f = c.diffusion
  f.schedule = "edm"
  f.num_steps = 0
  f.sigma_min, f.sigma_max, f.rho = 0.002, 80.0, 7.0
  f.prediction = "edm"
  f.sigma_data = 0.5
  f.time_sampling = "lognormal"
  f.p_mean, f.p_std = -1.2, 1.2
  s = c.sample
  s.sampler = "heun"
  s.grid = "edm"
  s.num_steps = 5 if arg == "runlocal" else 18
  s.t_min = 1e-3
  s.lambda_max = 80.0
  return c
