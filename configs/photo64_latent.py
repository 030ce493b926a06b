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
  photo_common.demo64(c, arg)
  return c
