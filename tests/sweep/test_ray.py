"""The Ray engine on a local two-node Ray cluster (loopback, 1 CPU each): a grid of two
real training runs (one per node) through the command line (then restored: nothing runs
twice), and an Optuna (TPE) search with ASHA on a cheap objective. The cluster is
started and stopped here, and no Ray process outlives it. Skipped only where ray is not
installed."""

import contextlib
import io
import os
import subprocess
import time

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[sweep]')")
pytest.importorskip("optuna", reason="optuna is not installed (pip install -e '.[sweep]')")

from diffusion_jax.config import files  # noqa: E402
from diffusion_jax.sweep import cli, local, plan, ray_engine, records, results  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.sweep import objectives  # noqa: E402

TINY = os.path.join(ROOT, "tests", "sweep", "tiny_sweep.py")


def _ray_processes(session_dir: str) -> list[str]:
  out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
  return [line for line in out.splitlines() if session_dir in line]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, data_dir):
  from ray._private import ray_constants
  from ray.cluster_utils import Cluster
  # Workers import the tests' objective; the nodes pass their environment on to them.
  old = os.environ.get("PYTHONPATH")
  os.environ["PYTHONPATH"] = ROOT + (os.pathsep + old if old else "")
  # Loopback only: Ray resolves 127.0.0.1 to the machine's own address unless it is in
  # its single-machine mode (read from this variable by the nodes, from the constant
  # here, where ray may already be imported).
  os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
  single_machine = ray_constants.ENABLE_RAY_CLUSTER
  ray_constants.ENABLE_RAY_CLUSTER = False
  small = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
  c = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False,
                                                    "node_ip_address": "127.0.0.1"})
  c.add_node(**small, node_ip_address="127.0.0.1")
  session = c.head_node.get_session_dir_path()
  assert c.address.startswith("127.0.0.1:"), c.address
  try:
    yield c
  finally:
    c.shutdown()
    ray_constants.ENABLE_RAY_CLUSTER = single_machine
    os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    if old is None:
      os.environ.pop("PYTHONPATH")
    else:
      os.environ["PYTHONPATH"] = old
    deadline = time.time() + 30
    while _ray_processes(session) and time.time() < deadline:
      time.sleep(0.5)
    assert not _ray_processes(session), "Ray processes outlived the cluster"


def test_grid_of_real_runs_then_restore(cluster, tmp_path):
  wd = str(tmp_path / "sweep")
  argv = ["diffusion_jax.sweep", f"--config={TINY}:pair", f"--workdir={wd}", "--engine=ray",
          f"--ray_address={cluster.address}"]
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert cli.run(argv) == 0
  rows = results.collect(wd)
  assert len(rows) == 2 and {r.status for r in rows} == {"done"}, out.getvalue()
  assert sorted(r.overrides["seed"] for r in rows) == [0, 1]
  for r in rows:  # Each trial is an ordinary run: config, checkpoints, the loss at 2..8.
    tdir = records.trial_dir(wd, r.id)
    assert list(r.history) == [2, 4, 6, 8]
    assert os.path.isdir(os.path.join(tdir, "checkpoints", "8"))
    assert files.load_saved(tdir).seed == r.overrides["seed"]
  # Tune received each trial's checkpoint.
  assert len([n for n in os.listdir(os.path.join(wd, "ray", "tune"))
              if n.startswith("trainable")]) == 2
  # The same command restores the finished study: nothing runs again.
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert cli.run(argv) == 0
  assert "resuming the Tune study" in out.getvalue() and " started " not in out.getvalue()
  assert [len(records.attempts(records.trial_dir(wd, r.id))) for r in rows] == [2] * 2


def test_optuna_search_with_asha_on_a_cheap_objective(cluster, tmp_path):
  wd = str(tmp_path / "sweep")
  spec = f"{TINY}:search_asha"
  config = files.load(spec)
  config.training.num_steps = 16
  study = plan.make(spec, config, 1)
  local.check_dir(study, wd, "ray")
  local.prepare(study, wd, "ray")
  assert ray_engine.run(study, wd, address=cluster.address,
                        train_fn=objectives.quadratic) == 0
  rows = results.collect(wd)
  assert len(rows) == 6 and all(r.status in ("done", "stopped") for r in rows)
  done = [r for r in rows if r.status == "done"]
  stopped = [r for r in rows if r.status == "stopped"]
  assert done and stopped
  for r in rows:  # Every trial's result is its objective at its steps.
    lr = r.overrides["optim.lr"]
    assert 1e-4 <= lr <= 1e-1
    for step, value in r.history.items():
      assert value == pytest.approx((__import__("math").log10(lr) + 2.5) ** 2 + 1 / step)
  for r in done:
    assert max(r.history) == 16
  for r in stopped:  # ASHA stops at a rung: 4 or 8 (grace 4, factor 2).
    assert max(r.history) in (4, 8) and "early stopping (ASHA)" in r.reason
  md = open(os.path.join(wd, "results.md")).read()
  assert md.count("| ") >= 6 and "optim.lr" in md
