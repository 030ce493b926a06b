"""The bundled photo_patches dataset: offline, deterministic, split by source photo."""

import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusion_jax.data import photos, tfds_source


def find(image: np.ndarray, crop: np.ndarray) -> list[tuple[int, int]]:
  """Every (top, left) at which `crop` occurs in `image`."""
  size = crop.shape[0]
  rows, cols = np.nonzero(np.all(image == crop[0, 0], axis=-1))
  return [(int(r), int(c)) for r, c in zip(rows, cols)
          if np.array_equal(image[r:r + size, c:c + size], crop)]


def test_photos_are_read_from_local_files_without_network(monkeypatch):
  def no_network(*args, **kwargs):
    raise AssertionError("tried to open a network connection")
  monkeypatch.setattr(socket, "socket", no_network)
  monkeypatch.setattr(socket, "create_connection", no_network)
  photos._decoded.cache_clear()  # Decode again, now with the network blocked.
  seen = set()
  for name in photos.PHOTOS:
    image = photos.load_photo(name)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert min(image.shape[:2]) >= max(photos.FIELDS_OF_VIEW)  # Every scale fits.
    assert np.any(image[..., 0] != image[..., 1])  # Colour, not grey.
    seen.add(image.tobytes())
  assert len(seen) == len(photos.PHOTOS) == 10


def test_split_is_by_source_photo():
  assert set(photos.TRAIN_PHOTOS).isdisjoint(photos.TEST_PHOTOS)
  assert set(photos.TRAIN_PHOTOS) | set(photos.TEST_PHOTOS) == set(photos.PHOTOS)
  assert len(photos.TEST_PHOTOS) == 2
  sources = {split: {photos.patch(split, i)["source"] for i in range(150)}
             for split in ("train", "test")}
  assert sources["train"] == set(photos.TRAIN_PHOTOS)  # Only, and every one of, them.
  assert sources["test"] == set(photos.TEST_PHOTOS)


def test_patches_are_deterministic_and_independent_of_order():
  a = [photos.patch("train", i) for i in (7, 0, 3)]
  b = [photos.patch("train", i) for i in (3, 0, 7)][::-1]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    assert (x["source"], x["scale"]) == (y["source"], y["scale"])
  assert not np.array_equal(a[0]["image"], a[1]["image"])
  assert not np.array_equal(photos.patch("train", 0)["image"], photos.patch("test", 0)["image"])
  assert not np.array_equal(photos.patch("train", 0, seed=1)["image"], a[1]["image"])


@pytest.mark.parametrize("size,factors", [(32, (2, 4, 8)), (64, (1, 2, 4))])
def test_patches_are_crops_of_the_downscaled_photo(size, factors):
  assert photos.scales(size) == factors
  used = set()
  for i in range(12):
    ex = photos.patch("train", i, size)
    image = ex["image"]
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    used.add(ex["scale"])
    source = photos.downscale(photos.load_photo(ex["source"]), ex["scale"])
    assert find(source, image)
  assert used == set(factors)


def test_downscale_averages_blocks():
  image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  small = photos.downscale(image, 2)
  assert small.shape == (2, 3, 3) and small.dtype == np.uint8
  assert small[1, 2, 0] == np.round(image[2:4, 4:6, 0].mean())
  assert photos.downscale(image[:3, :5], 2).shape == (1, 2, 3)  # Ragged edges dropped.


def test_flat_crops_are_rejected_and_patches_have_texture():
  # The retina's black border is flat; the dataset must never yield such a crop.
  assert not photos.is_textured(photos.load_photo("retina")[:32, :32])
  for split in ("train", "test"):
    for i in range(200):
      assert photos.is_textured(photos.patch(split, i)["image"])
  stds = [photos.patch("train", i)["image"].std(axis=(0, 1)).mean() for i in range(200)]
  assert min(stds) >= photos.MIN_STD and np.median(stds) > 3 * photos.MIN_STD


def test_tiny_builder_prepares_offline_and_loads(data_dir):
  builder = tfds.builder("photo_patches/tiny", data_dir=data_dir)
  assert isinstance(builder, photos.PhotoPatches)
  tfds_source.prepare(builder)  # As the pipeline prepares it: ArrayRecord, read by index.
  config = photos.CONFIGS["tiny"]
  assert builder.info.splits["train"].num_examples == config.train
  for split, n in (("train", config.train), ("test", config.test)):
    source = builder.as_data_source(split=split)
    got = [source[i] for i in range(len(source))]
    assert len(got) == n
    assert {ex["source"].decode() for ex in got} == set(photos.SPLIT_PHOTOS[split])
    want = [photos.patch(split, i, config.size) for i in range(n)]
    key = lambda ex: (ex["image"].tobytes(), int(ex["scale"]))  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, want))
    assert got[0]["image"].shape == (32, 32, 3) and got[0]["image"].dtype == np.uint8


def test_a_dataset_another_process_prepared_meanwhile_is_used(tmp_path, monkeypatch):
  """Two builders on one fresh data_dir, as two runners starting together have: the
  other one finishes first, while this one is generating its copy."""
  mine = tfds.builder("photo_patches/tiny", data_dir=str(tmp_path))
  other = tfds.builder("photo_patches/tiny", data_dir=str(tmp_path))
  generate = mine._download_and_prepare

  def other_finishes_first(*args, **kwargs):
    tfds_source.prepare(other)
    return generate(*args, **kwargs)

  monkeypatch.setattr(mine, "_download_and_prepare", other_finishes_first)
  tfds_source.prepare(mine)
  assert other.is_prepared() and mine.is_prepared()
  source = mine.as_data_source(split="train")
  assert len(source) == photos.CONFIGS["tiny"].train and source[0]["image"].shape == (32, 32, 3)
  # Only the finished copy is left in the data_dir.
  assert [p.name for p in (tmp_path / "photo_patches" / "tiny").iterdir()] == [str(mine.version)]
