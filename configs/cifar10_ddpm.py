"""Ho et al. (2020), "Denoising Diffusion Probabilistic Models", CIFAR-10 (unconditional).

The 35.7M-parameter network (35,746,307 parameters), linear betas 1e-4..0.02 with
T = 1000, eps prediction, Adam 2e-4 with 5,000 warmup steps, batch 128, gradient
clipping at 1, EMA 0.9999, 800k steps, random flips. Paper: FID 3.17, IS 9.46
(1000-step ancestral sampling from x_T with step variance beta_t, their "fixedlarge").
Needs cifar10 prepared as ArrayRecord in data_dir (docs/datasets.md).

Command (TPU/GPU):
  python -m diffusion_jax.main --config=configs/cifar10_ddpm.py --workdir=runs/cifar10_ddpm \
      --config.data.data_dir=/path/to/tensorflow_datasets
Not yet run here (no accelerator, no CIFAR-10 offline); no result is claimed.
"""

from diffusion_jax.config import import_sibling

_cifar10 = import_sibling(__file__, "_cifar10.py")


def get_config():
  c = _cifar10.base()

  m = c.model
  m.ch = 128
  m.ch_mult = (1, 2, 2, 2)
  m.num_res_blocks = 2
  m.attn_resolutions = (16,)
  m.dropout = 0.1
  m.num_groups = 32

  f = c.diffusion
  f.schedule = "linear"
  f.num_steps = 1000
  f.beta_start = 1e-4
  f.beta_end = 0.02
  f.prediction = "eps"

  t = c.training
  t.batch_size = 128
  t.num_steps = 800_000
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
  s.sampler = "ddpm"
  s.num_steps = 1000
  s.ddpm_variance = "fixedlarge"  # Their CIFAR-10 samples: sigma_t^2 = beta_t.
  s.clip_denoised = True  # Their sampler clips x0_hat to [-1, 1].
  s.t_max, s.lambda_max = 1.0, float("inf")  # From x_T (sigma/alpha = 157 there).
  s.guidance_scale = 1.0
  s.num_samples = 64
  s.batch_size = 64
  return c
