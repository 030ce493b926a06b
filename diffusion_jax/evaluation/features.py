"""Feature networks of the sample metrics: the `eval.feature_net` names.

`inception` is the FID Inception-v3 (inception.py), whose weights must be converted
once from pytorch-fid's release file (`eval.inception_weights` names the .npz). The
others are small CNN classifiers trained here on the bundled datasets by
experiments/train_feature_nets.py and shipped inside the package as versioned weight
files (`feature_nets/<name>.npz`, with their content hash): the metrics of the bundled
results run offline. Their features are the penultimate layer, as pool3 is Inception's.

Every network takes uint8 NHWC images; `load` returns an `Extractor` that turns them
into features (N, D) and, where the network has a single classifier head, class
probabilities (for the Inception Score).
"""

import dataclasses
import os
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffusion_jax.evaluation import inception

Array = jax.Array
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "feature_nets")


class Extractor(NamedTuple):
  """A loaded feature network: its name, content hash, and the batched function
  uint8 images (B, H, W, C) -> {"features": (B, D), "probs": (B, K) if it classifies}."""
  name: str
  sha256: str
  fn: Callable[[np.ndarray], dict]


class SmallCNN(nn.Module):
  """3x3 convolutions (the first at stride 1, the others at stride 2), a dense
  feature layer, and one linear classifier head per label.

  Input: float NHWC images in [0, 1]. Output: {"features": (B, features),
  "logits": [(B, k) for k in heads]}. The spatial map is flattened, not pooled,
  so the features keep where things are (the shapes' positions)."""
  widths: tuple[int, ...]
  features: int
  heads: tuple[int, ...]

  @nn.compact
  def __call__(self, x: Array) -> dict:
    x = 2.0 * x - 1.0
    for i, w in enumerate(self.widths):
      x = nn.relu(nn.Conv(w, (3, 3), strides=1 if i == 0 else 2, name=f"conv{i}")(x))
    x = x.reshape((x.shape[0], -1))
    f = nn.relu(nn.Dense(self.features, name="features")(x))
    return {"features": f,
            "logits": [nn.Dense(k, name=f"head{i}")(f) for i, k in enumerate(self.heads)]}


@dataclasses.dataclass(frozen=True)
class SmallNet:
  """A SmallCNN trained on one bundled dataset (experiments/train_feature_nets.py)."""
  dataset: str  # The bundled dataset it was trained on; "auto" picks it for that data.
  description: str  # What its heads classify, for the docs.
  image_size: int
  channels: int
  widths: tuple[int, ...]
  dim: int  # Feature dimension (the penultimate layer's width).
  heads: tuple[int, ...]

  @property
  def num_classes(self) -> int:
    """Classes of its single head (the Inception Score's p(y|x)); 0 with several heads."""
    return self.heads[0] if len(self.heads) == 1 else 0

  def module(self) -> SmallCNN:
    return SmallCNN(self.widths, self.dim, self.heads)

  def check_input(self, image_size: int, channels: int) -> str:
    """Why images of this size and channels cannot be measured, or ""."""
    if channels != self.channels:
      return (f"takes {self.channels}-channel images ({self.dataset}), the data has "
              f"{channels}")
    return ""

  def load(self, name: str, inception_weights: str = "") -> Extractor:
    del inception_weights
    path = os.path.join(WEIGHTS_DIR, name + ".npz")
    if not os.path.exists(path):
      raise FileNotFoundError(f"feature network weights {path} not found: the package "
                              "was installed without them; reinstall it, or train them with "
                              "`python experiments/train_feature_nets.py " + self.dataset + "`")
    variables, digest = read_weights(path, expected_shapes(self))
    model, size = self.module(), self.image_size

    @jax.jit
    def apply(images):
      x = images.astype(jnp.float32) / 255.0
      if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear",
                             antialias=False)
      out = model.apply(variables, x)
      result = {"features": out["features"]}
      if self.num_classes:
        result["probs"] = jax.nn.softmax(out["logits"][0])
      return result

    return Extractor(name, digest, lambda images: apply(jnp.asarray(images)))


