"""The training program: build from a config, train with checkpoints, sample.

`train_and_evaluate(config, workdir)` is the whole run; `sample_from_workdir`
writes a sample set from the latest checkpoint's EMA parameters.
"""

import functools
import os
import time

import jax
import numpy as np

from diffusion_jax import checkpoint, diffusion, generate, parallel, train_state, validate
from diffusion_jax.data import pipeline
from diffusion_jax.metric_writer import MetricWriter, Timer
from diffusion_jax.models.unet import UNet


def build(config):
  """The model, diffusion process and optimizer a config describes."""
  model = UNet(validate.model_config(config))
  diff = diffusion.from_config(config.diffusion)
  tx = train_state.make_optimizer(config.optim, config.training.num_steps)
  return model, diff, tx


def _init_fns(config, model, tx, mesh):
  """A compiled initialiser and the abstract (sharded) state it produces."""
  init = jax.jit(functools.partial(
      train_state.create_train_state, model=model, tx=tx,
      image_size=config.data.image_size, channels=config.data.channels),
      out_shardings=parallel.replicated(mesh))
  key = jax.random.key(config.seed)
  abstract = jax.eval_shape(init, key)
  repl = parallel.replicated(mesh)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), abstract)
  return init, key, abstract


def save_config(config, workdir: str, step: int | None) -> str:
  """Writes the resolved config; a differing earlier one is kept, not overwritten."""
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return path
    path = os.path.join(workdir, f"config_resumed_at_step_{step or 0}.json")
    k = 0
    while os.path.exists(path):
      k += 1
      path = os.path.join(workdir, f"config_resumed_at_step_{step or 0}-{k}.json")
  with open(path, "w") as f:
    f.write(text)
  return path


def _next_batch(it, mesh) -> dict:
  local = {k: v._numpy() for k, v in next(it).items()}
  return parallel.global_batch(local, mesh)


def train_and_evaluate(config, workdir: str, mesh=None) -> train_state.TrainState:
  """Trains (resuming from the workdir's latest checkpoint) and writes samples."""
  mesh = mesh or parallel.make_mesh()
  start_step = validate.check_all(config, workdir, "train", mesh.devices.size)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    save_config(config, workdir, start_step)
  tcfg = config.training
  total = tcfg.num_steps
  model, diff, tx = build(config)
  init, key, abstract = _init_fns(config, model, tx, mesh)
  writer = MetricWriter(os.path.join(workdir, "tensorboard"), total)

  ds = pipeline.make_dataset(config.data, tcfg.batch_size // jax.process_count(), config.seed)
  it = iter(ds)
  manager = checkpoint.make_manager(workdir, tcfg.keep_checkpoints)
  meta = validate.model_meta(config)
  if start_step is not None:
    state = checkpoint.restore(manager, start_step, abstract, it)
    writer.log(f"resumed from {checkpoint.checkpoint_dir(workdir)}/{start_step}")
  else:
    state = init(key)
    writer.log(f"new run in {workdir}")
  step = int(state.step)

  repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
  step_fn = jax.jit(
      train_state.make_train_step(model, tx, diff, tcfg.ema_decay, tcfg.label_dropout),
      in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=(0,))
  lr_fn = train_state.learning_rate_schedule(config.optim, total)
  t_start = time.perf_counter()
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  writer.log(f"{n_params:,} parameters, {mesh.devices.size} devices, "
             f"global batch {tcfg.batch_size}, steps {step}->{total}")

  pending, timer = [], None
  while step < total:
    batch = _next_batch(it, mesh)
    state, metrics = step_fn(state, batch)
    step += 1
    if timer is None:  # Rates exclude the first step, which compiles.
      jax.block_until_ready(metrics)
      writer.log(f"first step (with compilation) took {time.perf_counter() - t_start:.1f}s")
      timer = Timer(step)
    pending.append(metrics)
    is_checkpoint = step % tcfg.checkpoint_every == 0 or step == total
    # Metrics are checked before every checkpoint, so a non-finite state is never saved.
    if step % tcfg.log_every == 0 or is_checkpoint:
      host = jax.device_get(pending)
      pending = []
      scalars = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
      if not all(np.isfinite(v) for v in scalars.values()):
        raise FloatingPointError(f"non-finite metrics at step {step}: {scalars}")
      rate = timer.rate(step)
      scalars.update(lr=float(lr_fn(step - 1)), steps_per_s=rate,
                     images_per_s=rate * tcfg.batch_size)
      writer.write(step, scalars)
    if is_checkpoint:
      checkpoint.save(manager, step, state, it, meta)

  if tcfg.sample_at_end:
    path = write_sample_set(config, workdir, state.ema_params, step, mesh, model, diff)
    writer.log(f"samples: {path}")
  manager.close()
  writer.close()
  return state


def write_sample_set(config, workdir, params, step, mesh, model=None, diff=None,
                     labels=None) -> str:
  if model is None:
    model, diff, _ = build(config)
  scfg = config.sample
  nc = config.data.num_classes
  labels = generate.balanced_labels(scfg.num_samples, nc) if labels is None else labels
  fn = generate.make_sample_fn(model, diff, generate.sampler_config(scfg),
                               (config.data.image_size,) * 2 + (config.data.channels,), mesh)
  images = generate.generate(fn, params, labels, scfg.batch_size, scfg.seed, mesh)
  if jax.process_index() != 0:
    return ""
  return generate.write_samples(workdir, step, images, labels, nc)


def load_state(config, workdir: str, mesh) -> train_state.TrainState:
  """The latest checkpoint's full train state."""
  step = validate.check_workdir(config, workdir, "sample")
  model, _, tx = build(config)
  _, _, abstract = _init_fns(config, model, tx, mesh)
  manager = checkpoint.make_manager(workdir, config.training.keep_checkpoints, create=False)
  state = checkpoint.restore(manager, step, abstract)
  manager.close()
  return state


def sample_from_workdir(config, workdir: str, labels: np.ndarray | None = None,
                        mesh=None) -> str:
  """Writes a sample set from the latest checkpoint (EMA parameters)."""
  mesh = mesh or parallel.make_mesh()
  validate.check_all(config, workdir, "sample", mesh.devices.size)
  if labels is not None:
    nc = config.data.num_classes
    bad = labels[(labels < 0) | (labels >= max(nc, 1))]
    if len(bad):
      raise validate.ConfigError(f"labels {sorted(set(bad.tolist()))} are outside "
                                 f"[0, {max(nc, 1)}) for this model")
  state = load_state(config, workdir, mesh)
  path = write_sample_set(config, workdir, state.ema_params, int(state.step), mesh, labels=labels)
  print(f"samples: {path}", flush=True)
  return path


__all__ = ["build", "load_state", "sample_from_workdir", "save_config",
           "train_and_evaluate", "write_sample_set"]
