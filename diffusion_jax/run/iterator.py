"""Training input whose position is a small JSON state, the same on every process and
independent of the process count.

A stand-in with the interface of `data.pipeline.make_iterator` (the pods-data branch,
which replaces this module when it lands): `make_iterator(data_cfg, global_batch, seed,
text, process_index, process_count)`; `next(it)` is this process's numpy batch;
`it.state()` / `it.restore(state)`. It holds the training split in memory
(`pipeline.load_split_numpy`), so it suits the small datasets of tests and demos.

Epoch e visits the split in a permutation drawn from (seed, e); global batch b is the
next `global_batch` examples of that order (an epoch's remainder is dropped); process
i of n takes the i-th contiguous slice of each global batch. A run therefore reads the
same global batches on any number of processes, and resumes them exactly.
"""

import jax
import numpy as np

from diffusion_jax.config.errors import require
from diffusion_jax.data import pipeline


class SplitIterator:
  """Batches of the training split, by global position (see the module docstring)."""

  def __init__(self, data_cfg, global_batch: int, seed: int,
               text: pipeline.TextSpec = pipeline.TextSpec(),
               process_index: int | None = None, process_count: int | None = None):
    self.cfg, self.global_batch, self.seed, self.text = data_cfg, global_batch, seed, text
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    require(global_batch % count == 0, f"training.batch_size={global_batch} is not "
            f"divisible by the {count} processes")
    per = global_batch // count
    self._slice = slice(index * per, (index + 1) * per)
    self.arrays = pipeline.load_split_numpy(
        data_cfg, data_cfg.split, captions=text.tokenizer is not None,
        text_emb=bool(text.emb_key))
    self.size = len(self.arrays["image"])
    self.per_epoch = self.size // global_batch
    require(self.per_epoch > 0, f"data.split={data_cfg.split!r} has {self.size} examples, "
            f"fewer than one global batch (training.batch_size={global_batch})")
    self.position = 0  # Global batches read so far.
    self._epoch, self._order = -1, None

  def __iter__(self):
    return self

  def _indices(self, position: int) -> np.ndarray:
    epoch, b = divmod(position, self.per_epoch)
    if epoch != self._epoch:
      self._epoch = epoch
      self._order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
    start = b * self.global_batch
    return self._order[start:start + self.global_batch]

  def __next__(self) -> dict[str, np.ndarray]:
    rows = self._indices(self.position)[self._slice]
    a = self.arrays
    image = a["image"][rows].astype(np.float32) / 127.5 - 1.0
    if self.cfg.random_flip:
      flips = np.random.default_rng([self.seed, 1, self.position]).random(self.global_batch)
      image = np.where(flips[self._slice, None, None, None] < 0.5, image[:, :, ::-1], image)
    batch = {"image": image}
    if "label" in a:
      batch["label"] = a["label"][rows].astype(np.int32)
    if self.text.tokenizer is not None:
      batch["tokens"] = self.text.tokenizer.encode([str(c) for c in a["caption"][rows]])
    if self.text.emb_key:
      emb = a["text_emb"][rows].astype(np.float32)
      batch["text_emb"], batch["text_mask"] = emb, np.any(emb != 0, axis=-1)
    self.position += 1
    return batch

  def state(self) -> dict:
    """The position: JSON, the same on every process."""
    return {"position": self.position}

  def restore(self, state: dict) -> None:
    self.position = int(state["position"])


def make_iterator(data_cfg, global_batch: int, seed: int,
                  text: pipeline.TextSpec = pipeline.TextSpec(),
                  process_index: int | None = None,
                  process_count: int | None = None) -> SplitIterator:
  return SplitIterator(data_cfg, global_batch, seed, text, process_index, process_count)
