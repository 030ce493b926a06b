"""Every `python -m diffusion_jax...` command of README.md and docs/ runs, in the
documented order, with a tiny model: the docs cannot go stale (tests/run/docs_commands.py
says how they are run)."""

import os

import pytest

from tests.run.docs_commands import commands

pytestmark = pytest.mark.xdist_group("docs")


def test_the_docs_have_commands():
  pages = {p for p, _ in commands()}
  assert {"README.md", "docs/command-line.md", "docs/conditioning.md", "docs/sweeps.md"} <= pages


@pytest.mark.parametrize("index", range(len(commands())))
def test_documented_command_runs(docs_runs, index):
  _, results = docs_runs
  page, argv, r = results[index]
  assert r.returncode == 0, f"{page}: {' '.join(argv)}\n{r.stderr[-3000:]}"


def test_documented_runs_wrote_their_outputs(docs_runs):
  workspace, _ = docs_runs
  for run in ("digits", "shapes_text", "photo_sr", "photo_colorize", "photo_inpaint", "cifar10",
              "my_images"):
    samples = os.path.join(workspace, "runs", run, "samples")
    assert any(n.endswith(".png") for n in os.listdir(samples)), run
  assert os.listdir(os.path.join(workspace, "runs", "digits", "eval"))
  sweep = os.path.join(workspace, "runs", "digits_sweep")
  assert sorted(os.listdir(os.path.join(sweep, "trials"))) == ["t000", "t001"]
  assert open(os.path.join(sweep, "results.csv")).read().count(",done,") == 2
