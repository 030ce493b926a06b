"""Digits with VDM's learned noise schedule (Kingma et al. 2021): variance preserving,
gamma(t) = -log-SNR(t) a monotone network trained with the U-Net (endpoints start at
-13.3 and 5, the fixed linear_logsnr schedule's), eps target, VDM's continuous-time
bound as the loss (weighting "elbo" plus the prior and decoder terms), t ~ U(t_min, 1);
the schedule's shape minimises the bound's variance (docs/processes-and-samplers.md).
Sampling, --mode=eval bits/dim (ODE) and periodic evaluation use the trained (EMA)
schedule.

Command:
  python -m diffusion_jax.main --config=configs/digits_vdm.py --workdir=runs/digits_vdm
  python -m diffusion_jax.main --workdir=runs/digits_vdm --mode=eval \
      --config.eval.metrics=bpd --config.eval.method=ode --config.eval.batch_size=100 \
      --config.eval.ode_steps=100
Expected (experiments/results.json likelihood_vdm_ode, `python -m diffusion_jax.reproduce
likelihood_vdm_ode`): 4.34 bits/dim (standard error 0.023) on the 299 test digits, 17
minutes for both commands on a loaded 2-core AMD EPYC; the same with the schedule fixed
at its start gives 4.30 (likelihood_vdm_fixed_ode: learning it did not lower bits/dim
here), the fixed DDPM schedule with the unweighted eps loss 5.01 (likelihood_vp_ode). Smoke test:
--config=configs/digits_vdm.py:runlocal
"""

from diffusion_jax.config import import_sibling

digits = import_sibling(__file__, "digits.py")


def get_config(arg: str = ""):
  c = digits.get_config(arg)
  f = c.diffusion
  f.schedule = "learned"
  f.num_steps = 0
  f.log_snr_max, f.log_snr_min = 13.3, -5.0
  f.learned_hidden = 1024
  f.prediction = "eps"
  f.weighting = "elbo"
  f.time_sampling = "uniform"
  return c
