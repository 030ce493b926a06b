"""Non-leaking augmentation (training/augment.py): each op does what its label says,
zero labels change nothing, p = 0 leaves the train step as it was, the network sees
zero labels at sampling, and the run's checks and command line."""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion_jax.conditioning import conditions
from diffusion_jax.config import defaults
from diffusion_jax.config.errors import ConfigError
from diffusion_jax.core import diffusion
from diffusion_jax.models.layers import area_downsample
from diffusion_jax.models.unet import Cond, UNet, UNetConfig
from diffusion_jax.run import build, spec as spec_lib
from diffusion_jax.training import augment as aug
from diffusion_jax.training import mesh as mesh_lib
from diffusion_jax.training.state import TrainState
from diffusion_jax.training.step import make_train_step
from tests.conftest import ROOT, cli
from tests.training.test_train_step import fake_batch, tiny_config

N = 32  # Side of the test images.


def smooth(x, y):
  """A smooth image, defined everywhere (centred pixel coordinates), 3 channels."""
  return jnp.stack([jnp.sin(2 * math.pi * (0.05 * x + 0.02 * y)),
                    0.5 * jnp.cos(2 * math.pi * (0.03 * x - 0.04 * y)),
                    jnp.sin(2 * math.pi * 0.04 * (x + y)) * jnp.cos(2 * math.pi * 0.02 * y)], -1)


def grid(n=N):
  c = (n - 1) / 2
  y, x = jnp.meshgrid(jnp.arange(n) - c, jnp.arange(n) - c, indexing="ij")
  return x, y


def rot(theta, x, y):
  return jnp.cos(theta) * x - jnp.sin(theta) * y, jnp.sin(theta) * x + jnp.cos(theta) * y


def angle(label):
  return jnp.arctan2(label[1], label[0] + 1.0)


# Where output pixel (x, y) reads the input, from the documented label layout (the
# module's docstring), written out here independently of its matrices.
SOURCE = {
    "xflip": lambda l, x, y: (jnp.where(l[0] > 0.5, -x, x), y),
    "yflip": lambda l, x, y: (x, jnp.where(l[0] > 0.5, -y, y)),
    "rotate90": lambda l, x, y: rot(angle(l), x, y),
    "translate_int": lambda l, x, y: (x - l[0] * N * aug.TRANSLATE_INT_MAX,
                                      y - l[1] * N * aug.TRANSLATE_INT_MAX),
    "scale": lambda l, x, y: (x / 2 ** (l[0] * aug.SCALE_STD), y / 2 ** (l[0] * aug.SCALE_STD)),
    "rotate": lambda l, x, y: rot(angle(l), x, y),
    "aniso": lambda l, x, y: _aniso_source(l, x, y),
    "translate": lambda l, x, y: (x - l[0] * N * aug.TRANSLATE_STD,
                                  y - l[1] * N * aug.TRANSLATE_STD),
}


def _aniso_source(l, x, y):
  w, r = jnp.hypot(l[0], l[1]), 0.5 * jnp.arctan2(l[1], l[0])
  s = 2 ** (w * aug.ANISO_STD)
  u, v = rot(-r, x, y)  # Into the stretch's frame, undo the stretch, and back.
  return rot(r, u / s, v * s)


