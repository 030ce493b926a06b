"""Same config, seed and device count: bit-identical parameters on CPU."""

import jax
import numpy as np

from tests.conftest import cli
from tests.run.test_cli import load_run_state

OVER = {"training.log_every": 1, "optim.warmup_steps": 1, "training.num_steps": 3,
        "training.checkpoint_every": 3, "training.sample_at_end": False, "model.dropout": 0.1}


def test_two_runs_of_one_config_give_bit_identical_parameters(tmp_path, data_dir):
  states = []
  for name in ("a", "b"):
    r = cli(str(tmp_path / name), overrides=OVER, data_dir=data_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    states.append(load_run_state(str(tmp_path / name)))
  a, b = (jax.tree.leaves((s.params, s.ema_params, s.opt_state, s.rng)) for s in states)
  assert int(states[0].step) == 3 and len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
