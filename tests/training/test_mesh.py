"""The data x fsdp mesh: the placement rule, the mesh section's checks, and the bytes
each device holds of a real config's train state (shapes only, nothing compiled).
Training on split states is checked on 8 devices in multidevice_check.py."""

import os

import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from diffusion_jax import config as config_lib
from diffusion_jax.config.errors import ConfigError
from diffusion_jax.run import build, spec as spec_lib
from diffusion_jax.training import mesh as mesh_lib
from tests.conftest import ROOT, cli


@pytest.mark.parametrize("shape,fsdp,want", [
    ((3, 3, 128, 256), 8, P(None, None, None, "fsdp")),  # The largest divisible dim.
    ((3, 3, 256, 256), 8, P(None, None, None, "fsdp")),  # Equal ones: the last.
    ((512, 10), 8, P("fsdp")),
    ((10, 4096), 3, P()),  # No dimension divisible by 3.
    ((12, 4096), 3, P("fsdp")),  # 4096 is not; 12 is.
    ((256,), 8, P()),  # Below the size threshold.
    ((), 8, P()),
    ((3, 3, 128, 256), 1, P()),  # fsdp=1: everything replicated.
])
def test_the_rule_splits_the_largest_divisible_dimension_of_large_arrays(shape, fsdp, want):
  assert mesh_lib.fsdp_spec(shape, fsdp, min_size=4096) == want


def test_cifar10_state_per_device_drops_by_the_fsdp_factor():
  config = config_lib.load(os.path.join(ROOT, "configs", "cifar10_ddpm.py"))
  config.mesh.fsdp = 8
  spec = spec_lib.parse(config, 8)
  net, tx = build.model(spec), build.optimizer_of(spec)
  per_device = {}
  for fsdp in (1, 8):  # The same 8 devices, all on data or all on fsdp.
    mesh = AbstractMesh((8 // fsdp, fsdp), mesh_lib.BATCH_AXES)
    _, _, abstract = build.init_fns(spec, net, tx, mesh)
    per_device[fsdp] = {k: mesh_lib.bytes_per_device(getattr(abstract, k))
                        for k in ("params", "ema_params", "opt_state")}
  whole = per_device[1]
  assert whole["params"] == 35_746_307 * 4  # Replicated: every device holds all of it.
  for k, b in per_device[8].items():
    # An eighth, but for the small arrays the rule leaves replicated (217 biases, norm
    # scales and the 3-channel input and output kernels: 0.17% of the parameters).
    assert 7.8 < whole[k] / b <= 8, (k, b, whole[k])
  total = lambda d: sum(d.values())
  print(f"state per device: {total(whole) / 1e6:.1f} MB with fsdp=1, "
        f"{total(per_device[8]) / 1e6:.1f} MB with fsdp=8 "
        f"({total(whole) / total(per_device[8]):.2f}x less)")


@pytest.mark.parametrize("fsdp,error", [
    (3, "mesh.fsdp=3 does not divide the 1 devices"),
    (0, "mesh.fsdp=0 must be an integer >= 1"),
])
def test_a_bad_fsdp_size_is_one_error_line_before_anything_runs(tmp_path, fsdp, error):
  workdir = tmp_path / "w"
  r = cli(str(workdir), overrides={"mesh.fsdp": fsdp})
  assert r.returncode == 2
  lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
  assert len(lines) == 1 and error in lines[0], r.stderr[-2000:]
  assert not workdir.exists()


def test_the_mesh_section_is_checked_where_it_is_parsed():
  with pytest.raises(ConfigError, match="fsdp_min_size"):
    mesh_lib.MeshConfig.from_config({"fsdp": 2, "fsdp_min_size": -1})
  mesh = mesh_lib.make_mesh(1, fsdp=1)
  assert mesh.shape == {"data": 1, "fsdp": 1}
  assert mesh_lib.with_fsdp(mesh, 1) is mesh
  with pytest.raises(ConfigError, match="does not divide the 1 devices"):
    mesh_lib.with_fsdp(mesh, 2)


def test_cpu_programs_get_the_cpu_compiler_options_and_others_none(monkeypatch):
  import types

  import numpy as np

  from diffusion_jax.launch import check
  cpu = mesh_lib.make_mesh()
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false")
  assert mesh_lib.compiler_options(cpu) == mesh_lib.CPU_COMPILER_OPTIONS
  # An option set in XLA_FLAGS (as the tests set -O0) is not overridden.
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                                  "--xla_cpu_use_fusion_emitters=false")
  assert "xla_backend_optimization_level" not in mesh_lib.compiler_options(cpu)
  # A program traced here for a TPU topology (launch check) gets none of them.
  tpu = types.SimpleNamespace(devices=np.array([types.SimpleNamespace(platform="tpu")] * 2))
  assert mesh_lib.compiler_options(tpu) == {}
  assert mesh_lib.compiler_options(AbstractMesh((2, 1), mesh_lib.BATCH_AXES)) == {}
  # They reach XLA when the run's initialiser and train step compile: an unknown option
  # in their place makes both fail.
  monkeypatch.setattr(mesh_lib, "CPU_COMPILER_OPTIONS", {"xla_not_an_option": 1})
  spec = spec_lib.parse(config_lib.load(os.path.join(ROOT, "configs", "digits.py") + ":runlocal"), 1)
  net, tx = build.model(spec), build.optimizer_of(spec)
  init, key, abstract = build.init_fns(spec, net, tx, cpu)
  with pytest.raises(Exception, match="xla_not_an_option"):
    init.lower(key).compile()
  step = build.jitted_train_step(spec, net, tx, cpu, abstract)
  with pytest.raises(Exception, match="xla_not_an_option"):
    step.lower(abstract, check.abstract_batch(spec, net, cpu)).compile()
