"""The tests' sweeps: the tiniest digits run (a few seconds a trial), and one sweep per
variant. Every variant trains the same config; `get_sweep(variant)` picks the sweep.

  python -m diffusion_jax.sweep --config=tests/sweep/tiny_sweep.py:seeds --workdir=DIR
"""

from diffusion_jax.config import defaults
from diffusion_jax.sweep import space

TINY = {"model": {"ch": 8, "ch_mult": (1, 2), "num_res_blocks": 1, "num_groups": 4,
                  "dropout": 0.0},
        "training": {"batch_size": 16, "num_steps": 8, "log_every": 2, "checkpoint_every": 2,
                     "sample_at_end": False, "max_consecutive_skips": 3},
        "optim": {"warmup_steps": 1}}


def get_config(arg: str = ""):
  c = defaults.get_config()
  for section, values in TINY.items():
    for k, v in values.items():
      c[section][k] = v
  return c


def get_sweep(arg: str = ""):
  loss = dict(metric="loss", mode="min")
  sweeps = {
      # Seeds only: every trial compiles the same programs (one compile per session).
      "seeds": lambda: space.Sweep(grid=space.product({"seed": [0, 1, 2, 3]}), **loss),
      # Two trials: one per node of the tests' Ray cluster; a kill during the second.
      "pair": lambda: space.Sweep(grid=space.product({"seed": [0, 1]}), **loss),
      # The first trial is the seeds' program; the second's loss overflows.
      "diverge": lambda: space.Sweep(grid=[{"seed": 0}, {"seed": 0, "optim.lr": 1e30}],
                                     **loss),
      "unknown_field": lambda: space.Sweep(grid=space.product({"optim.lrr": [1e-3]}), **loss),
      "wrong_type": lambda: space.Sweep(grid=space.product({"optim.lr": ["fast"]}), **loss),
      "bad_value": lambda: space.Sweep(grid=space.product({"training.ema_decay": [0.9, 1.5]}),
                                       **loss),
      "bad_metric": lambda: space.Sweep(grid=space.product({"seed": [0]}), metric="eval/fd",
                                        mode="min"),
      "empty_grid": lambda: space.Sweep(grid=space.product({"seed": []}), **loss),
      "search": lambda: space.Sweep(search={"optim.lr": space.loguniform(1e-4, 1e-1)},
                                    num_trials=3, **loss),
      # For tests.sweep.objectives (16 steps, a report every 2): TPE with ASHA.
      "search_asha": lambda: space.Sweep(
          search={"optim.lr": space.loguniform(1e-4, 1e-1)}, num_trials=6,
          early_stopping=space.EarlyStopping(grace_steps=4, reduction_factor=2), **loss),
  }
  return sweeps[arg]()
