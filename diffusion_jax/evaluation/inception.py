"""The FID Inception-v3 in Flax: pytorch-fid's `InceptionV3([3])` with its FID weights.

This is the 2015-12-05 TensorFlow graph used by the original FID code, in the form
pytorch-fid gives it: torchvision's Inception-v3 with its Mixed_5b-d, 6b-e and 7b-c
blocks patched to follow the TF graph (average pools that leave the zero padding out
of the mean, and a max pool in Mixed_7c). Given the same weights it computes the same
numbers as pytorch-fid, so FIDs are comparable with papers that used pytorch-fid.

Input: NHWC float images with values in [0, 1] (uint8 images: divide by 255 first;
integer arrays are refused rather than silently read as [0, 255] floats). Any
height and width: images are resized to 299x299 with bilinear interpolation, half-pixel
centres and no antialiasing (torch's `interpolate(align_corners=False)`), then mapped to
[-1, 1]. Outputs:
  pool:            (B, 2048) the average-pooled features of FID and KID ("pool3").
  logits:          (B, 1008) the fully connected layer, bias included.
  logits_unbiased: (B, 1008) the same without the bias: the original Inception Score
                   code read softmax(pool @ W), and torch-fidelity follows it.

Weights come from pytorch-fid's release file, converted once with
`python -m diffusion_jax.evaluation.convert_inception` (the only step that needs
torch); `load_inception` reads the converted .npz with numpy.
"""

import functools
import hashlib
import os
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Array = jax.Array

PT_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
PT_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                  + PT_WEIGHTS_NAME)
INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_CLASSES = 1008  # ImageNet's 1000 classes and 8 unused outputs of the TF graph.
BN_EPSILON = 1e-3
# Key of the content hash stored beside the weights in the .npz.
HASH_KEY = "__sha256__"


