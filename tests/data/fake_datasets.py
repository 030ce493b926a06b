"""Small datasets the tests write: prepared tfds datasets of random images under the real
builders' names and features (`cifar10`, `imagenet_resized/64x64`, `imagenet2012`), and
folders of images."""

import os

import numpy as np
from PIL import Image


def prepare_fake(name: str, data_dir: str, splits: dict[str, int], example, config=None,
                 file_format: str = "array_record") -> None:
  """A prepared tfds dataset under the real builder's `name` (and `config`) and features,
  of splits {split: examples}; example(i, rng, seed) gives record i of the split whose
  seed is its position in `splits`."""
  import tensorflow_datasets as tfds

  builder_name = name

  class Fake(tfds.builder_cls(name), skip_registration=True):
    name = builder_name

    def _split_generators(self, dl_manager):
      return {split: self._examples(n, seed) for seed, (split, n) in enumerate(splits.items())}

    def _examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        yield i, example(i, rng, seed)

  Fake(config=config, data_dir=data_dir).download_and_prepare(file_format=file_format)


def prepare_cifar10(data_dir: str, train: int = 16, test: int = 8,
                    file_format: str = "array_record") -> None:
  """A prepared `cifar10` of random images, under the real builder's name and version."""
  prepare_fake("cifar10", data_dir, {"train": train, "test": test},
               lambda i, rng, seed: {"id": f"{seed}_{i}", "label": i % 10,
                                     "image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)},
               file_format=file_format)


def prepare_imagenet_resized(data_dir: str, train: int = 8, validation: int = 4) -> None:
  """A prepared `imagenet_resized/64x64` of random images (record i's label: 999 - i)."""
  prepare_fake("imagenet_resized", data_dir, {"train": train, "validation": validation},
               lambda i, rng, seed: {"label": 999 - i,
                                     "image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)},
               config="64x64")


def prepare_imagenet2012(data_dir: str, train: int = 4, validation: int = 2) -> None:
  """A prepared `imagenet2012` of random images of varied, non-square sizes (the real
  builder needs the manual download); record i's label is i."""
  prepare_fake("imagenet2012", data_dir, {"train": train, "validation": validation},
               lambda i, rng, seed: {"label": i, "file_name": f"{seed}_{i}.JPEG", "image":
                                     rng.integers(0, 256, (48 + 8 * i, 80 - 8 * i, 3), dtype=np.uint8)})


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
