"""What the input pipeline reads from: a source of records, each split readable by index.

A source is a tfds dataset prepared as ArrayRecord (data/tfds_source.py) or a folder
of images (data/image_folder.py). Records are dicts of numpy values keyed by feature
name; images are uint8 (H, W, C).
"""

from typing import Collection, NamedTuple, Protocol, Sequence

from diffusion_jax.config.errors import ConfigError


class DataError(ConfigError):
  """A dataset that cannot be found or read as configured."""


class Feature(NamedTuple):
  """What the checks need to know of a feature: its shape (None where it varies) and,
  for class labels, the number of classes."""
  shape: tuple | None = None
  num_classes: int | None = None


class Source(Protocol):
  """A dataset whose splits can be read by record index."""

  name: str  # As error messages name it.
  features: dict[str, Feature]

  def split_size(self, split: str, field: str) -> int:
    """Records in `split` (named by the config field `field`); DataError if unknown."""

  def records(self, split: str, skip: Collection[str] = ()) -> Sequence[dict]:
    """The split's records by index; features in `skip` are left undecoded."""


def read(records: Sequence[dict], indices: Sequence[int]) -> list[dict]:
  """The records at `indices`, in one call where the source can batch reads."""
  many = getattr(records, "__getitems__", None)
  return list(many(indices)) if many is not None else [records[i] for i in indices]


class CachedRecords:
  """Records kept in memory once read: each is decoded once per process, not once per
  epoch (for splits that fit in memory)."""

  def __init__(self, records: Sequence[dict]):
    self._records, self._cache = records, {}

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    return self.__getitems__([index])[0]

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    missing = sorted({i for i in indices if i not in self._cache})
    # Threads may read the same record at once; either copy is the same.
    self._cache.update(zip(missing, read(self._records, missing)))
    return [self._cache[i] for i in indices]
