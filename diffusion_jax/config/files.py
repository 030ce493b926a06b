"""Config files by path, from any working directory.

A config file is a Python file with `get_config(arg="")`; `path:arg` picks a variant.
Shared pieces are other files loaded by path relative to the config itself
(`import_sibling(__file__, "_common.py")`), so a config works wherever it is run from,
with the package installed or not.
"""

import importlib.util
import os
import re
import types

import ml_collections
from etils import epath

from diffusion_jax.config.errors import ConfigError


def parse_spec(spec: str) -> tuple[str, str | None]:
  """'configs/x.py:variant' -> ('configs/x.py', 'variant')."""
  path, sep, arg = spec.partition(".py:")
  return (path + ".py", arg) if sep else (spec, None)


def _load_module(path: str) -> types.ModuleType:
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist")
  name = "diffusion_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_module(spec: str) -> types.ModuleType:
  """The config file of 'path[:variant]' as a module (for functions beside get_config,
  e.g. a sweep's get_sweep)."""
  return _load_module(parse_spec(spec)[0])


def import_sibling(config_file: str, name: str) -> types.ModuleType:
  """The config module `name` in the same folder as `config_file` (pass __file__)."""
  return _load_module(os.path.join(os.path.dirname(os.path.abspath(config_file)), name))


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of 'path[:variant]', locked (unknown fields cannot be set)."""
  path, arg = parse_spec(spec)
  module = _load_module(path)
  config = module.get_config(arg) if arg is not None else module.get_config()
  config.lock()
  return config


SAVED_CONFIG = "config.json"


def saved_config_paths(workdir: str) -> list[str]:
  """The resolved configs a workdir's runs wrote, oldest first: config.json, then
  config_resumed_at_step_<N>[-k].json for each resume that changed a field."""
  directory = epath.Path(workdir)
  try:
    names = list(directory.iterdir()) if directory.is_dir() else []
  except Exception as e:  # A filesystem (gs://, ...) that cannot be reached or read.
    raise ConfigError(f"cannot read workdir {workdir!r}: "
                      + " ".join(f"{type(e).__name__}: {e}".split())[:300]) from None
  paths = []
  for p in names:
    name, stem, ext = p.name, p.stem, p.suffix
    if name == SAVED_CONFIG:
      paths.append(((-1, 0), name))
    elif stem.startswith("config_resumed_at_step_") and ext == ".json":
      step, _, k = stem[len("config_resumed_at_step_"):].partition("-")
      if step.isdigit() and (not k or k.isdigit()):
        paths.append(((int(step), int(k or 0)), name))
  return [str(directory / n) for _, n in sorted(paths)]


def _merge(node: ml_collections.ConfigDict, values: dict, where: str, retired,
           prefix: str = "") -> None:
  for k, v in values.items():
    if prefix + k in retired:
      continue
    if k not in node:
      raise ConfigError(f"{where}: field {k!r} is not a field of this version's config")
    if isinstance(v, dict) and isinstance(node[k], ml_collections.ConfigDict):
      _merge(node[k], v, where, retired, f"{prefix}{k}.")
    else:
      node[k] = tuple(v) if isinstance(v, list) else v


def load_saved(workdir: str) -> ml_collections.ConfigDict | None:
  """The config of a workdir's latest run, over the current defaults (fields added
  since the run was made take their default values); None if it has none."""
  import json

  from diffusion_jax.config import defaults
  paths = saved_config_paths(workdir)
  if not paths:
    return None
  try:
    saved = json.loads(epath.Path(paths[-1]).read_text())
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read the run's config {paths[-1]!r}: {e}") from None
  config = defaults.get_config()
  with config.ignore_type():
    _merge(config, saved, paths[-1], defaults.RETIRED)
  return config


def parse_flags(fv, argv: list[str]) -> None:
  """absl parsing of a command line with a --config file flag; every flag or config
  error is a ConfigError of one line."""
  from absl import flags
  one_line = lambda e: " ".join(str(e).replace("\\'", "'").replace("\\n", " ").split())
  try:
    rest = fv(argv)
    _ = fv.config and fv.config.seed  # Config files load lazily: load it now.
  except flags.Error as e:
    lines = str(e).strip().splitlines()
    # A config file that raised: its last line names the exception and says why.
    raise ConfigError(f"{lines[0]} {lines[-1].strip()}" if "Traceback" in str(e)
                      else one_line(e)) from None
  except OSError as e:
    raise ConfigError(one_line(e)) from None
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    msg = re.sub("'+", "'", one_line(e)).rstrip("'")
    raise ConfigError(f"bad config override ({' '.join(overrides)}): {msg}") from None
  if len(rest) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(rest[1:])}")
