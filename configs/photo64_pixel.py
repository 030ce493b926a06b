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
  photo_common.demo64(c, arg)
  return c
