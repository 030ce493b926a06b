"""Colourisation on the bundled photo_patches (Palette-style image-to-image): the
luminance image is concatenated to the noisy input.

Command:
  python -m diffusion_jax.main --config=configs/photo_colorize.py --workdir=runs/photo_colorize
Colourise your own 32x32 grayscale images (.npz with `gray` uint8 (N, 32, 32, 1), or
a directory of grayscale PNGs):
  python -m diffusion_jax.main --config=configs/photo_colorize.py \
      --workdir=runs/photo_colorize --mode=sample --cond=gray.npz
Measured (experiments/cond_eval.py gray): see experiments/README.md.
Smoke-test variant: :runlocal
"""

from diffusion_jax.config import import_sibling

photo_common = import_sibling(__file__, "_photo_common.py")


def get_config(arg: str = ""):
  # 4,000 steps: at 2,000 the samples carry colour noise in flat regions (35 times the
  # truth's; 1.8 times at 4,000), though their FD is lower (experiments/README.md).
  c = photo_common.base(arg, "photo_colorize", num_steps=4000, checkpoint_every=2000)
  c.cond.image = "gray"
  c.model.cond_image_channels = 1
  return c
