"""From a checked config to the objects of a run: the model, process and optimizer,
the initial or restored train state; and every check a mode needs, in one call."""

import functools

import jax
from etils import epath

from diffusion_jax.config.errors import ConfigError, warn
from diffusion_jax.data import pipeline
from diffusion_jax.models.unet import UNet
from diffusion_jax.run import spec as spec_lib
from diffusion_jax.run import workdir as workdir_lib
from diffusion_jax.training import checkpoint, distributed, mesh as mesh_lib, optimizer
from diffusion_jax.training import state as state_lib
from diffusion_jax.training.step import make_train_step


def _checked_run(config, mode: str, num_devices: int) -> spec_lib.Spec:
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
  return spec


def _checked_workdir(spec: spec_lib.Spec, workdir: str, mode: str):
  found = workdir_lib.check(spec, workdir, mode)
  return found, workdir_lib.tokenizer(spec, workdir, found)


def checked(config, workdir: str, mode: str, num_devices: int):
  """Every check of a run in `mode`, before anything is compiled or written:
  (spec, the workdir's checkpoints (checkpoint.Found), tokenizer or None). A problem
  on any process is a ConfigError on every process."""
  # Process 0 first: it prepares a bundled dataset that the others then read.
  spec = distributed.checked(_checked_run, config, mode, num_devices, primary_first=True)
  # Together: orbax's reads of the checkpoints synchronise the processes.
  found, tokenizer = distributed.checked(_checked_workdir, spec, workdir, mode)
  return spec, found, tokenizer


def use_compilation_cache(spec: spec_lib.Spec, workdir: str) -> None:
  """Turns on JAX's persistent compilation cache (before anything compiles), so that
  a resumed or preempted run loads its programs instead of compiling them:
  training.compilation_cache_dir, else $JAX_COMPILATION_CACHE_DIR, else
  WORKDIR/compilation_cache. JAX writes it from process 0 only."""
  chosen = spec.training.compilation_cache_dir
  if chosen == "none":
    return
  if chosen or not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      chosen or str(epath.Path(workdir) / "compilation_cache"))


def model(spec: spec_lib.Spec) -> UNet:
  return UNet(spec.model)


def optimizer_of(spec: spec_lib.Spec):
  return optimizer.make_optimizer(spec.optim, spec.training.num_steps)


def train_step(spec: spec_lib.Spec, net: UNet, tx):
  """The uncompiled train step a spec describes."""
  return make_train_step(net, tx, spec.diffusion, spec.training.ema_decay, spec.dropout,
                         spec.cond, spec.training.microbatches)


def jitted_train_step(spec: spec_lib.Spec, net: UNet, tx, mesh, abstract=None):
  """The train step as training runs it: the state in its shardings (replicated, or
  split over the mesh's fsdp axis) and donated, the batch split over all devices.
  `abstract` is init_fns' abstract state, if at hand (else traced again)."""
  abstract = abstract if abstract is not None else init_fns(spec, net, tx, mesh)[2]
  state = jax.tree.map(lambda x: x.sharding, abstract)
  repl, data = mesh_lib.replicated(mesh), mesh_lib.data_sharded(mesh)
  return jax.jit(train_step(spec, net, tx), in_shardings=(state, data),
                 out_shardings=(state, repl), donate_argnums=(0,))


def init_fns(spec: spec_lib.Spec, net: UNet, tx, mesh):
  """A compiled initialiser, its key, and the abstract (sharded) state it produces:
  each array in the sharding mesh.state_shardings gives it on `mesh`."""
  create = functools.partial(state_lib.create_train_state, model=net, tx=tx,
                             image_size=spec.data.image_size, channels=spec.data.channels)
  key = jax.random.key(spec.seed)
  shapes = jax.eval_shape(create, key)
  shardings = mesh_lib.state_shardings(shapes, mesh, spec.mesh.fsdp_min_size)
  init = jax.jit(create, out_shardings=shardings)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          shapes, shardings)
  return init, key, abstract


def restore_state(spec: spec_lib.Spec, workdir: str, found: checkpoint.Found, mesh,
                  manager=None, with_iterator: bool = False):
  """(step, state, input position or None, the steps that failed) of the newest
  checkpoint whose arrays read back: one that fails is reported and the previous one
  tried; training sets the failed ones aside."""
  net = model(spec)
  _, _, abstract = init_fns(spec, net, optimizer_of(spec), mesh)
  own = manager is None
  manager = manager or checkpoint.reader(workdir)
  failed = []
  try:
    for i, step in enumerate(found.usable):
      try:
        state, position = checkpoint.restore(manager, step, abstract, with_iterator)
        why = ""
      except Exception as e:  # Whatever orbax or the filesystem raise.
        state, position, why = None, None, " ".join(f"{type(e).__name__}: {e}".split())[:300]
      # The processes read the same files; if any failed, they all fall back.
      whys = [w for w in distributed.gather_text(why) if w]
      if not whys:
        return step, state, position, failed
      older = found.usable[i + 1] if i + 1 < len(found.usable) else None
      warn(f"checkpoint {checkpoint.checkpoint_dir(workdir) / str(step)} cannot be "
           f"restored ({whys[0]}); "
           + (f"falling back to step {older}" if older is not None else "none is older"))
      failed.append(step)
  finally:
    if own:
      manager.close()
  raise ConfigError(f"no checkpoint in {checkpoint.checkpoint_dir(workdir)} can be restored "
                    "(see the warnings above)")


def load_state(spec: spec_lib.Spec, workdir: str, found: checkpoint.Found,
               mesh) -> state_lib.TrainState:
  """The train state of the newest checkpoint that reads back."""
  return restore_state(spec, workdir, found, mesh)[1]


def restore_run(workdir: str, mesh, config=None):
  """A trained run: (spec, latest train state, tokenizer), from its saved config (or
  `config`, checked against the checkpoint)."""
  from diffusion_jax.config import files
  config = config if config is not None else files.load_saved(workdir)
  if config is None:
    raise ConfigError(f"{workdir!r} holds no saved config: not a diffusion_jax workdir")
  spec, found, tokenizer = checked(config, workdir, "sample", mesh.devices.size)
  mesh = mesh_lib.with_fsdp(mesh, spec.mesh.fsdp)
  return spec, load_state(spec, workdir, found, mesh), tokenizer


__all__ = ["restore_run", "checked", "init_fns", "jitted_train_step", "load_state", "model",
           "optimizer_of", "restore_state", "train_step"]
