"""Shared fixtures. Tests run on CPU; parallel tests simulate devices in subprocesses."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)  # `configs` is imported as a top-level package.


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One tfds data_dir for the session; the bundled digits are prepared once."""
  d = str(tmp_path_factory.mktemp("tfds"))
  os.environ["TFDS_DATA_DIR"] = d
  return d


def tiny_overrides() -> dict:
  """A U-Net small enough to compile in a few seconds, for end-to-end tests."""
  return {
      "model.ch": 8, "model.ch_mult": (1, 2), "model.num_res_blocks": 1,
      "model.attn_resolutions": (4,), "model.num_groups": 4, "model.dropout": 0.0,
      "training.batch_size": 16, "sample.batch_size": 10, "sample.num_samples": 10,
      "sample.num_steps": 4,
  }


def apply_overrides(config, overrides: dict):
  for key, value in overrides.items():
    node = config
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return config
