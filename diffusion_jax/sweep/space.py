"""A sweep as a config file declares it, beside `get_config`: `get_sweep(arg)` returns
a `Sweep`, and its trials are lists of config overrides.

  def get_sweep(arg=""):
    return space.Sweep(
        grid=space.product({"optim.lr": [1e-3, 2e-3]}, space.zip({"a.x": [1, 2], "a.y": [3, 4]})),
        search={"training.ema_decay": space.uniform(0.99, 0.9999)}, num_trials=4,
        metric="loss", mode="min", early_stopping=space.EarlyStopping(grace_steps=500))

A grid is a list of override dicts ({"field.path": value}); `product` and `zip` build
one from value lists. A search space maps fields to distributions (DISTRIBUTIONS),
sampled `num_trials` times for each grid point. This module only declares and expands;
`plan` checks each trial's config as a single run is checked. It imports nothing heavy:
config files import it.
"""

import builtins
import dataclasses
import itertools
import math
import random
from typing import Any, Mapping, Sequence

from diffusion_jax.config.errors import ConfigError, require

Overrides = dict[str, Any]  # {"optim.lr": 1e-3, ...}: dotted config fields -> values.


def _axes(args, how: str) -> list[list[Overrides]]:
  """Each argument as a list of override dicts: a list stays one; a dict of value
  lists gives one axis per field (product) or one zipped axis (zip)."""
  axes = []
  for a in args:
    if isinstance(a, Mapping):
      for field, values in a.items():
        require(isinstance(values, (list, tuple)) and len(values) > 0,
                f"sweep: {how}: {field!r} needs a non-empty list of values, got {values!r}")
      if how == "product":
        axes += [[{f: v} for v in vs] for f, vs in a.items()]
      else:
        lengths = {f: len(vs) for f, vs in a.items()}
        require(len(set(lengths.values())) <= 1, f"sweep: zip of lists of unequal lengths {lengths}")
        axes.append([dict(builtins.zip(a, vs)) for vs in builtins.zip(*a.values())])
    elif isinstance(a, (list, tuple)):
      require(all(isinstance(p, Mapping) for p in a),
              f"sweep: {how}: a list argument must hold override dicts, got {a!r}")
      axes.append([dict(p) for p in a])
    else:
      raise ConfigError(f"sweep: {how} takes dicts of value lists or lists of override dicts, "
                        f"got {a!r}")
  return axes


def _merge(points: Sequence[Overrides], how: str) -> Overrides:
  out: Overrides = {}
  for p in points:
    twice = sorted(set(out) & set(p))
    require(not twice, f"sweep: {how} sets {twice} in two of its axes")
    out.update(p)
  return out


def product(*axes) -> list[Overrides]:
  """Every combination of the axes: dicts {field: [values]} (each field an axis) or
  lists of override dicts. product({"a": [1, 2]}, [{"b": 0}, {"b": 1, "c": 2}])."""
  return [_merge(ps, "product") for ps in itertools.product(*_axes(axes, "product"))]


def zip(*axes) -> list[Overrides]:  # noqa: A001 (the grid operation's natural name)
  """The axes side by side (equal lengths): zip({"a": [1, 2], "b": [3, 4]}) gives
  [{"a": 1, "b": 3}, {"a": 2, "b": 4}]."""
  lists = _axes(axes, "zip")
  lengths = [len(x) for x in lists]
  require(len(set(lengths)) <= 1, f"sweep: zip of axes of unequal lengths {lengths}")
  return [_merge(ps, "zip") for ps in builtins.zip(*lists)]


# --- Search spaces: each distribution samples a value and names the values a check
# must try (its extremes: every value a sample can take lies between them).

@dataclasses.dataclass(frozen=True)
class Uniform:
  low: float
  high: float

  def check(self, field: str) -> None:
    require(math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high,
            f"sweep: {field}: uniform needs finite low < high, got ({self.low}, {self.high})")

  def sample(self, rng: random.Random) -> float:
    return rng.uniform(self.low, self.high)

  def extremes(self) -> list:
    return [float(self.low), float(self.high)]


@dataclasses.dataclass(frozen=True)
class LogUniform(Uniform):
  def check(self, field: str) -> None:
    super().check(field)
    require(self.low > 0, f"sweep: {field}: loguniform needs low > 0, got {self.low}")

  def sample(self, rng: random.Random) -> float:
    return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))


@dataclasses.dataclass(frozen=True)
class RandInt:
  low: int
  high: int  # Exclusive, as in Tune's randint.

  def check(self, field: str) -> None:
    require(isinstance(self.low, int) and isinstance(self.high, int) and self.low < self.high,
            f"sweep: {field}: randint needs integers low < high (high excluded), got "
            f"({self.low!r}, {self.high!r})")

  def sample(self, rng: random.Random) -> int:
    return rng.randrange(self.low, self.high)

  def extremes(self) -> list:
    return [self.low, self.high - 1]


@dataclasses.dataclass(frozen=True)
class Choice:
  values: tuple

  def check(self, field: str) -> None:
    require(len(self.values) > 0, f"sweep: {field}: choice of no values")

  def sample(self, rng: random.Random) -> Any:
    return self.values[rng.randrange(len(self.values))]

  def extremes(self) -> list:
    return list(self.values)


