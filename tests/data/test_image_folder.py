"""A user's folder of images as a dataset: layouts, labels, sizes, splits and errors."""

import os

import numpy as np
import pytest
from PIL import Image

from diffusion_jax.config import defaults as default
from diffusion_jax.config.errors import ConfigError
from diffusion_jax.data import pipeline


def write(path: str, image: np.ndarray, fmt: str = "PNG") -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path, fmt)


def folder_cfg(root, **kw):
  c = default.get_config().data
  c.name, c.data_dir, c.image_size, c.channels, c.num_classes = "image_folder", str(root), 8, 3, 3
  for k, v in kw.items():
    c[k] = v
  return c


def test_class_folders_of_any_size_and_format_become_a_dataset(tmp_path):
  rng = np.random.default_rng(0)
  red = np.zeros((40, 60, 3), np.uint8)
  red[..., 0] = 255
  write(str(tmp_path / "b_red" / "wide.png"), red)  # Not square: its centre is kept.
  gray = np.full((8, 8), 100, np.uint8)
  write(str(tmp_path / "c_gray" / "x.PNG"), gray)  # Gray, converted to RGB.
  write(str(tmp_path / "a_noise" / "n.jpg"), rng.integers(0, 256, (16, 16, 3), np.uint8), "JPEG")
  write(str(tmp_path / "a_noise" / "m.jpeg"), rng.integers(0, 256, (9, 9, 3), np.uint8), "JPEG")
  (tmp_path / "a_noise" / "notes.txt").write_text("ignored")
  write(str(tmp_path / "a_noise" / "deeper" / "y.png"), red)  # Ignored: too deep.
  cfg = folder_cfg(tmp_path)
  source = pipeline.check(cfg, {"data.split": ("train", 4)})
  assert source.classes == ["a_noise", "b_red", "c_gray"]  # Labels in sorted order.
  data = pipeline.load_split_numpy(cfg, "train")
  assert data["image"].shape == (4, 8, 8, 3) and sorted(data["label"]) == [0, 0, 1, 2]
  by_label = {int(l): x for l, x in zip(data["label"], data["image"])}
  np.testing.assert_array_equal(by_label[1], np.broadcast_to([255, 0, 0], (8, 8, 3)))
  np.testing.assert_array_equal(by_label[2], np.full((8, 8, 3), 100))
  batch = next(pipeline.make_iterator(cfg, 4, seed=0))
  assert batch["image"].shape == (4, 8, 8, 3) and sorted(batch["label"]) == [0, 0, 1, 2]
  np.testing.assert_array_equal(
      np.sort(batch["image"].reshape(4, -1), 0),
      np.sort(data["image"].reshape(4, -1).astype(np.float32) / 127.5 - 1.0, 0))
  # Gray: one channel.
  assert pipeline.load_split_numpy(folder_cfg(tmp_path, channels=1), "train")[
      "image"].shape == (4, 8, 8, 1)


def test_split_folders_and_slices(tmp_path):
  for split, n in (("train", 10), ("test", 3)):
    for c in ("cat", "dog"):
      for i in range(n):
        write(str(tmp_path / split / c / f"{i}.png"), np.full((4, 4, 3), i, np.uint8))
  cfg = folder_cfg(tmp_path, num_classes=2)
  source = pipeline.check(cfg, {"data.split": ("train", 20), "eval.split": ("test", 6)})
  assert source.classes == ["cat", "dog"]
  assert source.split_size("train[:75%]", "f") == 15 and source.split_size("train[75%:]", "f") == 5
  assert source.split_size("train+test", "f") == 26
  # A slice is a random subset of every class (records are in hash order, not by class).
  labels = pipeline.load_split_numpy(cfg, "train[:50%]")["label"]
  assert 2 <= labels.sum() <= 8
  assert len(pipeline.load_split_numpy(cfg, "test")["image"]) == 6
  with pytest.raises(pipeline.DataError, match=r"eval.split='validation' is not a split of "
                     r"image folder .* \(splits: \['test', 'train'\]\)"):
    pipeline.check(cfg, {"eval.split": ("validation", 1)})


def test_bad_folders_get_one_clear_error(tmp_path):
  def error(cfg, splits=None):
    with pytest.raises(ConfigError) as e:  # DataError, or ConfigError from a check.
      pipeline.check(cfg, splits or {"data.split": ("train", 1)})
    assert "\n" not in str(e.value)
    return str(e.value)

  assert "which is not set: give --config.data.data_dir=FOLDER" in error(folder_cfg(""))
  assert "is not a folder" in error(folder_cfg(tmp_path / "missing"))
  empty = tmp_path / "empty"
  empty.mkdir()
  assert "holds no class folders: put each class's images in FOLDER/<class>/" in error(
      folder_cfg(empty))
  flat = tmp_path / "flat"
  write(str(flat / "a.png"), np.zeros((4, 4, 3), np.uint8))
  assert "holds no class folders (1 images lie directly in it)" in error(folder_cfg(flat))
  no_images = tmp_path / "no_images"
  (no_images / "cat").mkdir(parents=True)
  assert "class folder" in error(folder_cfg(no_images)) and "holds no PNG or JPEG" in error(
      folder_cfg(no_images))
  stray = tmp_path / "stray"
  write(str(stray / "train" / "cat" / "a.png"), np.zeros((4, 4, 3), np.uint8))
  write(str(stray / "test" / "dog" / "a.png"), np.zeros((4, 4, 3), np.uint8))
  assert "class folder test/dog is not a class of the train split" in error(folder_cfg(stray))
  few = tmp_path / "few"
  write(str(few / "cat" / "a.png"), np.zeros((4, 4, 3), np.uint8))
  assert "has 1 examples; the run needs at least 8" in error(folder_cfg(few),
                                                            {"data.split": ("train", 8)})
  write(str(few / "dog" / "a.png"), np.zeros((4, 4, 3), np.uint8))
  assert ("data.num_classes=1, but image folder" in error(folder_cfg(few, num_classes=1))
          and "'label' has 2 classes" in error(folder_cfg(few, num_classes=1)))
  broken = tmp_path / "broken"
  (broken / "cat").mkdir(parents=True)
  (broken / "cat" / "x.png").write_bytes(b"not an image")
  with pytest.raises(pipeline.DataError, match="cannot read image .*x.png: not a PNG or JPEG$"):
    pipeline.load_split_numpy(folder_cfg(broken), "train")
  # Read in a background thread, the same error reaches the training loop.
  write(str(broken / "cat" / "y.png"), np.zeros((4, 4, 3), np.uint8))
  with pytest.raises(pipeline.DataError, match="cannot read image .*x.png: not a PNG or JPEG$"):
    next(pipeline.make_iterator(folder_cfg(broken, num_classes=1), 2, seed=0))


def test_exif_orientation_is_applied(tmp_path):
  # 2 rows x 4 columns: black left half, white right half; EXIF orientation 6 says
  # "rotate 90 degrees clockwise to view", making it 4 x 2 with white at the bottom.
  image = np.zeros((2, 4), np.uint8)
  image[:, 2:] = 255
  exif = Image.Exif()
  exif[0x0112] = 6
  os.makedirs(tmp_path / "c")
  Image.fromarray(image, "L").save(tmp_path / "c" / "x.png", exif=exif)
  upright = pipeline.load_split_numpy(folder_cfg(tmp_path, image_size=2, channels=1,
                                                 num_classes=1), "train")["image"][0, ..., 0]
  np.testing.assert_array_equal(upright, [[0, 0], [255, 255]])  # Central square, turned.
