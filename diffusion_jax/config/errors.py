"""The error of a bad config or input, and small helpers that raise it.

Each config section is parsed into a typed object by the module that owns it; the
checks sit there, beside the meaning of each field, and raise ConfigError with one
line per problem naming the field, the value and what is allowed.
"""

import contextlib
import dataclasses
import math
import sys
import typing
from typing import Any, Iterable


class ConfigError(ValueError):
  """A config, flag or input that cannot run: one line per problem."""

  def __init__(self, *problems: str):
    super().__init__("\n".join(problems))
    self.problems = tuple(problems)


def warn(msg: str) -> None:
  """One `warning: ...` line on stderr, from process 0 only (every process of a
  multi-process run meets the same condition)."""
  import jax  # Lazy: the config layer needs no JAX otherwise.
  if jax.process_index() == 0:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def require(ok: bool, msg: str) -> None:
  if not ok:
    raise ConfigError(msg)


def choice(field: str, value: Any, known: Iterable[str], extra: str = "") -> None:
  """`value` must be a name of `known` (a registry: the names are read from it)."""
  known = sorted(known)
  require(value in known, f"{field}={value!r} is unknown; known: {known}{extra}")


def finite(field: str, value: float, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> None:
  """A finite number, optionally within [low, high] (or open at either end)."""
  ok = isinstance(value, (int, float)) and math.isfinite(value)
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value < high if high_open else value <= high
  if not ok:
    lo = "" if low is None else f"{'(' if low_open else '['}{low}"
    hi = "" if high is None else f"{high}{')' if high_open else ']'}"
    where = f" in {lo or '(-inf'}, {hi or 'inf)'}" if lo or hi else ""
    raise ConfigError(f"{field}={value!r} must be a finite number{where}")


def section_values(cls, section: Any, name: str) -> dict:
  """The fields of dataclass `cls` read from a config section (a ConfigDict or dict).

  Unknown keys are an error; missing ones take the dataclass default (fields added
  since a run was saved), and lists become tuples where the field is a tuple.
  """
  values = dict(section)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  require(not unknown, f"{name}: unknown fields {unknown}")
  missing = [k for k, f in fields.items() if k not in values
             and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
  require(not missing, f"{name}: missing fields {missing}")
  hints = typing.get_type_hints(cls)
  for k, v in values.items():
    if typing.get_origin(hints[k]) is tuple and isinstance(v, (list, tuple)):
      values[k] = tuple(v)
  return values


class Problems:
  """Collects the ConfigErrors of several independent checks, to report them all."""

  def __init__(self):
    self.problems: list[str] = []

  @contextlib.contextmanager
  def check(self):
    try:
      yield
    except ConfigError as e:
      self.problems.extend(e.problems)

  def raise_if_any(self) -> None:
    if self.problems:
      raise ConfigError(*self.problems)
