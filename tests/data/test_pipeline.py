import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from diffusion_jax.config import defaults as default
from diffusion_jax.data import digits, pipeline


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


def test_pipeline_batches_and_resumes_exactly(data_dir):
  cfg = digits_cfg(data_dir)
  ds = pipeline.make_dataset(cfg, 32, seed=3)
  it = iter(ds)
  first = next(it)
  assert first["image"].shape == (32, 8, 8, 1) and first["image"].dtype == tf.float32
  assert first["label"].dtype == tf.int32
  x = first["image"].numpy()
  assert x.min() >= -1.0 and x.max() <= 1.0
  # Same seed, same stream; a checkpointed iterator continues where it stopped.
  again = next(iter(pipeline.make_dataset(cfg, 32, seed=3)))
  np.testing.assert_array_equal(again["image"], first["image"])
  ckpt = tf.train.Checkpoint(iterator=it)
  path = ckpt.write(str(data_dir) + "/it_ckpt")
  want = [next(it)["label"].numpy() for _ in range(3)]
  it2 = iter(pipeline.make_dataset(cfg, 32, seed=3))
  tf.train.Checkpoint(iterator=it2).read(path).assert_consumed()
  got = [next(it2)["label"].numpy() for _ in range(3)]
  np.testing.assert_array_equal(np.stack(got), np.stack(want))
  other = next(iter(pipeline.make_dataset(cfg, 32, seed=4)))
  assert not np.array_equal(other["image"], first["image"])


def test_real_tfds_dataset_through_the_same_pipeline(tmp_path):
  """cifar10's real feature spec (mocked records: nothing can be downloaded here)."""
  cfg = default.get_config().data
  cfg.name, cfg.data_dir, cfg.image_size, cfg.channels = "cifar10", str(tmp_path), 16, 3
  cfg.random_flip = True
  with tfds.testing.mock_data(num_examples=24):
    builder = tfds.builder("cifar10", data_dir=str(tmp_path))
    batch = next(iter(pipeline.make_dataset(cfg, 8, seed=0, builder=builder)))
  assert batch["image"].shape == (8, 16, 16, 3)  # Resized from 32x32.
  assert batch["label"].shape == (8,)


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