@pytest.mark.parametrize("name", list(aug.AUGMENTATIONS))
def test_each_op_does_what_its_label_says(name):
  """p = 1: every output pixel whose source lies inside the image is the smooth image
  at that source (exactly for the pixel ops; within 0.03 for the resampled ones)."""
  cfg = aug.AugmentConfig(p=1.0, ops=(name,))
  x, y = grid()
  images = jnp.broadcast_to(smooth(x, y), (16, N, N, 3))
  out, labels = jax.jit(aug.augment, static_argnums=2)(images, jax.random.key(3), cfg)
  assert labels.shape == (16, aug.AUGMENTATIONS[name].dims)
  exact = aug.AUGMENTATIONS[name].pixels is not None
  margin = 0.0 if exact else 1.5  # Resampling reads 2x2 subpixels and their neighbours.
  checked = 0
  for i in range(16):
    sx, sy = SOURCE[name](labels[i], x, y)
    inside = (jnp.abs(sx) <= (N - 1) / 2 - margin) & (jnp.abs(sy) <= (N - 1) / 2 - margin)
    err = jnp.abs(out[i] - smooth(sx, sy)).max(-1)[inside]
    assert float(err.max()) < (1e-5 if exact else 0.03), (i, labels[i], float(err.max()))
    checked += int(inside.sum())
  assert checked > 16 * N * N / 4  # Most pixels are checked.
  if aug.AUGMENTATIONS[name].source is not None:  # Drawn from a continuous range.
    assert bool(jnp.all(jnp.any(labels != 0, axis=-1)))


INVERSE = {  # The label of each op's inverse transform.
    "xflip": lambda l: l, "yflip": lambda l: l,
    "rotate90": lambda l: l * jnp.array([1.0, -1.0]),  # cos - 1 stays, sin turns.
    "rotate": lambda l: l * jnp.array([1.0, -1.0]),
    "translate_int": lambda l: -l, "translate": lambda l: -l, "scale": lambda l: -l,
    "aniso": lambda l: -l,
}


@pytest.mark.parametrize("name", list(aug.AUGMENTATIONS))
def test_the_inverse_label_undoes_each_op(name):
  """Pixel ops on noise: exactly (integer translation: where nothing was mirrored);
  resampled ops on the smooth image, moderate labels: within 0.05, away from borders."""
  cfg = aug.AugmentConfig(p=1.0, ops=(name,))
  exact = aug.AUGMENTATIONS[name].pixels is not None
  if exact:
    images = jax.random.uniform(jax.random.key(0), (16, N, N, 3), minval=-1, maxval=1)
  else:
    images = jnp.broadcast_to(smooth(*grid()), (16, N, N, 3))
  out, labels = aug.augment(images, jax.random.key(4), cfg)
  if not exact:  # Labels of moderate size: most of the image stays inside.
    labels = labels / jnp.maximum(1.0, jnp.abs(labels).max(-1, keepdims=True) / 1.5)
    out = aug.apply(images, labels, (name,))
  back = aug.apply(out, INVERSE[name](labels), (name,))
  assert bool(jnp.any(out != images))
  if name == "translate_int":
    m = int(N * aug.TRANSLATE_INT_MAX)
    np.testing.assert_array_equal(back[:, m:-m, m:-m], images[:, m:-m, m:-m])
  elif exact:
    np.testing.assert_array_equal(back, images)
  else:
    q = N // 4
    assert float(jnp.abs(back - images)[:, q:-q, q:-q].max()) < 0.05


def test_anchors_of_the_label_layout():
  img = jax.random.uniform(jax.random.key(1), (1, N, N, 3))
  one = jnp.ones((1, 1))
  np.testing.assert_array_equal(aug.apply(img, one, ("xflip",)), img[:, :, ::-1])
  np.testing.assert_array_equal(aug.apply(img, one, ("yflip",)), img[:, ::-1])
  quarter = jnp.array([[-1.0, 1.0]])  # cos(pi/2) - 1, sin(pi/2).
  np.testing.assert_array_equal(aug.apply(img, quarter, ("rotate90",)),
                                jnp.rot90(img, 1, axes=(1, 2)))
  # The resampled rotation by pi/2 on a smooth image: the same turn.
  smooth_img = smooth(*grid())[None]
  np.testing.assert_allclose(aug.apply(smooth_img, quarter, ("rotate",)),
                             jnp.rot90(smooth_img, 1, axes=(1, 2)), atol=0.03)
  right = jnp.array([[1.0, 0.0]]) / (N * aug.TRANSLATE_INT_MAX)  # One pixel right.
  moved = aug.apply(img, right, ("translate_int",))
  np.testing.assert_array_equal(moved[:, :, 1:], img[:, :, :-1])
  # Label layout: the registry's order, whatever the list's.
  a = aug.AugmentConfig(p=1.0, ops=("translate", "xflip"))
  assert aug.ordered(a.ops) == ["xflip", "translate"] and a.label_dim == 3
  assert aug.AugmentConfig(p=0.12).label_dim == 9  # EDM's.


