"""Offline tfds dataset: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes).

Nothing is downloaded: the pixels ship inside scikit-learn. Pixel values 0..16 are
rescaled to uint8 0..255. The split is deterministic: every 6th image (by index)
goes to `test` (299 images), the rest to `train` (1,498).
"""

import numpy as np
import tensorflow_datasets as tfds

TEST_EVERY = 6


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits as (uint8 images N x 8 x 8 x 1, int64 labels N)."""
  from sklearn.datasets import load_digits  # Lazy: only needed to prepare.
  d = load_digits()
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return images, d.target.astype(np.int64)


def split_indices(split: str, n: int) -> np.ndarray:
  idx = np.arange(n)
  is_test = idx % TEST_EVERY == TEST_EVERY - 1
  return idx[is_test] if split == "test" else idx[~is_test]


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits as a tfds dataset."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "The same examples, prepared as ArrayRecord (read by index)."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {"train": self._generate_examples("train"),
            "test": self._generate_examples("test")}

  def _generate_examples(self, split):
    images, labels = digits_arrays()
    for i in split_indices(split, len(labels)):
      yield int(i), {"image": images[i], "label": int(labels[i])}
