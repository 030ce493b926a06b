"""Offline tfds dataset: square patches cropped from the photographs bundled with
scikit-learn and scikit-image.

Ten colour photographs ship inside the two packages' wheels; they are read from the
installed package files, so nothing is ever downloaded. Each patch is a random crop of
a photo after area downscaling (block averaging) by an integer factor. The factors
are chosen so that a patch always covers 64, 128 or 256 original pixels: 2, 4 and 8
for 32x32 patches, 1, 2 and 4 for 64x64 ones, i.e. both resolutions show the same
fields of view. Crops whose mean per-channel standard deviation is below `MIN_STD`
(sky, the black border of the retina) are redrawn, so every patch has texture.
No flip or other augmentation is applied; that is left to the input pipeline.

The split is by source photo: `test` holds only patches of `TEST_PHOTOS` (a person
in a spacesuit before a flag; a temple among trees under sky), `train` only of the
other eight. Every example is a pure function of (patch size, split, index): photo,
scale and position are drawn from a numpy Generator seeded with them, so `tiny` is
a prefix of `default`.
"""

import functools
import importlib.resources
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

# Photo name (as scikit-learn / scikit-image call it) -> (package, file inside it).
PHOTOS = {
    "astronaut": ("skimage.data", "astronaut.png"),
    "chelsea": ("skimage.data", "chelsea.png"),
    "china": ("sklearn.datasets", "images/china.jpg"),
    "coffee": ("skimage.data", "coffee.png"),
    "flower": ("sklearn.datasets", "images/flower.jpg"),
    "hubble_deep_field": ("skimage.data", "hubble_deep_field.jpg"),
    "immunohistochemistry": ("skimage.data", "ihc.png"),
    "motorcycle_left": ("skimage.data", "motorcycle_left.png"),
    "retina": ("skimage.data", "retina.jpg"),
    "rocket": ("skimage.data", "rocket.jpg"),
}
TEST_PHOTOS = ("astronaut", "china")
TRAIN_PHOTOS = tuple(name for name in PHOTOS if name not in TEST_PHOTOS)
SPLIT_PHOTOS = {"train": TRAIN_PHOTOS, "test": TEST_PHOTOS}

FIELDS_OF_VIEW = (64, 128, 256)  # Original pixels a patch spans, one per scale.
MIN_STD = 6.0  # Mean per-channel std (0..255) below which a crop counts as flat.
MAX_TRIES = 100  # Flat redraws per example; no photo/scale comes close (<= 60% flat).


class PatchConfig(NamedTuple):
  size: int
  train: int
  test: int


CONFIGS = {
    "default": PatchConfig(size=32, train=40_000, test=4_000),
    "res64": PatchConfig(size=64, train=20_000, test=2_000),
    "tiny": PatchConfig(size=32, train=256, test=64),
}


@functools.lru_cache(maxsize=None)
def _decoded(name: str) -> np.ndarray:
  from PIL import Image  # Lazy: only needed to prepare.
  package, path = PHOTOS[name]
  # Read the installed file directly: unlike skimage.data's loaders, this can never
  # fall back to a download when the file is missing.
  with importlib.resources.files(package).joinpath(path).open("rb") as f:
    image = np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8)
  image.flags.writeable = False  # Shared by every caller through the cache.
  return image


def load_photo(name: str) -> np.ndarray:
  """The named photo as a read-only uint8 (H, W, 3) array."""
  return _decoded(name)


def downscale(image: np.ndarray, factor: int) -> np.ndarray:
  """Area downscaling by an integer factor: the mean of each factor x factor block."""
  if factor == 1:
    return image
  h, w = image.shape[0] // factor, image.shape[1] // factor
  blocks = image[:h * factor, :w * factor].reshape(h, factor, w, factor, -1)
  return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


@functools.lru_cache(maxsize=None)
def _downscaled(name: str, factor: int) -> np.ndarray:
  image = downscale(load_photo(name), factor)
  image.flags.writeable = False
  return image


def scales(size: int) -> tuple[int, ...]:
  """Downscale factors for `size` x `size` patches, one per field of view."""
  if any(fov % size for fov in FIELDS_OF_VIEW) or size > min(FIELDS_OF_VIEW):
    raise ValueError(f"patch size {size} must divide {min(FIELDS_OF_VIEW)}")
  return tuple(fov // size for fov in FIELDS_OF_VIEW)


def is_textured(image: np.ndarray) -> bool:
  return float(np.mean(image.std(axis=(0, 1)))) >= MIN_STD


def patch(split: str, index: int, size: int = 32, seed: int = 0) -> dict:
  """The `index`-th patch of `split`, drawn from (seed, split, size, index).

  Returns:
    {"image": uint8 (size, size, 3), "source": photo name, "scale": downscale factor}.
  """
  rng = np.random.default_rng([seed, {"train": 0, "test": 1}[split], size, index])
  names = SPLIT_PHOTOS[split]
  # Photo and scale are drawn once, so that rejecting flat crops keeps every photo
  # and scale equally likely; only the position is redrawn.
  name = names[int(rng.integers(len(names)))]
  factor = scales(size)[int(rng.integers(len(FIELDS_OF_VIEW)))]
  photo = _downscaled(name, factor)
  for _ in range(MAX_TRIES):
    top = int(rng.integers(photo.shape[0] - size + 1))
    left = int(rng.integers(photo.shape[1] - size + 1))
    crop = photo[top:top + size, left:left + size]
    if is_textured(crop):
      return {"image": np.array(crop), "source": name, "scale": factor}
  raise RuntimeError(f"no textured {size}x{size} crop of {name} at scale {factor}")


class PhotoPatches(tfds.core.GeneratorBasedBuilder):
  """Patches of bundled photographs (see the module docstring)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "The same examples, prepared as ArrayRecord (read by index)."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=name, description=(
          f"{c.size}x{c.size} patches: {c.train:,} train, {c.test:,} test."))
      for name, c in CONFIGS.items()
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    size = CONFIGS[self.builder_config.name].size
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3)),
            "source": tfds.features.Text(),
            "scale": np.int64,  # The area downscale factor applied before cropping.
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = CONFIGS[self.builder_config.name]
    return {"train": self._generate_examples("train", c.train, c.size),
            "test": self._generate_examples("test", c.test, c.size)}

  def _generate_examples(self, split, n, size):
    for i in range(n):
      yield i, patch(split, i, size)
