"""Offline tfds dataset: procedurally rendered shapes with captions that fully describe them.

32x32 RGB images of one or two solid shapes on black, captioned by a fixed grammar:
  "a {size} {color} {shape} {position}", two shapes joined by " and ".
Colours are RGB primaries and their mixes at full intensity. Two shapes always sit at
opposite positions (left/right or top/bottom), so they never overlap.

Every example is a pure function of (split, index): rendering is deterministic and
independent of generation order. Held-out prompts: one single-shape phrase in ten
(a fixed choice in which every size, colour, shape and position appears) never appears
in `train`; `test` holds exactly the examples that use at least one held-out phrase, for
evaluating text-to-image on unseen prompts, per attribute value.
"""

import itertools

import numpy as np
import tensorflow_datasets as tfds

SIZES = ("small", "large")
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
          "yellow": (255, 255, 0), "cyan": (0, 255, 255), "magenta": (255, 0, 255),
          "white": (255, 255, 255)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"on the left": (16, 8), "on the right": (16, 24), "at the top": (8, 16),
             "at the bottom": (24, 16), "in the center": (16, 16)}  # (row, col) centres.
PAIRS = (("on the left", "on the right"), ("at the top", "at the bottom"))
RADIUS = {"small": 3.5, "large": 6.5}
IMAGE_SIZE = 32
MAX_SHAPES = 2

# Every single-shape phrase, in a fixed order; one in ten is held out of training.
PHRASES = [(s, c, h, p) for s, c, h, p in itertools.product(SIZES, COLORS, SHAPES, POSITIONS)]
# Phrase j takes each attribute's value j mod its count: 21 distinct phrases (3 and 7 are
# coprime) in which every value of every attribute appears, each 2-11 times.
HELD_OUT = frozenset((SIZES[j % 2], list(COLORS)[j % 7], SHAPES[j % 3], list(POSITIONS)[j % 5])
                     for j in range(21))


def phrase_text(size: str, color: str, shape: str, position: str) -> str:
  return f"a {size} {color} {shape} {position}"


def caption(shapes: list[tuple]) -> str:
  return " and ".join(phrase_text(*s) for s in shapes)


def vocabulary() -> list[str]:
  """Every word the grammar can produce, sorted."""
  words = {"a", "and"} | set(SIZES) | set(COLORS) | set(SHAPES)
  for p in POSITIONS:
    words |= set(p.split())
  return sorted(words)


def render(shapes: list[tuple]) -> np.ndarray:
  """uint8 (32, 32, 3) image of the given (size, color, shape, position) tuples."""
  rows, cols = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5  # Pixel centres.
  image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  for size, color, shape, position in shapes:
    cy, cx = POSITIONS[position]
    r = RADIUS[size]
    dy, dx = rows - cy, cols - cx
    if shape == "circle":
      mask = dy**2 + dx**2 <= r**2
    elif shape == "square":
      mask = (np.abs(dy) <= r) & (np.abs(dx) <= r)
    else:  # Upward triangle: apex at the top, base at the bottom, as wide as tall.
      depth = (dy + r) / (2 * r)  # 0 at the apex, 1 at the base.
      mask = (depth >= 0) & (depth <= 1) & (np.abs(dx) <= depth * r)
    image[mask] = COLORS[color]
  return image


def example(split: str, index: int, seed: int = 0) -> dict:
  """The example at `index` of `split`: its shapes are drawn from (seed, split, index)."""
  rng = np.random.default_rng([seed, {"train": 0, "test": 1}[split], index])
  for _ in range(1000):
    n = 1 + int(rng.integers(2))
    if n == 1:
      shapes = [PHRASES[int(rng.integers(len(PHRASES)))]]
    else:
      pair = PAIRS[int(rng.integers(len(PAIRS)))]
      order = pair if rng.integers(2) else pair[::-1]
      shapes = [(SIZES[int(rng.integers(2))], list(COLORS)[int(rng.integers(len(COLORS)))],
                 SHAPES[int(rng.integers(len(SHAPES)))], pos) for pos in order]
    held = any(s in HELD_OUT for s in shapes)
    if held == (split == "test"):
      break
  attrs = np.full((MAX_SHAPES, 4), -1, np.int64)
  for i, (s, c, h, p) in enumerate(shapes):
    attrs[i] = (SIZES.index(s), list(COLORS).index(c), SHAPES.index(h), list(POSITIONS).index(p))
  return {"image": render(shapes), "caption": caption(shapes), "num_shapes": len(shapes),
          "attributes": attrs}


class ShapesCaptions(tfds.core.GeneratorBasedBuilder):
  """Shapes and their captions, rendered offline (see the module docstring)."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "The same examples, prepared as ArrayRecord (read by index).",
                   "2.0.0": "Held-out phrases cover every attribute value (1.x held out "
                            "only 'at the top'); the splits change."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="default", description="50,000 train, 2,000 test."),
      tfds.core.BuilderConfig(name="tiny", description="512 train, 128 test (for tests)."),
  ]
  SPLIT_SIZES = {"default": {"train": 50_000, "test": 2_000},
                 "tiny": {"train": 512, "test": 128}}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            "caption": tfds.features.Text(),
            "num_shapes": np.int64,
            # Per shape (size, color, shape, position) indices; -1 rows pad to MAX_SHAPES.
            "attributes": tfds.features.Tensor(shape=(MAX_SHAPES, 4), dtype=np.int64),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    sizes = self.SPLIT_SIZES[self.builder_config.name]
    return {split: self._generate_examples(split, n) for split, n in sizes.items()}

  def _generate_examples(self, split, n):
    for i in range(n):
      yield i, example(split, i)
