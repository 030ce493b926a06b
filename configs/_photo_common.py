"""Shared settings of the photo_patches configs (not an experiment by itself)."""

from diffusion_jax.config import defaults as default


def photo_data(c) -> None:
  """The data section: 32x32 RGB photo crops, unlabelled, flipped at random."""
  d = c.data
  d.name = "photo_patches"
  d.image_size = 32
  d.channels = 3
  d.num_classes = 0
  d.random_flip = True


def base(arg: str, name: str, num_steps: int = 3000, checkpoint_every: int = 1000):
  """32x32 photo crops, a small U-Net sized for a CPU run, v-prediction (cosine)."""
  c = default.get_config()
  photo_data(c)

  m = c.model
  m.ch = 16
  m.ch_mult = (1, 2, 4)
  m.num_res_blocks = 2
  m.attn_resolutions = (8,)
  m.num_heads = 4
  m.num_groups = 8
  m.dropout = 0.0

  c.diffusion.schedule = "cosine"
  c.diffusion.num_steps = 0
  c.diffusion.prediction = "v"

  t = c.training
  t.batch_size = 32
  t.num_steps = num_steps
  t.label_dropout = 0.0
  t.checkpoint_every = checkpoint_every
  c.optim.lr = 1e-3

  s = c.sample
  s.sampler = "ddpm"  # Ancestral, as SR3 and Palette: less residual noise than
  s.num_steps = 100  # dpmpp_2m/ddim/heun gave this model (experiments/README.md).
  s.project = True
  s.num_samples = 64
  s.batch_size = 64
  if arg == "runlocal":
    default.runlocal(c, "photo_patches/tiny")
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/{name}.py (known: runlocal)")
  return c


def demo64(c, arg: str) -> None:
  """What the 64x64 latent-diffusion demo's two diffusion configs share
  (configs/photo64_latent.py, configs/photo64_pixel.py): unconditional sampling, a
  constant learning rate, the sample metrics and the 64x64 data."""
  c.sample.project = False  # No image condition.
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
