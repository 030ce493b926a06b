"""The training program: build from a config, train with checkpoints, sample.

`train_and_evaluate(config, workdir)` is the whole run; `sample_from_workdir`
writes a sample set from the latest checkpoint's EMA parameters.
"""

import functools
import json
import os
import time

import jax
import ml_collections
import numpy as np

from diffusion_jax import (checkpoint, diffusion, generate, parallel, sample_inputs,
                           train_state, validate)
from diffusion_jax.data import pipeline
from diffusion_jax.metric_writer import MetricWriter, Timer
from diffusion_jax.models.unet import UNet


def build(config):
  """The model, diffusion process and optimizer a config describes."""
  model = UNet(validate.model_config(config))
  diff = diffusion.from_config(config.diffusion)
  tx = train_state.make_optimizer(config.optim, config.training.num_steps)
  return model, diff, tx


def make_step(config, model, diff, tx):
  """The uncompiled train step a config describes (dropout rates, image condition)."""
  t = config.training
  rates = {"labels": t.label_dropout, "text": t.text_dropout, "image": t.image_dropout}
  return train_state.make_train_step(model, tx, diff, t.ema_decay, rates, config.cond)


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
  tokenizer = validate.check_text(config, workdir, start_step)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    save_config(config, workdir, start_step)
  tcfg = config.training
  total = tcfg.num_steps
  model, diff, tx = build(config)
  init, key, abstract = _init_fns(config, model, tx, mesh)
  writer = MetricWriter(os.path.join(workdir, "tensorboard"), total)

  text = pipeline.TextSpec(
      tokenizer=tokenizer,
      emb_key=config.data.text_emb_key if model.config.text == "embeddings" else "")
  ds = pipeline.make_dataset(config.data, tcfg.batch_size // jax.process_count(), config.seed,
                             text=text)
  it = iter(ds)
  manager = checkpoint.make_manager(workdir, tcfg.keep_checkpoints)
  meta = validate.model_meta(config, tokenizer)
  if start_step is not None:
    state = checkpoint.restore(manager, start_step, abstract, it)
    writer.log(f"resumed from {checkpoint.checkpoint_dir(workdir)}/{start_step}")
  else:
    state = init(key)
    writer.log(f"new run in {workdir}")
  step = int(state.step)

  repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
  step_fn = jax.jit(
      make_step(config, model, diff, tx),
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
    inputs, record = sample_inputs.gather(config, sample_inputs.Given(), tokenizer)
    path = write_sample_set(config, workdir, state.ema_params, step, mesh, inputs, record,
                            model, diff)
    writer.log(f"samples: {path}")
  manager.close()
  writer.close()
  return state


def write_sample_set(config, workdir, params, step, mesh, inputs: dict, record: dict,
                     model=None, diff=None) -> str:
  images = sample_images(config, params, mesh, inputs, record, model, diff)
  if jax.process_index() != 0:
    return ""
  return generate.write_samples(workdir, step, images, record, config.data.num_classes)


def sample_images(config, params, mesh, inputs: dict, record: dict, model=None,
                  diff=None) -> np.ndarray:
  """uint8 samples, one per row of `inputs` (see sample_inputs.gather)."""
  if model is None:
    model, diff, _ = build(config)
  scfg = config.sample
  fn = generate.make_sample_fn(model, diff, generate.sampler_config(scfg),
                               (config.data.image_size,) * 2 + (config.data.channels,), mesh,
                               config.cond, scfg.project)
  return generate.generate(fn, params, inputs, scfg.batch_size, scfg.seed, mesh,
                           num_samples=int(record.get("count", 0)) or None)


def load_state(config, workdir: str, mesh) -> train_state.TrainState:
  """The latest checkpoint's full train state."""
  step = validate.check_workdir(config, workdir, "sample")
  model, _, tx = build(config)
  _, _, abstract = _init_fns(config, model, tx, mesh)
  manager = checkpoint.make_manager(workdir, config.training.keep_checkpoints, create=False)
  state = checkpoint.restore(manager, step, abstract)
  manager.close()
  return state


def load_config(workdir: str):
  """The config a workdir's run was trained with (its config.json), over the current
  defaults (configs/default.py, when run from the repository) so that fields added
  since the run was made take their default values."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise validate.ConfigError(f"{path!r} does not exist: not a diffusion_jax workdir")
  with open(path) as f:
    saved = json.load(f)
  try:
    from configs import default  # The repository's defaults, if importable.
  except ImportError:
    return ml_collections.ConfigDict(saved)
  config = default.get_config()

  def merge(node, values):
    for k, v in values.items():
      if isinstance(v, dict) and k in node and isinstance(node[k], ml_collections.ConfigDict):
        merge(node[k], v)
      else:
        node[k] = tuple(v) if isinstance(v, list) else v
  with config.ignore_type():
    merge(config, saved)
  return config


def sample_from_workdir(config, workdir: str, given: sample_inputs.Given = sample_inputs.Given(),
                        mesh=None, cascade_from: str | None = None) -> str:
  """Writes a sample set from the latest checkpoint (EMA parameters).

  With `cascade_from`, a base model's workdir, the base model first samples the
  low-resolution images (its own conditions from `given`), which this
  super-resolution model then takes as its input."""
  mesh = mesh or parallel.make_mesh()
  step = validate.check_all(config, workdir, "sample", mesh.devices.size)
  tokenizer = validate.check_text(config, workdir, step)
  base = None
  if cascade_from:
    base_config = load_config(cascade_from)
    base = (base_config,) + validate.check_cascade(config, base_config, cascade_from,
                                                   mesh.devices.size)
  if given.labels is not None:
    validate.check_labels(given.labels, (config if base is None else base[0]).data.num_classes)
  try:
    if base is not None:
      base_config, _, base_tok = base
      base_inputs, base_record = sample_inputs.gather(base_config, given, base_tok)
      base_state = load_state(base_config, cascade_from, mesh)
      low = sample_images(base_config, base_state.ema_params, mesh, base_inputs, base_record)
      given = sample_inputs.Given(images={"lowres": low.astype(np.float32) / 127.5 - 1.0})
      inputs, record = sample_inputs.gather(config, given, tokenizer)
      record.update({f"base_{k}": v for k, v in base_record.items() if k != "count"})
    else:
      inputs, record = sample_inputs.gather(config, given, tokenizer)
  except sample_inputs.InputError as e:
    raise validate.ConfigError(str(e)) from None
  state = load_state(config, workdir, mesh)
  path = write_sample_set(config, workdir, state.ema_params, int(state.step), mesh,
                          inputs, record)
  print(f"samples: {path}", flush=True)
  return path


__all__ = ["build", "load_config", "load_state", "make_step", "sample_from_workdir",
           "sample_images", "save_config", "train_and_evaluate", "write_sample_set"]
