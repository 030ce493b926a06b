"""Every `python -m diffusion_jax...` command of README.md and docs/ runs, in the
documented order, with a tiny model: the docs cannot go stale (tests/run/docs_commands.py
says how they are run). Then each conditioning application end to end through the
command line: the documented commands (docs/conditioning.md) wrote these workdirs; here
are their files, and the bad inputs of sampling: a clear error, nothing written. (One
file: the documented runs are made once, on one test worker.)"""

import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import cli
from tests.run.docs_commands import commands
from tests.run.test_cli import snapshot


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


# --- The conditioning applications.

@pytest.fixture
def runs(docs_runs):
  workspace, results = docs_runs
  failed = [" ".join(argv) for _, argv, r in results if r.returncode]
  assert not failed, f"documented commands failed: {failed}"
  return lambda name: os.path.join(workspace, "runs", name)


def sets(wd):
  """The sample sets of a workdir, oldest first: [(npz contents, path)]."""
  d = os.path.join(wd, "samples")
  names = sorted((os.path.getmtime(os.path.join(d, n)), n) for n in os.listdir(d)
                 if n.endswith(".npz"))
  return [(np.load(os.path.join(d, n)), os.path.join(d, n)) for _, n in names]


def test_text_to_image_from_the_test_split_and_from_prompts(runs):
  (first, _), (prompted, path) = sets(runs("shapes_text"))[:2]
  # At the end of training: the test split's captions (held out of training).
  assert first["images"].shape == (4, 32, 32, 3) and len(first["prompts"]) == 4
  assert first["reference"].shape == (4, 32, 32, 3)
  assert list(prompted["prompts"]) == ["a large red circle on the left",
                                       "a small cyan square at the top"]
  assert prompted["images"].shape == (2, 32, 32, 3)
  grid = np.asarray(Image.open(path[:-4] + ".png"))
  assert grid.shape[0] >= 2 * 64  # One row per sample, its prompt beside it.


def test_super_resolution_from_an_npz_and_a_cascade(runs):
  sr = sets(runs("photo_sr"))
  given, cascade = sr[1][0], sr[2][0]
  assert given["images"].shape == (2, 32, 32, 3) and given["lowres"].shape == (2, 8, 8, 3)
  assert "reference" not in given
  # The cascade: the base model's samples (4, by its config) are the low-resolution inputs.
  assert cascade["images"].shape == (4, 32, 32, 3) and cascade["lowres"].shape == (4, 8, 8, 3)
  assert "reference" not in cascade


def test_colourisation_from_an_npz(runs):
  f = sets(runs("photo_colorize"))[-1][0]
  assert f["images"].shape == (2, 32, 32, 3) and f["gray"].shape == (2, 32, 32, 1)
  rng = np.random.default_rng(0)  # The docs' gray.npz (tests/run/docs_commands.py).
  rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
  np.testing.assert_array_equal(f["gray"], rng.integers(0, 256, (2, 32, 32, 1), dtype=np.uint8))


def test_inpainting_from_rgba_pngs_keeps_known_pixels(runs):
  f = sets(runs("photo_inpaint"))[-1][0]
  assert f["images"].shape == (2, 32, 32, 3) and f["mask"].shape == (2, 32, 32, 1)
  assert f["mask"][0, 10, 12, 0] == 0 and f["mask"][0, 0, 0, 0] == 1
  known = f["mask"][..., 0] == 1
  np.testing.assert_array_equal(f["images"][known], f["masked"][known])


BAD = [  # (run, sampling flags, the error).
    ("shapes_text", ["--prompt=a purple dog"],
     "outside the model's vocabulary: ['dog', 'purple']"),
    ("shapes_text", ["--prompt=" + " ".join(["a"] * 17)], "the model takes at most 16"),
    ("shapes_text", ["--cond=RGB32"], "this model takes no image condition"),
    ("photo_sr", ["--cond=BAD16"],
     "'lowres' images have shape (16, 16, 3) (h, w, channels); this model takes (8, 8, 3)"),
    ("photo_colorize", ["--cond=RGB32"],
     "'gray' images have shape (32, 32, 3) (h, w, channels); this model takes (32, 32, 1)"),
    ("photo_colorize", ["--prompt=a red circle"], "this model was not trained on text"),
    ("photo_colorize", ["--labels=1,2"], "this model is not class-conditional"),
    ("photo_colorize", ["--cascade_from=RUN:photo_base8"],
     "--cascade_from needs a super-resolution model"),
    ("photo_inpaint", ["--cond=RGB32"], "lacks ['masked', 'mask']"),
    ("photo_sr", ["--cascade_from=RUN:digits"],
     "the base model makes 8x8 images with 1 channels; this model takes 8x8 with 3"),
    # Autoguidance by a run of another image shape or process (docs/processes-and-samplers.md).
    ("digits", ["--guide_from=RUN:photo_base8", "--config.sample.autoguidance_scale=2"],
     "the guide makes (8, 8, 3) images (h, w, channels); this model makes (8, 8, 1)"),
    ("digits", ["--guide_from=RUN:digits_edm", "--config.sample.autoguidance_scale=2"],
     "the guide was trained on another process (alpha_t, sigma_t or the discrete steps "
     "differ); their diffusion sections differ in diffusion.num_steps"),
]


@pytest.mark.parametrize("run,args,message", BAD)
def test_bad_sampling_inputs_exit_2_before_anything_is_written(runs, tmp_path, run, args,
                                                               message):
  files = {}
  for name, (key, shape) in {"BAD16": ("lowres", (2, 16, 16, 3)),
                             "RGB32": ("gray", (2, 32, 32, 3))}.items():
    files[name] = str(tmp_path / f"{name}.npz")
    np.savez(files[name], **{key: np.zeros(shape, np.uint8)})
  args = [a.split("=")[0] + "=" + runs(a.split(":")[1]) if "=RUN:" in a else a for a in args]
  args = [a.replace("BAD16", files["BAD16"]).replace("RGB32", files["RGB32"]) for a in args]
  wd = runs(run)
  before = snapshot(wd)
  r = cli(wd, "--mode=sample", *args, config=None, tiny=False)
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
  assert len(lines) == 1 and message in lines[0], r.stderr[-2000:]
  assert snapshot(wd) == before
