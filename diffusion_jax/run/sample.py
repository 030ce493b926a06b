"""--mode=sample: a sample set from a workdir's latest checkpoint (EMA parameters),
for conditions given on the command line, in files, by a base model (a cascade), or
taken from the dataset."""

import numpy as np

from diffusion_jax.config import files
from diffusion_jax.config.errors import ConfigError, require
from diffusion_jax.run import build
from diffusion_jax.run import spec as spec_lib
from diffusion_jax.sampling import generate, images as images_lib, inputs as inputs_lib
from diffusion_jax.training import distributed, mesh as mesh_lib


def sample_images(spec: spec_lib.Spec, params, mesh, inputs: dict, record: dict,
                  net=None) -> np.ndarray:
  """uint8 samples, one per row of `inputs` (see sampling.inputs.gather)."""
  net = net or build.model(spec)
  fn = generate.make_sample_fn(net, spec.diffusion, spec.sampler, spec.image_shape, mesh,
                               spec.cond, spec.sample_set.project, spec.guidance)
  s = spec.sample_set
  return generate.generate(fn, params, inputs, s.batch_size, s.seed, mesh,
                           num_samples=int(record.get("count", 0)) or None)


def write_sample_set(spec: spec_lib.Spec, workdir: str, params, step: int, mesh, inputs: dict,
                     record: dict, net=None) -> str:
  images = sample_images(spec, params, mesh, inputs, record, net)
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


def sample_from_workdir(config, workdir: str, given: inputs_lib.Given = inputs_lib.Given(),
                        mesh=None, cascade_from: str | None = None) -> str:
  """Writes a sample set from the latest checkpoint (EMA parameters).

  With `cascade_from`, a base model's workdir, the base model first samples the
  low-resolution images (its own conditions from `given`), which this
  super-resolution model then takes as its input."""
  mesh = mesh or mesh_lib.make_mesh()
  spec, found, tokenizer = build.checked(config, workdir, "sample", mesh.devices.size)
  mesh = mesh_lib.with_fsdp(mesh, spec.mesh.fsdp)
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
  state = build.load_state(spec, workdir, found, mesh)
  path = write_sample_set(spec, workdir, state.ema_params, int(state.step), mesh, inputs, record)
  if distributed.is_primary():
    print(f"samples: {path}", flush=True)
  return path


__all__ = ["ConfigError", "sample_from_workdir", "sample_images", "write_sample_set"]
