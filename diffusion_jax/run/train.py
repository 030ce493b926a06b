"""--mode=train: `train_and_evaluate(config, workdir)` checks everything, then trains
(resuming from the workdir's latest checkpoint) and writes a sample set at the end."""

import os

import jax

from diffusion_jax.data import pipeline
from diffusion_jax.run import build
from diffusion_jax.run import evaluate as evaluate_run
from diffusion_jax.run import metadata
from diffusion_jax.run import sample as sample_run
from diffusion_jax.run import workdir as workdir_lib
from diffusion_jax.sampling import inputs as inputs_lib
from diffusion_jax.training import checkpoint, loop, mesh as mesh_lib, optimizer, state as state_lib
from diffusion_jax.training.writer import MetricWriter


def _batches(it, mesh):
  for batch in it:
    yield mesh_lib.global_batch({k: v._numpy() for k, v in batch.items()}, mesh)


def train_and_evaluate(config, workdir: str, mesh=None, hooks=(),
                       listeners=()) -> state_lib.TrainState:
  """Trains (resuming from the workdir's latest checkpoint) and writes samples.

  `hooks` run after every step (training.loop.Hook); `listeners` receive every logged
  set of scalars (step, scalars)."""
  mesh = mesh or mesh_lib.make_mesh()
  spec, start_step, tokenizer = build.checked(config, workdir, "train", mesh.devices.size)
  # Periodic evaluation (eval.every_steps) checks its weights, reference and inputs now.
  periodic = (evaluate_run.PeriodicEvaluation(spec, workdir, mesh, tokenizer)
              if spec.eval.every_steps else None)
  # Everything is checked: from here on the workdir is written.
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    workdir_lib.save_config(config, workdir, start_step)
  metadata.record(workdir, spec, "train", start_step)
  hooks = (*hooks, periodic) if periodic else hooks
  tcfg = spec.training
  net, tx = build.model(spec), build.optimizer_of(spec)
  init, key, abstract = build.init_fns(spec, net, tx, mesh)
  writer = MetricWriter(os.path.join(workdir, "tensorboard"), tcfg.num_steps, listeners)

  text = pipeline.TextSpec(
      tokenizer=tokenizer,
      emb_key=spec.data.text_emb_key if spec.model.text == "embeddings" else "")
  ds = pipeline.make_dataset(spec.data, tcfg.batch_size // jax.process_count(), spec.seed,
                             text=text)
  it = iter(ds)
  manager = checkpoint.make_manager(workdir, tcfg.keep_checkpoints)
  meta = workdir_lib.model_meta(spec, tokenizer)
  if start_step is not None:
    state = checkpoint.restore(manager, start_step, abstract, it)
    writer.log(f"resumed from {checkpoint.checkpoint_dir(workdir)}/{start_step}")
  else:
    state = init(key)
    writer.log(f"new run in {workdir}")

  step_fn = build.jitted_train_step(spec, net, tx, mesh)
  lr_fn = optimizer.learning_rate_schedule(spec.optim, tcfg.num_steps)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  writer.log(f"{n_params:,} parameters, {mesh.devices.size} devices, "
             f"global batch {tcfg.batch_size}, steps {int(state.step)}->{tcfg.num_steps}")
  state = loop.train(state, step_fn, _batches(it, mesh), tcfg, writer,
                     save=lambda step, s: checkpoint.save(manager, step, s, it, meta),
                     extra_scalars=lambda step: {"lr": float(lr_fn(step - 1))}, hooks=hooks)

  if tcfg.sample_at_end:
    inputs, record = inputs_lib.gather(spec, inputs_lib.Given(), tokenizer)
    path = sample_run.write_sample_set(spec, workdir, state.ema_params, int(state.step), mesh,
                                       inputs, record, net)
    writer.log(f"samples: {path}")
  manager.close()
  writer.close()
  return state


__all__ = ["train_and_evaluate"]
