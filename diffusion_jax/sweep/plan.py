"""A sweep made concrete and checked before anything runs: its config file's
`get_sweep`, the trials' overrides applied to the config, and each trial's config
parsed as a single run's is (`run.spec.parse`), with the metric it must report.

A `Study` is everything an engine needs; `identity` is what a sweep directory
records, so that a directory holding another sweep is refused.
"""

import dataclasses
import json
import os
import shlex
from typing import Any

import ml_collections

from diffusion_jax.config import files
from diffusion_jax.config.errors import ConfigError, Problems, require
from diffusion_jax.run import spec as spec_lib
from diffusion_jax.sweep import metrics as metrics_lib
from diffusion_jax.sweep import space


@dataclasses.dataclass(frozen=True)
class Trial:
  id: str
  overrides: space.Overrides


def flatten(node, prefix: str = "") -> dict[str, Any]:
  """A config as {"section.field": JSON value}."""
  out = {}
  for k, v in node.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = json.loads(json.dumps(v, default=list))
  return out


def _leaf(config: ml_collections.ConfigDict, field: str):
  """(parent node, leaf name) of a dotted field; ConfigError if it is not a field."""
  node, *path = config, *field.split(".")
  *parents, leaf = path
  for p in parents:
    node = node[p] if isinstance(node, ml_collections.ConfigDict) and p in node else None
    if node is None:
      break
  ok = (isinstance(field, str) and isinstance(node, ml_collections.ConfigDict) and leaf in node
        and not isinstance(node[leaf], ml_collections.ConfigDict))
  require(ok, f"sweep: {field!r} is not a config field")
  return node, leaf


def apply(config: ml_collections.ConfigDict, overrides: space.Overrides) -> ml_collections.ConfigDict:
  """Sets each dotted field (in place); unknown fields and values of the wrong type
  are ConfigErrors. Lists become tuples where the field holds a tuple."""
  for field, value in overrides.items():
    node, leaf = _leaf(config, field)
    if isinstance(value, list) and isinstance(node[leaf], tuple):
      value = tuple(value)
    try:
      node[leaf] = value
    except (TypeError, ValueError):
      raise ConfigError(f"sweep: {field}={value!r} has the wrong type: the field holds a "
                        f"{type(node[leaf]).__name__} ({node[leaf]!r})") from None
  return config


def _fmt(value) -> str:
  """A value as a --config.FIELD=VALUE override writes it."""
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return repr(value) if isinstance(value, float) else str(value)


@dataclasses.dataclass(frozen=True)
class Study:
  """A checked sweep: the config it runs, its overrides and its trials."""
  config: str  # 'absolute/path.py[:variant]'
  base_overrides: space.Overrides  # The sweep command's own --config.FIELD=VALUE.
  sweep: space.Sweep
  trials: tuple[Trial, ...]
  max_steps: int  # The longest trial's training.num_steps.
  base: dict  # The flattened base config (the sweep's identity).

  def config_of(self, overrides: space.Overrides) -> ml_collections.ConfigDict:
    """A trial's config: the file's, the command's overrides, then the trial's."""
    return apply(apply(files.load(self.config), self.base_overrides), overrides)

  def command(self, trial: Trial, workdir: str) -> str:
    """The ordinary command line that runs (or resumes) a trial by itself."""
    over = {**self.base_overrides, **trial.overrides}
    args = [f"--config={self.config}", f"--workdir={workdir}"]
    args += [f"--config.{k}={_fmt(v)}" for k, v in over.items()]
    return "python -m diffusion_jax.main " + " ".join(shlex.quote(a) for a in args)

  def identity(self, engine: str) -> dict:
    """What makes two sweeps the same (a sweep directory holds one)."""
    s = self.sweep
    return {
        "engine": engine, "metric": s.metric, "mode": s.mode,
        "early_stopping": dataclasses.asdict(s.early_stopping) if s.early_stopping else None,
        "search": {k: {"distribution": _dist_name(d), **dataclasses.asdict(d)}
                   for k, d in s.search.items()},
        "num_trials": s.num_trials, "seed": s.seed,
        "trials": {t.id: t.overrides for t in self.trials} if engine == "local" else
                  {"grid": list(s.grid) if s.grid is not None else None},
        "base_config": self.base,
    }


