"""Multi-host runs, proved with several local processes of the real command line: the
same result on any split of the devices over processes, checkpoints that move between
process and device counts, preemption, kill -9, and every launch error on every process.

Every run trains the tiny U-Net on digits with a global batch of 8 for 6 steps; the
reference is one process with 2 devices. A run that resumes keeps the input position,
so it must end exactly where the reference does (to float tolerance: the gradient
sums run in another order on other device counts).
"""

import os
import shutil
import signal
import time

import jax
import numpy as np
import pytest

from tests.run import multiprocess as mp

STEPS = {"training.num_steps": 6, "training.checkpoint_every": 3}


def losses(workdir: str) -> dict[int, float]:
  """The logged loss of every step, from the run's TensorBoard events."""
  import tensorflow as tf
  out = {}
  events = os.path.join(workdir, "tensorboard")
  for name in sorted(os.listdir(events)):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(events, name)):
      for v in event.summary.value:
        if v.tag == "loss":
          out[event.step] = float(tf.make_ndarray(v.tensor))
  return out


def final_state(workdir: str):
  from diffusion_jax.run import build
  from diffusion_jax.training import mesh as mesh_lib
  return build.restore_run(workdir, mesh_lib.make_mesh(1))[1]


def assert_same_run(workdir: str, reference):
  ref_dir, ref_losses, ref_state = reference
  got = losses(workdir)
  assert sorted(got) == sorted(ref_losses), (sorted(got), sorted(ref_losses))
  np.testing.assert_allclose([got[k] for k in sorted(got)],
                             [ref_losses[k] for k in sorted(got)], rtol=1e-5)
  state = final_state(workdir)
  assert int(state.step) == int(ref_state.step) == 6
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))),
                                       (state.params, state.ema_params),
                                       (ref_state.params, ref_state.ema_params)))
  # Gradient sums in another order (gloo across processes, XLA within one) differ in the
  # last bits; Adam's normalisation lifts that to ~1e-5 on parameters of tiny gradient.
  assert max(diffs) < 1e-4, max(diffs)


def check_ok(exits):
  for i, e in enumerate(exits):
    assert e.returncode == 0, f"process {i}: {e.stderr[-3000:]}"


def resumable_copy(src: str, dest: str, keep_step: int = 3) -> str:
  """A copy of a finished run with its checkpoints after `keep_step` removed: resuming
  it trains the remaining steps again."""
  shutil.copytree(src, dest)
  for name in os.listdir(os.path.join(dest, "checkpoints")):
    if name.isdigit() and int(name) > keep_step:
      shutil.rmtree(os.path.join(dest, "checkpoints", name))
  shutil.rmtree(os.path.join(dest, "tensorboard"))  # Only the resumed steps' losses.
  return dest


def tail_losses(reference, first: int):
  ref_dir, ref_losses, ref_state = reference
  return ref_dir, {k: v for k, v in ref_losses.items() if k >= first}, ref_state


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
  """One process with 2 devices, 6 steps: what every other split must reproduce."""
  base = tmp_path_factory.mktemp("pods")
  wd = str(base / "ref")
  check_ok(mp.run(mp.tiny_flags(wd, **STEPS), 1, 2, str(base / "logs"), explicit=False))
  return wd, losses(wd), final_state(wd)


def test_2x4_equals_1x2_and_its_checkpoint_restores_on_1_process(reference, tmp_path):
  wd = str(tmp_path / "2x4")
  logs = str(tmp_path / "logs")
  exits = mp.run(mp.tiny_flags(wd, **STEPS), 2, 4, logs)
  check_ok(exits)
  assert "2 processes, 8 devices" in exits[0].stdout
  assert exits[1].stdout.strip() == "" or "step" not in exits[1].stdout  # Process 0 logs.
  assert_same_run(wd, reference)
  # The checkpoint of 2 processes with 8 devices, restored on 1 process with 2.
  resumed = resumable_copy(wd, str(tmp_path / "1x2"))
  exits = mp.run(mp.tiny_flags(resumed, **STEPS), 1, 2, logs, explicit=False)
  check_ok(exits)
  assert "resumed from" in exits[0].stdout and "1 process, 2 devices" in exits[0].stdout
  assert_same_run(resumed, tail_losses(reference, 4))


def test_a_1_process_checkpoint_resumes_on_2(reference, tmp_path):
  resumed = resumable_copy(reference[0], str(tmp_path / "1x2_to_2x1"))
  check_ok(mp.run(mp.tiny_flags(resumed, **STEPS), 2, 1, str(tmp_path / "logs")))
  assert_same_run(resumed, tail_losses(reference, 4))