def test_zero_labels_leave_images_exactly_and_p_is_the_rate():
  cfg = aug.AugmentConfig(p=0.5, ops=tuple(aug.AUGMENTATIONS), always=("xflip",))
  images = jax.random.uniform(jax.random.key(2), (256, 8, 8, 1), minval=-1, maxval=1)
  out, labels = jax.jit(aug.augment, static_argnums=2)(images, jax.random.key(5), cfg)
  assert labels.shape == (256, aug.label_dim(cfg.ops))
  off = ~jnp.any(labels[:, 1:] != 0, axis=-1) & (labels[:, 0] == 0)
  assert int(off.sum()) > 0
  np.testing.assert_array_equal(out[off], images[off])
  # scale is on for p of the examples (its label is never 0 when on); xflip for all,
  # half of which it mirrors.
  scale = labels[:, 1 + 1 + 2 + 2]
  assert abs(float(jnp.mean(scale != 0)) - 0.5) < 0.12
  assert abs(float(jnp.mean(labels[:, 0])) - 0.5) < 0.12
  zero_p = aug.AugmentConfig(p=0.0)
  out0, labels0 = aug.augment(images, jax.random.key(5), zero_p)
  np.testing.assert_array_equal(out0, images)
  assert labels0.shape == (256, 9) and not bool(jnp.any(labels0))


def test_network_reads_no_labels_as_zero_labels():
  cfg = UNetConfig(out_channels=1, ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                   num_groups=4, dropout=0.0, augment_dim=9)
  net = UNet(cfg)
  x, t = jax.random.normal(jax.random.key(0), (2, 8, 8, 1)), jnp.array([0.3, 0.7])
  params = net.init(jax.random.key(1), x, t)["params"]
  assert params["augment_emb"]["kernel"].shape == (9, 8) and "bias" not in params["augment_emb"]
  # Perturbed away from the zero-initialised output layer, so that the output moves.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.1 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  # Op by op (not jitted): two compiled programs may fuse differently and round
  # differently (by 1e-6 here); op by op, a zero label adds exactly 0.
  apply = lambda c: net.apply({"params": params}, x, t, c)
  none, zero = apply(Cond()), apply(Cond(augment=jnp.zeros((2, 9))))
  np.testing.assert_array_equal(none, zero)
  assert float(jnp.abs(apply(Cond(augment=jnp.ones((2, 9)))) - none).max()) > 1e-3
  with pytest.raises(ValueError, match="takes no augmentation labels"):
    UNet(UNetConfig(out_channels=1, ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                    num_groups=4)).init(jax.random.key(1), x, t, Cond(augment=jnp.zeros((2, 9))))


def _steps(config):
  mesh = mesh_lib.make_mesh(1)
  spec = spec_lib.parse(config, 1)
  net, tx = build.model(spec), build.optimizer_of(spec)
  init, key, abstract = build.init_fns(spec, net, tx, mesh)
  return spec, net, tx, mesh, init, key, abstract


