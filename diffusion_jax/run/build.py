"""From a checked config to the objects of a run: the model, process and optimizer,
the initial or restored train state; and every check a mode needs, in one call."""

import dataclasses
import functools
from typing import Callable

import jax
from etils import epath

from diffusion_jax.config.errors import ConfigError, require, warn
from diffusion_jax.core import learned_schedule
from diffusion_jax.data import pipeline
from diffusion_jax.models.unet import UNet
from diffusion_jax.run import autoencoder as ae_run
from diffusion_jax.run import latent as latent_lib
from diffusion_jax.run import latent_cache
from diffusion_jax.run import spec as spec_lib
from diffusion_jax.run import workdir as workdir_lib
from diffusion_jax.training import checkpoint, distributed, host_memory, mesh as mesh_lib
from diffusion_jax.training import optimizer, state as state_lib
from diffusion_jax.training.step import make_train_step


def _check_diffusion(spec: spec_lib.Spec, mode: str) -> spec_lib.Spec:
  """The data (and evaluation's splits) of a diffusion run; its autoencoder, loaded
  and checked against the data and the U-Net, in latent space."""
  scale = spec.guidance_config.autoguidance_scale
  require(mode in ("sample", "eval") or scale == 1.0,
          f"sample.autoguidance_scale={scale}: autoguidance needs a guide model, given "
          f"only to --mode=sample or eval (--guide_from); --mode={mode} samples without one")
  require(scale == 1.0 or spec.diffusion.schedule.params is None,
          f"sample.autoguidance_scale={scale} with diffusion.schedule='learned': a guide "
          "trained on another learned process is not supported yet")
  require(scale == 1.0 or not spec.latent.autoencoder,
          f"sample.autoguidance_scale={scale} with latent.autoencoder: autoguidance of "
          "latent diffusion is not supported yet")
  ecfg = spec.eval
  evaluates = mode == "eval" or (mode == "train" and ecfg.every_steps > 0)
  if evaluates:
    require(not (ecfg.likelihood and spec.latent.autoencoder),
            "eval.metrics 'bpd' with latent.autoencoder: the likelihood would be of the "
            "latents, not of the images; evaluate with the sample metrics (fd, kid, ...)")
  splits = {"train": {"data.split": (spec.data.split, spec.training.batch_size)}}.get(mode, {})
  if evaluates and ecfg.likelihood:
    splits["eval.split"] = (ecfg.split, 1)
  if evaluates and ecfg.sample_metrics:
    splits["eval.reference_split"] = (ecfg.reference_split, 2)
  pipeline.check(spec.data, splits, spec.model.text)
  spec = with_autoencoder(spec)
  if spec.latent.cache and mode == "train":
    latent_cache.check(spec.latent.cache, spec.autoencoder, spec.data, spec.config)
  return spec


def with_autoencoder(spec: spec_lib.Spec, ae: latent_lib.Autoencoder | None = None
                     ) -> spec_lib.Spec:
  """A latent diffusion spec with its autoencoder (`ae`, else loaded from
  latent.autoencoder) checked against the data and the U-Net, whose input becomes the
  latent (ConfigError if they disagree); a pixel-space spec as it is."""
  if not spec.latent.autoencoder:
    return spec
  ae = ae if ae is not None else latent_lib.load(spec.latent.autoencoder)
  d = spec.data
  latent_lib.check_data(ae, d.image_size, d.channels)
  h, _, c = ae.latent_shape(d.image_size)
  # The U-Net denoises latents: its output channels are the latent's (model.out_channels,
  # tied to data.channels, is the pixel-space value).
  net_cfg = dataclasses.replace(spec.model, out_channels=c)
  try:
    net_cfg.check_input(h, c, d.num_classes)
  except ConfigError as e:
    raise ConfigError(*(f"{p} (the U-Net's input is the {h}x{h}x{c} latent of "
                        f"latent.autoencoder={spec.latent.autoencoder!r})"
                        for p in e.problems)) from None
  spec.cond.check_latent(net_cfg, d.image_size, d.channels, c)
  return dataclasses.replace(spec, autoencoder=ae, model=net_cfg)


def _diffusion_model(spec: spec_lib.Spec) -> UNet:
  return UNet(spec.model)


def _diffusion_init(spec: spec_lib.Spec, net: UNet, tx):
  h, _, c = spec.model_shape
  learned = spec.diffusion.schedule.params
  extra = None if learned is None else {learned_schedule.PARAMS_KEY: learned}
  return functools.partial(state_lib.create_train_state, model=net, tx=tx, image_size=h,
                           channels=c, extra_params=extra)