def test_sigterm_to_one_process_saves_the_same_step_and_resumes(reference, tmp_path):
  wd, logs = str(tmp_path / "wd"), str(tmp_path / "logs")
  argv = mp.tiny_flags(wd, **STEPS)
  with mp.Processes(argv, 2, 1, logs) as p:
    p.wait_for(0, "new run")  # Compiling: JAX's preemption service holds the notice.
    p.signal(1, signal.SIGTERM)
    exits = p.wait()
  check_ok(exits)
  steps = [int(e.stdout.split("preempted at step ")[1].split()[0]) for e in exits]
  assert steps[0] == steps[1] < 6, [e.stdout[-500:] for e in exits]
  saved = sorted(int(n) for n in os.listdir(os.path.join(wd, "checkpoints")) if n.isdigit())
  assert saved[-1] == steps[0]
  # The input position is one JSON item, written once: the global batches of 8 read.
  from diffusion_jax.training import checkpoint
  position = checkpoint.reader(wd).restore(steps[0], args=checkpoint.ocp.args.Composite(
      iterator=checkpoint.ocp.args.JsonRestore()))["iterator"]
  assert position["position"] == steps[0] * 8, position
  # The same command resumes on 2 processes and ends where the 1-process run does.
  exits = mp.run(argv, 2, 1, logs)
  check_ok(exits)
  assert f"resumed from {os.path.join(wd, 'checkpoints', str(steps[0]))}" in exits[0].stdout
  # The workdir's events hold the steps before the preemption and after: all of them
  # as the uninterrupted run's.
  assert_same_run(wd, reference)


def test_kill_9_during_a_save_then_resume(reference, tmp_path):
  wd, logs = str(tmp_path / "wd"), str(tmp_path / "logs")
  argv = mp.tiny_flags(wd, **{**STEPS, "training.checkpoint_every": 1})
  ckpts = os.path.join(wd, "checkpoints")
  with mp.Processes(argv, 1, 2, logs, explicit=False) as p:
    p.wait_for(0, "first step")
    deadline = time.monotonic() + 120
    # Kill while a save is being written (orbax's temporary directory exists).
    while time.monotonic() < deadline and p.procs[0].poll() is None and not any(
        "tmp" in n for n in os.listdir(ckpts)):
      time.sleep(0.005)
    p.kill()
  assert p.procs[0].returncode == -signal.SIGKILL, "the run ended before it was killed"
  exits = mp.run(argv, 1, 2, logs, explicit=False)
  check_ok(exits)
  # The dead run's lock is taken over; training resumes from its last whole checkpoint.
  assert "taking over the workdir lock" in exits[0].stderr, exits[0].stderr[-2000:]
  assert "resumed from" in exits[0].stdout or "new run" in exits[0].stdout
  first = min(losses(wd))
  assert_same_run(wd, tail_losses(reference, first))


# --- Launch errors: one line on every process, before anything is compiled or written.

def test_a_peer_that_never_starts_stops_every_process_within_the_timeout(tmp_path):
  wd = str(tmp_path / "wd")
  exits = mp.run(mp.tiny_flags(wd), 3, 1, str(tmp_path / "logs"), ids=[0, 1], timeout_s=8)
  for e in exits:
    assert e.returncode == 2, e.stderr[-2000:]
    assert e.seconds < 8 + 60, e.seconds  # Start-up (imports) plus the timeout.
    assert len(mp.errors(e)) == 1 and "Traceback" not in e.stderr, e.stderr[-2000:]
  assert "process 2 of --num_processes=3 did not reach the coordinator" in exits[0].stderr
  assert "the coordinator" in exits[1].stderr
  assert not os.path.exists(wd)


BAD_LAUNCHES = [
    # (name, processes, devices, {process: extra flags}, config overrides, message)
    ("num_processes differ", 2, 1, {1: ["--num_processes=3", "--process_id=2"]}, {},
     "--num_processes differs between processes: process 0 has 2, process 2 has 3"),
    ("two processes with one id", 3, 1, {2: ["--process_id=1"]}, {},
     "two processes were started with --process_id=1"),
    ("config differs", 2, 1, {1: ["--config.seed=5"]}, {},
     "process 1 was started with another config, --workdir or --mode than process 0"),
    ("batch vs global devices", 2, 2, {}, {"training.batch_size": 6, "sample.batch_size": 8},
     "training.batch_size=6 is not divisible by the 4 devices"),
    ("dataset smaller than a batch", 2, 1, {}, {"training.batch_size": 2048},
     "has 1498 examples; the run needs at least 2048"),
]


@pytest.mark.parametrize("name,n,devices,extra,over,message", BAD_LAUNCHES,
                         ids=[b[0] for b in BAD_LAUNCHES])
def test_bad_launch_is_one_error_on_every_process(tmp_path, data_dir, name, n, devices, extra,
                                                  over, message):
  wd = str(tmp_path / "wd")
  exits = mp.run(mp.tiny_flags(wd, **over), n, devices, str(tmp_path / "logs"), timeout_s=30,
                 extra=extra)
  for i, e in enumerate(exits):
    assert e.returncode == 2, f"process {i}: {e.stderr[-2000:]}"
    assert len(mp.errors(e)) == 1 and message in mp.errors(e)[0], f"process {i}: {e.stderr[-2000:]}"
    assert "Traceback" not in e.stderr
  assert not os.path.exists(wd)


def test_unreachable_coordinator(tmp_path):
  wd = str(tmp_path / "wd")
  exits = mp.run(mp.tiny_flags(wd), 2, 1, str(tmp_path / "logs"), ids=[1], timeout_s=5)
  assert exits[0].returncode == 2
  (line,) = mp.errors(exits[0])
  assert line.startswith("error: cannot reach the coordinator localhost:") and \
      "(process 0) within 5s (--initialization_timeout)" in line, line
  assert not os.path.exists(wd)