def test_zero_probability_keeps_the_train_step_bit_for_bit():
  """With augment.p = 0 the run's train step is today's program, op for op (its
  lowered text; nothing is compiled), so its results are the same bit for bit."""
  spec, net, tx, mesh, init, key, abstract = _steps(tiny_config(**{"augment.p": 0.0}))
  batch = fake_batch()
  lowered = lambda step, state: jax.jit(step).lower(state, batch).as_text()
  # The step as it was: no augmentation argument at all.
  before = lowered(make_train_step(net, tx, spec.diffusion, spec.training.ema_decay,
                                   spec.dropout, spec.cond), abstract)
  assert lowered(build.train_step(spec, net, tx), abstract) == before
  # The comparison can fail: with augmentation on, the program differs.
  spec, net, tx, mesh, init, key, abstract = _steps(
      tiny_config(**{"augment.p": 0.12, "model.augment_dim": 9}))
  assert lowered(build.train_step(spec, net, tx), abstract) != before


def test_train_step_with_augmentation_feeds_the_labels():
  steps = 5
  config = tiny_config(**{"augment.p": 1.0, "model.augment_dim": 9,
                          "training.label_dropout": 0.0, "optim.warmup_steps": 1,
                          "optim.lr_schedule": "constant"})
  spec, net, tx, mesh, init, key, abstract = _steps(config)
  first = init(key).params["augment_emb"]["kernel"]
  assert first.shape == (9, 8)
  step = build.jitted_train_step(spec, net, tx, mesh, abstract)
  losses = []
  for start in range(2):  # The same run twice: the same losses.
    state = init(key)
    for _ in range(steps):
      state, metrics = step(state, fake_batch())
      losses.append(float(metrics["loss"]))
  assert losses[:steps] == losses[steps:] and np.all(np.isfinite(losses))
  # The labels reach the network: its augmentation weights learn (the embeddings get a
  # gradient once the zero-initialised output convolutions have moved: from step 4).
  assert float(jnp.abs(state.params["augment_emb"]["kernel"] - first).max()) > 0


BAD = [
    ({"augment.p": 0.12}, "model.augment_dim=0, but augment.p=0.12 with augment.ops="),
    ({"augment.p": 0.12, "model.augment_dim": 4}, "set model.augment_dim=9"),
    ({"model.augment_dim": 9}, "model.augment_dim=9 without augmentation (augment.p=0)"),
    ({"augment.p": 1.5}, "augment.p=1.5 must be a finite number in [0, 1]"),
    ({"augment.p": 0.1, "augment.ops": ("xflip", "xflip"), "model.augment_dim": 2},
     "names an op twice"),
    ({"augment.p": 0.1, "augment.always": ("rotate90",), "model.augment_dim": 9},
     "augment.always ['rotate90'] are not in augment.ops"),
    ({"augment.always": ("xflip",)}, "augment.always=('xflip',) needs augment.p > 0"),
    ({"augment.p": 0.1, "augment.ops": ()}, "augment.p=0.1 needs augment.ops"),
    ({"augment.p": 0.1, "model.augment_dim": 9, "latent.autoencoder": "runs/ae"},
     "augmentation of latent diffusion is not supported yet"),
]