def _diffusion_step(spec: spec_lib.Spec, net: UNet, tx):
  encode = sample_cached = None
  if spec.autoencoder and spec.latent.cache:
    sample_cached = latent_lib.cached_sampler(spec.autoencoder.config)
  elif spec.autoencoder:
    encode = latent_lib.encoder(spec.autoencoder.config, spec.latent.encode_chunks)
  return make_train_step(net, tx, spec.diffusion, spec.training.ema_decay, spec.dropout,
                         spec.cond, spec.training.microbatches, encode, sample_cached,
                         spec.augment)


def _diffusion_text(spec: spec_lib.Spec, tokenizer) -> pipeline.TextSpec:
  return pipeline.TextSpec(
      tokenizer=tokenizer,
      emb_key=spec.data.text_emb_key if spec.model.text == "embeddings" else "")


def _diffusion_finish(spec, workdir, state, mesh, net, tokenizer, writer) -> None:
  """A sample set at the end of training (training.sample_at_end)."""
  from diffusion_jax.run import sample as sample_run  # It builds on this module.
  from diffusion_jax.sampling import inputs as inputs_lib
  if not spec.training.sample_at_end:
    return
  inputs, record = distributed.checked(inputs_lib.gather, spec, inputs_lib.Given(), tokenizer)
  path = sample_run.write_sample_set(spec, workdir, state.ema_params, int(state.step), mesh,
                                     inputs, record, net)
  writer.log(f"samples: {path}")


@dataclasses.dataclass(frozen=True)
class Kind:
  """What a config's `kind` trains: how its config is parsed and checked, its network,
  train state and step, its checkpoints' metadata, and what training ends with."""
  parse: Callable  # (config, num_devices) -> spec (ConfigError listing every problem).
  check: Callable  # (spec, mode) -> spec: data, weight files; before anything compiles.
  model: Callable  # spec -> the flax module.
  init_state: Callable  # (spec, net, tx) -> fn(key) -> TrainState.
  train_step: Callable  # (spec, net, tx) -> step(state, batch[, encoder params]).
  meta: Callable  # (spec, tokenizer) -> what a checkpoint must agree on.
  meta_diff: Callable  # (saved meta, wanted meta) -> the fields that differ.
  meaning: tuple[str, ...]  # Config fields a run may not resume with other values of.
  text: Callable  # (spec, tokenizer) -> pipeline.TextSpec of the input pipeline.
  finish: Callable  # (spec, workdir, state, mesh, net, tokenizer, writer) after training.
  tokenizer: Callable = lambda spec, workdir, found: None  # The run's, if it reads text.
  cache: Callable = lambda spec: ""  # The latent cache training reads ("" = the data).


KINDS = {
    "diffusion": Kind(
        parse=spec_lib.parse, check=_check_diffusion, model=_diffusion_model,
        init_state=_diffusion_init, train_step=_diffusion_step,
        meta=workdir_lib.model_meta, meta_diff=workdir_lib.model_meta_diff,
        meaning=workdir_lib.MEANING, text=_diffusion_text, finish=_diffusion_finish,
        tokenizer=workdir_lib.tokenizer, cache=lambda spec: spec.latent.cache),
    ae_run.KIND: Kind(
        parse=ae_run.parse, check=ae_run.check, model=ae_run.model,
        init_state=ae_run.init_state, train_step=ae_run.train_step, meta=ae_run.meta,
        meta_diff=ae_run.meta_diff, meaning=ae_run.MEANING,
        text=lambda spec, tokenizer: pipeline.TextSpec(), finish=ae_run.finish),
}


def kind_of(spec_or_config) -> Kind:
  """The Kind of a spec or config (ConfigError for an unknown name)."""
  name = getattr(spec_or_config, "kind", "diffusion")
  if name not in KINDS:
    raise ConfigError(f"kind={name!r} is unknown; known: {sorted(KINDS)}")
  return KINDS[name]


def _checked_run(config, mode: str, num_devices: int):
  kind = kind_of(config)
  return kind.check(kind.parse(config, num_devices), mode)


def _checked_workdir(spec, workdir: str, mode: str):
  kind = kind_of(spec)
  found = workdir_lib.check(spec, workdir, mode, meta=kind.meta, meta_diff=kind.meta_diff,
                            meaning=kind.meaning)
  return found, kind.tokenizer(spec, workdir, found)


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


def model(spec):
  """The run's network (a U-Net, or the autoencoder)."""
  return kind_of(spec).model(spec)


def with_trained_schedule(spec, params):
  """`spec` on the process of `params` (a learned schedule's trained value, e.g. the
  EMA's); `spec` itself when the schedule is fixed. Sampling and likelihoods use it."""
  if getattr(spec, "diffusion", None) is None or spec.diffusion.schedule.params is None:
    return spec
  return dataclasses.replace(spec, diffusion=learned_schedule.trained(spec.diffusion, params))


def optimizer_of(spec):
  return optimizer.make_optimizer(spec.optim, spec.training.num_steps)


