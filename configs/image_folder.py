"""Your own images: an unconditional DDPM on a folder of images (any size, PNG or JPEG),
trained at 32x32 RGB with flips, on the small U-Net of the photo_patches configs.

Command (the folder holds one subfolder per class: docs/datasets.md):
  python -m diffusion_jax.main --config=configs/image_folder.py --workdir=runs/my_images \
      --config.data.data_dir=my_images
Class-conditional: add --config.data.num_classes=K for K class folders.
Variant: :runlocal (a few steps). No measured result: this is a starting point.
"""

from diffusion_jax.config import defaults as default
from diffusion_jax.config import import_sibling

photo_common = import_sibling(__file__, "_photo_common.py")


def get_config(arg: str = ""):
  c = photo_common.base("", "image_folder")
  c.data.name = "image_folder"
  c.data.data_dir = ""  # The folder: --config.data.data_dir=FOLDER.
  if arg == "runlocal":
    default.runlocal(c, "image_folder")
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/image_folder.py (known: runlocal)")
  return c
