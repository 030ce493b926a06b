"""`python -m diffusion_jax.launch check --config=FILE --topology=v5e:4x4
[--config.FIELD=VALUE ...]`: compiles the run's train step ahead of time for a TPU
topology (names as libtpu spells them: v4:2x2x1, v5e:4x4, v5p:2x2x1, v6e:2x2, ...) on
this machine, with no TPU (libtpu comes with the `tpu` extra), and prints each
device's memory as the compiled program needs it and whether it fits the chip's HBM.
Exit status 0 if it fits, 1 if not, 2 on a bad input.

A latent diffusion config's step encodes each batch of images: the autoencoder its
latent.autoencoder names (a workdir or a converted weight file) is read as the run
reads it, and the encoder's weights are an argument of the compiled step; from a
latent cache (latent.cache) the step takes the cached posteriors instead. Neither the
dataset nor the cache is read.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
from absl import flags
from jax.experimental import topologies
from ml_collections import config_flags

from diffusion_jax.config.errors import ConfigError, require
from diffusion_jax.run import build, spec as spec_lib
from diffusion_jax.training import mesh as mesh_lib, state as state_lib

GiB = 1024 ** 3
# HBM of one JAX device, by device_kind (a v4 or v5p chip is one device: megacore).
HBM_BYTES = {"TPU v2": 8 * GiB, "TPU v3": 16 * GiB, "TPU v4": 32 * GiB,
             "TPU v5 lite": 16 * GiB, "TPU v5": 95 * GiB, "TPU v6 lite": 32 * GiB}
# Chips whose two TensorCores JAX drives as one device.
MEGACORE = ("v4", "v5p")


@dataclasses.dataclass(frozen=True)
class Report:
  """Per-device memory of the compiled train step, in bytes."""
  topology: str
  device_kind: str
  num_devices: int
  num_hosts: int
  batch_size: int
  arguments: int  # Train state (replicated) and this device's batch shard.
  outputs: int
  aliased: int  # Outputs written into donated arguments (the state).
  temporaries: int
  code: int
  capacity: int | None  # The device's HBM; None if unknown.

  @property
  def total(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

  @property
  def fits(self) -> bool | None:
    return None if self.capacity is None else self.total <= self.capacity

  def text(self) -> str:
    mib = lambda b: f"{b / 2**20:10.1f} MiB"
    cap = "unknown" if self.capacity is None else f"{self.capacity / GiB:.1f} GiB"
    verdict = {True: "fits", False: "does NOT fit", None: "capacity unknown"}[self.fits]
    used = f" ({100 * self.total / self.capacity:.0f}% of HBM)" if self.capacity else ""
    return "\n".join([
        f"topology {self.topology}: {self.num_devices} devices ({self.device_kind}), "
        f"{self.num_hosts} host{'s' if self.num_hosts > 1 else ''}; global batch "
        f"{self.batch_size} ({self.batch_size // self.num_devices} per device)",
        "per-device memory of the compiled train step:",
        f"  arguments    {mib(self.arguments)}  (train state, batch shard)",
        f"  outputs      {mib(self.outputs)}",
        f"  aliased      {mib(-self.aliased)}  (outputs in the donated state)",
        f"  temporaries  {mib(self.temporaries)}",
        f"  code         {mib(self.code)}",
        f"  total        {mib(self.total)}  of {cap} HBM: {verdict}{used}"])


def topology_devices(name: str) -> list:
  """The devices of a TPU topology, from libtpu, without a TPU."""
  kwargs = {"chip_config_name": "megacore"} if name.split(":")[0] in MEGACORE else {}
  # Only compiling, no chip used: another JAX process holding libtpu's lock (a run on
  # this machine with JAX_PLATFORMS unset) must not stop the check.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    return list(topologies.get_topology_desc(name, "tpu", **kwargs).devices)
  except Exception as e:  # libtpu missing, or a name it does not know.
    msg = " ".join(str(e).split())
    if "tpu" in msg.lower() and ("not found" in msg.lower() or "unknown backend" in msg.lower()
                                 or "no module" in msg.lower()):
      raise ConfigError(f"--topology={name!r}: libtpu is not installed "
                        "(pip install -e '.[tpu]')") from None
    raise ConfigError(f"--topology={name!r} is not a TPU topology libtpu knows "
                      f"({msg[:200]}); e.g. v5e:4x4, v4:2x2x1, v5p:2x2x1, v6e:2x2") from None


def abstract_batch(spec: spec_lib.Spec, net, mesh) -> dict:
  """The shapes of a global training batch, split over all devices of the mesh."""
  b = spec.training.batch_size
  x, _, cond = state_lib.dummy_inputs(net, b, spec.data.image_size, spec.data.channels)
  arrays = {"image": x, "label": cond.labels, "tokens": cond.tokens,
            "text_emb": cond.text_emb, "text_mask": cond.text_mask}
  if spec.latent.cache:  # Training reads the posteriors (mean, log variance), no pixels.
    h, w, c = spec.model_shape
    arrays["image"] = None
    arrays["moments"] = jax.ShapeDtypeStruct((b, h, w, 2 * c), jnp.float32)
  data = mesh_lib.data_sharded(mesh)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=data)
          for k, v in arrays.items() if v is not None}


def as_on_device(config):
  """The config as the topology's own processes trace it: choices that "auto" makes by
  the tracing backend (model.conv_impl) take their accelerator value, not this CPU's."""
  if config.model.conv_impl != "auto":
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.conv_impl = "xla"
  return config


def compile_report(config, topology: str) -> Report:
  """Compiles the train step for `topology` and reads its memory use."""
  return report_for(config, topology_devices(topology), topology)


def report_for(config, devices: list, name: str) -> Report:
  """Compiles the train step for `devices` (a topology's, or this host's) and reads
  its memory use."""
  config = as_on_device(config)
  spec = spec_lib.parse(config, len(devices))
  # A latent run's U-Net takes the autoencoder's latents, and its step runs the encoder:
  # the autoencoder is loaded as the run would load it (only its shapes are compiled).
  spec = build.with_autoencoder(spec)
  mesh = mesh_lib.make_mesh(fsdp=spec.mesh.fsdp, devices=devices)
  net, tx = build.model(spec), build.optimizer_of(spec)
  _, _, abstract = build.init_fns(spec, net, tx, mesh)
  batch = abstract_batch(spec, net, mesh)
  compiled = build.lowered_train_step(spec, net, tx, mesh, abstract, batch).compile()
  m = compiled.memory_analysis()
  kind = devices[0].device_kind
  return Report(topology=name, device_kind=kind, num_devices=len(devices),
                num_hosts=len({d.process_index for d in devices}),
                batch_size=spec.training.batch_size,
                arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes,
                aliased=m.alias_size_in_bytes, temporaries=m.temp_size_in_bytes,
                code=m.generated_code_size_in_bytes, capacity=HBM_BYTES.get(kind))


def main(argv: list[str]) -> int:
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).",
                                  flag_values=fv, lock_config=True, sys_argv=["check", *argv])
  flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:4x4.", flag_values=fv)
  try:
    fv(["check", *argv])
    config = fv.config
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    raise ConfigError(f"check: {' '.join(str(e).split())}") from None
  require(config is not None, "check: --config is required, e.g. --config=configs/cifar10_ddpm.py")
  require(bool(fv.topology), "check: --topology is required, e.g. --topology=v5e:4x4")
  report = compile_report(config, fv.topology)
  print(report.text(), flush=True)
  return 1 if report.fits is False else 0
