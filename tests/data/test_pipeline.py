"""The input pipeline over tfds sources: batches, determinism, positions that restore,
flips, and the errors of datasets that cannot be read by index."""

import re
import shutil

import numpy as np
import pytest

from diffusion_jax.config import defaults as default
from diffusion_jax.config.errors import ConfigError
from diffusion_jax.data import digits, pipeline, preprocess
from tests.data.fake_datasets import prepare_cifar10


def digits_cfg(data_dir):
  c = default.get_config().data
  c.data_dir = data_dir
  return c


def test_digits_builder_is_deterministic_with_a_fixed_split(data_dir, tmp_path):
  a = pipeline.load_split_numpy(digits_cfg(data_dir), "train")
  cfg = digits_cfg(str(tmp_path))  # A second, independent preparation.
  b = pipeline.load_split_numpy(cfg, "train")
  test = pipeline.load_split_numpy(cfg, "test")
  order = lambda d: np.lexsort(d["image"].reshape(len(d["image"]), -1).T)
  np.testing.assert_array_equal(a["image"][order(a)], b["image"][order(b)])
  assert len(a["image"]) == 1498 and len(test["image"]) == 299
  assert a["image"].dtype == np.uint8 and a["image"].shape[1:] == (8, 8, 1)
  assert a["image"].max() == 255 and set(np.unique(a["label"])) == set(range(10))
  raw, _ = digits.digits_arrays()
  assert len(raw) == 1797
  # Prepared as ArrayRecord, the format that reads by index.
  builder = pipeline.get_builder("sklearn_digits", str(tmp_path))
  assert [f.value for f in builder.info.available_file_formats()] == ["array_record"]


def test_batches_are_deterministic_and_resume_exactly(data_dir):
  cfg = digits_cfg(data_dir)
  it = pipeline.make_iterator(cfg, 32, seed=3)
  first = next(it)
  assert set(first) == {"image", "label"}
  assert first["image"].shape == (32, 8, 8, 1) and first["image"].dtype == np.float32
  assert first["label"].shape == (32,) and first["label"].dtype == np.int32
  assert first["image"].min() >= -1.0 and first["image"].max() <= 1.0
  # Same seed, same stream; another seed, another order.
  again = next(pipeline.make_iterator(cfg, 32, seed=3))
  np.testing.assert_array_equal(again["image"], first["image"])
  other = next(pipeline.make_iterator(cfg, 32, seed=4))
  assert not np.array_equal(other["image"], first["image"])
  # A saved position continues where it stopped, in a fresh iterator.
  state = it.state()
  assert state == {"version": 1, "dataset": "sklearn_digits", "split": "train",
                   "split_size": 1498, "seed": 3, "position": 32}
  want = [next(it)["label"] for _ in range(3)]
  fresh = pipeline.make_iterator(cfg, 32, seed=3)
  fresh.restore(state)
  np.testing.assert_array_equal([next(fresh)["label"] for _ in range(3)], want)
  it.close()
  fresh.close()


def test_a_position_of_another_dataset_is_refused(data_dir):
  cfg = digits_cfg(data_dir)
  it = pipeline.make_iterator(cfg, 8, seed=0)
  state = it.state()
  with pytest.raises(pipeline.DataError, match="the saved input position is for .*"
                     "'split': 'train\\[:50%\\]'.*resume with the data.name and data.split"):
    cfg.split = "train[:50%]"
    pipeline.make_iterator(cfg, 8, seed=0).restore(state)
  with pytest.raises(pipeline.DataError, match="not a saved input pipeline position"):
    it.restore({"position": -1})


