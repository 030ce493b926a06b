"""Song et al. (2021), "Score-Based Generative Modeling through SDEs": NCSN++ cont. (VE), CIFAR-10.

Reproduces score_sde's configs/ve/cifar10_ncsnpp_continuous.py (unconditional, not the
"deep" variant). Process: the VE SDE, sigma(t) = sigma_min (sigma_max / sigma_min)^t,
t ~ U(1e-5, 1). score_sde's sigma in [0.01, 50] is for data in [0, 1]; our data is in
[-1, 1], twice the range, so [0.02, 100] (as Karras et al. 2022, App. C). Network
(score_sde's NCSNpp): ch 128, ch_mult (1, 2, 2, 2), 4 res blocks per level, attention at
16x16 (one per up-path level), BigGAN-style resampling blocks with the FIR filter
(1, 3, 3, 1), skip connections scaled by 1/sqrt(2), Gaussian Fourier time features,
progressive input "residual", dropout 0.1. Training: Adam 2e-4, 5,000 warmup steps,
gradient clipping at 1, batch 128, EMA 0.999, 1.3M steps, random flips. Sampling: PC,
1,000 steps, one Langevin corrector step per step at snr 0.16, no clipping.
Paper: FID 2.38, IS 9.83 (Table 3).

How the score parameterisation maps: score_sde's network ends with h / sigma
(scale_by_sigma) and is trained on sum_pixels ||sigma s + z||^2 = ||h + z||^2, i.e. h
regresses -eps and the score is h / sigma. Here the same network (no 1/sigma in it)
regresses eps (prediction "eps", plain MSE) and the score is -eps / sigma: the same
model up to the sign of the output. score_sde sums that loss over the 3,072 pixels
(reduce_mean=False) where we average, so its gradients are 3,072 times ours: the clip
norm and Adam's epsilon are divided by 3,072 to take the same optimizer steps.
Fourier features: score_sde embeds log sigma with frequencies ~ N(0, 16^2); our network
sees t, and log sigma = log sigma_min + t log(sigma_max / sigma_min), so frequencies
~ N(0, (16 log(sigma_max / sigma_min))^2) on t give the same features up to a fixed
phase per frequency, which the following dense layer absorbs.
Progressive paths: the released config has progressive_input="residual" and
progressive="none"; "output_skip" (with "input_skip") is score_sde's choice at high
resolution (e.g. CelebA-HQ 256) and is available as model.progressive="output_skip".

Network: 62,758,787 parameters; score_sde's NCSNpp in this configuration has 62,758,915,
the 128 more being its fixed Fourier frequencies, stored as a (non-trained) parameter
there and a constant here. Published: 63 million (Karras et al. 2022, App. C, for the
released "NCSN++ cont. (VE)" checkpoint).
Not the same in detail: our PC predictor is Euler-Maruyama (score_sde: reverse
diffusion); our grid is t = 1, 0.999, ..., 0.001 and ends with the denoiser's x0
estimate (score_sde: linspace(1, 1e-5, 1000) and a final noise-free step).

Needs cifar10 prepared as ArrayRecord in data_dir (docs/datasets.md). Command (TPU/GPU):
  python -m diffusion_jax.main --config=configs/cifar10_ncsnpp_ve.py \
      --workdir=runs/cifar10_ncsnpp_ve --config.data.data_dir=/path/to/tensorflow_datasets
Not yet run here; no result is claimed.
"""

import math

from diffusion_jax.config import import_sibling

_cifar10 = import_sibling(__file__, "_cifar10.py")

PIXELS = 32 * 32 * 3  # score_sde sums the loss over these; we average.


def get_config():
  c = _cifar10.base()

  f = c.diffusion
  f.schedule = "ve"
  f.num_steps = 0
  f.sigma_min = 0.02
  f.sigma_max = 100.0
  f.prediction = "eps"
  f.weighting = "simple"
  f.time_sampling = "uniform"
  f.t_min = 1e-5

  m = c.model
  m.ch = 128
  m.ch_mult = (1, 2, 2, 2)
  m.num_res_blocks = 4
  m.attn_resolutions = (16,)
  m.dropout = 0.1
  m.num_groups = 32
  m.embedding = "fourier"
  # score_sde's scale 16 on log sigma, moved onto t (see the docstring).
  m.fourier_scale = 16.0 * math.log(f.sigma_max / f.sigma_min)
  m.resblock_updown = True
  m.resample_filter = (1, 3, 3, 1)
  m.skip_rescale = True
  m.up_attn_once = True
  m.progressive_input = "residual"
  m.progressive = "none"

  t = c.training
  t.batch_size = 128
  t.num_steps = 1_300_000
  t.label_dropout = 0.0
  t.ema_decay = 0.999
  t.log_every = 1000
  t.checkpoint_every = 10_000

  o = c.optim
  o.lr = 2e-4
  o.warmup_steps = 5000
  o.lr_schedule = "constant"
  o.grad_clip = 1.0 / PIXELS
  o.eps = 1e-8 / PIXELS
  o.weight_decay = 0.0

  s = c.sample
  s.sampler = "pc"
  s.num_steps = 1000
  s.corrector_steps = 1
  s.corrector_snr = 0.16
  s.clip_denoised = False
  s.guidance_scale = 1.0
  s.num_samples = 64
  s.batch_size = 64
  return c
