"""Unconditional 8x8 photo crops: the base model of the super-resolution cascade
(configs/photo_sr.py takes its samples to 32x32).

Command:
  python -m diffusion_jax.main --config=configs/photo_base8.py --workdir=runs/photo_base8
then the cascade, one command:
  python -m diffusion_jax.main --config=configs/photo_sr.py --workdir=runs/photo_sr \
      --mode=sample --cascade_from=runs/photo_base8
Smoke-test variant: :runlocal
"""

from diffusion_jax.config import import_sibling

photo_common = import_sibling(__file__, "_photo_common.py")


def get_config(arg: str = ""):
  c = photo_common.base(arg, "photo_base8", num_steps=1500)
  c.data.image_size = 8
  m = c.model
  m.ch = 32
  m.ch_mult = (1, 2)
  m.num_res_blocks = 2
  m.attn_resolutions = (4,)
  c.training.batch_size = 64
  return c
