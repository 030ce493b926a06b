"""Dhariwal & Nichol (2021), "Diffusion Models Beat GANs on Image Synthesis" (ADM):
the class-conditional ImageNet 64x64 network, at its size, for a TPU pod slice.

What it is for: training a U-Net of ADM's size (ADM's Table 1 lists 296M parameters for
ImageNet 64) with the scale settings of docs/pods.md; not a reproduction of ADM's FID.
Network (guided-diffusion's flags for ImageNet 64): ch 192, ch_mult (1, 2, 3, 4), 3 res
blocks per level, self-attention at 32, 16 and 8, BigGAN-style resampling blocks,
scale-shift norm (the time embedding scales and shifts the GroupNorm), dropout 0.1,
1000 classes (labels added to the time embedding), cosine schedule with T = 4000, eps
prediction, Adam 3e-4, batch 2048, EMA 0.9999, 540k steps.

Parameters: 297,488,067 (eval_shape; tests/test_large_configs.py), 0.50% above ADM's 296M.
guided-diffusion's UNetModel with these flags has 295,904,454
(experiments/reference_counts.py); ours is exactly that + 1,588,032 (the 1x1 skips of
the 6 resampling blocks) + 768 (a null label row) - 5,187 (3 output channels, not 6).
What still differs from ADM's network:
  - ADM learns the variances (6 output channels, trained with L_hybrid); this U-Net
    predicts eps only (3 channels, L_simple) and samples with fixed variances;
  - our resampling blocks always have a 1x1 convolution on the skip path (score_sde /
    EDM); ADM's keep the identity there (+1.6M parameters here);
  - 1001 label rows (the null label for classifier-free guidance, unused at
    label_dropout 0), ADM 1000;
  - heads: `model.num_heads` is one number for every level (3 heads: 64, 128, 192, 256
    channels each); ADM has 64 channels per head at every level (3, 6, 9, 12 heads). The
    parameter count does not depend on it.
ADM trains in fp16 with loss scaling; here bf16 compute with float32 parameters.

Data: tfds `imagenet_resized/64x64` (Chrabaszcz et al.'s box-downsampled ImageNet, 1000
classes), prepared as ArrayRecord in data_dir (docs/datasets.md). ADM center-crops
before resizing; `--config.data.name=imagenet2012` (prepared from the manual download)
does the same here (central square, area resize to 64).

Scale settings, for a v5e-64 slice (`v5e:8x8`, 64 chips of 16 GiB): bf16 compute,
float32 parameters, EMA and Adam state (4.76 GB; split 4 ways, mesh.fsdp=4: 1.19 GB
per chip), every residual and attention block rematerialised
(model.remat="block"), 32 images per chip in 2 microbatches of 16.
Fits: the ahead-of-time check of the train step for v5e:8x8 reports 3,840 MiB a chip
of its 16 GiB (23%; experiments/README.md, "Large configs"). The check took 18 minutes
and 19 GB of host memory on a 2-core AMD EPYC (AVX-512):
  python -m diffusion_jax.launch check --config=configs/imagenet64_adm.py --topology=v5e:8x8
Command (on every host of the slice, docs/pods.md):
  python -m diffusion_jax.main --config=configs/imagenet64_adm.py --workdir=gs://BUCKET/runs/adm64 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets
Not run here (no accelerator, no ImageNet offline); no result is claimed.
"""

from diffusion_jax.config import defaults as default

BATCH = 2048


def get_config():
  c = default.get_config()
  d = c.data
  d.name = "imagenet_resized/64x64"
  d.image_size = 64
  d.channels = 3
  d.num_classes = 1000
  d.random_flip = True  # ADM's image_datasets.py flips at random.
  d.split = "train"
  d.cache = False  # 15 GB decoded: read from the ArrayRecord files every epoch.
  d.read_threads = 8

  m = c.model
  m.ch = 192
  m.ch_mult = (1, 2, 3, 4)
  m.num_res_blocks = 3
  m.attn_resolutions = (32, 16, 8)
  m.num_heads = 3  # Must divide 192, 384, 576 and 768.
  m.num_groups = 32
  m.dropout = 0.1
  m.scale_shift_norm = True
  m.resblock_updown = True
  m.dtype = "bfloat16"
  m.param_dtype = "float32"
  m.remat = "block"

  f = c.diffusion
  f.schedule = "cosine"
  f.num_steps = 4000
  f.prediction = "eps"
  f.weighting = "simple"

  t = c.training
  t.batch_size = BATCH
  t.microbatches = 2
  t.num_steps = 540_000
  t.label_dropout = 0.0  # ADM is class-conditional without guidance.
  t.ema_decay = 0.9999
  t.log_every = 1000
  t.checkpoint_every = 10_000

  c.mesh.fsdp = 4

  o = c.optim
  o.lr = 3e-4
  o.warmup_steps = 0
  o.lr_schedule = "constant"
  o.grad_clip = 0.0
  o.weight_decay = 0.0

  s = c.sample
  s.sampler = "ddim"
  s.num_steps = 250
  s.eta = 0.0
  s.guidance_scale = 1.0
  s.num_samples = 1024
  s.batch_size = 256
  s.cond_split = "validation"  # imagenet_resized and imagenet2012 have no "test" labels.

  e = c.eval
  e.split = "validation"  # --mode=eval: bits/dim of the validation split.
  return c
