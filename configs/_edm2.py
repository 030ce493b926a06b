"""Shared parts of the EDM2-sized configs (Karras et al. 2024, "Analyzing and Improving
the Training Dynamics of Diffusion Models"): class-conditional ImageNet 512x512 in the
64x64x4 latent space of Stable Diffusion's VAE (not an experiment by itself).

EDM2's network, in this U-Net's terms: channels C, 2C, 3C, 4C at 64, 32, 16, 8 (latent
pixels), 3 blocks per level on the way down and 4 on the way up, self-attention in every
block at 16 and 8 and in the first middle block, residual blocks that resample, a 4C
embedding of the noise level to which the class label's is added. Sizes: C = 192 (S,
280M parameters), 384 (XL, 1119M): EDM2's Table 2.

What remains different from EDM2's network (config G), on purpose or for want of an option:
  - EDM2's layers are magnitude-preserving: weights normalised to unit norm in every
    forward pass (forced weight normalisation), no biases, no GroupNorm (pixel
    normalisation of the inputs instead), magnitude-preserving SiLU, sums and concatenations
    with fixed weights (0.3), and a learned gain on the output and on each block's
    embedding. This U-Net has ordinary convolutions with biases, GroupNorm (32 groups),
    plain SiLU and residual sums scaled by 1/sqrt(2) (model.skip_rescale).
  - EDM2 embeds c_noise = ln(sigma) / 4 with random Fourier features and one linear
    layer; this U-Net embeds t positionally through two linear layers (+16 C^2 parameters).
  - EDM2's first encoder block of a level maps the channels with a 1x1 skip before its
    3x3 convolutions (which then see the new width); here the first 3x3 convolution does
    (-81 C^2). EDM2's resampling blocks keep the identity on the skip path; here they
    have a 1x1 convolution (+43 C^2). The label table has a null row (1001 x 4C).
    With the biases and GroupNorm scales: 597,345 fewer parameters than EDM2-S's UNet
    (280,212,709 by experiments/reference_counts.py; Table 2: 280M), 2,816,673 fewer than
    EDM2-XL's (1,119,283,621; Table 2: 1119M).
  - Attention heads: EDM2 has 64 channels per head; here one head count for every level
    (model.num_heads must divide every level's width). The count does not depend on it.
  - EDM2's loss has a learned per-noise-level uncertainty weight (a small MLP), its
    learning rate decays as 1 / sqrt(t / t_ref), and its EMA is post-hoc (power-function
    profiles); here: the EDM weighting, a constant rate after warmup, a constant EMA decay.
  - EDM2's input has an extra constant channel (5 in); here 4.
  - EDM2 encodes the dataset once (8 channels: the posterior's mean and std) and trains on
    the stored latents, normalised per channel to std 0.5; here every batch of 512x512
    images is encoded in the train step (docs/latent.md) and scaled by SD's single
    factor (0.18215, about unit std). Hence sigma_data = 1 and every noise level twice
    EDM2's: the same ratios of noise to signal (log-normal mean -0.4 + ln 2).
  - The learning rate: EDM2's alpha_ref (0.010 for S, 0.007 for XL) is for its
    normalised weights and does not carry over to these layers; 1e-4 here is an
    untuned starting point, not EDM2's recipe.

Data: tfds `imagenet2012` (prepared from the manual download) as ArrayRecord in
data_dir; each image's central square area-resized to 512 (EDM2: center-crop-dhariwal).
The autoencoder: SD's VAE (stabilityai/sd-vae-ft-mse, EDM2's) converted to sd_vae.npz
with diffusion_jax.models.convert_vae (docs/latent.md).
"""

import math

from diffusion_jax.config import defaults as default

BATCH = 2048
# SD's VAE on 512x512 images: f = 8, 4 channels. What the U-Net sees; the parameter
# tests count the U-Net on this shape (the VAE's weights are not shipped).
LATENT_SHAPE = (64, 64, 4)


def base(channels: int, dropout: float, mimg: int, num_heads: int):
  """EDM2's network at width `channels`, trained for `mimg` Mi images of batch 2048."""
  c = default.get_config()
  d = c.data
  d.name = "imagenet2012"
  d.image_size = 512
  d.channels = 3
  d.num_classes = 1000
  d.random_flip = False  # EDM2 trains on the stored latents, unflipped.
  d.cache = False  # 1.28M full-size JPEGs: decoded on every read.
  d.read_threads = 16
  c.latent.autoencoder = "sd_vae.npz"
  # SD's VAE encodes each chip's 32 images in 4 chunks of 8: in one go its float32
  # activations at 512x512 took ~10.4 of a chip's 14.7 GiB (`launch check`, docs/configs.md).
  c.latent.encode_chunks = 4

  m = c.model
  m.ch = channels
  m.ch_mult = (1, 2, 3, 4)
  m.num_res_blocks = 3
  m.attn_resolutions = (16, 8)  # Latent pixels.
  m.num_heads = num_heads
  m.num_groups = 32
  m.dropout = dropout
  m.resblock_updown = True
  m.skip_rescale = True
  m.embedding = "positional"
  m.dtype = "bfloat16"
  m.param_dtype = "float32"
  m.remat = "block"

  f = c.diffusion
  f.schedule = "edm"
  f.num_steps = 0
  f.prediction = "edm"
  f.sigma_data = 1.0  # SD-scaled latents (EDM2: 0.5 on its std-0.5 latents).
  f.sigma_min, f.sigma_max, f.rho = 0.004, 160.0, 7.0  # EDM2's 0.002 and 80, doubled.
  f.weighting = "simple"  # On the F target: EDM's lambda(sigma).
  f.time_sampling = "lognormal"
  f.p_mean, f.p_std = -0.4 + math.log(2.0), 1.0

  t = c.training
  t.batch_size = BATCH
  t.num_steps = (mimg << 20) // BATCH
  t.label_dropout = 0.0  # EDM2 guides with a separate unconditional model.
  t.ema_decay = 0.9999
  t.log_every = 1000
  t.checkpoint_every = 4096  # 8Mi images: EDM2's snapshot interval.

  o = c.optim
  o.lr = 1e-4  # Untuned (see the module docstring).
  o.warmup_steps = 10_000
  o.lr_schedule = "constant"
  o.b1, o.b2 = 0.9, 0.99  # EDM2's Adam betas.
  o.grad_clip = 0.0
  o.weight_decay = 0.0

  s = c.sample
  s.sampler = "heun"
  s.grid = "edm"
  s.num_steps = 32  # EDM2: 32 Heun steps, 63 NFE.
  s.rho = 7.0
  s.t_min = 1e-6  # sigma(t_min) = sigma_min (0.004: EDM2's 0.002, doubled).
  s.t_max, s.lambda_max = 1.0, 160.0
  s.clip_denoised = False
  s.guidance_scale = 1.0
  s.num_samples = 1024
  s.batch_size = 256
  s.cond_split = "validation"  # imagenet2012's "test" split has no labels.

  e = c.eval
  e.metrics = "fd"  # bits/dim would be of the latents (refused in latent space).
  e.reference_split = "train"  # EDM2's FID reference: the training images.
  e.num_samples = 50_000
  e.batch_size = 256
  return c
