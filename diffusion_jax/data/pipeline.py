"""tf.data input pipeline over any tfds dataset, sharded per JAX process.

Batches are dicts of numpy arrays: `image` float32 in [-1, 1] (B, H, W, C) and the
conditions the model takes: `label` int32 (B,) for class-conditional configs; `tokens`
int32 (B, L) for captions tokenized with the run's vocabulary; `text_emb` float32
(B, L, D) and `text_mask` bool (B, L) for precomputed text embeddings (a token whose
embedding is all zeros is padding). B is the per-process batch. Image conditions
(low-resolution, grayscale, masked inputs) are made from `image` in the train step.
"""

import dataclasses
import os
from typing import Iterator, NamedTuple

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from diffusion_jax.conditioning.tokenizer import Tokenizer, build_vocab, words
from diffusion_jax.config.errors import ConfigError, require, section_values
from diffusion_jax.data import digits as _digits  # Registers `sklearn_digits`.
from diffusion_jax.data import photos as _photos  # Registers `photo_patches`.
from diffusion_jax.data import shapes as _shapes  # Registers `shapes_captions`.

# Datasets the package ships: prepared on first use, with nothing downloaded.
BUNDLED = {"sklearn_digits": _digits.SklearnDigits, "photo_patches": _photos.PhotoPatches,
           "shapes_captions": _shapes.ShapesCaptions}


