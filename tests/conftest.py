"""Shared fixtures. Tests run on CPU; parallel tests simulate devices in subprocesses."""

import contextlib
import io
import os
import subprocess
import sys
from typing import NamedTuple

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent compilation cache for the whole session (and the processes it
# starts): tests that build the same tiny programs compile them once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="diffusion_jax_test_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Tests compile far more than they run: without LLVM's costly optimisations and XLA:CPU's
# fusion emitters the tiny train step compiles in ~0.45x the CPU time and runs as fast
# (processes the tests start inherit this; they simulate devices with
# JAX_NUM_CPU_DEVICES, never XLA_FLAGS).
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                    "--xla_backend_optimization_level=0",
                                    "--xla_llvm_disable_expensive_passes=true",
                                    "--xla_cpu_use_fusion_emitters=false"]).strip()
from diffusion_jax.run import tf_setup  # noqa: E402

tf_setup.configure()  # As the command lines start TensorFlow; started processes inherit it.

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)  # Tests import each other as `tests.*`.


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


def fmt(value) -> str:
  """A config value as a --config.FIELD=VALUE override writes it."""
  if isinstance(value, tuple):
    return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


class Result(NamedTuple):
  returncode: int
  stdout: str
  stderr: str


def run_main(argv: list[str], env: dict | None = None, cwd: str = ROOT,
             in_process: bool = True) -> Result:
  """`python -m diffusion_jax.main ARGV`: in this process (diffusion_jax.main.run, its
  output captured), or as a subprocess (needed where the environment must differ,
  e.g. the number of simulated devices)."""
  if in_process and not env:
    from diffusion_jax import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      code = main.run(["diffusion_jax.main", *argv])
    return Result(code, out.getvalue(), err.getvalue())
  e = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
  r = subprocess.run([sys.executable, "-m", "diffusion_jax.main", *argv], capture_output=True,
                     text=True, timeout=900, cwd=cwd, env=e)
  return Result(r.returncode, r.stdout, r.stderr)


def cli(workdir, *args, config="configs/digits.py", overrides=None, env=None, data_dir=None,
        tiny=True, in_process=True) -> Result:
  """The command line on a config of the repository, with the tiny model's overrides
  (tiny=False: none) and `overrides`; config=None leaves --config out."""
  over = dict(tiny_overrides()) if tiny else {}
  over.update(overrides or {})
  argv = [f"--workdir={workdir}"]
  if config is not None:
    argv.append(f"--config={os.path.join(ROOT, config)}")
  argv += [f"--config.{k}={fmt(v)}" for k, v in over.items()] + list(args)
  if data_dir:
    os.environ["TFDS_DATA_DIR"] = data_dir
    env = dict(env, TFDS_DATA_DIR=data_dir) if env else None
  return run_main(argv, env=env, in_process=in_process)


@pytest.fixture(scope="session")
def docs_runs(tmp_path_factory, data_dir):
  """The workspace where every documented command ran, and each (page, argv, result);
  the conditioning tests check the files these runs wrote."""
  from tests.run.docs_commands import run_all
  workspace = str(tmp_path_factory.mktemp("docs"))
  return workspace, run_all(workspace)



def torch_reference(reason: str):
  """torch with torchvision importable, for the reference implementations (pytorch-fid,
  diffusers), or the test is skipped with `reason`.

  PyPI's torchvision wheels are CUDA builds; beside a CPU-only torch their C++ ops fail
  to load, and torchvision's import then stops at a fake-kernel registration for
  torchvision::nms. The references use none of those ops, so declaring the two missing
  schemas lets the pure-Python models import unchanged."""
  torch = pytest.importorskip("torch", reason=reason)
  try:
    import torchvision  # noqa: F401
  except RuntimeError as e:
    if "torchvision::" not in str(e):
      raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
      lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    torch_reference.torchvision_ops = lib  # Kept alive: the schemas go with it.
    import torchvision  # noqa: F401, F811
  except ImportError:
    pytest.skip(reason)
  return torch
