"""Super-resolution 8x8 -> 32x32 on the bundled photo_patches (SR3-style): the
bicubic-upsampled low-resolution image is concatenated to the noisy input and also
added at the U-Net's 16x16 and 8x8 levels.

Command:
  python -m diffusion_jax.main --config=configs/photo_sr.py --workdir=runs/photo_sr
Upsample your own 8x8 images (an .npz with `lowres` uint8 (N, 8, 8, 3), or a
directory of 8x8 PNGs):
  python -m diffusion_jax.main --config=configs/photo_sr.py --workdir=runs/photo_sr \
      --mode=sample --cond=lowres.npz
Cascade (an 8x8 base model, then this one), one command:
  python -m diffusion_jax.main --config=configs/photo_sr.py --workdir=runs/photo_sr \
      --mode=sample --cascade_from=runs/photo_base8
Variants: :x2 (16x16 -> 32x32), :runlocal (tiny dataset, a few steps).
Measured (experiments/cond_eval.py sr): see experiments/README.md.
"""

from diffusion_jax.config import import_sibling

photo_common = import_sibling(__file__, "_photo_common.py")


def get_config(arg: str = ""):
  variant = arg.split(",")
  c = photo_common.base("runlocal" if "runlocal" in variant else "", "photo_sr")
  c.cond.image = "sr"
  c.cond.sr_factor = 2 if "x2" in variant else 4
  c.model.cond_image_channels = 3
  c.model.cond_image_resolutions = (16, 8)
  unknown = set(variant) - {"", "x2", "runlocal"}
  if unknown:
    raise ValueError(f"unknown variant {arg!r} of configs/photo_sr.py (known: x2, runlocal)")
  return c
