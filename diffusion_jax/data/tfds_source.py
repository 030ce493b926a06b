"""tfds datasets as random-access sources: prepared as ArrayRecord, read by index.

Bundled datasets are prepared on first use (in ArrayRecord); any other tfds dataset
must already be prepared in `data.data_dir` in a random-access format. Data dirs are
any path `etils.epath` reads (local, gs://, ...).
"""

import os
from typing import Collection, Sequence

import tensorflow_datasets as tfds
from etils import epath

from diffusion_jax.data import digits as _digits  # Registers `sklearn_digits`.
from diffusion_jax.data import photos as _photos  # Registers `photo_patches`.
from diffusion_jax.data import shapes as _shapes  # Registers `shapes_captions`.
from diffusion_jax.data.source import DataError, Feature

# Datasets the package ships: prepared on first use, with nothing downloaded.
BUNDLED = {"sklearn_digits": _digits.SklearnDigits, "photo_patches": _photos.PhotoPatches,
           "shapes_captions": _shapes.ShapesCaptions}
FILE_FORMAT = "array_record"  # The random-access format bundled datasets are prepared in.


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def prepare_command(name: str, data_dir: str) -> str:
  """The command that prepares a tfds dataset as ArrayRecord. (tfds 4.9's `tfds build`
  command line needs apache-beam installed; this needs nothing more.)"""
  return (f"python -c \"import tensorflow_datasets as tfds; tfds.builder({name!r}, "
          f"data_dir={data_dir!r}).download_and_prepare(file_format={FILE_FORMAT!r})\"")


def get_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The dataset's builder, checked to be usable offline. Writes nothing.

  Bundled datasets may be unprepared (they are prepared by `prepare`, in the default
  data_dir or an existing one); any other dataset must already be prepared in
  `data_dir`.
  """
  base = name.split(":")[0].split("/")[0]
  if base not in BUNDLED and base not in tfds.list_builders(with_community_datasets=False):
    raise DataError(f"unknown dataset data.name={name!r}: not a tfds dataset and not "
                    f"bundled (bundled: {sorted(BUNDLED)})")
  if data_dir and not epath.Path(data_dir).is_dir():
    raise DataError(f"data.data_dir={data_dir!r} does not exist" + (
        "" if base in BUNDLED else
        f" (dataset {name!r} must be prepared there first: {prepare_command(name, data_dir)})"))
  data_dir = data_dir or default_data_dir()
  if base not in BUNDLED and not epath.Path(data_dir).is_dir():
    raise DataError(f"data_dir {data_dir!r} does not exist"
                    f" (dataset {name!r} must be prepared there first: "
                    f"{prepare_command(name, data_dir)})")
  builder = tfds.builder(name, data_dir=data_dir)
  if base not in BUNDLED and not builder.is_prepared():
    raise DataError(f"dataset {name!r} is not prepared in data_dir {data_dir!r}; "
                    f"prepare it with: {prepare_command(name, data_dir)}")
  return builder


def hide_accelerators_from_tensorflow() -> None:
  """tfds prepares a dataset with TensorFlow, which would claim every GPU's memory; the
  accelerators are JAX's. (Reading a prepared dataset does not import TensorFlow.)"""
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")


def prepare(builder: tfds.core.DatasetBuilder) -> None:
  """Prepares a bundled dataset in place the first time it is used. Processes that
  start together on a fresh data_dir (two sweep runners, hosts sharing a file system)
  may each prepare it: the first to finish writes it, the others use that copy (tfds
  removes their own unfinished one)."""
  if builder.is_prepared():
    return
  hide_accelerators_from_tensorflow()
  try:
    builder.download_and_prepare(file_format=FILE_FORMAT)
  except FileExistsError:
    if not builder.is_prepared():
      raise


def check_random_access(builder: tfds.core.DatasetBuilder, name: str, data_dir: str) -> None:
  """A prepared dataset must be stored in a format that can be read by index."""
  have = builder.info.available_file_formats()
  if have & tfds.core.FileFormat.with_random_access():
    return
  formats = ", ".join(sorted(f.value for f in have)) or "an unknown format"
  raise DataError(
      f"dataset {name!r} in data_dir {data_dir!r} is prepared as {formats}, which cannot "
      f"be read by index; the input pipeline needs {FILE_FORMAT}. Prepare it again, where "
      f"its download can be reached, after deleting {os.fspath(builder.data_dir)!r} (or "
      f"in another data_dir): {prepare_command(name, data_dir)}")


class TfdsSource:
  """A prepared tfds dataset (see data/source.py: Source)."""

  def __init__(self, builder: tfds.core.DatasetBuilder):
    self._builder = builder
    self.name = builder.info.full_name
    self.features = {k: Feature(getattr(f, "shape", None), getattr(f, "num_classes", None))
                     for k, f in builder.info.features.items()}

  def split_size(self, split: str, field: str) -> int:
    try:
      return self._builder.info.splits[split].num_examples
    except (KeyError, ValueError, AssertionError):
      raise DataError(f"{field}={split!r} is not a split of {self.name} "
                      f"(splits: {sorted(self._builder.info.splits)})") from None

  def records(self, split: str, skip: Collection[str] = ()) -> Sequence[dict]:
    return self._builder.as_data_source(
        split, decoders={k: tfds.decode.SkipDecoding() for k in skip} or None)


def open_tfds(name: str, data_dir: str | None) -> TfdsSource:
  """The dataset `name` (prepared first if bundled), checked to be readable by index."""
  builder = get_builder(name, data_dir)
  prepare(builder)
  check_random_access(builder, name, data_dir or default_data_dir())
  return TfdsSource(builder)
