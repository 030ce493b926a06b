"""Song et al. (2021), "Score-Based Generative Modeling through SDEs": DDPM++ cont. (VP), CIFAR-10.

Reproduces score_sde's configs/vp/cifar10_ddpmpp_continuous.py (unconditional, not the
"deep" variant). Process: the continuous VP SDE, beta(t) from 0.1 to 20, t ~ U(1e-5, 1).
Target: eps with the plain MSE averaged over pixels (score_sde: reduce_mean=True, no
likelihood weighting); score_sde's VP score model is this same eps network, its score
being -eps / sigma. Network (score_sde's NCSNpp): ch 128, ch_mult (1, 2, 2, 2), 4 res
blocks per level, attention at 16x16 (one per up-path level), BigGAN-style resampling
blocks with plain box resampling (fir=False), skip connections scaled by 1/sqrt(2),
positional time embedding, dropout 0.1. Training: Adam 2e-4, 5,000 warmup steps,
gradient clipping at 1, batch 128, EMA 0.9999, 1.3M steps, random flips. Sampling:
Euler-Maruyama, 1,000 steps (score_sde: PC sampler, EM predictor, no corrector), no
clipping. Paper: FID 2.55, IS 9.58 (Table 3); 3.16 bits/dim (Table 2).

Network: 61,804,419 parameters, the same count as score_sde's NCSNpp in this
configuration (counted layer by layer); published: 62 million (Karras et al. 2022,
App. C, for the released "DDPM++ cont. (VP)" checkpoint).
Not the same in detail: the time embedding is of 1000 t (score_sde: 999 t); our EM grid
is t = 1, 0.999, ..., 0.001 and ends with the denoiser's x0 estimate, score_sde's is
linspace(1, 1e-3, 1000) and ends with a noise-free EM step.

Needs cifar10 prepared as ArrayRecord in data_dir (docs/datasets.md). Command (TPU/GPU):
  python -m diffusion_jax.main --config=configs/cifar10_ddpmpp_vp.py \
      --workdir=runs/cifar10_ddpmpp_vp --config.data.data_dir=/path/to/tensorflow_datasets
Not yet run here; no result is claimed.
"""

from diffusion_jax.config import import_sibling

_cifar10 = import_sibling(__file__, "_cifar10.py")


def get_config():
  c = _cifar10.base()

  m = c.model
  m.ch = 128
  m.ch_mult = (1, 2, 2, 2)
  m.num_res_blocks = 4
  m.attn_resolutions = (16,)
  m.dropout = 0.1
  m.num_groups = 32
  m.embedding = "positional"
  m.resblock_updown = True
  m.resample_filter = (1, 1)  # fir=False.
  m.skip_rescale = True
  m.up_attn_once = True

  f = c.diffusion
  f.schedule = "vp"
  f.num_steps = 0
  f.beta_min = 0.1
  f.beta_max = 20.0
  f.prediction = "eps"
  f.weighting = "simple"
  f.time_sampling = "uniform"
  f.t_min = 1e-5

  t = c.training
  t.batch_size = 128
  t.num_steps = 1_300_000
  t.label_dropout = 0.0
  t.ema_decay = 0.9999
  t.log_every = 1000
  t.checkpoint_every = 10_000

  o = c.optim
  o.lr = 2e-4
  o.warmup_steps = 5000
  o.lr_schedule = "constant"
  o.grad_clip = 1.0
  o.weight_decay = 0.0

  s = c.sample
  s.sampler = "em"
  s.num_steps = 1000
  s.clip_denoised = False
  s.guidance_scale = 1.0
  s.num_samples = 64
  s.batch_size = 64
  return c