@pytest.mark.parametrize("over,message", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_augment_configs_are_refused(over, message):
  with pytest.raises(ConfigError) as e:
    spec_lib.parse(tiny_config(**over), 1)
  assert message in str(e.value), str(e.value)
  assert len(e.value.problems) == 1, e.value.problems


def test_cli_trains_with_augmentation_then_samples(tmp_path, data_dir):
  wd = str(tmp_path / "wd")
  over = {"augment.p": 0.5, "augment.always": "('xflip',)", "model.augment_dim": 9,
          "training.num_steps": 2, "training.checkpoint_every": 2, "training.log_every": 1,
          "optim.warmup_steps": 1, "training.sample_at_end": False}
  r = cli(wd, overrides=over, data_dir=data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "step 2/2" in r.stdout
  r = cli(wd, "--mode=sample", overrides=over, data_dir=data_dir)
  assert r.returncode == 0, r.stderr[-3000:]
  data = np.load(os.path.join(wd, "samples", "step_2.npz"))
  assert data["images"].shape == (10, 8, 8, 1)
  # A bad one: one error line, nothing written.
  bad = str(tmp_path / "bad")
  r = cli(bad, overrides={"augment.p": 0.12}, data_dir=data_dir)
  assert r.returncode == 2 and "error: model.augment_dim=0, but augment.p=0.12" in r.stderr
  assert not os.path.exists(bad)
  r = cli(bad, overrides={"augment.p": 0.12, "augment.ops": "(xflip,rotate)"}, data_dir=data_dir)
  assert r.returncode == 2 and "--config.augment.ops=\"('xflip','rotate')\"" in r.stderr
  assert not os.path.exists(bad)


SHARDED = """
import jax, numpy as np
from diffusion_jax.training import augment as aug, mesh as mesh_lib
cfg = aug.AugmentConfig(p=0.5, ops=tuple(aug.AUGMENTATIONS), always=("xflip",))
images = np.random.default_rng(0).uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32)
f = lambda x, k: aug.augment(x, k, cfg)
one = jax.jit(f)(images, jax.random.key(7))
data = mesh_lib.data_sharded(mesh_lib.make_mesh(8))
eight = jax.jit(f, in_shardings=(data, None))(jax.device_put(images, data), jax.random.key(7))
assert len(eight[0].sharding.device_set) == 8
np.testing.assert_array_equal(np.asarray(one[1]), np.asarray(eight[1]))
np.testing.assert_allclose(np.asarray(one[0]), np.asarray(eight[0]), atol=1e-6)
print("same on 8 devices", int((np.asarray(one[1]) != 0).any(-1).sum()), "augmented")
"""


def test_augmentation_does_not_depend_on_the_sharding():
  """Each example's labels and image are the same with the batch split over 8 devices."""
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="8", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "same on 8 devices" in out.stdout


def test_image_conditions_are_made_from_the_augmented_images():
  """The train step, op by op, with a stand-in network that records what it is given:
  the sr condition is the augmented image's, and the labels are the augmentation's,
  also when the batch is split into microbatches."""
  seen = []

  class Recorder:
    config = UNetConfig(out_channels=1, ch=8, ch_mult=(1,), num_groups=4,
                        cond_image_channels=1, augment_dim=1)

    def apply(self, variables, x_t, t, cond, train=False, rngs=None):
      seen.append(cond)  # Its output depends on the conditions, example by example.
      return variables["params"]["w"] * x_t + cond.image + cond.augment[:, :, None, None]

  cfg = aug.AugmentConfig(p=1.0, ops=("xflip",))
  cond_cfg = conditions.CondConfig(image="sr", sr_factor=2)
  tx = optax.sgd(0.1)
  process = diffusion.from_config(defaults.get_config().diffusion)
  step = lambda k: make_train_step(Recorder(), tx, process, 0.9, {}, cond_cfg,
                                   microbatches=k, augment=cfg)
  params = {"w": jnp.ones(())}
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                     opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(0)))
  images = jax.random.uniform(jax.random.key(1), (16, 8, 8, 1), minval=-1, maxval=1)
  # In 4 microbatches each example keeps its labels: the same loss.
  _, by4 = step(4)(state, {"image": images})
  _, whole = step(1)(state, {"image": images})
  np.testing.assert_allclose(float(by4["loss"]), float(whole["loss"]), rtol=1e-6)
  labels = seen[-1].augment
  assert labels.shape == (16, 1) and 0 < float(labels.sum()) < 16  # Some flipped, some not.
  flipped = aug.apply(images, labels, cfg.ops)
  want = conditions.IMAGE_CONDITIONS["sr"].model_image(
      {"lowres": area_downsample(flipped, 2)}, 8)
  np.testing.assert_allclose(seen[-1].image, want, atol=1e-6)
  unflipped = conditions.IMAGE_CONDITIONS["sr"].model_image(
      {"lowres": area_downsample(images, 2)}, 8)
  assert float(jnp.abs(seen[-1].image - unflipped).max()) > 0.1
