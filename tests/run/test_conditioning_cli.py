"""Each conditioning application end to end through the command line (tiny models,
two training steps), and the bad inputs of sampling: a clear error, nothing written."""

import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import cli
from tests.run.test_cli import snapshot

TINY = {"model.attn_resolutions": (), "training.num_steps": 2, "training.log_every": 1,
        "training.checkpoint_every": 2, "optim.warmup_steps": 1, "sample.num_samples": 4,
        "sample.batch_size": 4, "sample.num_steps": 2}
# Text and super-resolution in one model, with guidance on both.
MIX = {**TINY, "model.cross_attn_resolutions": (16,), "model.text_width": 16,
       "model.text_layers": 1, "cond.image": "sr", "model.cond_image_channels": 3,
       "model.cond_image_resolutions": (16,), "training.image_dropout": 0.2,
       "sample.image_guidance_scale": 1.5}


def _train(tmp_path_factory, data_dir, name, config, overrides):
  wd = str(tmp_path_factory.mktemp(name) / "wd")
  r = cli(wd, config=config, overrides=overrides, data_dir=data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  return wd


@pytest.fixture(scope="module")
def mix(tmp_path_factory, data_dir):
  return _train(tmp_path_factory, data_dir, "mix", "configs/shapes_text.py:runlocal", MIX)


@pytest.fixture(scope="module")
def base8(tmp_path_factory, data_dir):
  return _train(tmp_path_factory, data_dir, "base8", "configs/photo_base8.py:runlocal",
                {**TINY, "model.attn_resolutions": (4,)})


@pytest.fixture(scope="module")
def gray(tmp_path_factory, data_dir):
  return _train(tmp_path_factory, data_dir, "gray", "configs/photo_colorize.py:runlocal", TINY)


@pytest.fixture(scope="module")
def inpaint(tmp_path_factory, data_dir):
  return _train(tmp_path_factory, data_dir, "inpaint", "configs/photo_inpaint.py:runlocal",
                TINY)


def _sample(wd, data_dir, config, overrides, *args):
  return cli(wd, "--mode=sample", *args, config=config, overrides=overrides, data_dir=data_dir)


def _latest(wd):
  d = os.path.join(wd, "samples")
  names = sorted((os.path.getmtime(os.path.join(d, n)), n) for n in os.listdir(d)
                 if n.endswith(".npz"))
  return np.load(os.path.join(d, names[-1][1])), os.path.join(d, names[-1][1])


def test_text_and_sr_model_trains_and_samples_from_prompts(mix, data_dir):
  f, path = _latest(mix)  # The end-of-training set: the test split's captions and crops.
  assert f["images"].shape == (4, 32, 32, 3) and f["lowres"].shape == (4, 8, 8, 3)
  assert f["reference"].shape == (4, 32, 32, 3) and len(f["prompts"]) == 4
  assert os.path.exists(path[:-4] + ".png")
  prompts = ["a large red circle on the left", "a small cyan square at the top"]
  r = _sample(mix, data_dir, "configs/shapes_text.py:runlocal", MIX,
              *[f"--prompt={p}" for p in prompts])
  assert r.returncode == 0, r.stderr[-3000:]
  f, path = _latest(mix)
  assert list(f["prompts"]) == prompts and f["images"].shape == (2, 32, 32, 3)
  grid = np.asarray(Image.open(path[:-4] + ".png"))
  assert grid.shape[0] >= 2 * 64  # One row per sample, condition beside the result.


def test_cascade_from_a_base_model(mix, base8, data_dir):
  r = _sample(mix, data_dir, "configs/shapes_text.py:runlocal", MIX, f"--cascade_from={base8}")
  assert r.returncode == 0, r.stderr[-3000:]
  f, _ = _latest(mix)
  # The base model's samples (4 by its config) are the low-resolution inputs.
  assert f["lowres"].shape == (4, 8, 8, 3) and f["images"].shape == (4, 32, 32, 3)
  assert "reference" not in f


def test_colourisation_from_an_npz(gray, data_dir, tmp_path):
  rng = np.random.default_rng(0)
  path = str(tmp_path / "gray.npz")
  np.savez(path, gray=rng.integers(0, 255, (3, 32, 32, 1), dtype=np.uint8))
  r = _sample(gray, data_dir, "configs/photo_colorize.py:runlocal", TINY, f"--cond={path}")
  assert r.returncode == 0, r.stderr[-3000:]
  f, _ = _latest(gray)
  assert f["images"].shape == (3, 32, 32, 3) and f["gray"].shape == (3, 32, 32, 1)
  np.testing.assert_array_equal(f["gray"], np.load(path)["gray"])


def test_inpainting_from_rgba_pngs(inpaint, data_dir, tmp_path):
  d = tmp_path / "holes"
  d.mkdir()
  rng = np.random.default_rng(0)
  for i in range(2):
    rgba = rng.integers(0, 255, (32, 32, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[8:20, 8:20, 3] = 0  # The hole.
    Image.fromarray(rgba).save(d / f"{i}.png")
  r = _sample(inpaint, data_dir, "configs/photo_inpaint.py:runlocal", TINY, f"--cond={d}")
  assert r.returncode == 0, r.stderr[-3000:]
  f, _ = _latest(inpaint)
  assert f["images"].shape == (2, 32, 32, 3) and f["mask"].shape == (2, 32, 32, 1)
  assert f["mask"][0, 10, 10, 0] == 0 and f["mask"][0, 0, 0, 0] == 1
  # sample.project (on in the photo configs) keeps the known pixels exactly.
  known = f["mask"][..., 0] == 1
  np.testing.assert_array_equal(f["images"][known], f["masked"][known])


BAD = [  # (workdir fixture, config, overrides, sampling flags, the error).
    ("mix", "configs/shapes_text.py:runlocal", MIX, {"prompts": ["a purple dog"]},
     "outside the model's vocabulary: ['dog', 'purple']"),
    ("mix", "configs/shapes_text.py:runlocal", MIX, {"prompts": [" ".join(["a"] * 17)]},
     "the model takes at most 16"),
    ("mix", "configs/shapes_text.py:runlocal", MIX, {"cond_path": "BAD16"},
     "'lowres' images have shape (16, 16, 3) (h, w, channels); this model takes (8, 8, 3)"),
    ("gray", "configs/photo_colorize.py:runlocal", TINY, {"cond_path": "RGB32"},
     "'gray' images have shape (32, 32, 3) (h, w, channels); this model takes (32, 32, 1)"),
    ("gray", "configs/photo_colorize.py:runlocal", TINY, {"prompts": ["a red circle"]},
     "this model was not trained on text"),
    ("gray", "configs/photo_colorize.py:runlocal", TINY, {"labels": [1, 2]},
     "this model is not class-conditional"),
    ("gray", "configs/photo_colorize.py:runlocal", TINY, {"cascade_from": "MIX"},
     "--cascade_from needs a super-resolution model"),
    ("inpaint", "configs/photo_inpaint.py:runlocal", TINY, {"cond_path": "RGB32"},
     "lacks ['masked', 'mask']"),
    ("base8", "configs/photo_base8.py:runlocal", {**TINY, "model.attn_resolutions": (4,)},
     {"cond_path": "RGB32"}, "this model takes no image condition"),
]


def _bad_files(tmp_path):
  out = {}
  for name, (key, shape) in {"BAD16": ("lowres", (2, 16, 16, 3)),
                             "RGB32": ("gray", (2, 32, 32, 3))}.items():
    out[name] = str(tmp_path / f"{name}.npz")
    np.savez(out[name], **{key: np.zeros(shape, np.uint8)})
  return out


@pytest.mark.parametrize("fixture,config,over,given,message", BAD)
def test_bad_sampling_inputs_exit_2_before_anything_is_written(
    request, tmp_path, data_dir, fixture, config, over, given, message):
  wd = request.getfixturevalue(fixture)
  files = _bad_files(tmp_path)
  args = []
  for key, value in given.items():
    if key == "prompts":
      args += [f"--prompt={p}" for p in value]
    elif key == "cond_path":
      args.append(f"--cond={files[value]}")
    elif key == "labels":
      args.append(f"--labels={','.join(str(v) for v in value)}")
    else:
      args.append(f"--cascade_from={request.getfixturevalue('mix')}")
  before = snapshot(wd)
  r = _sample(wd, data_dir, config, over, *args)
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
  assert len(lines) == 1 and message in lines[0], r.stderr[-2000:]
  assert snapshot(wd) == before
