"""Text-to-image on the bundled shapes_captions (offline): cross-attention to a
jointly trained text encoder, with caption dropout for classifier-free guidance.

Command:
  python -m diffusion_jax.main --config=configs/shapes_text.py --workdir=runs/shapes_text
Samples at the end use the test split's captions, i.e. prompts held out of training.
Prompts of your own:
  python -m diffusion_jax.main --config=configs/shapes_text.py --workdir=runs/shapes_text \
      --mode=sample --prompt="a large red circle on the left" --prompt="a small cyan square at the top"
Measured (detector in experiments/shapes_detector.py): see experiments/README.md.

Smoke-test variant (tiny dataset, a few steps): --config=configs/shapes_text.py:runlocal
"""

from diffusion_jax.config import defaults as default


def get_config(arg: str = ""):
  c = default.get_config()
  d = c.data
  d.name = "shapes_captions"
  d.image_size = 32
  d.channels = 3
  d.num_classes = 0

  m = c.model
  m.ch = 16
  m.ch_mult = (1, 2, 4)
  m.num_groups = 8
  m.num_res_blocks = 1
  m.attn_resolutions = ()
  m.num_heads = 4
  m.dropout = 0.0
  m.text_vocab_size = 32  # The grammar has 26 words.
  m.text_max_len = 16
  m.text_width = 64
  m.text_layers = 2
  m.cross_attn_resolutions = (16, 8)
  m.cross_attn_positions = True  # Each place reads the phrase that names it.
  # No bag of all the caption's words in the time embedding: single shapes come out
  # right more often without it (experiments/README.md).
  m.text_pooled = False

  c.diffusion.prediction = "v"
  c.diffusion.schedule = "cosine"
  c.diffusion.num_steps = 0

  t = c.training
  t.batch_size = 32
  # 4,000 steps leave two-shape prompts at chance (12%); by 8,000 of these 10,000 the
  # model binds each phrase's attributes to its place (experiments/README.md).
  t.num_steps = 10000
  t.label_dropout = 0.0
  t.text_dropout = 0.1
  t.log_every = 100
  t.checkpoint_every = 2000

  c.optim.lr = 1e-3
  c.optim.warmup_steps = 200

  s = c.sample
  s.sampler = "dpmpp_2m"
  s.num_steps = 25
  s.text_guidance_scale = 2.0
  s.num_samples = 64
  s.batch_size = 64
  if arg == "runlocal":
    default.runlocal(c, "shapes_captions/tiny")
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/shapes_text.py (known: runlocal)")
  return c
