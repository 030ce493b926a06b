"""The input pipeline: one global order of a split, each process reading its own slice.

`make_iterator` gives each JAX process its part of every global batch (data/order.py):
the global order is a shuffle of the split drawn anew each epoch from (seed, epoch), and
process p of P reads, by record index, only the examples of its contiguous slice. grain
reads and preprocesses them (data/preprocess.py) in background threads. The iterator's
position is a count of examples, the same on every process: `state()` saves it and
`restore()` continues from it on any number of processes.

Sources (data/source.py) are tfds datasets prepared as ArrayRecord, the datasets bundled
with the package, and folders of images (`data.name="image_folder"`).
"""

import dataclasses
import sys
from typing import Callable, Iterator

import grain
import jax
import numpy as np

from diffusion_jax.conditioning.tokenizer import build_vocab, words
from diffusion_jax.config.errors import require, section_values
from diffusion_jax.data import image_folder, latent_cache, tfds_source
from diffusion_jax.data.order import GlobalOrder, ProcessSlice
from diffusion_jax.data.preprocess import Preprocess, TextSpec, fit_image, stack
from diffusion_jax.data.source import CachedRecords, DataError, Source, read
from diffusion_jax.data.tfds_source import BUNDLED, get_builder

# data.name -> a source that is not a tfds dataset; any other name is looked up in tfds.
SOURCES = {"image_folder": image_folder.ImageFolder}
STATE_VERSION = 1  # Of the dict `InputIterator.state()` returns.

__all__ = ["BUNDLED", "DataConfig", "DataError", "InputIterator", "SOURCES", "TextSpec",
           "caption_vocab", "check", "get_builder", "load_split_numpy", "make_iterator",
           "open_source"]


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The `data` section: which dataset, which features, at what size, and how it is read."""
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
  cache: bool = True
  read_threads: int = 2
  prefetch_batches: int = 2

  @classmethod
  def from_config(cls, data_cfg) -> "DataConfig":
    d = cls(**section_values(cls, data_cfg, "data"))
    require(bool(d.name), "data.name is empty")
    require(d.image_size > 0, f"data.image_size={d.image_size} must be > 0")
    require(d.channels in (1, 3), f"data.channels={d.channels} must be 1 (gray) or 3 (RGB)")
    require(d.num_classes >= 0, f"data.num_classes={d.num_classes} must be >= 0")
    require(d.read_threads >= 0, f"data.read_threads={d.read_threads} must be >= 0")
    require(d.prefetch_batches >= 0,
            f"data.prefetch_batches={d.prefetch_batches} must be >= 0")
    return d


def open_source(data_cfg) -> Source:
  """The dataset `data_cfg` names (a bundled dataset is prepared the first time)."""
  if data_cfg.name in SOURCES:
    return SOURCES[data_cfg.name](data_cfg.data_dir, data_cfg.channels)
  return tfds_source.open_tfds(data_cfg.name, data_cfg.data_dir or None)


def check(data_cfg, splits: dict[str, tuple[str, int]], text: str = "") -> Source:
  """Checks the dataset against the config, before anything is compiled or written.

  `splits` maps each split a run reads (the config field naming it -> the split) to
  the fewest examples it must hold; `text` is the model's text mode ("tokens",
  "embeddings" or ""). Prepares a bundled dataset the first time. Returns the source.
  """
  source = open_source(data_cfg)
  features, name = source.features, source.name
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
  require(shape is not None and len(shape) == 3 and shape[-1] == data_cfg.channels,
          f"data.channels={data_cfg.channels}, but {name}'s {data_cfg.image_key!r} images "
          f"have shape {shape}")
  if data_cfg.num_classes:
    n = features[data_cfg.label_key].num_classes
    require(n is None or n <= data_cfg.num_classes,
            f"data.num_classes={data_cfg.num_classes}, but {name}'s {data_cfg.label_key!r} "
            f"has {n} classes: labels would fall outside the model's classes")
  for field, (split, least) in splits.items():
    size = source.split_size(split, field)
    require(size > 0, f"{field}={split!r} of {name} is empty")
    require(size >= least, f"{field}={split!r} of {name} has {size} examples; the run "
            f"needs at least {least}")
  return source


class _ProcessBatches:
  """Random access to this process's batches: step -> its (example position, record)s."""

  def __init__(self, records, order: GlobalOrder, share: ProcessSlice):
    self._records, self._order, self._share = records, order, share

  def __len__(self) -> int:
    return sys.maxsize  # Endless: epochs follow one another.

  def __getitem__(self, step: int) -> list[tuple[int, dict]]:
    positions = self._share.positions(step)
    records = read(self._records, self._order.record_indices(positions).tolist())
    return list(zip(positions.tolist(), records))