@dataclasses.dataclass(frozen=True)
class InceptionNet:
  """The FID Inception-v3: pool3 features, softmax of its unbiased logits for IS."""
  dataset: str = ""
  description: str = ("FID Inception-v3 (pytorch-fid's weights, converted once); "
                      "images resized to 299x299")
  dim: int = inception.NUM_FEATURES
  num_classes: int = inception.NUM_CLASSES

  def check_input(self, image_size: int, channels: int) -> str:
    del image_size, channels  # Any size is resized; gray is repeated to RGB.
    return ""

  def load(self, name: str, inception_weights: str = "") -> Extractor:
    weights = inception.load_inception(inception_weights)
    fn = inception.make_inception_fn(weights)

    def apply(images):
      x = np.asarray(images, np.float32) / 255.0
      if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
      out = fn(x)
      return {"features": out["pool"], "probs": jax.nn.softmax(out["logits_unbiased"])}

    return Extractor(name, weights.sha256, apply)


# eval.feature_net names. Offline nets are versioned: a retrained net gets a new name,
# so results recorded with the old one stay reproducible.
FEATURE_NETS: dict[str, InceptionNet | SmallNet] = {
    "inception": InceptionNet(),
    "digits-v1": SmallNet(
        dataset="sklearn_digits", description="the digit's class (10)",
        image_size=8, channels=1, widths=(32, 64, 64), dim=64, heads=(10,)),
    "shapes-v1": SmallNet(
        dataset="shapes_captions",
        description="for each of the 5 positions: empty, or which of the 2 sizes x 7 "
                    "colours x 3 shapes stands there (43 classes)",
        image_size=32, channels=3, widths=(16, 32, 64, 64), dim=128, heads=(43,) * 5),
    "photos-v1": SmallNet(
        dataset="photo_patches",
        description="which of the 10 photographs and which of the 3 scales (30)",
        image_size=32, channels=3, widths=(16, 32, 64, 64), dim=128, heads=(30,)),
}
AUTO = "auto"  # The dataset's own offline net if it has one, else inception.


def resolve(name: str, data_name: str) -> str:
  """The feature net `name` stands for with data `data_name` ("auto" resolved)."""
  if name != AUTO:
    return name
  base = data_name.split(":")[0].split("/")[0]
  own = [n for n, net in FEATURE_NETS.items() if net.dataset == base]
  return own[-1] if own else "inception"


def expected_shapes(net: SmallNet) -> dict[str, tuple[int, ...]]:
  shapes = jax.eval_shape(net.module().init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, net.image_size, net.image_size,
                                                net.channels), jnp.float32))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}


def save_weights(variables: dict, path: str) -> str:
  """Writes Flax variables and their content hash (atomically); returns the hash."""
  flat = {k: np.asarray(v, np.float32)
          for k, v in traverse_util.flatten_dict(variables, sep="/").items()}
  digest = inception.weights_hash(flat)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    np.savez(f, **flat, **{inception.HASH_KEY: np.array(digest)})
  os.replace(tmp, path)
  return digest


def read_weights(path: str, want: dict[str, tuple[int, ...]]) -> tuple[dict, str]:
  """Flax variables from a weight file, checked against the network's shapes (the
  first missing, unexpected or misshapen layer is named) and its stored hash."""
  with np.load(path, allow_pickle=False) as f:
    flat = {k: f[k] for k in f.files}
  stored = str(flat.pop(inception.HASH_KEY, ""))
  missing, extra = sorted(set(want) - set(flat)), sorted(set(flat) - set(want))
  if missing or extra:
    raise ValueError(f"{path}: not this network's weights: "
                     + (f"missing layers {missing[:3]}" if missing else
                        f"unexpected layers {extra[:3]}"))
  for name, shape in want.items():
    if tuple(flat[name].shape) != shape:
      raise ValueError(f"{path}: layer {name} has shape {tuple(flat[name].shape)}, the "
                       f"network expects {shape}")
  digest = inception.weights_hash(flat)
  if stored and digest != stored:
    raise ValueError(f"{path}: content hash {digest[:12]} differs from the stored "
                     f"{stored[:12]}: the file is damaged or was edited")
  return traverse_util.unflatten_dict(flat, sep="/"), digest


def extract(extractor: Extractor, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
  """Runs the extractor over uint8 images (N, H, W, C) in fixed-size batches (the
  last one padded), so the network compiles once."""
  if len(images) == 0:
    raise ValueError("no images to measure")
  out: dict[str, list] = {}
  for start in range(0, len(images), batch_size):
    batch = np.asarray(images[start:start + batch_size])
    n = len(batch)
    if n < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - n,) + batch.shape[1:], batch.dtype)])
    for k, v in extractor.fn(batch).items():
      out.setdefault(k, []).append(np.asarray(v, np.float64)[:n])
  return {k: np.concatenate(v) for k, v in out.items()}
