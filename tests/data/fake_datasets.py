"""Small datasets the tests write: a prepared `cifar10` of random images under the real
builder's name and features, and folders of images."""

import os

import numpy as np
from PIL import Image


def prepare_cifar10(data_dir: str, train: int = 16, test: int = 8,
                    file_format: str = "array_record") -> None:
  """A prepared `cifar10` of random images, under the real builder's name and version."""
  import tensorflow_datasets as tfds

  class FakeCifar10(tfds.builder_cls("cifar10"), skip_registration=True):
    name = "cifar10"

    def _split_generators(self, dl_manager):
      return {"train": self._examples(train, 0), "test": self._examples(test, 1)}

    def _examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        yield i, {"id": f"{seed}_{i}", "label": i % 10,
                  "image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)}

  FakeCifar10(data_dir=data_dir).download_and_prepare(file_format=file_format)


def numbered_folder(root: str, n: int, classes: int = 2, size: int = 4) -> dict[int, int]:
  """A folder of `n` gray PNGs, image i all of value 10 * i (so an example names its
  record), in `classes` class folders c0, c1, ...; returns {i: label}."""
  assert n <= 25
  labels = {}
  for i in range(n):
    labels[i] = i % classes
    folder = os.path.join(root, f"c{i % classes}")
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.full((size, size), 10 * i, np.uint8), "L").save(
        os.path.join(folder, f"{i:03d}.png"))
  return labels


def example_ids(images: np.ndarray) -> list[int]:
  """The record numbers of `numbered_folder` examples (float images in [-1, 1])."""
  values = np.round((np.asarray(images) + 1.0) * 127.5).reshape(len(images), -1)
  assert (values == values[:, :1]).all()
  return [int(v) // 10 for v in values[:, 0]]


def prepare_imagenet_resized(data_dir: str, train: int = 8, validation: int = 4) -> None:
  """A prepared `imagenet_resized/64x64` of random images (labels up to 999), under the
  real builder's name, config and features."""
  import tensorflow_datasets as tfds

  class FakeImagenetResized(tfds.builder_cls("imagenet_resized"), skip_registration=True):
    name = "imagenet_resized"

    def _split_generators(self, dl_manager):
      return {"train": self._examples(train, 0), "validation": self._examples(validation, 1)}

    def _examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        yield i, {"label": 999 - i, "image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)}

  FakeImagenetResized(config="64x64", data_dir=data_dir).download_and_prepare(
      file_format="array_record")
