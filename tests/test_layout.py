"""The package's layout: every module imports, the core stays pure, imports only go
down the layers, and no module reaches into another's private names."""

import ast
import re
import importlib
import os
import pkgutil

import pytest

import diffusion_jax

PACKAGE = os.path.dirname(diffusion_jax.__file__)
# Each subpackage may import from itself and the ones before it, never after.
LAYERS = ["config", "core", "models", "conditioning", "data", "training", "sampling",
          "evaluation", "run", "launch", "sweep", "main", "reproduce"]
# What the pure core may not import.
CORE_FORBIDDEN = ("flax", "tensorflow", "tensorflow_datasets", "orbax", "optax",
                  "diffusion_jax.models", "diffusion_jax.data", "diffusion_jax.training",
                  "diffusion_jax.conditioning", "diffusion_jax.sampling", "diffusion_jax.run",
                  "diffusion_jax.evaluation")


def modules() -> list[str]:
  names = [m.name for m in pkgutil.walk_packages([PACKAGE], "diffusion_jax.")]
  return sorted(n for n in names if n != "diffusion_jax.main")


def imports_of(name: str) -> list[tuple[str, list[str]]]:
  """(module imported, names taken from it) for every import in the module's source."""
  path = importlib.util.find_spec(name).origin
  tree = ast.parse(open(path).read())
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [(a.name, []) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.append((node.module, [a.name for a in node.names]))
  return out


def layer(module: str) -> int | None:
  parts = module.split(".")
  if parts[0] != "diffusion_jax" or len(parts) < 2:
    return None
  return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


@pytest.mark.parametrize("name", modules())
def test_every_module_imports(name):
  importlib.import_module(name)


@pytest.mark.parametrize("name", [m for m in modules() if m.startswith("diffusion_jax.core")])
def test_core_is_pure(name):
  bad = [m for m, _ in imports_of(name) if m.startswith(CORE_FORBIDDEN)]
  assert not bad, f"{name} imports {bad}"


@pytest.mark.parametrize("name", modules() + ["diffusion_jax.main"])
def test_imports_only_go_down_and_stay_public(name):
  own = layer(name)
  for module, names in imports_of(name):
    other = layer(module)
    if own is not None and other is not None:
      assert other <= own, f"{name} (layer {LAYERS[own]}) imports {module} (layer {LAYERS[other]})"
    if module.startswith("diffusion_jax"):
      private = [n for n in names if n.startswith("_")]
      assert not private, f"{name} imports private names {private} from {module}"


def test_the_public_api_is_exported():
  for name in diffusion_jax.__all__:
    assert hasattr(diffusion_jax, name), name


def test_every_imported_package_is_declared():
  import importlib.metadata
  import sys
  import tomllib
  with open(os.path.join(os.path.dirname(PACKAGE), "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  declared = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
  declared = {re.split(r"[<>=\[ ;]", d)[0].lower().replace("_", "-") for d in declared}
  dists = importlib.metadata.packages_distributions()
  for name in modules() + ["diffusion_jax.main"]:
    for module, _ in imports_of(name):
      top = module.split(".")[0]
      if top in sys.stdlib_module_names or top == "diffusion_jax":
        continue
      options = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
      assert options & declared, f"{name} imports {top} ({sorted(options)}): not in pyproject"
