"""Inpainting on the bundled photo_patches (Palette-style image-to-image): the
masked image and the mask (4 channels) are concatenated to the noisy input. Holes are
random rectangles with sides 30-60% of the image side.

Command:
  python -m diffusion_jax.main --config=configs/photo_inpaint.py --workdir=runs/photo_inpaint
Fill your own holes (.npz with `masked` uint8 (N, 32, 32, 3) and `mask` (N, 32, 32, 1),
1 = known, or a directory of RGBA PNGs whose alpha is 0 in the hole):
  python -m diffusion_jax.main --config=configs/photo_inpaint.py \
      --workdir=runs/photo_inpaint --mode=sample --cond=holes.npz
Measured (experiments/cond_eval.py inpaint): see experiments/README.md.
Smoke-test variant: :runlocal
"""

from diffusion_jax.config import import_sibling

photo_common = import_sibling(__file__, "_photo_common.py")


def get_config(arg: str = ""):
  # 4,000 steps: at 2,000 the fills were noisy texture, worse than biharmonic
  # inpainting by FD (3.09 against 1.97); at 4,000, 1.55 (experiments/README.md).
  c = photo_common.base(arg, "photo_inpaint", num_steps=4000, checkpoint_every=2000)
  c.cond.image = "inpaint"
  c.model.cond_image_channels = 4
  return c
