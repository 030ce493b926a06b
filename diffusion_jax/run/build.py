"""From a checked config to the objects of a run: the model, process and optimizer,
the initial or restored train state; and every check a mode needs, in one call."""

import functools

import jax

from diffusion_jax.config.errors import ConfigError
from diffusion_jax.data import pipeline
from diffusion_jax.models.unet import UNet
from diffusion_jax.run import spec as spec_lib
from diffusion_jax.run import workdir as workdir_lib
from diffusion_jax.training import checkpoint, mesh as mesh_lib, optimizer, state as state_lib
from diffusion_jax.training.step import make_train_step


def checked(config, workdir: str, mode: str, num_devices: int):
  """Every check of a run in `mode`, before anything is compiled or written:
  (spec, latest checkpoint step or None, tokenizer or None)."""
  spec = spec_lib.parse(config, num_devices)
  ecfg = spec.eval
  evaluates = mode == "eval" or (mode == "train" and ecfg.every_steps > 0)
  if evaluates:
    ecfg.check_model(spec.model.text, spec.cond.image)
  splits = {"train": {"data.split": (spec.data.split, spec.training.batch_size)}}.get(mode, {})
  if evaluates and ecfg.likelihood:
    splits["eval.split"] = (ecfg.split, 1)
  if evaluates and ecfg.sample_metrics:
    splits["eval.reference_split"] = (ecfg.reference_split, 2)
  pipeline.check(spec.data, splits, spec.model.text)
  step = workdir_lib.check(spec, workdir, mode)
  return spec, step, workdir_lib.tokenizer(spec, workdir, step)


def model(spec: spec_lib.Spec) -> UNet:
  return UNet(spec.model)


def optimizer_of(spec: spec_lib.Spec):
  return optimizer.make_optimizer(spec.optim, spec.training.num_steps)


def train_step(spec: spec_lib.Spec, net: UNet, tx):
  """The uncompiled train step a spec describes."""
  return make_train_step(net, tx, spec.diffusion, spec.training.ema_decay, spec.dropout,
                         spec.cond)


def jitted_train_step(spec: spec_lib.Spec, net: UNet, tx, mesh):
  """The train step as training runs it: the state replicated (and donated), the
  batch split over the mesh's data axis."""
  repl, data = mesh_lib.replicated(mesh), mesh_lib.data_sharded(mesh)
  return jax.jit(train_step(spec, net, tx), in_shardings=(repl, data),
                 out_shardings=(repl, repl), donate_argnums=(0,))


def init_fns(spec: spec_lib.Spec, net: UNet, tx, mesh):
  """A compiled initialiser, its key, and the abstract (sharded) state it produces."""
  repl = mesh_lib.replicated(mesh)
  init = jax.jit(functools.partial(state_lib.create_train_state, model=net, tx=tx,
                                   image_size=spec.data.image_size,
                                   channels=spec.data.channels),
                 out_shardings=repl)
  key = jax.random.key(spec.seed)
  abstract = jax.eval_shape(init, key)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
                          abstract)
  return init, key, abstract


def load_state(spec: spec_lib.Spec, workdir: str, step: int, mesh) -> state_lib.TrainState:
  """The train state of a checkpoint."""
  net = model(spec)
  _, _, abstract = init_fns(spec, net, optimizer_of(spec), mesh)
  manager = checkpoint.make_manager(workdir, spec.training.keep_checkpoints, create=False)
  state = checkpoint.restore(manager, step, abstract)
  manager.close()
  return state


def restore_run(workdir: str, mesh, config=None):
  """A trained run: (spec, latest train state, tokenizer), from its saved config (or
  `config`, checked against the checkpoint)."""
  from diffusion_jax.config import files
  config = config if config is not None else files.load_saved(workdir)
  if config is None:
    raise ConfigError(f"{workdir!r} holds no saved config: not a diffusion_jax workdir")
  spec, step, tokenizer = checked(config, workdir, "sample", mesh.devices.size)
  return spec, load_state(spec, workdir, step, mesh), tokenizer


__all__ = ["restore_run", "checked", "init_fns", "jitted_train_step", "load_state", "model", "optimizer_of",
           "train_step"]