@dataclasses.dataclass(frozen=True)
class _PreprocessBatch:
  preprocess: Preprocess

  def __call__(self, items: list[tuple[int, dict]]) -> dict:
    return stack([self.preprocess(item) for item in items])


class InputIterator(Iterator[dict]):
  """This process's batches of the global order (see the module docstring).

  `next()` gives the process's slice of the next global batch; `state()` is where the
  iterator stands (the same on every process, JSON-serialisable); `restore(state)`
  continues there, on any number of processes.
  """

  def __init__(self, data_cfg, records, split_size: int, global_batch: int, seed: int,
               preprocess: Callable, process_index: int, process_count: int):
    self._cfg, self._records, self._size = data_cfg, records, split_size
    self._global_batch, self._seed, self._preprocess = global_batch, seed, preprocess
    self._process_index, self._process_count = process_index, process_count
    self._position = 0  # Examples of the global order consumed (by all processes).
    self._it = None  # The grain iterator, started on the first `next`.

  @property
  def local_batch(self) -> int:
    return self._global_batch // self._process_count

  def _start(self):
    share = ProcessSlice(self._position, self._global_batch, self._process_index,
                         self._process_count)
    batches = _ProcessBatches(self._records, GlobalOrder(self._size, self._seed), share)
    prep = _PreprocessBatch(dataclasses.replace(self._preprocess, seed=self._seed))
    # grain reads and preprocesses whole local batches ahead, in background threads.
    ds = grain.MapDataset.source(batches).map(prep)
    read_options = grain.ReadOptions(num_threads=self._cfg.read_threads,
                                     prefetch_buffer_size=self._cfg.prefetch_batches)
    return iter(ds.to_iter_dataset(read_options))

  def __next__(self) -> dict:
    if self._it is None:
      self._it = self._start()
    try:
      batch = next(self._it)
    except DataError as e:  # From a reading thread: without what grain appended to it.
      raise DataError(*e.problems) from None
    self._position += self._global_batch
    return batch

  def state(self) -> dict:
    return {"version": STATE_VERSION, "dataset": self._cfg.name, "split": self._cfg.split,
            "split_size": self._size, "seed": self._seed, "position": self._position}

  def restore(self, state: dict) -> None:
    """Continues at `state`'s position, in its order (a resumed run keeps the data
    order it started with, whatever its seed now is)."""
    have = self.state()
    keys = ("version", "dataset", "split", "split_size", "seed", "position")
    if not isinstance(state, dict) or sorted(state) != sorted(keys) or not all(
        isinstance(state[k], int) for k in ("version", "split_size", "seed", "position")) \
        or state["position"] < 0:
      raise DataError(f"not a saved input pipeline position: {state!r}")
    if state["version"] != STATE_VERSION:
      raise DataError(f"the saved input position has version {state['version']}; this "
                      f"version of diffusion_jax reads version {STATE_VERSION}")
    saved = {k: state[k] for k in ("dataset", "split", "split_size")}
    now = {k: have[k] for k in saved}
    if saved != now:
      raise DataError(f"the saved input position is for {saved}, but this run reads {now}: "
                      "resume with the data.name and data.split it was trained on")
    self.close()
    self._seed, self._position = state["seed"], state["position"]

  def close(self) -> None:
    """Stops the background reading (it restarts on the next `next`)."""
    if self._it is not None:
      self._it.close()
      self._it = None


