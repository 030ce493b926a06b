"""--mode=sample: a sample set from a workdir's latest checkpoint (EMA parameters),
for conditions given on the command line, in files, by a base model (a cascade), or
taken from the dataset."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.config import files
from diffusion_jax.config.errors import ConfigError, require
from diffusion_jax.run import build
from diffusion_jax.run import latent as latent_lib
from diffusion_jax.run import spec as spec_lib
from diffusion_jax.run import workdir as workdir_lib
from diffusion_jax.sampling import generate, images as images_lib, inputs as inputs_lib
from diffusion_jax.training import distributed, mesh as mesh_lib


def make_sample_fn(spec: spec_lib.Spec, net, mesh, guide=None):
  """The compiled sampler of a run: fn(sampling_params(spec, params, guide), key, inputs)
  -> images in [-1, 1] (a latent run's samples decoded); `guide`, a Guide
  (load_guide) of a weaker model, autoguides them."""
  ae = spec.autoencoder
  decode = latent_lib.decoder(ae.config) if ae else None
  encode = latent_lib.encoder(ae.config) if ae and spec.cond.image else None
  guide_net = (build.model(guide.spec), guide.spec.diffusion) if guide else None
  return generate.make_sample_fn(net, spec.diffusion, spec.sampler, spec.model_shape, mesh,
                                 spec.cond, spec.sample_set.project, spec.guidance,
                                 spec.guidance_config, guide_net, decode, encode)


def sampling_params(spec: spec_lib.Spec, params, guide=None):
  """What the sampler of `make_sample_fn` takes: the U-Net's parameters (with the
  guide's, and a latent run's autoencoder parameters)."""
  params = (params, guide.params) if guide else params
  return params if spec.autoencoder is None else (params, spec.autoencoder.params)


def sample_images(spec: spec_lib.Spec, params, mesh, inputs: dict, record: dict,
                  net=None, guide=None) -> np.ndarray:
  """uint8 samples, one per row of `inputs` (see sampling.inputs.gather); `guide`, a
  Guide (load_guide) of a weaker model, autoguides them."""
  net = net or build.model(spec)
  fn = make_sample_fn(spec, net, mesh, guide)
  s = spec.sample_set
  return generate.generate(fn, sampling_params(spec, params, guide), inputs, s.batch_size,
                           s.seed, mesh,
                           num_samples=int(record.get("count", 0)) or None)


def write_sample_set(spec: spec_lib.Spec, workdir: str, params, step: int, mesh, inputs: dict,
                     record: dict, net=None, guide=None) -> str:
  images = sample_images(spec, params, mesh, inputs, record, net, guide)
  if not distributed.is_primary():
    return ""
  return images_lib.write_samples(workdir, step, images, record, spec.data.num_classes)


def _cascade_base(spec: spec_lib.Spec, base_workdir: str, num_devices: int):
  """The base model of a cascade, checked to feed this super-resolution model:
  (base spec, its latest step, its tokenizer)."""
  require(spec.cond.image == "sr",
          "--cascade_from needs a super-resolution model (cond.image='sr')")
  base_config = files.load_saved(base_workdir)
  require(base_config is not None,
          f"--cascade_from {base_workdir!r} holds no run config: not a diffusion_jax workdir")
  base_spec, found, tokenizer = build.checked(base_config, base_workdir, "sample", num_devices)
  want = spec.data.image_size // spec.cond.sr_factor
  got = (base_spec.data.image_size, base_spec.data.channels)
  require(got == (want, spec.data.channels),
          f"--cascade_from {base_workdir!r}: the base model makes {got[0]}x{got[0]} images "
          f"with {got[1]} channels; this model takes {want}x{want} with {spec.data.channels}")
  return base_spec, found, tokenizer


def parse_guide_from(value: str) -> tuple[str, int | None]:
  """--guide_from=WORKDIR[:STEP]: (workdir, step or None). A last ':' followed by no
  '/' starts the step (so gs://bucket/run has none)."""
  head, sep, tail = value.rpartition(":")
  if not sep or "/" in tail or not head:
    return value, None
  require(tail.isdigit(), f"--guide_from={value}: the step {tail!r} after ':' is not a "
          "checkpoint step (a non-negative integer)")
  return head, int(tail)


def _same_process(a: spec_lib.Spec, b: spec_lib.Spec) -> bool:
  """Whether two runs diffuse alike: the same steps, and alpha and sigma on a fine grid
  of times (whichever fields define the schedule). Their predictions may differ: each
  model's output becomes x0_hat through its own."""
  sa, sb = a.diffusion.schedule, b.diffusion.schedule
  t = jnp.linspace(0.0, 1.0, 1025)
  with jax.ensure_compile_time_eval():
    curves = [np.asarray(jnp.stack([s.alpha(t), s.sigma(t)]), np.float64) for s in (sa, sb)]
  return sa.num_steps == sb.num_steps and np.allclose(*curves, rtol=1e-6, atol=0,
                                                      equal_nan=True)


def _guide_conditions(spec: spec_lib.Spec) -> dict:
  m, c = spec.model, spec.cond
  return {"data.num_classes": spec.data.num_classes, "model.text": m.text,
          "model.text_max_len": m.text_max_len if m.text == "tokens" else None,
          "model.text_emb_dim": m.text_emb_dim, "cond.image": c.image,
          "cond.sr_factor": c.sr_factor if c.image == "sr" else None}


def _autoguide_model(spec: spec_lib.Spec, guide_from: str, num_devices: int, tokenizer):
  """The guide of autoguidance, checked to guide this model: (its spec, its checkpoints
  to restore: the chosen step only, else the newest that reads back)."""
  scale = spec.guidance_config.autoguidance_scale
  require(scale != 1.0, f"--guide_from needs sample.autoguidance_scale != 1 (it is {scale}; "
          "1 = this model alone), e.g. --config.sample.autoguidance_scale=2")
  workdir, step = parse_guide_from(guide_from)
  where = f"--guide_from={guide_from}"
  config = files.load_saved(workdir)
  require(config is not None, f"{where}: {workdir!r} holds no run config: not a "
          "diffusion_jax workdir")
  # Its own run's config parsed first: a mismatch is named before its checkpoints are read.
  try:
    guide = spec_lib.parse(config, num_devices)
  except ConfigError as e:
    raise ConfigError(*(f"{where}: the guide's config: {p}" for p in e.problems)) from None
  require(guide.image_shape == spec.image_shape,
          f"{where}: the guide makes {guide.image_shape} images (h, w, channels); this "
          f"model makes {spec.image_shape}")
  if not _same_process(guide, spec):
    diff = workdir_lib.changed(config, spec.config, ("diffusion",))
    raise ConfigError(f"{where}: the guide was trained on another process (alpha_t, "
                      f"sigma_t or the discrete steps differ); their diffusion sections "
                      f"differ in {', '.join(diff)}")
  mine, its = _guide_conditions(spec), _guide_conditions(guide)
  diff = [k for k in mine if mine[k] != its[k]]
  require(not diff, f"{where}: the guide takes other conditions: "
          + ", ".join(f"{k}={its[k]!r} (this model: {mine[k]!r})" for k in diff))
  guide, found, guide_tok = build.checked(config, workdir, "sample", num_devices)
  require(tokenizer is None or guide_tok.vocab == tokenizer.vocab,
          f"{where}: the guide was trained on another vocabulary of caption words")
  if step is not None:
    require(step in found.usable, f"{where}: no usable checkpoint at step {step} in "
            f"{workdir!r} (usable: {', '.join(str(s) for s in found.usable)})")
    found = dataclasses.replace(found, usable=(step,))  # That one, or an error.
  return guide, found


def checked_guide(spec: spec_lib.Spec, guide_from: str | None, num_devices: int, tokenizer):
  """The guide of --guide_from checked to guide this model (its spec and checkpoints),
  or None without one; before anything compiles."""
  scale = spec.guidance_config.autoguidance_scale
  require(guide_from or scale == 1.0, f"sample.autoguidance_scale={scale} needs a guide "
          "model: --guide_from=WORKDIR[:STEP]")
  if not guide_from:
    return None
  return distributed.checked(_autoguide_model, spec, guide_from, num_devices, tokenizer)


class Guide(NamedTuple):
  """A loaded autoguidance guide."""
  spec: spec_lib.Spec
  params: object  # Its EMA parameters.
  step: int
  workdir: str


def load_guide(spec: spec_lib.Spec, guide, guide_from: str | None, mesh) -> Guide | None:
  """The Guide of checked_guide's result, or None."""
  if guide is None:
    return None
  guide_spec, guide_found = guide
  guide_workdir = parse_guide_from(guide_from)[0]
  step, state, _, _ = build.restore_state(guide_spec, guide_workdir, guide_found, mesh)
  if distributed.is_primary():
    print(f"autoguidance: scale {spec.guidance_config.autoguidance_scale}, guide "
          f"{guide_workdir} at step {step}", flush=True)
  return Guide(guide_spec, state.ema_params, int(step), guide_workdir)


def sample_from_workdir(config, workdir: str, given: inputs_lib.Given = inputs_lib.Given(),
                        mesh=None, cascade_from: str | None = None,
                        guide_from: str | None = None) -> str:
  """Writes a sample set from the latest checkpoint (EMA parameters).

  With `cascade_from`, a base model's workdir, the base model first samples the
  low-resolution images (its own conditions from `given`), which this
  super-resolution model then takes as its input. With `guide_from`, WORKDIR[:STEP]
  of a weaker model of the same task, the samples are autoguided by it
  (sample.autoguidance_scale)."""
  mesh = mesh or mesh_lib.make_mesh()
  spec, found, tokenizer = build.checked(config, workdir, "sample", mesh.devices.size)
  mesh = mesh_lib.with_fsdp(mesh, spec.mesh.fsdp)
  guide = checked_guide(spec, guide_from, mesh.devices.size, tokenizer)
  build.use_compilation_cache(spec, workdir)
  if cascade_from:
    base_spec, base_found, base_tok = distributed.checked(_cascade_base, spec, cascade_from,
                                                          mesh.devices.size)
    base_inputs, base_record = distributed.checked(inputs_lib.gather, base_spec, given,
                                                   base_tok)
    base_state = build.load_state(base_spec, cascade_from, base_found, mesh)
    low = sample_images(base_spec, base_state.ema_params, mesh, base_inputs, base_record)
    given = inputs_lib.Given(images={"lowres": low.astype(np.float32) / 127.5 - 1.0})
    inputs, record = distributed.checked(inputs_lib.gather, spec, given, tokenizer)
    record.update({f"base_{k}": v for k, v in base_record.items() if k != "count"})
  else:
    inputs, record = distributed.checked(inputs_lib.gather, spec, given, tokenizer)
  guide = load_guide(spec, guide, guide_from, mesh)
  state = build.load_state(spec, workdir, found, mesh)
  path = write_sample_set(spec, workdir, state.ema_params, int(state.step), mesh, inputs, record,
                          guide=guide)
  if distributed.is_primary():
    print(f"samples: {path}", flush=True)
  return path


__all__ = ["ConfigError", "Guide", "checked_guide", "load_guide", "make_sample_fn",
           "parse_guide_from", "sample_from_workdir", "sample_images", "sampling_params",
           "write_sample_set"]
