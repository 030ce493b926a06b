"""The pixel-space baseline of the 64x64 latent-diffusion demo: a U-Net on the 64x64x3
pixels, sized and trained for about the wall time of configs/photo64_latent.py on a CPU.

Commands:
  python -m diffusion_jax.main --config=configs/photo64_pixel.py --workdir=runs/photo64_pixel
  python -m diffusion_jax.main --workdir=runs/photo64_pixel --mode=eval
Measured: see experiments/README.md, "Latent diffusion at 64x64".

Smoke-test variant: :runlocal
"""

from diffusion_jax.config import import_sibling

photo_common = import_sibling(__file__, "_photo_common.py")


def get_config(arg: str = ""):
  c = photo_common.base(arg, "photo64_pixel", num_steps=151)  # Where 15 minutes side by side ended.
  m = c.model
  m.ch = 16
  m.ch_mult = (1, 2, 4, 4)  # 64x64, 32x32, 16x16, 8x8.
  m.num_res_blocks = 2
  m.attn_resolutions = (8,)
  c.sample.project = False
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
