"""Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models"
(EDM): class-conditional CIFAR-10 with the DDPM++ network (their "cond-vp" model).

Reproduces EDM's `train.py --cond=1 --arch=ddpmpp --precond=edm` without augmentation.
Network (EDM's SongUNet for ddpmpp): ch 128, ch_mult (2, 2, 2) (config C: the 4x4 level
removed, 256 channels from 32x32 down), 4 res blocks per level, attention at 16x16 (one per
up-path level), BigGAN-style resampling blocks with the box filter (1, 1), skip
connections scaled by 1/sqrt(2), positional noise embedding, dropout 0.13; the class
label's embedding is added to the noise embedding. Process and loss: EDM's (schedule,
prediction "edm"): D = c_skip x + c_out F(c_in x; sigma), sigma_data 0.5, log sigma ~
N(-1.2, 1.2^2); the plain MSE of the F target is EDM's lambda(sigma) = 1 / c_out^2
weighting of the denoiser error. Training: Adam (0.9, 0.999) at 1e-3 with a 10 Mimg
(19,531-step) warmup, no gradient clipping, batch 512, 200 Mimg (390,625 steps), EMA
half-life 0.5 Mimg (decay 0.5^(512 / 500,000) per step). Sampling: deterministic Heun on
the rho = 7 grid from sigma 80 to 0.002, 18 steps (35 NFE), no clipping.
Paper: FID 1.79 (Table 2, config F, which adds augmentation; see below).

Network: 55,738,371 parameters; EDM's SongUNet in this configuration has 55,734,147
(55,735,299 with the 9-input augmentation embedding of config F). The 4,224 more are
our label embedding: an 11 x 512 table (10 classes and the null label) added after the
embedding MLP, where EDM adds Linear(10 -> 128) of the one-hot label before it.
Published: "about 56 million" for the 32x32 models (Karras et al. 2022, App. F.3).
Not the same in detail: augmentation is off (EDM's non-leaking geometric augmentation,
probability 0.12: configs/cifar10_edm_aug.py; config E of Table 2 has none); EDM then
relies on that pipeline for x-flips and disables dataset flips, so with it off we keep
plain random flips; the network sees t (EDM: c_noise = ln(sigma) / 4); the EMA decay is
constant (EDM caps the half-life at 0.05 times the images seen so far).

Needs cifar10 prepared as ArrayRecord in data_dir (docs/datasets.md). Command (GPUs/TPU):
  python -m diffusion_jax.main --config=configs/cifar10_edm_cond.py \
      --workdir=runs/cifar10_edm_cond --config.data.data_dir=/path/to/tensorflow_datasets
Not yet run here; no result is claimed.
"""

from diffusion_jax.config import import_sibling

_cifar10 = import_sibling(__file__, "_cifar10.py")

BATCH = 512


def get_config():
  c = _cifar10.base(num_classes=10)

  m = c.model
  m.ch = 128
  m.ch_mult = (2, 2, 2)
  m.num_res_blocks = 4
  m.attn_resolutions = (16,)
  m.dropout = 0.13
  m.num_groups = 32
  m.embedding = "positional"
  m.resblock_updown = True
  m.resample_filter = (1, 1)
  m.skip_rescale = True
  m.up_attn_once = True

  f = c.diffusion
  f.schedule = "edm"
  f.num_steps = 0
  f.sigma_min, f.sigma_max, f.rho = 0.002, 80.0, 7.0
  f.prediction = "edm"
  f.sigma_data = 0.5
  f.weighting = "simple"  # On the F target: EDM's lambda(sigma) weighting.
  f.time_sampling = "lognormal"
  f.p_mean, f.p_std = -1.2, 1.2

  t = c.training
  t.batch_size = BATCH
  t.num_steps = 200_000_000 // BATCH
  t.label_dropout = 0.0
  t.ema_decay = 0.5 ** (BATCH / 500_000)  # Half-life 0.5 Mimg.
  t.log_every = 1000
  t.checkpoint_every = 5000  # EDM: a snapshot every 2.5 Mimg (4,883 steps).

  o = c.optim
  o.lr = 1e-3
  o.warmup_steps = 10_000_000 // BATCH
  o.lr_schedule = "constant"
  o.grad_clip = 0.0
  o.weight_decay = 0.0
  o.b1, o.b2, o.eps = 0.9, 0.999, 1e-8

  s = c.sample
  s.sampler = "heun"
  s.grid = "edm"
  s.rho = 7.0
  s.num_steps = 18
  s.t_min = 1e-6  # sigma(t_min) = 0.002, EDM's last nonzero noise level.
  s.lambda_max = 80.0
  s.churn = 0.0
  s.clip_denoised = False
  s.guidance_scale = 1.0
  s.num_samples = 100
  s.batch_size = 100
  return c
