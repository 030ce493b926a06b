"""Latent diffusion on 32x32 photo crops: the U-Net of configs/photo_base8.py denoises
the 8x8x4 latents of the autoencoder of configs/photo_autoencoder.py (train it first).

Commands:
  python -m diffusion_jax.main --config=configs/photo_autoencoder.py --workdir=runs/photo_ae
  python -m diffusion_jax.main --config=configs/photo_latent.py --workdir=runs/photo_latent \
      --config.latent.autoencoder=runs/photo_ae
Samples (decoded to 32x32 images) in runs/photo_latent/samples/. Not yet measured.
Smoke-test variant: :runlocal
"""

from diffusion_jax.config import import_sibling

photo_common = import_sibling(__file__, "_photo_common.py")


def get_config(arg: str = ""):
  c = photo_common.base(arg, "photo_latent", num_steps=3000)
  c.latent.autoencoder = "runs/photo_ae"
  m = c.model
  m.ch = 32
  m.ch_mult = (1, 2)  # 8x8 latents, then 4x4.
  m.num_res_blocks = 2
  m.attn_resolutions = (4,)
  c.sample.project = False  # No image condition.
  c.training.batch_size = 64
  return c
