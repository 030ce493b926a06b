"""Kingma et al. (2021), "Variational Diffusion Models" (VDM): CIFAR-10 without augmentation.

Reproduces google-research/vdm's configs/cifar10.py with a fixed noise schedule.
Network (VDM's ScoreUNet): 32 residual blocks of 128 channels with no downsampling
(one U-Net level at 32x32: ch_mult (1,)), 33 on the way up, and one attention layer
between two blocks in the middle, none elsewhere; Fourier features sin/cos(2^k 2 pi x),
k = 6, 7, of the input concatenated to it; dropout 0.1. Process: variance preserving with
log-SNR linear in t from 13.3 to -5 (VDM's gamma = -log-SNR from -13.3 to 5). Loss: the
continuous-time ELBO (weighting "elbo": gamma'(t) / 2 on the eps error, up to VDM's
constant bits/dim scale), t ~ U(0, 1). Training: AdamW (0.9, 0.99), lr 2e-4 after 100
warmup steps, weight decay 0.01, no gradient clipping, batch 128, EMA 0.9999, 10M steps,
no flips. Sampling: ancestral, 1,000 steps. Result: the repository's released checkpoint
evaluates to 2.637 bits/dim on the test set, which its README gives as the paper's 2.64.

Network: 30,586,243 parameters; VDM's ScoreUNet with this config has 30,578,179 (plus 2
for its learnable schedule endpoints); no count is published. Ours has 8,576 more: the
bias of each block's embedding projection (VDM's has none; 67 blocks x 128), less 512
for the scalar conditioning input VDM feeds to its first dense layer.
Not the same in detail: the schedule is fixed at VDM's initial endpoints (the released
config learns them: gamma_type="learnable_scalar"); VDM also adds its input to the
network's output ("base measure"), draws times antithetically, and excludes biases from
weight decay; --mode=eval computes bits/dim by the probability-flow ODE, not VDM's
continuous-time ELBO.

Needs cifar10 prepared as ArrayRecord in data_dir (docs/datasets.md). Command (TPU/GPU):
  python -m diffusion_jax.main --config=configs/cifar10_vdm.py \
      --workdir=runs/cifar10_vdm --config.data.data_dir=/path/to/tensorflow_datasets
Not yet run here; no result is claimed.
"""

from diffusion_jax.config import import_sibling

_cifar10 = import_sibling(__file__, "_cifar10.py")


def get_config():
  c = _cifar10.base(random_flip=False)

  m = c.model
  m.ch = 128
  m.ch_mult = (1,)  # One level: no downsampling.
  m.num_res_blocks = 32
  m.attn_resolutions = ()  # Only the middle attention.
  m.dropout = 0.1
  m.num_groups = 32
  m.input_fourier = (6, 7)

  f = c.diffusion
  f.schedule = "linear_logsnr"
  f.num_steps = 0
  f.log_snr_max = 13.3
  f.log_snr_min = -5.0
  f.prediction = "eps"
  f.weighting = "elbo"
  f.time_sampling = "uniform"
  f.t_min = 1e-5

  t = c.training
  t.batch_size = 128
  t.num_steps = 10_000_000
  t.label_dropout = 0.0
  t.ema_decay = 0.9999
  t.log_every = 1000
  t.checkpoint_every = 10_000

  o = c.optim
  o.lr = 2e-4
  o.warmup_steps = 100
  o.lr_schedule = "constant"
  o.grad_clip = 0.0
  o.weight_decay = 0.01
  o.b1, o.b2, o.eps = 0.9, 0.99, 1e-8

  s = c.sample
  s.sampler = "ddpm"
  s.num_steps = 1000
  s.clip_denoised = False
  s.guidance_scale = 1.0
  s.num_samples = 64
  s.batch_size = 64
  return c