class DataError(ConfigError):
  """A dataset that cannot be found or read as configured."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The `data` section: which dataset, which features, and at what size."""
  name: str
  data_dir: str
  split: str
  image_key: str
  label_key: str
  text_key: str
  text_emb_key: str
  image_size: int
  channels: int
  num_classes: int
  random_flip: bool
  shuffle_buffer: int
  cache: bool

  @classmethod
  def from_config(cls, data_cfg) -> "DataConfig":
    d = cls(**section_values(cls, data_cfg, "data"))
    require(bool(d.name), "data.name is empty")
    require(d.image_size > 0, f"data.image_size={d.image_size} must be > 0")
    require(d.channels in (1, 3), f"data.channels={d.channels} must be 1 (gray) or 3 (RGB)")
    require(d.num_classes >= 0, f"data.num_classes={d.num_classes} must be >= 0")
    require(d.shuffle_buffer > 0, f"data.shuffle_buffer={d.shuffle_buffer} must be > 0")
    return d


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def get_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The dataset's builder, checked to be usable offline. Writes nothing.

  Bundled datasets may be unprepared (they are prepared by `prepare`, in the default
  data_dir or an existing one); any other dataset must already be prepared in
  `data_dir` (e.g. with `tfds build`).
  """
  base = name.split(":")[0].split("/")[0]
  if base not in BUNDLED and base not in tfds.list_builders(with_community_datasets=False):
    raise DataError(f"unknown dataset data.name={name!r}: not a tfds dataset and not "
                    f"bundled (bundled: {sorted(BUNDLED)})")
  if data_dir and not os.path.isdir(data_dir):
    raise DataError(f"data.data_dir={data_dir!r} does not exist"
                    + ("" if base in BUNDLED else f" (dataset {name!r} must be prepared "
                       f"there first, e.g. `tfds build {base} --data_dir=...`)"))
  data_dir = data_dir or default_data_dir()
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


def _split_size(builder: tfds.core.DatasetBuilder, split: str, field: str) -> int:
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError, AssertionError):
    raise DataError(f"{field}={split!r} is not a split of {builder.info.full_name} "
                    f"(splits: {sorted(builder.info.splits)})") from None


def check(data_cfg: DataConfig, splits: dict[str, tuple[str, int]],
          text: str = "") -> tfds.core.DatasetBuilder:
  """Checks the dataset against the config, before anything is compiled or written.

  `splits` maps each split a run reads (the config field naming it -> the split) to
  the fewest examples it must hold; `text` is the model's text mode ("tokens",
  "embeddings" or ""). Prepares a bundled dataset the first time. Returns the builder.
  """
  builder = get_builder(data_cfg.name, data_cfg.data_dir or None)
  prepare(builder)
  features = builder.info.features
  name = builder.info.full_name
  want = {"data.image_key": data_cfg.image_key}
  if data_cfg.num_classes:
    want["data.label_key"] = data_cfg.label_key
  if text == "tokens":
    want["data.text_key"] = data_cfg.text_key
  if text == "embeddings":
    want["data.text_emb_key"] = data_cfg.text_emb_key
  for field, key in want.items():
    require(key in features, f"{field}={key!r} is not a feature of {name} "
            f"(features: {sorted(features)})")
  shape = features[data_cfg.image_key].shape
  require(len(shape) == 3 and shape[-1] == data_cfg.channels,
          f"data.channels={data_cfg.channels}, but {name}'s {data_cfg.image_key!r} images "
          f"have shape {shape}")
  if data_cfg.num_classes:
    label = features[data_cfg.label_key]
    n = getattr(label, "num_classes", None)
    require(n is None or n <= data_cfg.num_classes,
            f"data.num_classes={data_cfg.num_classes}, but {name}'s {data_cfg.label_key!r} "
            f"has {n} classes: labels would fall outside the model's classes")
  for field, (split, least) in splits.items():
    size = _split_size(builder, split, field)
    require(size > 0, f"{field}={split!r} of {name} is empty")
    require(size >= least, f"{field}={split!r} of {name} has {size} examples; the run "
            f"needs at least {least}")
  return builder


class TextSpec(NamedTuple):
  """Which text a batch carries: captions as token ids, or precomputed embeddings."""
  tokenizer: Tokenizer | None = None
  emb_key: str = ""


def _tokenize(caption, tokenizer: Tokenizer):
  # A string comparison against the vocabulary, not a lookup table: tables are
  # stateful, and a stateful op would make the iterator impossible to checkpoint.
  ws = tf.strings.split(tf.strings.lower(caption))
  hit = tf.equal(ws[:, None], tf.constant(tokenizer.vocab)[None, :])
  tf.debugging.assert_equal(tf.reduce_all(tf.reduce_any(hit, axis=1)), True,
                            "caption word outside the run's vocabulary")
  ids = tf.cast(tf.argmax(tf.cast(hit, tf.int32), axis=1), tf.int32)[:tokenizer.max_len] + 1
  return tf.pad(ids, [[0, tokenizer.max_len - tf.shape(ids)[0]]])


def _preprocess(example, image_key: str, label_key: str | None, image_size: int,
                random_flip: bool, seed: int, text: TextSpec, text_key: str):
  image = example[image_key]
  if image.shape[0] != image_size or image.shape[1] != image_size:
    image = tf.image.resize(image, (image_size, image_size), method="area", antialias=True)
  image = tf.cast(image, tf.float32) / 127.5 - 1.0
  out = {"image": image}
  if random_flip:
    out["image"] = tf.image.stateless_random_flip_left_right(out["image"], seed)
  if label_key:
    out["label"] = tf.cast(example[label_key], tf.int32)
  if text.tokenizer is not None:
    out["tokens"] = _tokenize(example[text_key], text.tokenizer)
  if text.emb_key:
    emb = tf.cast(example[text.emb_key], tf.float32)
    out["text_emb"] = emb
    out["text_mask"] = tf.reduce_any(emb != 0, axis=-1)
  return out


def make_dataset(data_cfg, local_batch_size: int, seed: int,
                 builder: tfds.core.DatasetBuilder | None = None,
                 text: TextSpec = TextSpec()) -> tf.data.Dataset:
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
                                data_cfg.random_flip, tf.stack([tf.cast(seed, tf.int64), i]),
                                text, data_cfg.text_key),
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


def load_split_numpy(data_cfg, split: str, max_examples: int | None = None,
                     captions: bool = False, text_emb: bool = False) -> dict:
  """A split (in file order) as numpy: `image` uint8 at data.image_size, and `label`,
  `caption` (str) and `text_emb` where asked for; for evaluation and sampling inputs."""
  builder = get_builder(data_cfg.name, data_cfg.data_dir)
  prepare(builder)
  _split_size(builder, split, "split")
  ds = builder.as_dataset(split=split, shuffle_files=False)
  if max_examples:
    ds = ds.take(max_examples)
  keys = {"image": data_cfg.image_key}
  if data_cfg.num_classes:
    keys["label"] = data_cfg.label_key
  if captions:
    keys["caption"] = data_cfg.text_key
  if text_emb:
    keys["text_emb"] = data_cfg.text_emb_key
  cols = {k: [] for k in keys}
  for ex in tfds.as_numpy(ds):
    for k, feature in keys.items():
      cols[k].append(ex[feature])
  if not cols["image"]:
    raise DataError(f"split {split!r} of {data_cfg.name!r} is empty")
  out = {k: np.stack(v) for k, v in cols.items()}
  if "caption" in out:
    out["caption"] = np.asarray([c.decode() for c in out["caption"]])
  size = data_cfg.image_size
  if out["image"].shape[1:3] != (size, size):
    resized = tf.image.resize(out["image"], (size, size), method="area", antialias=True)
    out["image"] = np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)
  return out


def caption_vocab(data_cfg) -> tuple[list[str], int]:
  """The vocabulary of the training split's captions and the most words in one."""
  builder = get_builder(data_cfg.name, data_cfg.data_dir)
  prepare(builder)
  if data_cfg.text_key not in builder.info.features:
    raise DataError(f"dataset {data_cfg.name!r} has no feature data.text_key="
                    f"{data_cfg.text_key!r} (features: {sorted(builder.info.features)})")
  ds = builder.as_dataset(split=data_cfg.split, shuffle_files=False,
                          decoders={data_cfg.image_key: tfds.decode.SkipDecoding()})
  texts = [ex[data_cfg.text_key].decode()
           for ex in tfds.as_numpy(ds.map(lambda e: {data_cfg.text_key: e[data_cfg.text_key]}))]
  return build_vocab(texts), max((len(words(t)) for t in texts), default=0)
