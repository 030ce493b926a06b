"""Device mesh and shardings: data parallelism, with the train state optionally sharded
(FSDP / ZeRO-3).

The mesh has two axes, `data` x `fsdp` (`mesh.fsdp` devices on `fsdp`, the rest on
`data`; the default fsdp = 1 is pure data parallelism). Training and sampling are
plain `jax.jit` programs over global arrays: the batch is split over both axes, and
each array of the train state (parameters, EMA, optimizer state) is either replicated
or split over `fsdp` by `fsdp_spec`'s rule, which reads only the array's shape. XLA
inserts the gradient all-reduce (or, for split arrays, the all-gathers and
reduce-scatters). The same code runs on 1 device, 8 local devices, or a multi-host pod
where each process feeds its own slice of the global batch.
"""

import dataclasses
import os
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffusion_jax.config.errors import require

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # The batch is split over every device.


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """The `mesh` section."""
  fsdp: int  # Devices on the fsdp axis (the train state is split over them); 1 = none.
  # Arrays with fewer elements stay replicated: biases, norm scales and other small
  # arrays would cost a collective each for little memory.
  fsdp_min_size: int

  @classmethod
  def from_config(cls, mesh_cfg) -> "MeshConfig":
    cfg = cls(**{f.name: mesh_cfg[f.name] for f in dataclasses.fields(cls)})
    require(isinstance(cfg.fsdp, int) and cfg.fsdp >= 1,
            f"mesh.fsdp={cfg.fsdp!r} must be an integer >= 1")
    require(isinstance(cfg.fsdp_min_size, int) and cfg.fsdp_min_size >= 0,
            f"mesh.fsdp_min_size={cfg.fsdp_min_size!r} must be an integer >= 0")
    return cfg

  def check_devices(self, num_devices: int) -> None:
    check_fsdp(self.fsdp, num_devices)


def check_fsdp(fsdp: int, num_devices: int) -> None:
  """The fsdp axis must split the devices evenly."""
  require(num_devices % fsdp == 0,
          f"mesh.fsdp={fsdp} does not divide the {num_devices} devices; allowed: the "
          f"divisors of {num_devices}")


def make_mesh(num_devices: int | None = None, fsdp: int = 1,
              devices: Iterable[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp) mesh over `devices` (all of jax.devices() by default, or their
  first num_devices); consecutive devices share an fsdp group."""
  devices = list(jax.devices() if devices is None else devices)
  if num_devices:
    devices = devices[:num_devices]
  require(isinstance(fsdp, int) and fsdp >= 1, f"mesh.fsdp={fsdp!r} must be an integer >= 1")
  check_fsdp(fsdp, len(devices))
  return Mesh(np.asarray(devices).reshape(-1, fsdp), BATCH_AXES)


def with_fsdp(mesh: Mesh, fsdp: int) -> Mesh:
  """The same devices as `mesh`, `fsdp` of them on the fsdp axis."""
  if mesh.axis_names == BATCH_AXES and mesh.shape[FSDP_AXIS] == fsdp:
    return mesh
  return make_mesh(fsdp=fsdp, devices=list(mesh.devices.flat))


# XLA:CPU at LLVM -O1: the cifar10 train step compiles ~30% faster than at its default
# with the same step time, since its time goes to convolutions, which are library calls
# rather than generated code (experiments/README.md, "Compile time of the train step").
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def compiler_options(mesh) -> dict:
  """XLA options for programs compiled for `mesh`'s devices: CPU_COMPILER_OPTIONS on
  CPUs, none elsewhere (decided by the devices, not the default backend, so that a
  program traced here for a TPU topology gets the TPU's) or for an AbstractMesh (no
  devices: shapes only). An option the user set in XLA_FLAGS is left to that setting."""
  if isinstance(mesh, jax.sharding.AbstractMesh):
    return {}
  if not all(d.platform == "cpu" for d in mesh.devices.flat):
    return {}
  flags = os.environ.get("XLA_FLAGS", "")
  return {k: v for k, v in CPU_COMPILER_OPTIONS.items() if f"--{k}=" not in flags}


def fsdp_size(mesh: Mesh) -> int:
  return mesh.shape.get(FSDP_AXIS, 1)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over all devices (both mesh axes)."""
  return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  """The rule for a train-state array: split its largest dimension divisible by `fsdp`
  over the fsdp axis (the last of equal ones); replicate it if fsdp is 1, if it has
  fewer than `min_size` elements, or if no dimension is divisible."""
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < max(min_size, 1):
    return P()
  divisible = [i for i, n in enumerate(shape) if n % fsdp == 0]
  if not divisible:
    return P()
  axis = max(divisible, key=lambda i: (shape[i], i))
  return P(*([None] * axis), FSDP_AXIS)


def state_shardings(abstract: Any, mesh: Mesh, min_size: int) -> Any:
  """The sharding of every array of a pytree (of arrays or ShapeDtypeStructs) on `mesh`,
  by `fsdp_spec`."""
  fsdp = fsdp_size(mesh)
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp, min_size)),
                      abstract)


def bytes_per_device(tree: Any) -> int:
  """Bytes one device holds of a pytree of arrays or sharded ShapeDtypeStructs: each
  array's shard shape under its sharding (no allocation needed)."""
  def one(x):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return sum(one(x) for x in jax.tree.leaves(tree))


def gathered(tree: Any, mesh: Mesh) -> Any:
  """Inside a jitted function: `tree` replicated on every device (an all-gather of the
  arrays split over fsdp; nothing where fsdp is 1)."""
  if fsdp_size(mesh) == 1:
    return tree
  return jax.lax.with_sharding_constraint(tree, replicated(mesh))


def check_batch(global_batch: int, num_devices: int, field: str) -> None:
  """A global batch (the config field `field`) must split evenly over devices and
  processes."""
  require(global_batch > 0, f"{field}={global_batch} must be > 0")
  require(global_batch % num_devices == 0,
          f"{field}={global_batch} is not divisible by the {num_devices} devices")
  require(global_batch % jax.process_count() == 0,
          f"{field}={global_batch} is not divisible by the {jax.process_count()} processes")


def check_per_device_split(k: int, field: str, batch_size: int, num_devices: int) -> None:
  """k parts (the config field `field`) must split each device's share of the batch
  evenly."""
  if batch_size % num_devices:
    return  # An uneven batch is check_batch's error.
  per_device = batch_size // num_devices
  require(per_device % k == 0,
          f"{field}={k} does not divide the per-device batch {per_device} "
          f"(training.batch_size={batch_size} / {num_devices} devices); "
          f"allowed: the divisors of {per_device}")


def split_per_device(a, k: int):
  """(B, ...) -> (k, B / k, ...), part i = examples i, i + k, ...: when k divides each
  device's share of a batch split over devices, every part is split the same way and
  nothing moves between devices."""
  return jnp.swapaxes(a.reshape(a.shape[0] // k, k, *a.shape[1:]), 0, 1)


def merge_per_device(a):
  """split_per_device's inverse: (k, B / k, ...) -> (B, ...)."""
  return jnp.swapaxes(a, 0, 1).reshape(a.shape[0] * a.shape[1], *a.shape[2:])


def global_batch(local: dict, mesh: Mesh) -> dict:
  """Assembles each process's local numpy batch into one global sharded array."""
  sharding = data_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local)
