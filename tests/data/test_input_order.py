"""The global order and each process's share of it, with processes emulated in this
process (the iterator takes the process index and count as arguments): slices that
tile every global batch, epochs that hold every record once, and positions that
restore onto another process count. tests/data/test_multiprocess.py runs the same with
real JAX processes."""

import numpy as np
import pytest

from diffusion_jax.config import defaults as default
from diffusion_jax.data import image_folder, order, pipeline
from tests.data.fake_datasets import example_ids, numbered_folder

N = 24  # Records of the numbered folder.


@pytest.fixture(scope="module")
def folder_cfg(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("numbered"))
  numbered_folder(root, N)
  c = default.get_config().data
  c.name, c.data_dir, c.image_size, c.channels, c.num_classes = "image_folder", root, 4, 1, 2
  return c


def ids(it, steps: int) -> list[list[int]]:
  return [example_ids(next(it)["image"]) for _ in range(steps)]


def test_each_epoch_is_a_new_permutation_drawn_from_seed_and_epoch():
  perms = [order.permutation(1000, seed, epoch) for seed in (0, 1) for epoch in (0, 1)]
  for p in perms:
    np.testing.assert_array_equal(np.sort(p), np.arange(1000))
  assert len({p.tobytes() for p in perms}) == 4
  order.permutation.cache_clear()
  np.testing.assert_array_equal(order.permutation(1000, 1, 0), perms[2])
  # Positions run on over epochs: epoch e holds positions [e*N, (e+1)*N).
  o = order.GlobalOrder(size=10, seed=3)
  got = o.record_indices(np.arange(5, 25))
  np.testing.assert_array_equal(got[:5], order.permutation(10, 3, 0)[5:])
  np.testing.assert_array_equal(got[5:15], order.permutation(10, 3, 1))
  np.testing.assert_array_equal(got[15:], order.permutation(10, 3, 2)[:5])


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_process_slices_tile_the_global_batches_and_epochs_hold_each_record_once(
    folder_cfg, processes):
  batch, steps = 8, 6  # Two epochs of 3 global batches.
  alone = ids(pipeline.make_iterator(folder_cfg, batch, 7, process_index=0, process_count=1),
              steps)
  parts = [ids(pipeline.make_iterator(folder_cfg, batch, 7, process_index=p,
                                      process_count=processes), steps)
           for p in range(processes)]
  for s in range(steps):  # Process p holds the p-th contiguous slice of batch s.
    assert sum((part[s] for part in parts), []) == alone[s]
  epochs = [sum(alone[:3], []), sum(alone[3:], [])]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(N))
  assert epochs[0] != epochs[1]  # Reshuffled.


def test_a_process_reads_only_its_own_records(folder_cfg, monkeypatch):
  read = []
  get = image_folder._Records.__getitem__
  monkeypatch.setattr(image_folder._Records, "__getitem__",
                      lambda self, i: read.append(i) or get(self, i))
  folder_cfg = dict(folder_cfg, cache=False, read_threads=0, prefetch_batches=0)
  source = pipeline.open_source(pipeline.DataConfig(**folder_cfg))
  records = source.records("train")
  it = pipeline.make_iterator(pipeline.DataConfig(**folder_cfg), 8, 7, process_index=1,
                              process_count=2)
  got = ids(it, 2)
  # The records named by the order of positions 4-7 and 12-15, and no others.
  o = order.GlobalOrder(N, 7)
  want = o.record_indices(np.r_[4:8, 12:16]).tolist()
  assert read == want
  assert sum(got, []) == [example_ids(records[i]["image"][None] / 127.5 - 1.0)[0]
                          for i in want]


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (2, 4), (4, 2)])
def test_a_position_restores_onto_another_process_count(folder_cfg, before, after):
  batch, k, more = 8, 4, 3  # Restore in the second epoch, continue into the third.
  alone = ids(pipeline.make_iterator(folder_cfg, batch, 7, process_index=0, process_count=1),
              k + more)
  its = [pipeline.make_iterator(folder_cfg, batch, 7, process_index=p, process_count=before)
         for p in range(before)]
  for it in its:
    ids(it, k)
  states = [it.state() for it in its]
  assert all(s == states[0] for s in states)  # The same on every process.
  assert states[0]["position"] == k * batch
  resumed = []
  for p in range(after):
    it = pipeline.make_iterator(folder_cfg, batch, 7, process_index=p, process_count=after)
    it.restore(states[0])
    resumed.append(ids(it, more))
  continued = [sum((r[s] for r in resumed), []) for s in range(more)]
  assert continued == alone[k:]
  seen = sum(alone[3:k], []) + sum(continued[:6 - k], [])  # The whole second epoch.
  assert sorted(seen) == list(range(N))


def test_a_resumed_run_keeps_its_data_order_whatever_its_seed(folder_cfg):
  it = pipeline.make_iterator(folder_cfg, 8, 7)
  first = ids(it, 3)
  resumed = pipeline.make_iterator(folder_cfg, 8, 99)
  resumed.restore(dict(it.state(), position=8))
  assert ids(resumed, 2) == first[1:]
