"""The learned schedule (VDM) through the command line: training changes it, it is
checkpointed and resumed with the network, the samples and bits/dim of a run use its
trained (EMA) value, periodic evaluations compile their programs once, and
combinations it does not support are refused."""

import dataclasses
import json
import os
import types

import jax
import numpy as np
import pytest

from diffusion_jax.core import diffusion, learned_schedule
from diffusion_jax.run import build, evaluate, sample as sample_run
from diffusion_jax.sampling import inputs as inputs_lib
from diffusion_jax.training import mesh as mesh_lib
from tests.conftest import apply_overrides, cli
from tests.run.test_cli import load_run_state

CONFIG = "configs/digits_vdm.py"
KEY = learned_schedule.PARAMS_KEY
OVER = {"diffusion.learned_hidden": 8, "training.log_every": 1, "optim.warmup_steps": 1,
        "optim.lr_schedule": "constant", "training.checkpoint_every": 2,
        "training.sample_at_end": False, "training.ema_decay": 0.5, "optim.lr": 1e-2}
BPD = {"eval.metrics": "bpd", "eval.method": "ode", "eval.num_examples": 4,
       "eval.batch_size": 4, "eval.ode_steps": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
  """a: 4 steps, resumed to 6 with bits/dim every 2 steps and samples at the end;
  b: 6 steps at once."""
  root = tmp_path_factory.mktemp("learned")
  a, b = str(root / "a"), str(root / "b")
  r = cli(a, config=CONFIG, overrides={**OVER, "training.num_steps": 4}, data_dir=data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  r = cli(a, config=CONFIG, overrides={**OVER, **BPD, "eval.every_steps": 2,
                                       "training.num_steps": 6, "training.sample_at_end": True},
          data_dir=data_dir)
  assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-3000:]
  r = cli(b, config=CONFIG, overrides={**OVER, "training.num_steps": 6}, data_dir=data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  return a, b


def initial(spec):
  return spec.diffusion.schedule.params


def test_training_changes_the_schedule_and_resuming_restores_it(runs):
  a, b = runs
  sa, sb = load_run_state(a), load_run_state(b)
  assert int(sa.step) == 6 and KEY in sa.params and KEY in sa.ema_params
  # Resumed from step 4's checkpoint == trained at once: the schedule's parameters,
  # EMA and optimizer state were saved and restored with the network's.
  leaves = lambda s: jax.tree.leaves((s.params, s.ema_params, s.opt_state))
  for x, y in zip(leaves(sa), leaves(sb), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  spec, _, _ = build.checked(_saved(a), a, "sample", 1)
  for params in (sa.params[KEY], sa.ema_params[KEY]):
    for name, start in initial(spec).items():
      assert not np.array_equal(np.asarray(params[name]), np.asarray(start)), name


def _bpd(path):
  with open(path) as f:
    return json.load(f)["bits_per_dim"]


def _saved(workdir):
  from diffusion_jax.config import files
  return files.load_saved(workdir)


def test_bits_per_dim_and_samples_use_the_trained_ema_schedule(runs, data_dir):
  a, _ = runs
  r = cli(a, "--mode=eval", config=None, tiny=False, overrides=BPD, data_dir=data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  # The periodic evaluation's at step 6 and --mode=eval's (kept beside it): the same.
  periodic, cli_bpd = (_bpd(os.path.join(a, "eval", f"step_6_ode{s}.json")) for s in ("", "-1"))
  assert periodic == cli_bpd
  mesh = mesh_lib.make_mesh(1)
  spec, state, tokenizer = build.restore_run(a, mesh)
  ema = state.ema_params
  assert spec.diffusion.schedule.params is ema[KEY]  # The restored run's process.
  start = initial(build.checked(_saved(a), a, "sample", 1)[0])
  at_start = {**ema, KEY: start}  # The trained network on the initial schedule.
  spec_eval = build.checked(apply_overrides(_saved(a), BPD), a, "eval", 1)[0]
  likelihood = evaluate.LikelihoodEvaluator(spec_eval, mesh, tokenizer)
  trained, first = (likelihood(p, 6)["bits_per_dim"] for p in (ema, at_start))
  assert trained == pytest.approx(cli_bpd, rel=1e-5) and abs(trained - first) > 1e-3

  with np.load(os.path.join(a, "samples", "step_6.npz")) as f:
    written = f["images"]
  inputs, record = inputs_lib.gather(spec, inputs_lib.Given(), tokenizer)
  again, other = (sample_run.sample_images(spec, p, mesh, inputs, record)
                  for p in (ema, at_start))
  np.testing.assert_array_equal(again, written)
  assert not np.array_equal(other, written)  # Same key and network, other schedule.


# Recorded by jax.monitoring each time jit lowers a program (a compilation, whether or
# not the persistent cache then holds its binary).
LOWERED = "/jax/core/compile/jaxpr_to_mlir_module_duration"


def test_periodic_evaluations_of_a_learned_schedule_compile_their_programs_once(runs, tmp_path):
  """Two periodic evaluations (bits/dim and samples' KID) of parameters on different
  schedules: the second compiles nothing, and its bits/dim are those of its schedule
  baked into the program as constants (how every evaluation used to compile anew)."""
  a, _ = runs
  over = {**BPD, "eval.metrics": "bpd,kid", "eval.every_steps": 1, "eval.num_samples": 10,
          "eval.reference_examples": 100}
  mesh = mesh_lib.make_mesh(1)
  spec, _, tokenizer = build.checked(apply_overrides(_saved(a), over), a, "eval", 1)
  periodic = evaluate.PeriodicEvaluation(spec, str(tmp_path), mesh, tokenizer)
  state = load_run_state(a)
  assert not np.array_equal(state.params[KEY]["gamma1"], state.ema_params[KEY]["gamma1"])
  lowered = []

  def listen(event, seconds, **kwargs):
    if event == LOWERED:
      lowered.append(kwargs.get("fun_name"))

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    results, counts = [], []
    for step, params in ((1, state.ema_params), (2, state.params)):  # EMA, then raw.
      before = len(lowered)
      results.append(periodic(step, types.SimpleNamespace(ema_params=params)))
      counts.append(lowered[before:])
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert len(counts[0]) >= 2, counts[0]  # The bits/dim and sample programs, at least.
  assert counts[1] == [], counts[1]
  assert results[0]["eval/bpd"] != results[1]["eval/bpd"]
  assert results[0]["eval/kid"] != results[1]["eval/kid"]
  fixed = learned_schedule.schedule(state.params[KEY])._replace(params=None)
  baked = dataclasses.replace(spec, diffusion=diffusion.with_schedule(spec.diffusion, fixed))
  bpd = evaluate.LikelihoodEvaluator(baked, mesh, tokenizer)(state.params, 2)["bits_per_dim"]
  assert results[1]["eval/bpd"] == pytest.approx(bpd, rel=1e-5)


BAD = [
    ({"diffusion.prediction": "v"}, "diffusion.schedule='learned' needs diffusion.prediction='eps'"),
    ({"diffusion.weighting": "simple"}, "needs diffusion.weighting='elbo'"),
    ({"diffusion.time_sampling": "importance"}, "needs diffusion.time_sampling='uniform'"),
    ({"diffusion.num_steps": 1000}, "schedule 'learned' is continuous-time"),
    ({"diffusion.learned_hidden": 0}, "diffusion.learned_hidden=0: need an integer >= 1"),
    ({"training.microbatches": 2}, "training.microbatches=2 with diffusion.schedule='learned'"),
    ({"eval.metrics": "bpd", "eval.method": "vlb", "eval.every_steps": 2},
     "eval.method='vlb' is the discrete-time bound"),
]


@pytest.mark.parametrize("over,message", BAD, ids=[m[:30] for _, m in BAD])
def test_unsupported_combinations_are_refused_before_anything_is_written(tmp_path, data_dir,
                                                                        over, message):
  wd = str(tmp_path / "wd")
  r = cli(wd, config=CONFIG, overrides={**OVER, **over}, data_dir=data_dir)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and message in lines[0], r.stderr[-2000:]
  assert not os.path.exists(wd)


def test_autoguidance_of_a_learned_schedule_is_refused(runs, data_dir):
  a, b = runs
  before = sorted(os.listdir(a))
  r = cli(a, "--mode=sample", f"--guide_from={b}", config=None, tiny=False,
          overrides={"sample.autoguidance_scale": 2.0}, data_dir=data_dir)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "with diffusion.schedule='learned'" in lines[0], r.stderr[-2000:]
  assert sorted(os.listdir(a)) == before
