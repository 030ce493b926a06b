"""Run by test_train_step.py with 8 simulated CPU devices: every check that needs them,
in one process, on one tiny program.

1. Two steps of training's own jitted train step, from the same state and batches, agree
   on meshes data=4 x fsdp=2 (the train state split over fsdp), data=8 and data=1.
2. On fsdp=2 each device holds half of every array the rule splits, all of the others.
3. That state, checkpointed, restores with equal values on data=8 x fsdp=1 and on
   data=1 x fsdp=8 (where each device holds an eighth of the split arrays).
4. Samples from the EMA split 8 ways equal those from the replicated EMA.
5. Guided sampling on data=8 compiles to a program with no collective operation: the
   conditional and unconditional branches of each example stay on its device.
6. A latent run's encoder in chunks (latent.encode_chunks) on a batch split 8 ways: the
   same latents as in one go, and no collective operation (each device encodes its own
   share, chunk after chunk).
"""

import re
import tempfile

import jax
import numpy as np

from diffusion_jax.run import build, spec as spec_lib, workdir as workdir_lib
from diffusion_jax.sampling import generate
from diffusion_jax.training import checkpoint, mesh as mesh_lib
from tests.training.test_train_step import fake_batch, tiny_config

# Below the default threshold (4096 elements), so that the tiny model has arrays of
# both kinds: the kernels are split, the biases and norm scales are not.
MIN_SIZE = 1024


def spec_on(devices: int, fsdp: int):
  config = tiny_config(**{"model.dropout": 0.1, "sample.batch_size": 8, "mesh.fsdp": fsdp,
                          "mesh.fsdp_min_size": MIN_SIZE})
  spec = spec_lib.parse(config, devices)
  return spec, mesh_lib.make_mesh(devices, fsdp=spec.mesh.fsdp)


def train(devices: int, fsdp: int = 1, start=None):
  """(initial state on the host, state and losses after two steps of the jitted train
  step that training runs) on a data x fsdp mesh. The initialiser compiles once (a
  third of the time): the other meshes take its state, placed in their own shardings."""
  spec, mesh = spec_on(devices, fsdp)
  net, tx = build.model(spec), build.optimizer_of(spec)
  init, key, abstract = build.init_fns(spec, net, tx, mesh)
  if start is None:
    state = init(key)
    start = jax.device_get(state)  # The step donates (deletes) its input state.
  else:
    state = jax.device_put(start, jax.tree.map(lambda x: x.sharding, abstract))
  step = build.jitted_train_step(spec, net, tx, mesh, abstract)
  losses = []
  for i in range(2):
    state, m = step(state, mesh_lib.global_batch(fake_batch(16, seed=i), mesh))
    losses.append(float(m["loss"]))
  return start, state, losses


def max_diff(a, b) -> float:
  return max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
      a, b)))


def bytes_on_first_device(x: jax.Array) -> int:
  """What one device actually holds of `x` (its shards' buffers)."""
  first = x.sharding.mesh.devices.flat[0]
  return sum(s.data.nbytes for s in x.addressable_shards if s.device == first)


def check_split(state, fsdp: int) -> tuple[int, int]:
  """Every split array is 1/fsdp on each device, every other one whole: (bytes per
  device, bytes of one whole copy) of params, EMA and optimizer state."""
  held = whole = split = 0
  for x in jax.tree.leaves((state.params, state.ema_params, state.opt_state)):
    on_device = bytes_on_first_device(x)
    if mesh_lib.FSDP_AXIS in x.sharding.spec:
      assert x.size >= MIN_SIZE and on_device * fsdp == x.nbytes, (x.shape, x.sharding)
      split += 1
    else:
      assert x.size < MIN_SIZE or all(n % fsdp for n in x.shape), (x.shape, x.sharding)
      assert on_device == x.nbytes
    held, whole = held + on_device, whole + x.nbytes
  assert split > 0
  return held, whole


def samples(spec, mesh, params) -> np.ndarray:
  fn = generate.make_sample_fn(build.model(spec), spec.diffusion, spec.sampler,
                               spec.image_shape, mesh)
  labels = {"label": np.arange(8, dtype=np.int32) % 10}
  return generate.generate(fn, params, labels, 8, spec.sample_set.seed, mesh)


COLLECTIVES = re.compile(r"\b(all-to-all|all-gather|all-reduce|collective-permute|"
                         r"reduce-scatter)(-start)?\(")


