"""End to end through the command line, and every bad input's error."""

import glob
import os
import shutil

import jax
import numpy as np
import pytest

from tests.conftest import ROOT, cli, run_main


def snapshot(path):
  out = {}
  for root, _, files in os.walk(path):
    for f in files:
      p = os.path.join(root, f)
      st = os.stat(p)
      out[p] = (st.st_size, st.st_mtime_ns)
  return out


QUICK = {"training.log_every": 1, "optim.warmup_steps": 1, "optim.lr_schedule": "constant"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
  """Trains 4 steps, then resumes to 6: the workdir shared by the tests below."""
  wd = str(tmp_path_factory.mktemp("run") / "wd")
  r1 = cli(wd, overrides={**QUICK, "training.num_steps": 4, "training.checkpoint_every": 2},
           data_dir=data_dir)
  assert r1.returncode == 0, r1.stderr[-3000:]
  r2 = cli(wd, overrides={**QUICK, "training.num_steps": 6, "training.checkpoint_every": 2},
           data_dir=data_dir)
  assert r2.returncode == 0, r2.stderr[-3000:]
  return wd, r1, r2


def test_train_resume_and_files(trained):
  wd, r1, r2 = trained
  assert "new run" in r1.stdout and "step 4/4" in r1.stdout and "steps/s" in r1.stdout
  assert "ETA" in r1.stdout
  assert "resumed from" in r2.stdout and "steps 4->6" in r2.stdout
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2", "4", "6"]  # Keep 3.
  assert os.path.exists(os.path.join(wd, "config.json"))
  # The resumed run's config differs (num_steps) and is kept beside the first.
  assert os.path.exists(os.path.join(wd, "config_resumed_at_step_4.json"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(wd, "tensorboard")))
  for step in (4, 6):
    data = np.load(os.path.join(wd, "samples", f"step_{step}.npz"))
    assert data["images"].shape == (10, 8, 8, 1) and data["images"].dtype == np.uint8
    np.testing.assert_array_equal(data["labels"], np.arange(10))
    assert os.path.getsize(os.path.join(wd, "samples", f"step_{step}.png")) > 0


def test_a_finished_run_run_again_trains_nothing_and_keeps_what_it_wrote(trained, data_dir,
                                                                         tmp_path, monkeypatch):
  """Training is compiled only where steps remain (run/train.py); the checkpoints stay as
  they were and the new sample set goes beside the others."""
  from diffusion_jax.run import build

  def no_compile(*args):
    raise AssertionError("a finished run compiled its train step")

  monkeypatch.setattr(build, "compiled_train_step", no_compile)
  wd = str(tmp_path / "wd")
  shutil.copytree(trained[0], wd, ignore=shutil.ignore_patterns("lock.json"))
  checkpoints, samples = (os.path.join(wd, d) for d in ("checkpoints", "samples"))
  before = snapshot(checkpoints), snapshot(samples)
  r = cli(wd, overrides={**QUICK, "training.num_steps": 6, "training.checkpoint_every": 2},
          data_dir=data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "steps 6->6" in r.stdout and "first step" not in r.stdout, r.stdout
  assert snapshot(checkpoints) == before[0]
  after = snapshot(samples)
  assert {p: after[p] for p in before[1]} == before[1]
  assert sorted(os.path.splitext(p)[1] for p in set(after) - set(before[1])) == [".npz", ".png"]


def test_sample_mode_with_labels_never_overwrites(trained, data_dir):
  wd, _, _ = trained
  r = cli(wd, "--mode=sample", "--labels=7,7,3", overrides={"sample.batch_size": 4},
          data_dir=data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  data = np.load(os.path.join(wd, "samples", "step_6-1.npz"))
  np.testing.assert_array_equal(data["labels"], [7, 7, 3])
  assert data["images"].shape == (3, 8, 8, 1)
  from PIL import Image
  assert Image.open(os.path.join(wd, "samples", "step_6-1.png")).size[0] >= 32


def test_eval_mode_reports_bits_per_dim(trained, data_dir):
  import json
  wd, _, _ = trained
  for method in ("ode", "vlb"):
    r = cli(wd, "--mode=eval", overrides={"eval.method": method, "eval.num_examples": 6,
                                          "eval.batch_size": 4, "eval.ode_steps": 5},
            data_dir=data_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(os.path.join(wd, "eval", f"step_6_{method}.json")) as f:
      result = json.load(f)
    assert result["num_examples"] == 6 and result["method"] == method
    # An almost untrained model: far worse than 8 bits/dim, but a finite number.
    assert 8.0 < result["bits_per_dim"] < 100.0


def load_run_state(workdir):
  """The latest checkpoint's state, restored with the run's saved config."""
  from diffusion_jax.run import build
  from diffusion_jax.training import mesh as mesh_lib
  return build.restore_run(workdir, mesh_lib.make_mesh(1))[1]


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, data_dir):
  over = {**QUICK, "training.sample_at_end": False, "training.checkpoint_every": 100,
          "model.dropout": 0.1}
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  assert cli(a, overrides={**over, "training.num_steps": 6}, data_dir=data_dir).returncode == 0
  assert cli(b, overrides={**over, "training.num_steps": 3}, data_dir=data_dir).returncode == 0
  r = cli(b, overrides={**over, "training.num_steps": 6}, data_dir=data_dir)
  assert r.returncode == 0 and "resumed" in r.stdout, r.stderr[-2000:]
  sa, sb = load_run_state(a), load_run_state(b)
  assert int(sa.step) == int(sb.step) == 6
  leaves = lambda s: [np.asarray(x) for x in jax.tree.leaves((s.params, s.ema_params, s.opt_state))]
  for x, y in zip(leaves(sa), leaves(sb), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


BAD = [
    ("unknown key", {}, ["--config.optim.lrr=1"], "'lrr' Did you mean \"lr\""),
    ("wrong type", {}, ["--config.optim.lr=fast"], "lr"),
    ("unknown mode", {}, ["--mode=score"], "unknown --mode='score'"),
    ("image size vs depth", {"data.image_size": 7}, [], "not divisible by 2^1"),
    ("attention resolution", {"model.attn_resolutions": (16,)}, [],
     "attn_resolutions [16] are not feature-map sizes"),
    ("unknown dataset", {"data.name": "no_such_dataset"}, [],
     "unknown dataset data.name='no_such_dataset'"),
    ("missing data_dir", {"data.name": "cifar10", "data.data_dir": "/nonexistent/tfds"}, [],
     "data.data_dir='/nonexistent/tfds' does not exist"),
    ("unknown sampler", {"sample.sampler": "heun9"}, [], "sample.sampler='heun9' is unknown"),
    ("sample without checkpoint", {}, ["--mode=sample"], "no checkpoint"),
    ("eval without checkpoint", {}, ["--mode=eval"], "no checkpoint"),
    ("vlb in continuous time", {"diffusion.schedule": "vp", "diffusion.num_steps": 0,
                                "eval.method": "vlb"}, ["--mode=eval"],
     "eval.method='vlb' is the discrete-time bound"),
    ("num_steps for a continuous process", {"diffusion.schedule": "edm"}, [],
     "schedule 'edm' is continuous-time; set diffusion.num_steps=0"),
    # Found by a probe of bad inputs tried as a new user would (issue 9).
    ("unknown split", {"data.split": "validation"}, [],
     "data.split='validation' is not a split of sklearn_digits"),
    ("unknown feature", {"data.image_key": "img"}, [], "data.image_key='img' is not a feature"),
    ("channels vs data", {"data.channels": 3}, [], "data.channels=3, but sklearn_digits"),
    ("fewer classes than the labels", {"data.num_classes": 5}, [],
     "data.num_classes=5, but sklearn_digits/1.1.0's 'label' has 10 classes"),
    ("unknown dtype", {"model.dtype": "float8"}, [], "model.dtype='float8' is unknown"),
    # Scale knobs (issue 14).
    ("unknown param_dtype", {"model.param_dtype": "int8"}, [],
     "model.param_dtype='int8' is unknown; known: ['bfloat16', 'float32', 'float64']"),
    ("param_dtype the platform cannot run", {"model.param_dtype": "float64"}, [],
     "model.param_dtype='float64' needs 64-bit JAX (JAX_ENABLE_X64=1)"),
    ("unknown remat policy", {"model.remat": "everything"}, [],
     "model.remat='everything' is unknown; known: ['block', 'dots_saveable', 'none']"),
    ("no microbatches", {"training.microbatches": 0}, [],
     "training.microbatches=0 must be an integer >= 1"),
    ("microbatches that do not divide the batch", {"training.microbatches": 5}, [],
     "training.microbatches=5 does not divide the per-device batch 16"),
    ("non-finite learning rate", {"optim.lr": float("inf")}, [],
     "optim.lr=inf must be a finite number"),
    ("negative guidance", {"sample.guidance_scale": -1.0}, [],
     "sample.guidance_scale=-1.0 must be a finite number in [0, inf)"),
    # Guidance interval and autoguidance (issue 13).
    ("guidance interval upside down", {"sample.guidance_interval": (5.42, 0.28)}, [],
     "sample.guidance_interval=(5.42, 0.28): need 0 <= lo < hi"),
    ("autoguidance while training", {"sample.autoguidance_scale": 2.0}, [],
     "autoguidance needs a guide model, given only to --mode=sample or eval (--guide_from)"),
    ("a guide while training", {}, ["--guide_from=runs/small"],
     "--guide_from applies to --mode=sample and --mode=eval only"),
    ("bundled data in a data_dir that does not exist",
     {"data.data_dir": "/nonexistent/tfds"}, [], "data.data_dir='/nonexistent/tfds' does not exist"),
    ("split smaller than a batch", {"training.batch_size": 4096}, [],
     "has 1498 examples; the run needs at least 4096"),
]


@pytest.mark.parametrize("name,over,args,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_fails_cleanly_and_writes_nothing(tmp_path, data_dir, name, over, args, message):
  wd = str(tmp_path / "wd")
  r = cli(wd, *args, overrides=over, data_dir=data_dir)
  assert r.returncode != 0
  assert message in r.stderr, r.stderr[-2000:]
  lines = [l for l in r.stderr.splitlines() if l.startswith(("error:", "FATAL"))]
  assert len(lines) == 1, r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  assert not os.path.exists(wd)
  assert not os.path.exists("/nonexistent")


def test_eval_of_a_workdir_without_a_run_names_it(tmp_path, data_dir):
  # Overrides given without --config used to fail as absl's "Unknown command line flag".
  wd = str(tmp_path / "wd")
  r = cli(wd, "--mode=eval", config=None, tiny=False, overrides={"eval.num_samples": 10},
          data_dir=data_dir)
  assert r.returncode == 2
  assert r.stderr.strip() == (f"error: --config is required, e.g. --config=configs/digits.py "
                              f"(or a --workdir holding a run; {wd!r} holds no saved config)")
  assert not os.path.exists(wd)


def test_several_problems_are_reported_together(tmp_path, data_dir):
  r = cli(str(tmp_path / "wd"), overrides={"optim.lr": -1.0, "sample.sampler": "heun9",
                                            "model.dtype": "float8"}, data_dir=data_dir)
  lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
  assert r.returncode == 2 and len(lines) == 3, r.stderr[-2000:]
  assert not os.path.exists(tmp_path / "wd")


def test_divergence_stops_loudly_without_saving_a_bad_checkpoint(tmp_path, data_dir):
  wd = str(tmp_path / "wd")
  r = cli(wd, overrides={**QUICK, "optim.lr": 1e12, "optim.grad_clip": 0.0,
                         "training.num_steps": 8, "training.checkpoint_every": 1,
                         "training.log_every": 100, "training.max_consecutive_skips": 2},
          data_dir=data_dir)
  assert r.returncode == 1, r.stderr[-2000:]
  assert "non-finite updates in a row" in r.stderr and "the run diverged" in r.stderr
  # Skipped updates leave the parameters as they were: every checkpoint is finite.
  from diffusion_jax.training import checkpoint
  manager = checkpoint.reader(wd)
  steps = manager.all_steps()
  assert steps
  for step in steps:
    as_numpy = jax.tree.map(lambda _: checkpoint.ocp.RestoreArgs(restore_type=np.ndarray),
                            manager.item_metadata(step)[checkpoint.STATE])
    state = manager.restore(step, args=checkpoint.ocp.args.Composite(
        state=checkpoint.ocp.args.PyTreeRestore(restore_args=as_numpy)))["state"]
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state)), step
  manager.close()


def test_batch_not_divisible_by_devices(tmp_path, data_dir):
  wd = str(tmp_path / "wd")
  r = cli(wd, overrides={"training.batch_size": 12}, data_dir=data_dir,
          env={"JAX_NUM_CPU_DEVICES": "8"})
  assert r.returncode != 0
  assert "training.batch_size=12 is not divisible by the 8 devices" in r.stderr, r.stderr[-2000:]
  assert not os.path.exists(wd)


def test_incompatible_checkpoint_is_refused_and_untouched(trained, data_dir):
  wd, _, _ = trained
  before = snapshot(wd)
  r = cli(wd, overrides={"model.ch": 16}, data_dir=data_dir)
  assert r.returncode != 0
  assert "incompatible model: model.ch differ" in r.stderr, r.stderr[-2000:]
  assert snapshot(wd) == before


@pytest.mark.parametrize("overrides,args,message", [
    # Resuming with another process refuses, naming the field.
    ({"diffusion.schedule": "cosine"}, [], "trained with other values of diffusion.schedule"),
    # Sampling with a --config of another process: the run's own config is needed.
    ({"diffusion.prediction": "v"}, ["--mode=sample"],
     "--config differs from the run's saved config"),
])
def test_a_run_is_not_resumed_or_sampled_as_another_process(trained, data_dir, overrides, args,
                                                            message):
  wd, _, _ = trained
  before = snapshot(wd)
  r = cli(wd, *args, overrides=overrides, data_dir=data_dir)
  assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
  assert snapshot(wd) == before


def test_sampling_a_run_uses_its_saved_config(trained, data_dir):
  wd, _, _ = trained
  before = snapshot(wd)
  # Only sampling fields may be overridden then.
  r = cli(wd, "--mode=sample", config=None, tiny=False, overrides={"model.ch": 16},
          data_dir=data_dir)
  assert r.returncode == 2, r.stderr
  assert "only sample, eval, data.data_dir, mesh may be overridden" in r.stderr
  assert snapshot(wd) == before
  r = cli(wd, "--mode=sample", "--labels=1,2", config=None, tiny=False,
          overrides={"sample.num_steps": 2, "sample.batch_size": 2}, data_dir=data_dir)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "samples:" in r.stdout


def imported(stderr: str) -> set[str]:
  """The modules a process run with PYTHONPROFILEIMPORTTIME=1 imported."""
  return {line.split("|")[-1].strip() for line in stderr.splitlines()
          if line.startswith("import time:")}


def test_cli_runs_from_outside_the_repository(tmp_path, data_dir):
  """The installed package, run from another directory, with a config given by
  absolute path that loads a shared piece beside it (configs/_photo_common.py). On a
  prepared dataset neither training nor sampling imports TensorFlow (~5 s of start-up)."""
  from diffusion_jax.config import files
  from diffusion_jax.data import pipeline
  from tests.run.docs_commands import SHRINK, fmt
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  config = f"{os.path.join(ROOT, 'configs', 'photo_base8.py')}:runlocal"
  pipeline.open_source(files.load(config).data)  # Prepared (with TensorFlow) here.
  env = {"TFDS_DATA_DIR": data_dir, "PYTHONPROFILEIMPORTTIME": "1"}
  argv = [f"--config={config}", f"--workdir={outside / 'wd'}"]
  argv += [f"--config.{k}={fmt(v)}" for k, v in SHRINK["train"].items()]
  r = run_main(argv, env=env, cwd=str(outside), in_process=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert os.listdir(outside / "wd" / "samples")
  assert os.listdir(outside / "wd" / "tensorboard")
  # Sampling from there needs no config: the run's own is in its workdir.
  r2 = run_main([f"--workdir={outside / 'wd'}", "--mode=sample", "--config.sample.num_steps=2"],
                env=env, cwd=str(outside), in_process=False)
  assert r2.returncode == 0, r2.stderr[-3000:]
  assert "diffusion_jax.run.train" in imported(r.stderr)  # The log is there to be read.
  assert "tensorflow" not in imported(r.stderr) | imported(r2.stderr), "imported TensorFlow"


@pytest.mark.parametrize("damage", ["truncated manifest", "missing array files",
                                    "missing array metadata", "missing input position",
                                    "missing metadata"])
def test_a_damaged_newest_checkpoint_falls_back_with_a_warning(trained, data_dir, tmp_path,
                                                               damage):
  wd = str(tmp_path / "wd")
  shutil.copytree(trained[0], wd)
  state = os.path.join(wd, "checkpoints", "6", "state")
  if damage == "truncated manifest":
    with open(os.path.join(state, "manifest.ocdbt"), "r+b") as f:
      f.truncate(10)
  elif damage == "missing array files":
    shutil.rmtree(os.path.join(state, "d"))
    for d in os.listdir(state):
      if d.startswith("ocdbt.process_"):
        shutil.rmtree(os.path.join(state, d))
  elif damage == "missing array metadata":
    os.remove(os.path.join(state, "_METADATA"))
  elif damage == "missing input position":
    shutil.rmtree(os.path.join(wd, "checkpoints", "6", "iterator"))
  else:
    shutil.rmtree(os.path.join(wd, "checkpoints", "6", "meta"))
  r = cli(wd, overrides={**QUICK, "training.num_steps": 8, "training.checkpoint_every": 2},
          data_dir=data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "6 cannot be read" in r.stderr and "falling back to step 4" in r.stderr, r.stderr
  assert "steps 4->8" in r.stdout
  # Nothing deleted: the damaged step is set aside, and the run saved its own step 6.
  assert os.listdir(os.path.join(wd, "checkpoints_unreadable")) == ["6"]
  assert "8" in os.listdir(os.path.join(wd, "checkpoints"))


# --- Autoguidance (--guide_from) and the guidance interval, on the run trained above.

def _sampled(r) -> dict:
  assert r.returncode == 0, r.stderr[-3000:]
  path = [ln for ln in r.stdout.splitlines() if ln.startswith("samples: ")][-1][len("samples: "):]
  return dict(np.load(path))


def test_autoguidance_from_a_checkpoint_of_the_same_run(trained, data_dir, tmp_path):
  """The run's step 6 guided by its own checkpoints, at scale 100 through the interval's
  path (an interval that holds every time; one compiled program for both): by step 6
  itself, D_bad = D and the samples are the unguided ones (those written at the end of
  training, same seed and settings); by step 2 they are not. (Steps 2 and 6 of a 6-step
  run differ little in their EMA parameters, decay 0.999: the large scale makes the
  difference visible in uint8.)"""
  guide = trained[0]
  wd = str(tmp_path / "wd")
  shutil.copytree(guide, wd)
  before = snapshot(guide)
  unguided = np.load(os.path.join(wd, "samples", "step_6.npz"))
  run = lambda step: cli(wd, "--mode=sample", f"--guide_from={guide}:{step}", config=None,
                         tiny=False, data_dir=data_dir,
                         overrides={"sample.autoguidance_scale": 100.0,
                                    "sample.guidance_interval": (0.0, 1e9)})
  r = run(6)
  itself = _sampled(r)
  assert f"autoguidance: scale 100.0, guide {guide} at step 6" in r.stdout
  np.testing.assert_array_equal(itself["labels"], unguided["labels"])
  # Equal up to float32 rounding (D is evaluated in two batches), i.e. +-1 in uint8.
  diff = np.abs(itself["images"].astype(int) - unguided["images"].astype(int))
  assert diff.max() <= 1 and (diff == 0).mean() > 0.99, (diff.max(), (diff == 0).mean())
  r = run(2)
  by_step_2 = _sampled(r)
  assert f"guide {guide} at step 2" in r.stdout
  assert by_step_2["images"].shape == (10, 8, 8, 1)
  assert not np.array_equal(by_step_2["images"], unguided["images"])
  # --mode=eval measures the guided sampler, and says how it was guided.
  import json
  kid = {}
  for step in (None, 2):
    r = cli(wd, "--mode=eval", *([f"--guide_from={guide}:{step}"] if step else []),
            config=None, tiny=False, data_dir=data_dir,
            overrides={"sample.autoguidance_scale": 100.0 if step else 1.0,
                       "sample.guidance_interval": (0.0, 1e9), "eval.metrics": "kid",
                       "eval.num_samples": 10})
    assert r.returncode == 0, r.stderr[-3000:]
    path = sorted(glob.glob(os.path.join(wd, "eval", "step_6_*.json")), key=os.path.getmtime)[-1]
    result = json.load(open(path))
    kid[step] = result["kid"]
    assert result.get("autoguidance") == ({"scale": 100.0, "guide_workdir": guide,
                                           "guide_step": 2} if step else None), result
  assert kid[2] != kid[None]
  assert snapshot(guide) == before  # The guide's workdir is only read.


def _edited_guide(src, dst, **fields):
  """A copy of a run whose saved config says another run's values: the config is what
  the guide's checks read first, before its checkpoints."""
  import json
  from diffusion_jax.config import files
  shutil.copytree(src, dst)
  path = files.saved_config_paths(str(dst))[-1]
  with open(path) as f:
    config = json.load(f)
  for key, value in fields.items():
    section, field = key.split(".")
    config[section][field] = value
  with open(path, "w") as f:
    json.dump(config, f)
  return str(dst)


GUIDE_BAD = [  # (id, guide (RUN = the trained run), sample overrides, the error).
    ("another image shape", "SIZE16", {},
     "the guide makes (16, 16, 1) images (h, w, channels); this model makes (8, 8, 1)"),
    ("another process", "COSINE", {},
     "the guide was trained on another process (alpha_t, sigma_t or the discrete steps "
     "differ); their diffusion sections differ in diffusion.schedule"),
    ("other conditions", "NOLABELS", {},
     "the guide takes other conditions: data.num_classes=0 (this model: 10)"),
    ("missing workdir", "MISSING", {}, "holds no run config: not a diffusion_jax workdir"),
    ("step without a checkpoint", "RUN:3", {},
     "no usable checkpoint at step 3 in 'RUN' (usable: 6, 4, 2)"),
    ("step not a number", "RUN:last", {}, "the step 'last' after ':' is not a checkpoint step"),
    ("scale 1", "RUN", {"sample.autoguidance_scale": 1.0},
     "--guide_from needs sample.autoguidance_scale != 1"),
    ("no guide", None, {}, "sample.autoguidance_scale=2.0 needs a guide model"),
    ("bad interval", "RUN", {"sample.guidance_interval": (0.5,)},
     "sample.guidance_interval=(0.5,): give (lo, hi)"),
    ("eval without a sample metric", "RUN", {"--mode": "eval", "eval.metrics": "bpd"},
     "autoguidance changes samples only, and eval.metrics=bpd has no sample metric"),
]


@pytest.mark.parametrize("name,guide,over,message", GUIDE_BAD, ids=[b[0] for b in GUIDE_BAD])
def test_a_bad_guide_fails_cleanly_and_writes_nothing(trained, data_dir, tmp_path, name,
                                                      guide, over, message):
  run = trained[0]
  made = {"SIZE16": {"data.image_size": 16, "model.attn_resolutions": [8]},
          "COSINE": {"diffusion.schedule": "cosine"},
          "NOLABELS": {"data.num_classes": 0, "model.num_classes": 0,
                       "training.label_dropout": 0.0, "sample.guidance_scale": 1.0}}
  if guide in made:
    guide = _edited_guide(run, tmp_path / guide.lower(), **made[guide])
  elif guide == "MISSING":
    guide = str(tmp_path / "missing")
  elif guide:
    guide = guide.replace("RUN", run)
  before = snapshot(run), snapshot(tmp_path)
  over = dict(over)
  args = [f"--mode={over.pop('--mode', 'sample')}"] + ([f"--guide_from={guide}"] if guide else [])
  r = cli(run, *args, config=None, tiny=False, data_dir=data_dir,
          overrides={"sample.autoguidance_scale": 2.0, **over})
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
  assert len(lines) == 1 and message.replace("RUN", run) in lines[0], r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  assert (snapshot(run), snapshot(tmp_path)) == before
