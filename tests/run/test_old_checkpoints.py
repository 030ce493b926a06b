"""Checkpoints written before the input pipeline read by index (one tf.data iterator per
process) are refused for training with one clear error, before anything is written."""

import os

import pytest

from diffusion_jax.config import defaults
from diffusion_jax.config.errors import ConfigError
from diffusion_jax.run import spec as spec_lib, workdir as workdir_lib


def test_a_tf_data_iterator_checkpoint_is_refused_for_training(tmp_path):
  step_dir = tmp_path / "checkpoints" / "3"
  os.makedirs(step_dir / "iterator" / "process_0")  # The old layout.
  os.makedirs(step_dir / "meta")
  (step_dir / "meta" / "metadata").write_text("{}")
  spec = spec_lib.parse(defaults.get_config(), num_devices=1)
  before = sorted(p for p in tmp_path.rglob("*"))
  with pytest.raises(ConfigError, match="checkpoint 3 in .* holds a tf.data iterator .* "
                     "cannot be resumed; sample or evaluate it, or train in a new workdir"):
    workdir_lib.check(spec, str(tmp_path), "train")
  assert sorted(p for p in tmp_path.rglob("*")) == before
