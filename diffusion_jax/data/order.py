"""Which examples each process reads: one global order, cut into global batches.

Example positions 0, 1, 2, ... run over all epochs: position g is record
`record_indices(g)` of the split, where epoch g // N (N records) is a permutation of the
split drawn from (seed, epoch) alone. Global batch s holds positions [s*B, (s+1)*B), so
a batch may straddle two epochs and every record is read once per epoch; process p of P
reads the contiguous slice [s*B + p*B/P, s*B + (p+1)*B/P) of it. The position reached
(in examples) therefore means the same on any number of processes: it is all that a
checkpoint of the input pipeline holds.
"""

import dataclasses
import functools

import numpy as np

_ORDER_STREAM = 0x0D47A  # Separates the data order's seeds from other uses of the run seed.


@functools.lru_cache(maxsize=4)  # The epochs in flight: a batch may straddle two.
def permutation(size: int, seed: int, epoch: int) -> np.ndarray:
  """Epoch `epoch`'s order of the `size` records: a pure function of its arguments.

  The records are sorted by raw 64-bit draws of a PCG64 seeded with (seed, epoch):
  numpy keeps both the seeding and the raw stream fixed across versions (unlike its
  higher-level samplers), so a saved position means the same after an upgrade. O(size)
  memory, computed once per epoch.
  """
  bits = np.random.PCG64(np.random.SeedSequence([_ORDER_STREAM, seed % 2**63, epoch]))
  order = np.argsort(bits.random_raw(size), kind="stable")
  order.flags.writeable = False  # Shared by every caller through the cache.
  return order


@dataclasses.dataclass(frozen=True)
class GlobalOrder:
  """The record read at each example position (see the module docstring)."""
  size: int  # Records in the split.
  seed: int

  def record_indices(self, positions: np.ndarray) -> np.ndarray:
    epochs, within = np.divmod(np.asarray(positions, np.int64), self.size)
    out = np.empty(len(within), np.int64)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      out[here] = permutation(self.size, self.seed, int(epoch))[within[here]]
    return out


@dataclasses.dataclass(frozen=True)
class ProcessSlice:
  """This process's share of the global batches from example position `start` on."""
  start: int  # Example position of the first global batch.
  global_batch: int
  process_index: int
  process_count: int

  @property
  def local_batch(self) -> int:
    return self.global_batch // self.process_count

  def positions(self, step: int) -> np.ndarray:
    """The example positions of this process's part of global batch `step` (from start)."""
    first = self.start + step * self.global_batch + self.process_index * self.local_batch
    return np.arange(first, first + self.local_batch, dtype=np.int64)
