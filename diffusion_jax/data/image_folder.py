"""A folder of images, one subfolder per class, as a dataset (`data.name="image_folder"`,
`data.data_dir=FOLDER`; any path etils.epath reads, e.g. gs://).

    FOLDER/<class>/<image>           FOLDER is the split `train`;
    FOLDER/<split>/<class>/<image>   if FOLDER/train/ holds class folders: each folder
                                     in FOLDER is a split (train, test, ...).

Images are PNG or JPEG files (.png, .jpg, .jpeg, any case) of any size; other files and
deeper folders are ignored. Labels number the train split's class folders in sorted
order; other splits may hold only classes of train. An image is decoded with its EXIF
orientation applied and converted to `data.channels` (gray or RGB); the pipeline crops
its central square and resizes it. Records are ordered by a hash of `<class>/<file>`, so
a slice (`train[:90%]`, `train[90%:]`) is a random subset of every class, and the order
does not depend on how the storage lists files.
"""

import hashlib
import io
from typing import Collection, NamedTuple, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, ImageOps, UnidentifiedImageError

from diffusion_jax.data.source import DataError, Feature

EXTENSIONS = (".png", ".jpg", ".jpeg")
MODES = {1: "L", 3: "RGB"}  # data.channels -> PIL mode.


class _Count(NamedTuple):
  num_examples: int  # What tfds' split slicing reads of a split.


class _Records:
  """A split's images by index: {"image": uint8 (H, W, C), "label": int}."""

  def __init__(self, files: list[tuple[epath.Path, int]], channels: int, decode: bool):
    self._files, self._mode, self._decode = files, MODES[channels], decode

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> dict:
    path, label = self._files[index]
    data = path.read_bytes()
    if not self._decode:
      return {"image": data, "label": label}
    try:
      with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(ImageOps.exif_transpose(image).convert(self._mode), np.uint8)
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError.
      detail = "not a PNG or JPEG" if isinstance(e, UnidentifiedImageError) else str(e)
      raise DataError(f"cannot read image {path}: {detail}") from None
    return {"image": pixels.reshape(*pixels.shape[:2], -1), "label": label}


class ImageFolder:
  """A folder of class folders of images (see the module docstring; data/source.py: Source)."""

  def __init__(self, data_dir: str, channels: int):
    if not data_dir:
      raise DataError("data.name='image_folder' reads the folder data.data_dir, which is "
                      "not set: give --config.data.data_dir=FOLDER")
    root = epath.Path(data_dir)
    if not root.is_dir():
      raise DataError(f"data.data_dir={data_dir!r} is not a folder")
    self.name = f"image folder {data_dir!r}"
    self._channels = channels
    train = root / "train"
    if train.is_dir() and _subfolders(train):
      self._split_dirs = {p.name: p for p in _subfolders(root)}
    else:
      self._split_dirs = {"train": root}
    self.classes = [p.name for p in _subfolders(self._split_dirs["train"])]
    if not self.classes:
      loose = _images(self._split_dirs["train"])
      raise DataError(
          f"{self.name} holds no class folders" + (f" ({len(loose)} images lie directly in "
                                                    "it)" if loose else "")
          + ": put each class's images in FOLDER/<class>/ (or FOLDER/train/<class>/)")
    self.features = {"image": Feature((None, None, channels)),
                     "label": Feature((), len(self.classes))}
    self._listed: dict[str, list[tuple[epath.Path, int]]] | None = None

  def _listing(self) -> dict[str, list[tuple[epath.Path, int]]]:
    """Every split's (file, label), in hash order. Listed once, on first use."""
    if self._listed is None:
      label = {c: i for i, c in enumerate(self.classes)}
      self._listed = {}
      for split, folder in self._split_dirs.items():
        files = []
        for d in _subfolders(folder):
          if d.name not in label:
            raise DataError(f"{self.name}: class folder {split}/{d.name} is not a class of "
                            f"the train split (classes: {self.classes})")
          images = _images(d)
          if not images and split == "train":
            raise DataError(f"{self.name}: class folder {d} holds no PNG or JPEG images")
          files += [(p, label[d.name]) for p in images]
        files.sort(key=lambda f: (_hash(f"{f[0].parent.name}/{f[0].name}"), f[0].name))
        self._listed[split] = files
    return self._listed

  def _files(self, split: str, field: str) -> list[tuple[epath.Path, int]]:
    listed = self._listing()
    try:
      parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(
          {s: _Count(len(f)) for s, f in listed.items()})
    except (ValueError, AssertionError) as e:
      raise DataError(f"{field}={split!r} is not a split of {self.name} (splits: "
                      f"{sorted(listed)}): {str(e).splitlines()[0]}") from None
    return [f for p in parts for f in listed[p.splitname][p.from_:p.to]]

  def split_size(self, split: str, field: str) -> int:
    return len(self._files(split, field))

  def records(self, split: str, skip: Collection[str] = ()) -> Sequence[dict]:
    return _Records(self._files(split, "split"), self._channels, "image" not in skip)


def _subfolders(folder: epath.Path) -> list[epath.Path]:
  return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                key=lambda p: p.name)


def _images(folder: epath.Path) -> list[epath.Path]:
  return [p for p in folder.iterdir()
          if p.suffix.lower() in EXTENSIONS and not p.name.startswith(".")]


def _hash(text: str) -> bytes:
  return hashlib.sha256(text.encode()).digest()
