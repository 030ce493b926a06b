"""A latent cache as a data source: the posteriors q(z | x) of one split's images under
an autoencoder, computed once (run/latent_cache.py builds it) and read by index as any
other source, through the same input pipeline (global order, per-process slices,
checkpointable position).

A cache is a directory:
  cache.json    its split, classes and shapes, and what it was built from (autoencoder,
                data, preprocessing: run/latent_cache.py)
  moments.npy   float32 (N, V, h, w, 2c): per record, the posterior's mean and log
                variance (the encoder's clipped output) concatenated along channels;
                V = 2 when data.random_flip (the record, then its mirror image), else 1
  label.npy     int32 (N,), when the data has class labels
The directory is local (memory-mapped when read; each process of a multi-host run
reads its own slices of it, so each host needs a copy or a shared filesystem).
Record i is record i of the split, so an example position reads the same record as
the pixel pipeline; the mirror image is taken where the pixel pipeline would flip.
"""

import dataclasses
import json
import os
import shutil
from typing import Collection, Sequence

import numpy as np
from etils import epath

from diffusion_jax.data.preprocess import flips
from diffusion_jax.data.source import DataError, Feature

FORMAT = 1  # Of the directory's files.
INFO, MOMENTS, LABELS = "cache.json", "moments.npy", "label.npy"


def read_info(path: str) -> dict | None:
  """The cache.json of a cache directory (None where there is none)."""
  f = epath.Path(path) / INFO
  return json.loads(f.read_text()) if f.exists() else None


class _Records:
  """A cache's records by index: {"moments": (V, h, w, 2c), "label": int32}."""

  def __init__(self, moments: np.ndarray, labels: np.ndarray | None):
    self._moments, self._labels = moments, labels

  def __len__(self) -> int:
    return len(self._moments)

  def __getitem__(self, index: int) -> dict:
    return self.__getitems__([index])[0]

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    moments = self._moments[np.asarray(indices, np.int64)]  # One read of the memory map.
    out = [{"moments": m} for m in moments]
    if self._labels is not None:
      for o, i in zip(out, indices):
        o["label"] = self._labels[i]
    return out


class LatentCache:
  """A latent cache directory (see the module docstring; data/source.py: Source)."""

  def __init__(self, path: str):
    info = read_info(path)
    if info is None:
      raise DataError(f"latent.cache={path!r} is not a latent cache (no {INFO}): build it "
                      "with python -m diffusion_jax.run.latent_cache")
    if info.get("format") != FORMAT:
      raise DataError(f"latent.cache={path!r} has format {info.get('format')}; this "
                      f"version reads format {FORMAT}: build it again")
    self.path, self.info = path, info
    self.name = f"latent cache {path!r}"
    self.split = info["split"]
    self.features = {"moments": Feature(tuple(info["moments_shape"][1:]))}
    if info["num_classes"]:
      self.features["label"] = Feature((), info["num_classes"])

  def split_size(self, split: str, field: str) -> int:
    if split != self.split:
      raise DataError(f"{field}={split!r}, but {self.name} holds split {self.split!r}")
    return int(self.info["examples"])

  def records(self, split: str, skip: Collection[str] = ()) -> Sequence[dict]:
    self.split_size(split, "split")
    root = os.fspath(epath.Path(self.path))
    moments = np.load(os.path.join(root, MOMENTS), mmap_mode="r")
    labels = (np.load(os.path.join(root, LABELS)) if "label" in self.features
              and "label" not in skip else None)
    return _Records(moments, labels)


@dataclasses.dataclass(frozen=True)
class LatentPreprocess:
  """(example position, cache record) -> {"moments": (h, w, 2c) float32, "label"}: the
  mirror image's posterior where the pixel pipeline (data/preprocess.py) flips."""
  label_key: str  # "" = no labels.
  random_flip: bool
  seed: int

  def __call__(self, item: tuple[int, dict]) -> dict:
    position, record = item
    variant = 1 if self.random_flip and flips(self.seed, position) else 0
    out = {"moments": np.asarray(record["moments"][variant], np.float32)}
    if self.label_key:
      out["label"] = np.int32(record["label"])
    return out


class Writer:
  """Writes a cache into a new directory beside `path`, moved to `path` by `commit`
  (a reader never sees half a cache; an old cache is replaced only then)."""

  def __init__(self, path: str, info: dict, shape: tuple[int, ...], split: str,
               num_classes: int):
    self.path = os.path.abspath(path)
    self._tmp = f"{self.path}.partial-{os.getpid()}"
    shutil.rmtree(self._tmp, ignore_errors=True)  # This process's own leftovers only.
    os.makedirs(self._tmp)
    self._info = {**info, "format": FORMAT, "split": split, "num_classes": num_classes,
                  "examples": shape[0], "moments_shape": list(shape)}
    labels = num_classes > 0
    self.moments = np.lib.format.open_memmap(os.path.join(self._tmp, MOMENTS), "w+",
                                             np.float32, shape)
    self.labels = np.zeros((shape[0],), np.int32) if labels else None

  def commit(self) -> None:
    self.moments.flush()
    del self.moments
    if self.labels is not None:
      np.save(os.path.join(self._tmp, LABELS), self.labels)
    with open(os.path.join(self._tmp, INFO), "w") as f:
      f.write(json.dumps(self._info, indent=2) + "\n")
    old = f"{self.path}.old-{os.getpid()}"
    if os.path.exists(self.path):
      os.rename(self.path, old)
    os.rename(self._tmp, self.path)
    shutil.rmtree(old, ignore_errors=True)

  def abort(self) -> None:
    shutil.rmtree(self._tmp, ignore_errors=True)


__all__ = ["FORMAT", "LatentCache", "LatentPreprocess", "Writer", "read_info"]