def _dist_name(d) -> str:
  return next(n for n, cls in space.DISTRIBUTIONS.items() if type(d) is cls)


def load_sweep(config: str) -> space.Sweep:
  """The Sweep that `get_sweep` of 'path[:variant]' returns, checked."""
  module = files.load_module(config)
  path, arg = files.parse_spec(config)
  require(hasattr(module, "get_sweep"),
          f"{path} declares no sweep: add get_sweep(arg) beside get_config (docs/sweeps.md)")
  try:
    sweep = module.get_sweep(arg) if arg is not None else module.get_sweep()
  except ConfigError:
    raise
  except Exception as e:  # A config file's own error (e.g. an unknown variant).
    raise ConfigError(f"{path}: get_sweep failed: {type(e).__name__}: {e}") from None
  require(isinstance(sweep, space.Sweep),
          f"{path}: get_sweep must return a diffusion_jax.sweep.space.Sweep, got "
          f"{type(sweep).__name__}")
  sweep.check()
  return sweep


def _check_trial(study: Study, label: str, overrides: space.Overrides,
                 num_devices: int) -> int:
  """Parses one trial's config as its run would and checks it reports the metric;
  returns its number of training steps."""
  try:
    spec = spec_lib.parse(study.config_of(overrides), num_devices)
  except ConfigError as e:
    raise ConfigError(*(f"{label}: {p}" for p in e.problems)) from None
  reported = metrics_lib.reported(spec)
  metric = study.sweep.metric
  require(metric in reported,
          f"sweep: metric {metric!r} is not reported by the run of {label}; it reports "
          f"{sorted(reported)} (evaluation metrics 'eval/<name>' need eval.every_steps > 0 "
          "and the name in eval.metrics)")
  return spec.training.num_steps


def _label(trial_id: str, overrides: space.Overrides) -> str:
  shown = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
  return f"trial {trial_id} ({shown})" if shown else f"trial {trial_id}"


def make(config: str, base_config: ml_collections.ConfigDict, num_devices: int) -> Study:
  """The checked study of a config file's sweep. `base_config` is the config as the
  sweep command gave it (the file's, with the command's --config overrides)."""
  path, arg = files.parse_spec(config)
  config = os.path.abspath(path) + (f":{arg}" if arg is not None else "")
  sweep = load_sweep(config)
  file_flat, base_flat = flatten(files.load(config)), flatten(base_config)
  base_overrides = {k: v for k, v in base_flat.items() if file_flat.get(k) != v}
  # Unknown fields first: one line each, whatever the trials.
  problems = Problems()
  for field in sweep.fields:
    with problems.check():
      _leaf(base_config, field)
  problems.raise_if_any()
  points = sweep.trials()
  width = max(3, len(str(len(points) - 1)))
  trials = tuple(Trial(f"t{i:0{width}d}", p) for i, p in enumerate(points))
  study = Study(config=config, base_overrides=base_overrides, sweep=sweep, trials=trials,
                max_steps=0, base=base_flat)
  # Every trial, and every extreme of the search space (the Ray engine samples its own).
  checks = [(_label(t.id, t.overrides), t.overrides) for t in trials]
  for field, dist in sweep.search.items():
    for v in dist.extremes():
      checks.append((f"search {field}={v!r}", {**points[0], field: v}))
  steps, seen = [], set()
  for label, overrides in checks:
    try:
      steps.append(_check_trial(study, label, overrides, num_devices))
    except ConfigError as e:
      for p in e.problems:
        # The same problem in many trials is reported once.
        key = p.split(": ", 1)[-1] if p.startswith(("trial ", "search ")) else p
        if key not in seen:
          seen.add(key)
          problems.problems.append(p)
  problems.raise_if_any()
  return dataclasses.replace(study, max_steps=max(steps))


__all__ = ["Study", "Trial", "apply", "flatten", "load_sweep", "make"]
