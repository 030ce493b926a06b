"""The autoencoder of the 64x64 latent-diffusion demo: f=4, 4 latent channels (16x16x4
latents, 12x fewer numbers than the image), L1 + KL and no discriminator, sized to train
in minutes on a 2-core CPU. A first run with LDM's PatchGAN term from step 1,000 and EMA
decay 0.999 over 1,500 steps reconstructed held-out crops at 18.3 dB (EMA) / 20.0 dB
(raw weights) against bicubic-from-16x16's 22.7: the EMA still held 22% of the
initial weights, and the training crops' PSNR fell 1.5 dB once the discriminator began.

Command (then configs/photo64_latent.py and configs/photo64_pixel.py):
  python -m diffusion_jax.main --config=configs/photo64_autoencoder.py --workdir=runs/photo64_ae
Measured (reconstruction PSNR on the test split, experiments/latent_demo.py): see
experiments/README.md, "Latent diffusion at 64x64".

Smoke-test variant (tiny dataset, a few steps): --config=configs/photo64_autoencoder.py:runlocal
"""

from diffusion_jax.config import import_sibling

photo_autoencoder = import_sibling(__file__, "photo_autoencoder.py")


def get_config(arg: str = ""):
  if arg not in ("", "runlocal"):
    raise ValueError(f"unknown variant {arg!r} of configs/photo64_autoencoder.py "
                     "(known: runlocal)")
  c = photo_autoencoder.get_config(arg)
  if arg == "runlocal":
    return c
  c.data.name = "photo_patches/res64"
  c.data.image_size = 64
  c.autoencoder.block_out_channels = (16, 32, 64)  # f = 4; the widest level is 16x16.
  c.autoencoder_loss.disc_weight = 0.0
  c.training.batch_size = 16
  c.training.num_steps = 2000
  c.training.ema_decay = 0.995  # 0.995^2000: the initial weights' share is nil.
  c.training.checkpoint_every = 500
  return c
