"""The KL autoencoder of latent diffusion on 32x32 photo crops: f=4, 4 latent channels
(8x8x4 latents), L1 reconstruction, a small KL weight, and the PatchGAN discriminator
from step 2,000 (LDM's recipe, shrunk for a CPU).

Command:
  python -m diffusion_jax.main --config=configs/photo_autoencoder.py --workdir=runs/photo_ae
It writes checkpoints, TensorBoard logs (loss, rec, kl, psnr, g_loss, disc_loss) and, at
the end, runs/photo_ae/latent_scale.json, which latent diffusion runs read
(configs/photo_latent.py, docs/latent.md). Not yet measured.

Smoke-test variant (tiny dataset, a few steps): --config=configs/photo_autoencoder.py:runlocal
"""

from diffusion_jax.config import defaults as default
from diffusion_jax.config import import_sibling

photo_common = import_sibling(__file__, "_photo_common.py")


def get_config(arg: str = ""):
  c = default.get_config()
  c.kind = "autoencoder"
  photo_common.photo_data(c)
  d = c.data

  a = c.autoencoder
  a.block_out_channels = (32, 64, 64)  # f = 4.
  a.layers_per_block = 1
  a.latent_channels = 4
  a.norm_num_groups = 8

  al = c.autoencoder_loss
  al.reconstruction = "l1"
  al.kl_weight = 1e-6
  al.disc_weight = 0.5
  al.disc_start = 2000
  al.disc_channels = 32
  al.disc_layers = 2
  al.disc_norm_groups = 8

  t = c.training
  t.batch_size = 32
  t.num_steps = 4000
  t.ema_decay = 0.999
  t.checkpoint_every = 1000
  t.label_dropout = 0.0
  o = c.optim
  o.lr = 4.5e-4  # Adam (0.5, 0.9) as LDM's autoencoders.
  o.b1, o.b2 = 0.5, 0.9
  o.warmup_steps = 100
  o.lr_schedule = "constant"
  c.latent.scale_batches = 16
  if arg == "runlocal":
    d.name = "photo_patches/tiny"
    a.block_out_channels = (8, 8, 8)
    a.norm_num_groups = 4
    al.disc_start = 2
    al.disc_channels = 8
    al.disc_layers = 1
    al.disc_norm_groups = 4
    t.batch_size = 8
    t.num_steps = 4
    t.log_every = 2
    t.checkpoint_every = 2
    o.warmup_steps = 1
    c.latent.scale_batches = 2
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/photo_autoencoder.py "
                     "(known: runlocal)")
  return c