def test_flips_mirror_a_fixed_half_of_the_examples(data_dir):
  cfg = digits_cfg(data_dir)
  plain = pipeline.make_iterator(cfg, 64, seed=5)
  cfg.random_flip = True
  flipped = pipeline.make_iterator(cfg, 64, seed=5)
  a, b = next(plain)["image"], next(flipped)["image"]
  mirrored = [not np.array_equal(x, y) for x, y in zip(a, b)]
  for i, (x, y) in enumerate(zip(a, b)):  # Each example is itself or its mirror image.
    np.testing.assert_array_equal(y, x[:, ::-1] if preprocess.flips(5, i) else x)
  assert 16 < sum(mirrored) < 48  # About half of 64 (symmetric digits hide a few).
  np.testing.assert_array_equal(next(pipeline.make_iterator(cfg, 64, seed=5))["image"], b)
  # The same flips on any number of processes (emulated: processes 0-3 of 4).
  quarters = [next(pipeline.make_iterator(cfg, 64, 5, process_index=p, process_count=4))
              for p in range(4)]
  np.testing.assert_array_equal(np.concatenate([q["image"] for q in quarters]), b)


def test_real_tfds_dataset_through_the_same_pipeline(tmp_path):
  """cifar10's real feature spec (random records: nothing can be downloaded here)."""
  prepare_cifar10(str(tmp_path), train=24)
  cfg = default.get_config().data
  cfg.name, cfg.data_dir, cfg.image_size, cfg.channels = "cifar10", str(tmp_path), 16, 3
  cfg.random_flip = True
  batch = next(pipeline.make_iterator(cfg, 8, seed=0))
  assert batch["image"].shape == (8, 16, 16, 3)  # Resized from 32x32.
  assert batch["label"].shape == (8,)
  data = pipeline.load_split_numpy(cfg, "test", 3)
  assert data["image"].shape == (3, 16, 16, 3) and data["image"].dtype == np.uint8


def test_unknown_dataset_and_missing_data_dir(tmp_path):
  with pytest.raises(pipeline.DataError, match="unknown dataset data.name='no_such_set'"):
    pipeline.get_builder("no_such_set", str(tmp_path))
  with pytest.raises(pipeline.DataError, match="does not exist"):
    pipeline.get_builder("cifar10", str(tmp_path / "missing"))
  # A bundled dataset is not prepared in a data_dir that does not exist (nothing is
  # created there).
  with pytest.raises(pipeline.DataError, match="does not exist"):
    pipeline.get_builder("sklearn_digits", str(tmp_path / "missing"))
  assert not (tmp_path / "missing").exists()
  with pytest.raises(pipeline.DataError, match="is not prepared"):
    pipeline.get_builder("cifar10", str(tmp_path))


def test_a_tfrecord_dataset_is_refused_with_the_command_that_prepares_it(tmp_path):
  prepare_cifar10(str(tmp_path), train=8, test=8, file_format="tfrecord")
  cfg = default.get_config().data
  cfg.name, cfg.data_dir, cfg.image_size, cfg.channels = "cifar10", str(tmp_path), 32, 3
  with pytest.raises(pipeline.DataError) as e:
    pipeline.check(cfg, {"data.split": ("train", 8)})
  msg = str(e.value)
  assert "is prepared as tfrecord, which cannot be read by index" in msg and "\n" not in msg
  # The command it gives, run as it says (after deleting the old preparation), works.
  # (In this process: the fake cifar10 cannot download the real one.)
  folder = re.search(r"after deleting '([^']+)'", msg).group(1)
  code = re.search(r'python -c "(.*)"$', msg).group(1)
  assert code == (f"import tensorflow_datasets as tfds; tfds.builder('cifar10', "
                  f"data_dir={str(tmp_path)!r}).download_and_prepare(file_format="
                  "'array_record')")
  shutil.rmtree(folder)
  prepare_cifar10(str(tmp_path), train=8, test=8)  # What `code` does, with fake records.
  assert pipeline.check(cfg, {"data.split": ("train", 8)}).name == "cifar10/3.0.2"


def test_a_split_smaller_than_the_global_batch_is_refused(data_dir):
  cfg = digits_cfg(data_dir)
  cfg.split = "test[:10]"
  with pytest.raises(ConfigError, match=r"data.split='test\[:10\]' of sklearn_digits"
                     r"/1.1.0 has 10 examples, fewer than one global batch \(16\)"):
    pipeline.make_iterator(cfg, 16, seed=0)
  with pytest.raises(ConfigError, match="has 10 examples; the run needs at least 16"):
    pipeline.check(cfg, {"data.split": (cfg.split, 16)})
