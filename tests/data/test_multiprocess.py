"""The input pipeline in real JAX processes (jax.distributed on 127.0.0.1, 2 simulated
CPU devices each): each process reads its own contiguous slice of every global batch,
its batch lands in its rows of the assembled global array, and a position saved by one
process count continues on another (1 -> 2 -> 1)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT
from tests.data.fake_datasets import example_ids, numbered_folder

N, BATCH, SEED, SAVE_AT, MORE = 24, 8, 7, 4, 3  # Epochs of 3 global batches.
TIMEOUT_S = 240  # Start-up of two processes (imports, coordinator) on a loaded machine.


def data_cfg(folder: str):
  from diffusion_jax.config import defaults
  c = defaults.get_config().data
  c.name, c.data_dir, c.image_size, c.channels, c.num_classes = "image_folder", folder, 4, 1, 2
  return c


def worker(port: int, process_id: int, processes: int, folder: str, restore_from: str,
           out: str) -> None:
  """One process: reads SAVE_AT global batches, saves its position, assembles the next
  batch into a global array, then continues from `restore_from`'s position."""
  import jax
  jax.distributed.initialize(f"127.0.0.1:{port}", processes, process_id,
                             initialization_timeout=TIMEOUT_S)
  from diffusion_jax.data import pipeline
  from diffusion_jax.training import mesh as mesh_lib
  cfg = data_cfg(folder)
  it = pipeline.make_iterator(cfg, BATCH, SEED)  # Process index and count from JAX.
  first = [example_ids(next(it)["image"]) for _ in range(SAVE_AT)]
  state = it.state()
  local = next(it)
  mesh = mesh_lib.make_mesh()
  global_images = mesh_lib.global_batch(local, mesh)["image"]
  rows = []  # (first row in the global batch, the shard's ids) of each local device.
  for shard in global_images.addressable_shards:
    rows.append((shard.index[0].start, example_ids(np.asarray(shard.data))))
  it.close()
  resumed = pipeline.make_iterator(cfg, BATCH, SEED)
  with open(restore_from) as f:
    resumed.restore(json.load(f))
  restored = [example_ids(next(resumed)["image"]) for _ in range(MORE)]
  resumed.close()
  with open(out, "w") as f:
    json.dump({"first": first, "state": state, "local": example_ids(local["image"]),
               "rows": rows, "restored": restored, "devices": jax.device_count()}, f)
  jax.distributed.shutdown()


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_processes(n: int, folder: str, restore_from: str, tmp_path) -> list[dict]:
  port, outs = free_port(), [str(tmp_path / f"out_{i}.json") for i in range(n)]
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", TF_CPP_MIN_LOG_LEVEL="3")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tests.data.test_multiprocess", str(port), str(i), str(n), folder,
       restore_from, outs[i]], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(n)]
  try:
    logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
  finally:
    for p in procs:  # A failed or hung process must not outlive the test.
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  results = []
  for out in outs:
    with open(out) as f:
      results.append(json.load(f))
  return results


def test_two_processes_read_disjoint_slices_and_positions_move_between_counts(tmp_path):
  from diffusion_jax.data import pipeline
  folder = str(tmp_path / "numbered")
  numbered_folder(folder, N)
  cfg = data_cfg(folder)
  # The uninterrupted single-process stream, and its position after SAVE_AT batches.
  alone_it = pipeline.make_iterator(cfg, BATCH, SEED, process_index=0, process_count=1)
  alone = [example_ids(next(alone_it)["image"]) for _ in range(SAVE_AT + 1 + MORE)]
  one = pipeline.make_iterator(cfg, BATCH, SEED, process_index=0, process_count=1)
  for _ in range(SAVE_AT):
    next(one)
  saved_by_one = str(tmp_path / "state_1.json")
  with open(saved_by_one, "w") as f:
    json.dump(one.state(), f)

  results = run_processes(2, folder, saved_by_one, tmp_path)

  half = BATCH // 2
  assert [r["devices"] for r in results] == [4, 4]
  for s in range(SAVE_AT):  # Disjoint halves that tile each global batch, in order.
    assert results[0]["first"][s] + results[1]["first"][s] == alone[s]
  assert sorted(sum(alone[:3], [])) == list(range(N))  # An epoch: each record once.
  for p, r in enumerate(results):  # Each process's batch fills its own rows.
    assert r["local"] == alone[SAVE_AT][p * half:(p + 1) * half]
    for start, shard_ids in r["rows"]:
      assert p * half <= start < (p + 1) * half
      assert shard_ids == alone[SAVE_AT][start:start + len(shard_ids)]
  # 1 -> 2: the position saved by one process continues on two.
  assert [a + b for a, b in zip(results[0]["restored"], results[1]["restored"])] == \
      alone[SAVE_AT:SAVE_AT + MORE]
  # 2 -> 1: both processes saved the same position; one process continues it.
  assert results[0]["state"] == results[1]["state"] == one.state()
  resumed = pipeline.make_iterator(cfg, BATCH, SEED, process_index=0, process_count=1)
  resumed.restore(results[0]["state"])
  assert [example_ids(next(resumed)["image"]) for _ in range(MORE)] == \
      alone[SAVE_AT:SAVE_AT + MORE]


if __name__ == "__main__":
  port, pid, count, folder, restore_from, out = sys.argv[1:]
  worker(int(port), int(pid), int(count), folder, restore_from, out)
