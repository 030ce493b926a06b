"""A sweep's declaration: grid expansion, search samples, early stopping's rule, and
the checks of every trial's config before anything starts."""

import os

import pytest

from diffusion_jax.config import files
from diffusion_jax.config.errors import ConfigError
from diffusion_jax.sweep import plan, space
from tests.conftest import ROOT

TINY = os.path.join(ROOT, "tests", "sweep", "tiny_sweep.py")


def test_product_zip_and_lists_give_the_override_sets():
  assert space.product({"a": [1, 2], "b": ["x", "y"]}) == [
      {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
  assert space.zip({"a": [1, 2], "b": [3, 4]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
  # Axes may be lists of override dicts, and nest.
  grid = space.product(space.zip({"a": [1, 2], "b": [3, 4]}), [{"c": 0}, {"c": 1, "d": 5}])
  assert grid == [{"a": 1, "b": 3, "c": 0}, {"a": 1, "b": 3, "c": 1, "d": 5},
                  {"a": 2, "b": 4, "c": 0}, {"a": 2, "b": 4, "c": 1, "d": 5}]
  assert space.zip([{"a": 1}, {"a": 2}], {"b": [7, 8]}) == [{"a": 1, "b": 7}, {"a": 2, "b": 8}]
  assert space.product() == [{}]


@pytest.mark.parametrize("make,message", [
    (lambda: space.zip({"a": [1, 2], "b": [3]}), "unequal lengths"),
    (lambda: space.product({"a": [1]}, {"a": [2]}), r"sets \['a'\] in two of its axes"),
    (lambda: space.product({"a": []}), "'a' needs a non-empty list"),
    (lambda: space.product({"a": 3}), "'a' needs a non-empty list"),
    (lambda: space.product("a=1"), "takes dicts of value lists"),
])
def test_bad_grids_are_errors(make, message):
  with pytest.raises(ConfigError, match=message):
    make()


def test_search_samples_are_in_range_and_stable():
  s = space.Sweep(metric="loss", mode="min", grid=[{"a": 0}, {"a": 1}], num_trials=50,
                  search={"lr": space.loguniform(1e-4, 1e-1), "u": space.uniform(-1, 1),
                          "k": space.randint(2, 5), "c": space.choice(["x", "y"])})
  s.check()
  trials = s.trials()
  assert len(trials) == 100 and [t["a"] for t in trials] == [0] * 50 + [1] * 50
  assert all(1e-4 <= t["lr"] <= 1e-1 and -1 <= t["u"] <= 1 for t in trials)
  assert {t["k"] for t in trials} == {2, 3, 4} and {t["c"] for t in trials} == {"x", "y"}
  # Log-uniform: about as many samples in each decade.
  decades = [sum(10 ** -(d + 1) <= t["lr"] < 10 ** -d for t in trials) for d in (1, 2, 3)]
  assert min(decades) > 15, decades
  assert s.trials() == trials  # The same list every time (resume needs it).


@pytest.mark.parametrize("sweep,message", [
    (dict(grid=[]), "the grid is empty"),
    (dict(), "neither a grid nor a search space"),
    (dict(grid=[{"a": 1}], mode="best"), "mode='best' must be one of"),
    (dict(grid=[{"a": 1}], num_trials=3), "num_trials > 1 needs a search space"),
    (dict(search={"a": space.loguniform(0, 1)}), "loguniform needs low > 0"),
    (dict(search={"a": space.randint(3, 3)}), "randint needs integers low < high"),
    (dict(search={"a": (1, 2)}), r"search\['a'\]=\(1, 2\) is not a distribution"),
    (dict(grid=[{"a": 1}], search={"a": space.uniform(0, 1)}), "both in the grid and"),
    (dict(grid=[{"a": 1}], early_stopping=space.EarlyStopping(0)), "grace_steps=0"),
])
def test_bad_declarations_are_errors(sweep, message):
  kw = {"metric": "loss", "mode": "min", **sweep}
  with pytest.raises(ConfigError, match=message):
    space.Sweep(**kw).check()


def test_early_stopping_rungs_and_rule():
  es = space.EarlyStopping(grace_steps=100, reduction_factor=3)
  assert es.rungs(1000) == [100, 300, 900]
  assert es.keeps(1.0, [], "min")  # The first trial at a rung goes on.
  assert not es.keeps(2.0, [1.0], "min") and es.keeps(1.0, [2.0], "min")
  assert es.keeps(2.0, [1.0], "max")
  # 4 trials: the best ceil(4/3) = 2 go on.
  others = [1.0, 2.0, 3.0]
  assert es.keeps(1.5, others, "min") and not es.keeps(2.5, others, "min")


def _make(variant: str) -> plan.Study:
  spec = f"{TINY}:{variant}"
  return plan.make(spec, files.load(spec), num_devices=1)


def test_every_trial_config_is_checked_before_anything_starts():
  study = _make("seeds")
  assert [t.id for t in study.trials] == ["t000", "t001", "t002", "t003"]
  assert [t.overrides for t in study.trials] == [{"seed": s} for s in range(4)]
  assert study.config_of(study.trials[2].overrides).seed == 2
  with pytest.raises(ConfigError, match=r"^sweep: 'optim.lrr' is not a config field$"):
    _make("unknown_field")
  with pytest.raises(ConfigError, match=r"optim.lr='fast' has the wrong type: the field holds "
                     r"a float \(0.002\)"):
    _make("wrong_type")
  # A value the field's own check refuses, named with its trial.
  with pytest.raises(ConfigError, match=r"^trial t001 \(training.ema_decay=1.5\): "
                     r"training.ema_decay=1.5 must be a finite number in \[0, 1\)$"):
    _make("bad_value")
  with pytest.raises(ConfigError, match=r"metric 'eval/fd' is not reported by the run of "
                     r"trial t000 \(seed=0\); it reports \['grad_norm', 'loss', 'lr'\]"):
    _make("bad_metric")
  with pytest.raises(ConfigError, match="'seed' needs a non-empty list"):
    _make("empty_grid")


def test_a_config_without_a_sweep_is_refused():
  with pytest.raises(ConfigError, match="declares no sweep: add get_sweep"):
    plan.load_sweep(os.path.join(ROOT, "configs", "cifar10_ddpm.py"))
