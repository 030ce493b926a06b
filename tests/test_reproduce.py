"""The results registry and `python -m diffusion_jax.reproduce`: the registry is well
formed, the README tables are generated from it, values taken from older output files
equal those files, and reproduce passes on a tiny entry and fails when the entry's
expectation is moved outside its tolerance."""

import json
import os
import signal
import threading
import time

import pytest

from diffusion_jax import reproduce
from diffusion_jax.training import preemption
from tests.conftest import ROOT, fmt, tiny_overrides


@pytest.fixture(scope="module")
def registry():
  return reproduce.load_registry()


def test_readme_tables_are_generated_from_the_registry(registry):
  stale = reproduce.tables(registry, check=True)
  assert not stale, (f"{stale} differ from experiments/results.json: run "
                     "`python -m diffusion_jax.reproduce --tables`")
  readme = open(os.path.join(ROOT, "README.md")).read()
  measured = lambda results: all(r.get("expected") is not None for r in results.values())
  for name, e in registry["entries"].items():
    if not e.get("readme"):
      continue
    # Measured results are shown with their command; an unmeasured one only by its
    # measured shrunk variant, and then says so.
    if measured(e["results"]):
      assert f"diffusion_jax.reproduce {name}` |" in readme, name
    elif e.get("quick") and measured(e["quick"]["results"]):
      assert f"diffusion_jax.reproduce {name} --quick` |" in readme, name
      assert "not measured yet; shrunk run" in readme
    else:
      assert f"diffusion_jax.reproduce {name}`" not in readme, name


def test_json_tables_have_a_row_per_object_and_one_for_a_flat_object(tmp_path, monkeypatch):
  monkeypatch.setattr(reproduce, "ROOT", str(tmp_path))
  (tmp_path / "flat.json").write_text(json.dumps({"fd": 41.25, "n": 898, "per_class": [1]}))
  (tmp_path / "keyed.json").write_text(json.dumps({"a": {"fd": 1.5}, "b": {"fd": 2.0}, "n": 3}))
  assert reproduce._json_table("flat.json", "n,fd").splitlines()[2:] == ["| 898 | 41.25 |"]
  assert reproduce._json_table("keyed.json", "_key,fd").splitlines()[2:] == ["| a | 1.5 |",
                                                                             "| b | 2 |"]


def test_values_from_older_output_files_equal_those_files(registry):
  for name, entry in registry["entries"].items():
    if entry.get("source"):
      values = reproduce.source_values(entry)
      for metric, value in values.items():
        assert entry["results"][metric]["expected"] == pytest.approx(value, rel=1e-5), name


def test_every_entry_names_its_commands_and_output(registry):
  for name, entry in registry["entries"].items():
    for line in reproduce.commands(entry, False, "WD", "OUT"):
      assert "{" not in line, (name, line)
    if entry.get("config"):
      assert os.path.exists(os.path.join(ROOT, entry["config"])), name
    for r in entry["results"].values():
      assert r.get("expected") is None or entry.get("measured"), name


