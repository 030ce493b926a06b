"""Latent diffusion on 64x64 photo crops: a U-Net on the 16x16x4 latents of
configs/photo64_autoencoder.py (train it first), compared with configs/photo64_pixel.py
(the same kind of U-Net on the pixels) given about the same training time on a CPU.

Commands:
  python -m diffusion_jax.main --config=configs/photo64_autoencoder.py --workdir=runs/photo64_ae
  python -m diffusion_jax.main --config=configs/photo64_latent.py --workdir=runs/photo64_latent
  python -m diffusion_jax.main --workdir=runs/photo64_latent --mode=eval
Measured (FD with photos-v1 features, train and sampling img/s against the pixel model):
see experiments/README.md, "Latent diffusion at 64x64".

Smoke-test variant: :runlocal (the tiny 32x32 data; train the autoencoder with
configs/photo64_autoencoder.py:runlocal first)
"""

from diffusion_jax.config import import_sibling

photo_common = import_sibling(__file__, "_photo_common.py")


def get_config(arg: str = ""):
  c = photo_common.base(arg, "photo64_latent", num_steps=1051)  # Where 15 minutes side by side ended.
  c.latent.autoencoder = "runs/photo64_ae"
  m = c.model
  m.ch = 32
  m.ch_mult = (1, 2, 2)  # 16x16 latents, then 8x8 and 4x4.
  m.num_res_blocks = 2
  m.attn_resolutions = (8,)
  c.sample.project = False  # No image condition.
  c.sample.sampler = "dpmpp_2m"
  c.sample.num_steps = 25
  c.training.batch_size = 32
  # Constant after warmup: a run stopped at a wall-time budget (SIGTERM saves the step
  # it reached) is as trained as its schedule says; the demo stops both so.
  c.optim.lr_schedule = "constant"
  c.optim.warmup_steps = 100
  c.eval.metrics = "fd,kid,precision,recall"  # photos-v1 features, 64x64 resized to 32x32.
  c.eval.num_samples = 500
  if not arg:
    c.data.name = "photo_patches/res64"
    c.data.image_size = 64
  return c
