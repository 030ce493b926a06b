"""Device mesh and shardings for data parallelism.

Training and sampling are plain `jax.jit` programs over global arrays: the batch is
sharded over the mesh's `data` axis and parameters are replicated, so XLA inserts
the gradient all-reduce. The same code runs on 1 device, 8 local devices, or a
multi-host pod where each process feeds its own slice of the global batch.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffusion_jax.config.errors import require

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  devices = jax.devices()
  if num_devices:
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch(global_batch: int, num_devices: int, field: str) -> None:
  """A global batch (the config field `field`) must split evenly over devices and
  processes."""
  require(global_batch > 0, f"{field}={global_batch} must be > 0")
  require(global_batch % num_devices == 0,
          f"{field}={global_batch} is not divisible by the {num_devices} devices")
  require(global_batch % jax.process_count() == 0,
          f"{field}={global_batch} is not divisible by the {jax.process_count()} processes")


def global_batch(local: dict, mesh: Mesh) -> dict:
  """Assembles each process's local numpy batch into one global sharded array."""
  sharding = data_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local)