# Search-space distributions by name (the Ray engine maps each to Tune's own).
DISTRIBUTIONS = {"uniform": Uniform, "loguniform": LogUniform, "randint": RandInt,
                 "choice": Choice}
Distribution = Uniform | LogUniform | RandInt | Choice


def uniform(low: float, high: float) -> Uniform:
  return Uniform(low, high)


def loguniform(low: float, high: float) -> LogUniform:
  return LogUniform(low, high)


def randint(low: int, high: int) -> RandInt:
  """An integer in [low, high)."""
  return RandInt(low, high)


def choice(values: Sequence) -> Choice:
  return Choice(tuple(values))


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
  """Asynchronous successive halving (ASHA): at the rungs grace_steps * rf^k
  (training steps), a trial goes on only if its metric is among the best
  ceil(n / rf) of the n trials that have reached that rung so far."""
  grace_steps: int
  reduction_factor: float = 3.0

  def check(self) -> None:
    require(isinstance(self.grace_steps, int) and self.grace_steps > 0,
            f"sweep: early_stopping.grace_steps={self.grace_steps!r} must be an integer > 0")
    require(self.reduction_factor > 1,
            f"sweep: early_stopping.reduction_factor={self.reduction_factor!r} must be > 1")

  def rungs(self, max_steps: int) -> list[int]:
    """The milestones (steps) below max_steps at which trials are compared."""
    out, r = [], float(self.grace_steps)
    while r < max_steps:
      out.append(int(round(r)))
      r *= self.reduction_factor
    return out

  def keeps(self, value: float, others: Sequence[float], mode: str) -> bool:
    """Whether a trial with `value` at a rung goes on, given the other trials' values
    there: it must rank among the best ceil(n / rf) of the n values (ties kept)."""
    values = sorted([value, *others], reverse=(mode == "max"))
    keep = math.ceil(len(values) / self.reduction_factor)
    cutoff = values[keep - 1]
    return value <= cutoff if mode == "min" else value >= cutoff


MODES = ("min", "max")


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A study: trials are every grid point combined with `num_trials` samples of the
  search space; `metric` (a scalar the run reports) is optimised in `mode`."""
  metric: str
  mode: str  # "min" | "max"
  grid: Sequence[Overrides] | None = None  # None: one point, no overrides.
  search: Mapping[str, Distribution] = dataclasses.field(default_factory=dict)
  num_trials: int = 1  # Search samples per grid point.
  early_stopping: EarlyStopping | None = None
  seed: int = 0  # Seeds the search's samples.

  def check(self) -> None:
    """The declaration itself (the trials' configs are checked by plan)."""
    require(isinstance(self.metric, str) and bool(self.metric),
            f"sweep: metric={self.metric!r} must name a metric the run reports, e.g. 'loss'")
    require(self.mode in MODES, f"sweep: mode={self.mode!r} must be one of {list(MODES)}")
    require(self.grid is not None or bool(self.search),
            "sweep: declares neither a grid nor a search space")
    if self.grid is not None:
      require(isinstance(self.grid, (list, tuple)), f"sweep: grid must be a list of override "
              f"dicts, got {type(self.grid).__name__}")
      require(len(self.grid) > 0, "sweep: the grid is empty (no trials)")
      for p in self.grid:
        require(isinstance(p, Mapping) and all(isinstance(k, str) for k in p),
                f"sweep: grid point {p!r} is not a dict of 'field.path': value")
    for field, dist in self.search.items():
      require(isinstance(dist, tuple(DISTRIBUTIONS.values())),
              f"sweep: search[{field!r}]={dist!r} is not a distribution; known: "
              f"{sorted(DISTRIBUTIONS)}")
      dist.check(field)
    both = sorted(set(self.search) & {k for p in (self.grid or ()) for k in p})
    require(not both, f"sweep: {both} are both in the grid and in the search space")
    require(isinstance(self.num_trials, int) and self.num_trials >= 1,
            f"sweep: num_trials={self.num_trials!r} must be an integer >= 1")
    require(self.num_trials == 1 or bool(self.search),
            "sweep: num_trials > 1 needs a search space (a grid point is one trial)")
    if self.early_stopping is not None:
      require(isinstance(self.early_stopping, EarlyStopping),
              f"sweep: early_stopping={self.early_stopping!r} must be an EarlyStopping")
      self.early_stopping.check()

  @property
  def fields(self) -> list[str]:
    """Every swept field, in declaration order."""
    seen = dict.fromkeys(k for p in (self.grid or ()) for k in p)
    seen.update(dict.fromkeys(self.search))
    return list(seen)

  def trials(self) -> list[Overrides]:
    """The local engine's trials: each grid point with `num_trials` samples of the
    search space (random search, seeded per trial so the list never changes)."""
    out = []
    for point in (self.grid if self.grid is not None else [{}]):
      for _ in range(self.num_trials):
        rng = random.Random(f"{self.seed}/{len(out)}")
        out.append({**point, **{f: _plain(d.sample(rng)) for f, d in self.search.items()}})
    return out


def _plain(v):
  """A sampled value as a plain JSON-able Python value."""
  return v.item() if hasattr(v, "item") else v


__all__ = ["Choice", "DISTRIBUTIONS", "EarlyStopping", "LogUniform", "MODES", "Overrides",
           "RandInt", "Sweep", "Uniform", "choice", "loguniform", "product", "randint",
           "uniform", "zip"]