def guided_collectives(spec, mesh, params) -> list[str]:
  """The collective operations of the compiled guided sampler (labels at scale 2)."""
  fn = generate.make_sample_fn(build.model(spec), spec.diffusion, spec.sampler,
                               spec.image_shape, mesh, scales={"labels": 2.0})
  inputs = mesh_lib.global_batch({"label": np.arange(8, dtype=np.int32)}, mesh)
  hlo = fn.lower(params, jax.random.key(0), inputs).compile().as_text()
  return [m.group(1) for m in COLLECTIVES.finditer(hlo)]


def chunked_encoding_on_8_devices() -> list[str]:
  """Checks that the encoder in 2 chunks gives one go's latents on data=8; returns the
  collective operations of its compiled program."""
  from diffusion_jax.models import autoencoder as ae_lib
  from diffusion_jax.run import latent as latent_lib
  from tests.models.test_autoencoder import numpy_params
  cfg = ae_lib.AutoencoderConfig(in_channels=1, out_channels=1, block_out_channels=(8, 8),
                                 norm_num_groups=4, layers_per_block=1)
  mesh = mesh_lib.make_mesh(8)
  params = jax.device_put(numpy_params(ae_lib.param_shapes(cfg)), mesh_lib.replicated(mesh))
  pixels = np.random.default_rng(0).uniform(-1, 1, (32, 8, 8, 1)).astype(np.float32)
  images = mesh_lib.global_batch({"image": pixels}, mesh)["image"]  # 4 a device.
  key = jax.random.key(3)
  whole, chunked = (jax.jit(latent_lib.encoder(cfg, k), out_shardings=mesh_lib.data_sharded(mesh))
                    for k in (1, 2))
  np.testing.assert_allclose(chunked(params, images, key), whole(params, images, key),
                             rtol=1e-5, atol=1e-6)
  hlo = chunked.lower(params, images, key).compile().as_text()
  return [m.group(1) for m in COLLECTIVES.finditer(hlo)]


def main():
  assert jax.device_count() == 8, jax.devices()
  found = chunked_encoding_on_8_devices()
  assert not found, found
  print("the encoder in chunks on data=8: one go's latents, no collective operations")
  start, sf, lf = train(8, fsdp=2)
  _, s8, l8 = train(8, start=start)
  _, s1, l1 = train(1, start=start)
  assert len(s8.params["conv_in"]["kernel"].sharding.device_set) == 8
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  np.testing.assert_allclose(lf, l8, rtol=1e-5)
  diff_1, diff_f = max_diff(s8.params, s1.params), max_diff(sf, s8)
  assert diff_1 < 1e-5 and diff_f < 1e-5, (diff_1, diff_f)
  held, whole = check_split(sf, 2)
  print(f"devices=8 losses={l8} vs {l1} max_param_diff={diff_1:.2e}")
  print(f"fsdp=2 losses={lf} max_state_diff={diff_f:.2e} "
        f"state bytes per device {held} of {whole} ({whole / held:.2f}x less)")

  with tempfile.TemporaryDirectory() as workdir:
    spec, _ = spec_on(8, 2)
    manager = checkpoint.make_manager(workdir, keep=1, async_save=False)
    checkpoint.save(manager, 2, sf, {}, workdir_lib.model_meta(spec))
    manager.close()
    found = checkpoint.find(workdir, with_iterator=False)
    restored = {}
    for fsdp in (1, 8):
      spec, mesh = spec_on(8, fsdp)
      step, state, _, failed = build.restore_state(spec, workdir, found, mesh)
      assert step == 2 and not failed
      assert state.params["conv_in"]["kernel"].sharding.mesh.shape == mesh.shape
      assert max_diff(state, sf) == 0.0
      restored[fsdp] = (spec, mesh, state)
  held8, whole8 = check_split(restored[8][2], 8)
  print(f"restored on data=8 and on fsdp=8 (bytes per device {held8} of {whole8}, "
        f"{whole8 / held8:.2f}x less)")

  images = {f: samples(s, m, st.ema_params) for f, (s, m, st) in restored.items()}
  # uint8 images of the same parameters: the two programs may round differently.
  assert np.max(np.abs(images[1].astype(int) - images[8].astype(int))) <= 1
  print(f"samples from the EMA split 8 ways match the replicated EMA's: {images[8].shape}")

  spec, mesh, state = restored[1]
  found = guided_collectives(spec, mesh, state.ema_params)
  assert not found, found
  print("guided sampling on data=8: no collective operations")


if __name__ == "__main__":
  main()