def train_step(spec, net, tx):
  """The uncompiled train step a spec describes."""
  return kind_of(spec).train_step(spec, net, tx)


def encoder_params(spec):
  """The extra input of a latent diffusion run's train step (None otherwise, and when
  it reads a latent cache: the encoder does not run)."""
  ae = getattr(spec, "autoencoder", None)
  if not isinstance(ae, latent_lib.Autoencoder) or spec.latent.cache:
    return None
  return ae.params


def jitted_train_step(spec, net, tx, mesh, abstract=None):
  """The train step as training runs it (compiled ahead by compiled_train_step): the
  state in its shardings (replicated, or split over the mesh's fsdp axis) and donated,
  the batch split over all devices; a latent run's autoencoder parameters are an
  argument (replicated), not constants of the program. `abstract` is init_fns' abstract
  state, if at hand (else traced again)."""
  step, extra, _ = _jitted_step_and_args(spec, net, tx, mesh, abstract)
  return _with_extra(step, jax.device_put(extra, mesh_lib.replicated(mesh)))


def compiled_train_step(spec, net, tx, mesh, abstract, batch):
  """jitted_train_step compiled now, for the shapes of `batch` (one batch as training
  feeds them), rather than inside its first call; then the host memory that compiling
  freed goes back to the system before the first step runs (training/host_memory.py)."""
  step, extra, abstract = _jitted_step_and_args(spec, net, tx, mesh, abstract)
  extra = jax.device_put(extra, mesh_lib.replicated(mesh))
  compiled = step.lower(abstract, batch, *extra).compile()
  host_memory.release_freed()
  return _with_extra(compiled, extra)


def lowered_train_step(spec, net, tx, mesh, abstract, batch):
  """jitted_train_step lowered for the abstract state and batch, with no array put on a
  device: the ahead-of-time check compiles it for devices this host does not have."""
  step, extra, abstract = _jitted_step_and_args(spec, net, tx, mesh, abstract)
  repl = mesh_lib.replicated(mesh)
  extra = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), extra)
  return step.lower(abstract, batch, *extra)


def _with_extra(step, extra: tuple):
  """step(state, batch, *extra) as a function of (state, batch)."""
  return (lambda state, batch: step(state, batch, *extra)) if extra else step


def _jitted_step_and_args(spec, net, tx, mesh, abstract):
  """The jitted train step, the host arrays it takes after (state, batch), and the
  abstract state."""
  abstract = abstract if abstract is not None else init_fns(spec, net, tx, mesh)[2]
  state = jax.tree.map(lambda x: x.sharding, abstract)
  repl, data = mesh_lib.replicated(mesh), mesh_lib.data_sharded(mesh)
  ae_params = encoder_params(spec)
  options = mesh_lib.compiler_options(mesh)
  if ae_params is None:
    return jax.jit(train_step(spec, net, tx), in_shardings=(state, data),
                   out_shardings=(state, repl), donate_argnums=(0,),
                   compiler_options=options), (), abstract
  step = jax.jit(train_step(spec, net, tx), in_shardings=(state, data, repl),
                 out_shardings=(state, repl), donate_argnums=(0,), compiler_options=options)
  return step, (ae_params,), abstract


def init_fns(spec, net, tx, mesh):
  """A compiled initialiser, its key, and the abstract (sharded) state it produces:
  each array in the sharding mesh.state_shardings gives it on `mesh`."""
  create = kind_of(spec).init_state(spec, net, tx)
  key = jax.random.key(spec.seed)
  shapes = jax.eval_shape(create, key)
  shardings = mesh_lib.state_shardings(shapes, mesh, spec.mesh.fsdp_min_size)
  init = jax.jit(create, out_shardings=shardings, compiler_options=mesh_lib.compiler_options(mesh))
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
  `config`, checked against the checkpoint); a learned schedule's spec is on its
  trained process (the EMA's: with_trained_schedule)."""
  from diffusion_jax.config import files
  config = config if config is not None else files.load_saved(workdir)
  if config is None:
    raise ConfigError(f"{workdir!r} holds no saved config: not a diffusion_jax workdir")
  spec, found, tokenizer = checked(config, workdir, "sample", mesh.devices.size)
  mesh = mesh_lib.with_fsdp(mesh, spec.mesh.fsdp)
  state = load_state(spec, workdir, found, mesh)
  return with_trained_schedule(spec, state.ema_params), state, tokenizer


__all__ = ["KINDS", "Kind", "checked", "compiled_train_step", "encoder_params", "init_fns",
           "jitted_train_step", "kind_of", "load_state", "lowered_train_step", "model",
           "optimizer_of", "restore_run", "restore_state", "train_step", "with_autoencoder",
           "with_trained_schedule"]