def _pads(p: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((p[0], p[0]), (p[1], p[1]))


class BasicConv(nn.Module):
  """Convolution without bias, inference-mode BatchNorm (eps 1e-3), ReLU."""
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                padding=_pads(self.padding), use_bias=False, precision=self.precision,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: Array) -> Array:
  # TF's SAME average pool divides by the number of real pixels under the window.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_s2(x: Array) -> Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
  """Mixed_5b/c/d: 1x1, 5x5, double 3x3 and pooled branches (35x35)."""
  pool_features: int
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    b1 = conv(64, (1, 1), name="branch1x1")(x)
    b5 = conv(48, (1, 1), name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: grid reduction 35x35 -> 17x17."""
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    b3 = conv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b/c/d/e: factorised 7x7 branches (17x17)."""
  channels_7x7: int
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, (1, 1), name="branch1x1")(x)
    b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: grid reduction 17x17 -> 8x8."""
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    b3 = conv(192, (1, 1), name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/c: expanded 1x3 / 3x1 branches (8x8).

  The TF graph pools with an average in Mixed_7b but a max in Mixed_7c (pool="max"),
  unlike the paper; the FID weights were trained with that graph.
  """
  pool: str = "avg"
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    b1 = conv(320, (1, 1), name="branch1x1")(x)
    b3 = conv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
    bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
    if self.pool == "max":
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x)
    bp = conv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def preprocess(images: Array, resize: bool = True, normalize: bool = True) -> Array:
  """[0, 1] NHWC images -> 299x299 in [-1, 1], as pytorch-fid's InceptionV3 does."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    raise TypeError(f"FID Inception takes float images in [0, 1], got {images.dtype}: "
                    "divide uint8 images by 255 first")
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"FID Inception takes NHWC RGB images, got shape {images.shape}")
  x = images.astype(jnp.float32)
  if resize and x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    # antialias=False: torch's bilinear interpolate does not prefilter when shrinking.
    x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "bilinear",
                         antialias=False)
  if normalize:
    x = 2.0 * x - 1.0
  return x


class FIDInceptionV3(nn.Module):
  """pytorch-fid's FID Inception-v3 (output block 3, pool3), plus its logits.

  Attributes:
    resize_input: resize to 299x299 first (bilinear, as pytorch-fid).
    normalize_input: map [0, 1] inputs to [-1, 1].
    precision: of the convolutions and the fc layer. HIGHEST by default: on TPUs and
      recent GPUs the default precision rounds operands to bf16/tf32, which moves FID.
  """
  resize_input: bool = True
  normalize_input: bool = True
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images: Array) -> dict[str, Array]:
    x = preprocess(images, self.resize_input, self.normalize_input)
    conv = functools.partial(BasicConv, precision=self.precision)
    p = self.precision
    x = conv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, p, name="Mixed_5b")(x)
    x = InceptionA(64, p, name="Mixed_5c")(x)
    x = InceptionA(64, p, name="Mixed_5d")(x)
    x = InceptionB(p, name="Mixed_6a")(x)
    x = InceptionC(128, p, name="Mixed_6b")(x)
    x = InceptionC(160, p, name="Mixed_6c")(x)
    x = InceptionC(160, p, name="Mixed_6d")(x)
    x = InceptionC(192, p, name="Mixed_6e")(x)
    x = InceptionD(p, name="Mixed_7a")(x)
    x = InceptionE("avg", p, name="Mixed_7b")(x)
    x = InceptionE("max", p, name="Mixed_7c")(x)
    pool = x.mean(axis=(1, 2))
    fc = nn.Dense(NUM_CLASSES, precision=p, name="fc")
    logits = fc(pool)
    kernel = fc.variables["params"]["kernel"]
    return {"pool": pool, "logits": logits,
            "logits_unbiased": jnp.matmul(pool, kernel, precision=p)}


@functools.lru_cache(maxsize=1)
def expected_shapes() -> dict[str, tuple[int, ...]]:
  """Flat name ("params/Mixed_5b/branch1x1/conv/kernel") -> shape of every variable."""
  shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}


def weights_hash(flat: Mapping[str, np.ndarray]) -> str:
  """SHA-256 of the weights' names, dtypes, shapes and values (not of the file).

  It identifies the network's content, whatever container holds it: reference
  statistics computed with these weights are keyed on it.
  """
  h = hashlib.sha256()
  for name in sorted(flat):
    if name == HASH_KEY:
      continue
    a = np.ascontiguousarray(flat[name])
    h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def check_shapes(flat: Mapping[str, np.ndarray], source: str) -> None:
  """Raises ValueError naming the first missing, unexpected or misshapen variable."""
  want = expected_shapes()
  missing = sorted(set(want) - set(flat))
  extra = sorted(set(flat) - set(want) - {HASH_KEY})
  if missing:
    raise ValueError(f"{source}: {len(missing)} FID Inception variables missing, "
                     f"e.g. {missing[:3]}")
  if extra:
    raise ValueError(f"{source}: {len(extra)} unexpected variables, e.g. {extra[:3]}")
  for name, shape in want.items():
    if tuple(flat[name].shape) != shape:
      raise ValueError(f"{source}: layer {name} has shape {tuple(flat[name].shape)}, "
                       f"the FID Inception expects {shape}")


class InceptionWeights(NamedTuple):
  """Flax variables ({"params", "batch_stats"}) and their content hash."""
  variables: dict
  sha256: str


def missing_weights_message(path: str) -> str:
  return (f"FID Inception weights {path} not found: download {PT_WEIGHTS_URL} on a "
          "machine with internet access, then run `python -m "
          f"diffusion_jax.evaluation.convert_inception --src={PT_WEIGHTS_NAME} "
          f"--dst={path}`")


def load_inception(path: str) -> InceptionWeights:
  """Reads weights written by convert_inception (numpy only), checking shapes and hash."""
  if not os.path.exists(path):
    raise FileNotFoundError(missing_weights_message(path))
  with np.load(path, allow_pickle=False) as f:
    flat = {k: f[k] for k in f.files}
  if HASH_KEY not in flat:
    raise ValueError(f"{path}: no content hash ({HASH_KEY}); not written by "
                     "convert_inception, convert the .pth again")
  check_shapes(flat, path)
  stored = str(flat.pop(HASH_KEY))
  actual = weights_hash(flat)
  if actual != stored:
    raise ValueError(f"{path}: content hash {actual[:12]} differs from the stored "
                     f"{stored[:12]}: the file is damaged or was edited, convert again")
  variables = traverse_util.unflatten_dict({k: v.astype(np.float32) for k, v in flat.items()},
                                           sep="/")
  return InceptionWeights(variables, stored)


def make_inception_fn(weights: InceptionWeights,
                      precision: Any = jax.lax.Precision.HIGHEST
                      ) -> Callable[[Array], dict[str, Array]]:
  """images (B, H, W, 3) in [0, 1] -> {"pool", "logits", "logits_unbiased"}, jitted.

  Resizing is compiled apart from the network, so images of a new size cost only a
  small compile; the network compiles once per batch size (pad the last batch).
  """
  model = FIDInceptionV3(resize_input=False, normalize_input=False, precision=precision)
  variables = jax.device_put(weights.variables)
  prepare = jax.jit(preprocess)
  # Weights are an argument, not a closure: constants of 95 MB would slow compiling.
  network = jax.jit(model.apply)

  def fn(images: Array) -> dict[str, Array]:
    return network(variables, prepare(jnp.asarray(images)))

  return fn


def inception_features(fn: Callable[[Array], dict[str, Array]], images: np.ndarray,
                       batch_size: int = 50, keys: tuple[str, ...] = ("pool",),
                       ) -> dict[str, np.ndarray]:
  """Runs `fn` over `images` (N, H, W, 3) in batches; the last one is padded to size."""
  if len(images) == 0:
    raise ValueError("inception_features: no images")
  out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
  for start in range(0, len(images), batch_size):
    batch = np.asarray(images[start:start + batch_size])
    n = len(batch)
    if n < batch_size:
      pad = np.zeros((batch_size - n,) + batch.shape[1:], batch.dtype)
      batch = np.concatenate([batch, pad])
    result = fn(batch)
    for k in keys:
      out[k].append(np.asarray(result[k][:n]))
  return {k: np.concatenate(v) for k, v in out.items()}


def count_params() -> int:
  """Number of parameters (BatchNorm statistics not counted) of the FID Inception."""
  return int(sum(np.prod(s) for k, s in expected_shapes().items() if k.startswith("params/")))
