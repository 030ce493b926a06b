"""--mode=train: `train_and_evaluate(config, workdir)` checks everything, then trains
(resuming from the workdir's newest readable checkpoint) and ends as the run's kind
says (build.KINDS: a diffusion run writes a sample set, an autoencoder run its latent
scale). Every process runs it; process 0 holds the workdir lock and writes the logs,
the config and the samples, and every process saves its part of the checkpoints."""

import itertools
import time

import jax
from etils import epath

from diffusion_jax.data import pipeline
from diffusion_jax.run import build, lock as lock_lib
from diffusion_jax.run import evaluate as evaluate_run
from diffusion_jax.run import metadata
from diffusion_jax.run import workdir as workdir_lib
from diffusion_jax.training import checkpoint, distributed, loop, mesh as mesh_lib, optimizer
from diffusion_jax.training import preemption, state as state_lib
from diffusion_jax.training.writer import MetricWriter


def _batches(it, mesh):
  for batch in it:  # This process's slice of each global batch.
    yield mesh_lib.global_batch(batch, mesh)


def _take_lock(workdir: str, run_id: str, stale_minutes: float) -> lock_lib.Lock | None:
  if not distributed.is_primary():
    return None
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  return lock_lib.acquire(workdir, run_id, stale_minutes)


def _set_aside(workdir: str, steps, writer: MetricWriter) -> None:
  """Moves unreadable checkpoints out of orbax's way (process 0), so that the run can
  save those steps again; nothing is deleted."""
  if distributed.is_primary():
    for step in steps:
      dest = checkpoint.set_aside(workdir, step)
      writer.log(f"moved the unreadable checkpoint {step} to {dest}")
  distributed.sync("checkpoints set aside")


def train_and_evaluate(config, workdir: str, mesh=None, hooks=(), listeners=(),
                       run_id: str | None = None) -> state_lib.TrainState:
  """Trains (resuming from the workdir's newest readable checkpoint) and writes samples.

  `hooks` run after every step (training.loop.Hook); `listeners` receive every logged
  set of scalars (step, scalars). `run_id` is the id the processes agreed on
  (distributed.agree_on_run), made here if not given. SIGTERM saves and raises
  training.loop.Preempted; the same call resumes."""
  mesh = mesh or mesh_lib.make_mesh()
  spec, found, tokenizer = build.checked(config, workdir, "train", mesh.devices.size)
  mesh = mesh_lib.with_fsdp(mesh, spec.mesh.fsdp)
  # Periodic evaluation (eval.every_steps) checks its weights, reference and inputs now.
  periodic = (distributed.checked(evaluate_run.PeriodicEvaluation, spec, workdir, mesh,
                                  tokenizer) if spec.eval.every_steps else None)
  hooks = (*hooks, periodic) if periodic else hooks
  if run_id is None:
    run_id = distributed.agree_on_run(config.to_json_best_effort(sort_keys=True) + workdir)
  tcfg = spec.training
  # Everything is checked: from here on the workdir is written, by this run only.
  lock = distributed.checked(_take_lock, workdir, run_id, tcfg.lock_stale_minutes)
  try:
    # From here, SIGTERM (even while compiling) saves at the next step and stops.
    with preemption.Watch() as preempted:
      return _train(spec, workdir, mesh, found, tokenizer, hooks, listeners, lock, preempted)
  finally:
    if lock is not None:
      lock.release()


def _train(spec, workdir, mesh, found, tokenizer, hooks, listeners, lock, preempted):
  tcfg = spec.training
  build.use_compilation_cache(spec, workdir)
  if distributed.is_primary():
    workdir_lib.save_config(spec.config, workdir, found.latest)
  metadata.record(workdir, spec, "train", found.latest)
  net, tx = build.model(spec), build.optimizer_of(spec)
  init, key, abstract = build.init_fns(spec, net, tx, mesh)
  writer = MetricWriter(str(epath.Path(workdir) / "tensorboard"), tcfg.num_steps, listeners)
  kind = build.kind_of(spec)
  it = distributed.checked(pipeline.make_iterator, spec.data, tcfg.batch_size,
                           spec.seed, kind.text(spec, tokenizer), cache=kind.cache(spec))
  meta = kind.meta(spec, tokenizer)
  if found.latest is not None:
    step, state, position, failed = build.restore_state(spec, workdir, found, mesh,
                                                        with_iterator=True)
    _set_aside(workdir, [s for s, _ in found.skipped] + failed, writer)
    it.restore(position)
    writer.log(f"resumed from {checkpoint.checkpoint_dir(workdir) / str(step)}")
  else:
    state = init(key)
    writer.log(f"new run in {workdir}")
  manager = checkpoint.make_manager(workdir, tcfg.keep_checkpoints, tcfg.async_checkpoints)

  batches, step_fn = _batches(it, mesh), None
  started = time.perf_counter()  # The first step's time includes compiling it.
  if int(state.step) < tcfg.num_steps:  # Compiled for the shapes training feeds it.
    first = next(batches)
    step_fn = build.compiled_train_step(spec, net, tx, mesh, abstract, first)
    batches = itertools.chain([first], batches)
  lr_fn = optimizer.learning_rate_schedule(spec.optim, tcfg.num_steps)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  writer.log(f"{n_params:,} parameters, {jax.process_count()} process"
             f"{'es' if jax.process_count() > 1 else ''}, {mesh.devices.size} devices "
             f"(data {mesh.shape[mesh_lib.DATA_AXIS]} x fsdp {mesh_lib.fsdp_size(mesh)}), "
             f"global batch {tcfg.batch_size}, steps {int(state.step)}->{tcfg.num_steps}")
  all_hooks = [*hooks, lock.refresh] if lock is not None else list(hooks)
  try:
    state = loop.train(
        state, step_fn, batches, tcfg, writer, started=started,
        save=lambda step, s: checkpoint.save(manager, step, s, it.state(), meta),
        extra_scalars=lambda step: {"lr": float(lr_fn(step - 1))}, hooks=all_hooks,
        preempted=preempted)
    manager.wait_until_finished()
  finally:
    manager.close()  # Waits for a save in progress.
    it.close()

  kind.finish(spec, workdir, state, mesh, net, tokenizer, writer)
  writer.close()
  return state


__all__ = ["train_and_evaluate"]
