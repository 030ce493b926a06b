"""Sample metrics through the command line: periodic evaluation while training (metrics
logged, a best checkpoint kept beside the latest), --mode=eval of likelihood and
sample metrics together, run metadata, and each bad input's one-line error."""

import json
import os

import pytest

from tests.conftest import cli

QUICK = {"training.log_every": 1, "optim.warmup_steps": 1, "optim.lr_schedule": "constant"}
# KID, precision/recall and IS work with few samples; FD needs more than the 64
# feature dimensions of digits-v1 (test_bad_input covers that).
EVAL = {"eval.metrics": "kid,precision,recall,is", "eval.num_samples": 20,
        "eval.every_steps": 2, "eval.best_metric": "kid"}


def tb_tags(logdir: str) -> set[str]:
  import tensorflow as tf
  tags = set()
  for name in os.listdir(logdir):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
      tags |= {v.tag for v in event.summary.value}
  return tags


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, data_dir):
  wd = str(tmp_path_factory.mktemp("periodic") / "wd")
  r = cli(wd, overrides={**QUICK, **EVAL, "training.num_steps": 4,
                         "training.checkpoint_every": 2, "training.keep_checkpoints": 1},
          data_dir=data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  return wd, r


def test_periodic_evaluation_logs_metrics_and_keeps_a_best_checkpoint(evaluated):
  wd, r = evaluated
  for step in (2, 4):
    with open(os.path.join(wd, "eval", f"step_{step}_digits-v1.json")) as f:
      result = json.load(f)
    assert result["step"] == step and result["num_samples"] == 20
    assert result["feature_net"] == "digits-v1" and result["reference_examples"] == 1498
    assert 0.0 <= result["precision"] <= 1.0 and 0.0 <= result["recall"] <= 1.0
    assert result["kid"] > 0 and 1.0 <= result["is"] <= 10.0
  assert "eval/kid" in r.stdout and "eval/precision" in r.stdout
  assert {"eval/kid", "eval/recall", "eval/is"} <= tb_tags(os.path.join(wd, "tensorboard"))
  # The best checkpoint lives beside the latest one, which keep_checkpoints=1 leaves alone.
  assert os.listdir(os.path.join(wd, "checkpoints")) == ["4"]
  best = os.listdir(os.path.join(wd, "checkpoints_best"))
  assert len(best) == 1
  with open(os.path.join(wd, "checkpoints_best", best[0], "meta", "metadata")) as f:
    meta = json.load(f)
  kids = {s: json.load(open(os.path.join(wd, "eval", f"step_{s}_digits-v1.json")))["kid"]
          for s in (2, 4)}
  assert meta["best"] == {"step": min(kids, key=kids.get), "metric": "kid",
                          "value": min(kids.values())}
  assert meta["model"]["ch"] == 8  # A restorable checkpoint: the model's config is there.


def test_run_metadata_is_recorded(evaluated):
  wd, _ = evaluated
  with open(os.path.join(wd, "run_info.jsonl")) as f:
    info = [json.loads(line) for line in f]
  assert info[0]["mode"] == "train" and info[0]["config_file"] == "config.json"
  assert info[0]["seed"] == 0 and info[0]["device_count"] >= 1 and info[0]["process_count"] == 1
  assert info[0]["packages"]["jax"] and info[0]["device_kind"]
  assert info[0]["git"] is None or len(info[0]["git"]["commit"]) == 40


def test_eval_mode_computes_likelihood_and_sample_metrics(evaluated, data_dir):
  wd, _ = evaluated
  r = cli(wd, "--mode=eval", config=None, tiny=False,
          overrides={"eval.metrics": "bpd,kid,recall", "eval.num_examples": 4,
                     "eval.ode_steps": 2, "eval.num_samples": 20},
          data_dir=data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(os.path.join(wd, "eval", "step_4_ode.json")) as f:
    assert json.load(f)["num_examples"] == 4
  with open(os.path.join(wd, "eval", "step_4_digits-v1-1.json")) as f:  # Never overwritten.
    result = json.load(f)
  assert set(result) >= {"kid", "kid_std", "recall"} and "precision" not in result
  assert result["sample_seed"] == 1  # Which conditions and noise made the samples.
  # The same parameters, samples and reference as the periodic evaluation at step 4.
  with open(os.path.join(wd, "eval", "step_4_digits-v1.json")) as f:
    assert result["kid"] == json.load(f)["kid"]
  with open(os.path.join(wd, "run_info.jsonl")) as f:
    assert json.loads(f.readlines()[-1])["mode"] == "eval"


BAD = [
    ("unknown metric", {"eval.metrics": "fid,kid"}, "eval.metrics='fid' is unknown; known: "),
    ("fd with too few samples", {"eval.metrics": "fd", "eval.num_samples": 50},
     "eval.num_samples=50 is not more than the 64 feature dimensions"),
    ("unknown feature net", {"eval.metrics": "kid", "eval.feature_net": "vgg"},
     "eval.feature_net='vgg' is unknown"),
    ("feature net for other images", {"eval.metrics": "kid", "eval.feature_net": "shapes-v1"},
     "eval.feature_net='shapes-v1' takes 3-channel images"),
    ("missing inception weights", {"eval.metrics": "kid", "eval.feature_net": "inception",
                                   "eval.inception_weights": "/nonexistent/inception.npz"},
     "FID Inception weights /nonexistent/inception.npz not found: download"),
    ("best metric not computed", {"eval.metrics": "kid", "eval.best_metric": "fd"},
     "eval.best_metric='fd' is not one of eval.metrics"),
    ("reference split too small for fd", {"eval.metrics": "fd", "eval.num_samples": 100,
                                          "eval.reference_split": "test[:40]"},
     "gives 40 reference images, not more than the 64 feature dimensions"),
]


@pytest.mark.parametrize("name,over,message", BAD, ids=[b[0] for b in BAD])
def test_bad_evaluation_input_fails_cleanly_and_writes_nothing(tmp_path, data_dir, name, over,
                                                               message):
  wd = str(tmp_path / "wd")
  r = cli(wd, overrides={**over, "eval.every_steps": 2}, data_dir=data_dir)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and message in lines[0], r.stderr[-2000:]
  assert not os.path.exists(wd)
