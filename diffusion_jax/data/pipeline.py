"""tf.data input pipeline over any tfds dataset, sharded per JAX process.

Batches are dicts of numpy arrays: `image` float32 in [-1, 1] (B, H, W, C) and, for
class-conditional configs, `label` int32 (B,). B is the per-process batch.
"""

import os
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from diffusion_jax.data import digits as _digits  # Registers `sklearn_digits`.
from diffusion_jax.data import shapes as _shapes  # Registers `shapes_captions`.

# Datasets the package ships: prepared on first use, with nothing downloaded.
BUNDLED = {"sklearn_digits": _digits.SklearnDigits, "shapes_captions": _shapes.ShapesCaptions}


class DataError(ValueError):
  """A dataset that cannot be found or read as configured."""


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def get_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The dataset's builder, checked to be usable offline. Writes nothing.

  Bundled datasets may be unprepared (they are prepared by `prepare`); any other
  dataset must already be prepared in `data_dir` (e.g. with `tfds build`).
  """
  data_dir = data_dir or default_data_dir()
  base = name.split(":")[0].split("/")[0]
  if base not in BUNDLED and base not in tfds.list_builders(with_community_datasets=False):
    raise DataError(f"unknown dataset {name!r}: not a tfds dataset and not bundled "
                    f"(bundled: {sorted(BUNDLED)})")
  if base not in BUNDLED and not os.path.isdir(data_dir):
    raise DataError(f"data_dir {data_dir!r} does not exist (dataset {name!r} must be "
                    "prepared there first, e.g. `tfds build " + base + " --data_dir=...`)")
  builder = tfds.builder(name, data_dir=data_dir)
  if base not in BUNDLED and not builder.is_prepared():
    raise DataError(f"dataset {name!r} is not prepared in data_dir {data_dir!r}; "
                    f"prepare it with `tfds build {base} --data_dir={data_dir}`")
  return builder


def prepare(builder: tfds.core.DatasetBuilder) -> None:
  """Prepares a bundled dataset in place the first time it is used."""
  if not builder.is_prepared():
    builder.download_and_prepare()


def _preprocess(example, image_key: str, label_key: str | None, image_size: int,
                random_flip: bool, seed: int):
  image = example[image_key]
  if image.shape[0] != image_size or image.shape[1] != image_size:
    image = tf.image.resize(image, (image_size, image_size), method="area", antialias=True)
  image = tf.cast(image, tf.float32) / 127.5 - 1.0
  out = {"image": image}
  if random_flip:
    out["image"] = tf.image.stateless_random_flip_left_right(out["image"], seed)
  if label_key:
    out["label"] = tf.cast(example[label_key], tf.int32)
  return out


def make_dataset(data_cfg, local_batch_size: int, seed: int,
                 builder: tfds.core.DatasetBuilder | None = None) -> tf.data.Dataset:
  """An infinite, shuffled, batched dataset for this process.

  Deterministic for a given seed and process, so that the tf.data iterator can be
  checkpointed and resumed exactly.
  """
  builder = builder or get_builder(data_cfg.name, data_cfg.data_dir)
  prepare(builder)
  split = tfds.split_for_jax_process(data_cfg.split, drop_remainder=True)
  seed = seed + 1_000_003 * jax.process_index()
  ds = builder.as_dataset(
      split=split, shuffle_files=True,
      read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False))
  if data_cfg.cache:
    ds = ds.cache()
  ds = ds.repeat().shuffle(data_cfg.shuffle_buffer, seed=seed)
  label_key = data_cfg.label_key if data_cfg.num_classes else None
  # One stateless seed per example, from a counter, keeps flips deterministic.
  ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter()))
  ds = ds.map(
      lambda ex, i: _preprocess(ex, data_cfg.image_key, label_key, data_cfg.image_size,
                                data_cfg.random_flip, tf.stack([tf.cast(seed, tf.int64), i])),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = 4
  ds = ds.with_options(options)
  return ds.prefetch(2)


def as_numpy(iterator) -> Iterator[dict[str, np.ndarray]]:
  for batch in iterator:
    yield jax.tree.map(lambda x: x._numpy(), batch)


def load_split_numpy(data_cfg, split: str, max_examples: int | None = None) -> dict:
  """A whole split as numpy (images uint8, labels), for evaluation on small datasets."""
  builder = get_builder(data_cfg.name, data_cfg.data_dir)
  prepare(builder)
  ds = builder.as_dataset(split=split)
  if max_examples:
    ds = ds.take(max_examples)
  images, labels = [], []
  for ex in tfds.as_numpy(ds):
    images.append(ex[data_cfg.image_key])
    if data_cfg.num_classes:
      labels.append(ex[data_cfg.label_key])
  out = {"image": np.stack(images)}
  if labels:
    out["label"] = np.asarray(labels)
  return out