def make_iterator(data_cfg, global_batch: int, seed: int, text: TextSpec = TextSpec(),
                  process_index: int | None = None, process_count: int | None = None,
                  cache: str = "") -> InputIterator:
  """This process's iterator over global batches of `global_batch` examples of
  `data_cfg.split` (process index and count default to JAX's). With `cache`, a latent
  cache of that split (data/latent_cache.py, checked against the run by its builder's
  module), batches hold the posteriors' `moments` instead of `image`, in the same
  order and at the same positions."""
  p = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  require(count > 0 and 0 <= p < count,
          f"process_index={p} must be in [0, process_count={count})")
  require(global_batch > 0 and global_batch % count == 0,
          f"the global batch {global_batch} does not split evenly over {count} processes")
  source = latent_cache.LatentCache(cache) if cache else open_source(data_cfg)
  size = source.split_size(data_cfg.split, "data.split")
  require(size >= global_batch, f"data.split={data_cfg.split!r} of {source.name} has {size} "
          f"examples, fewer than one global batch ({global_batch})")
  if cache:
    require(not text.tokenizer and not text.emb_key,
            f"{source.name} holds no text: a latent cache serves labels only")
    label_key = "label" if data_cfg.num_classes else ""
    prep = latent_cache.LatentPreprocess(label_key, data_cfg.random_flip, seed)
    # A memory map: read where needed, nothing to keep in memory.
    return InputIterator(data_cfg, source.records(data_cfg.split), size, global_batch, seed,
                         prep, p, count)
  prep = Preprocess(image_key=data_cfg.image_key,
                    label_key=data_cfg.label_key if data_cfg.num_classes else "",
                    text_key=data_cfg.text_key, image_size=data_cfg.image_size,
                    random_flip=data_cfg.random_flip, seed=seed, text=text)
  used = {data_cfg.image_key, prep.label_key, text.emb_key,
          data_cfg.text_key if text.tokenizer is not None else ""}
  records = source.records(data_cfg.split, skip=[k for k in source.features if k not in used])
  if data_cfg.cache:
    records = CachedRecords(records)
  return InputIterator(data_cfg, records, size, global_batch, seed, prep, p, count)


def load_split_numpy(data_cfg, split: str, max_examples: int | None = None,
                     captions: bool = False, text_emb: bool = False) -> dict:
  """A split's first examples (in record order) as numpy: `image` uint8 at
  data.image_size, and `label`, `caption` (str) and `text_emb` where asked for; for
  evaluation and sampling inputs."""
  source = open_source(data_cfg)
  size = source.split_size(split, "split")
  if size == 0:
    raise DataError(f"split {split!r} of {source.name} is empty")
  records = source.records(split)
  keys = {"image": data_cfg.image_key}
  if data_cfg.num_classes:
    keys["label"] = data_cfg.label_key
  if captions:
    keys["caption"] = data_cfg.text_key
  if text_emb:
    keys["text_emb"] = data_cfg.text_emb_key
  cols = {k: [] for k in keys}
  for record in _read_first(records, min(size, max_examples or size)):
    for k, feature in keys.items():
      cols[k].append(record[feature])
  cols["image"] = [fit_image(np.asarray(x), data_cfg.image_size) for x in cols["image"]]
  out = {k: np.stack([np.asarray(x) for x in v]) for k, v in cols.items() if k != "caption"}
  if "caption" in cols:
    out["caption"] = np.asarray([_text(c) for c in cols["caption"]])
  return out


def caption_vocab(data_cfg) -> tuple[list[str], int]:
  """The vocabulary of the training split's captions and the most words in one."""
  source = open_source(data_cfg)
  if data_cfg.text_key not in source.features:
    raise DataError(f"dataset {data_cfg.name!r} has no feature data.text_key="
                    f"{data_cfg.text_key!r} (features: {sorted(source.features)})")
  records = source.records(data_cfg.split,
                          skip=[k for k in source.features if k != data_cfg.text_key])
  texts = [_text(r[data_cfg.text_key]) for r in _read_first(records, len(records))]
  return build_vocab(texts), max((len(words(t)) for t in texts), default=0)


def _read_first(records, n: int, chunk: int = 256) -> Iterator[dict]:
  """Records 0..n-1, read `chunk` at a time (one call each where the source batches)."""
  for start in range(0, n, chunk):
    yield from read(records, list(range(start, min(n, start + chunk))))


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)