def test_unknown_entry_is_one_error_line(capsys):
  assert reproduce.main(["no_such_result"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: unknown registry entry 'no_such_result'")


def tiny_registry(path: str, kid=None, recall=None, tolerance=0.5) -> None:
  """One entry: the tiny model, 2 steps, evaluated (KID, recall) at the end."""
  overrides = {**tiny_overrides(), "training.num_steps": 2, "training.checkpoint_every": 2,
               "training.log_every": 1, "training.sample_at_end": False,
               "optim.warmup_steps": 1, "eval.every_steps": 2, "eval.metrics": "kid,recall",
               "eval.num_samples": 20}
  entry = {"title": "tiny", "config": "configs/digits.py",
           "overrides": {k: fmt(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
           "commands": ["python -m diffusion_jax.main --config={config} --workdir={workdir} "
                        "{overrides}"],
           "output": "{workdir}/eval/step_2_digits-v1.json",
           "results": {"kid": {"expected": kid, "tolerance": tolerance},
                       "recall": {"expected": recall, "tolerance": tolerance}}}
  with open(path, "w") as f:
    json.dump({"entries": {"tiny": entry}}, f)


def test_reproduce_passes_within_tolerance_and_fails_outside(tmp_path, data_dir, capsys):
  path = str(tmp_path / "results.json")
  tiny_registry(path)
  assert reproduce.main(["tiny", "--registry", path, "--record"]) == 0
  with open(path) as f:
    recorded = json.load(f)["entries"]["tiny"]
  kid, recall = (recorded["results"][m]["expected"] for m in ("kid", "recall"))
  assert kid > 0 and recorded["measured"]["wall_time_s"] > 0
  obtained = {"kid": kid, "recall": recall}
  assert reproduce.compare(recorded["results"], obtained)[1]
  # The run again (same seed): KID as recorded, recall's expectation moved outside.
  tiny_registry(path, kid=kid, recall=recall + 0.6)
  capsys.readouterr()
  assert reproduce.main(["tiny", "--registry", path]) == 1
  lines = [ln.split() for ln in capsys.readouterr().out.splitlines()
           if ln.strip().startswith(("kid ", "recall "))]
  assert [(ln[0], ln[-1]) for ln in lines] == [("kid", "ok"), ("recall", "TOLERANCE")], lines
  # A used workdir is refused: nothing there is overwritten.
  used = tmp_path / "used"
  used.mkdir()
  (used / "keep").write_text("x")
  assert reproduce.main(["tiny", "--registry", path, f"--workdir={used}"]) == 2
  assert (used / "keep").read_text() == "x"


def test_sigterm_stops_before_a_half_trained_model_is_evaluated(tmp_path, data_dir, capsys):
  # The training command runs in this process; SIGTERM before its first step preempts
  # it at step 1 of 2 (a checkpoint is saved), and reproduce must not go on to evaluate
  # and record that checkpoint. The tiny programs are those of the test above (cached).
  path, wd = str(tmp_path / "results.json"), str(tmp_path / "wd")
  tiny_registry(path)
  with open(path) as f:
    registry = json.load(f)
  entry = registry["entries"]["tiny"]
  entry["commands"].append("python -m diffusion_jax.main --workdir={workdir} --mode=eval "
                           "--config.eval.metrics=kid,recall --config.eval.num_samples=20")
  with open(path, "w") as f:
    json.dump(registry, f)

  def terminate_once_training():  # Once training watches for SIGTERM.
    deadline = time.monotonic() + 300
    while (not isinstance(getattr(signal.getsignal(signal.SIGTERM), "__self__", None),
                          preemption.Watch) and time.monotonic() < deadline):
      time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)

  killer = threading.Thread(target=terminate_once_training, daemon=True)
  killer.start()
  assert reproduce.main(["tiny", "--registry", path, f"--workdir={wd}", "--record"]) == 2
  killer.join()
  out, err = capsys.readouterr()
  assert "preempted at step 1" in out, out[-2000:]
  assert err.strip().splitlines()[-1].startswith("error: stopped by SIGTERM during: python -m "
                                                 "diffusion_jax.main --config="), err[-2000:]
  assert not os.path.exists(os.path.join(wd, "eval"))
  with open(path) as f:
    assert json.load(f) == registry  # Nothing recorded.


def test_dry_run_prints_the_commands_and_runs_nothing(registry, tmp_path, capsys):
  wd = tmp_path / "wd"
  assert reproduce.main(["digits", "--quick", "--dry_run", f"--workdir={wd}"]) == 0
  out = capsys.readouterr().out
  entry = registry["entries"]["digits"]
  for line in reproduce.commands(entry, True, str(wd), "OUT"):
    assert f"$ {line}" in out
  assert "--config.training.num_steps=300" in out
  assert f"then reads {wd}/eval/step_300_digits-v1.json" in out
  assert not wd.exists()
