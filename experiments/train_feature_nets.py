"""Trains the offline feature networks of the bundled datasets (evaluation/features.py).

  python experiments/train_feature_nets.py digits-v1 shapes-v1 photos-v1

Each is a small CNN classifier (features.SmallNet) trained on labels the dataset
carries; its penultimate layer is what the sample metrics (FD, KID, precision,
recall) compare. Writes diffusion_jax/evaluation/feature_nets/<name>.npz (refusing to
replace one: a retrained net is a new version, e.g. digits-v2, registered in
features.FEATURE_NETS) and experiments/results/feature_nets.json (held-out accuracy,
parameters, content hash, training time).

  digits-v1: the digit class; trained on the train split, held out: the test split.
  shapes-v1: for each of the 5 positions, which (size, colour, shape) stands there or
             none; trained on random renders of the whole grammar (every phrase, the
             test split's held-out ones too: the metric must see them), held out: the
             dataset's test split. The grammar has only 3,738 distinct images, so
             held-out here means unseen draws, not unseen images.
  photos-v1: which photograph (all 10) and which of the 3 scales a 32x32 crop comes
             from, with random horizontal flips (the photo configs flip); held out:
             crops drawn with another seed.
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax.data import digits, photos, shapes  # noqa: E402
from diffusion_jax.evaluation import features  # noqa: E402

RESULTS = os.path.join(ROOT, "experiments", "results", "feature_nets.json")


def digits_data(seed: int):
  images, labels = digits.digits_arrays()
  tr = digits.split_indices("train", len(labels))
  te = digits.split_indices("test", len(labels))
  return (images[tr], labels[tr][:, None]), (images[te], labels[te][:, None])


def shape_labels(attributes: np.ndarray) -> np.ndarray:
  """(N, 2, 4) (size, colour, shape, position) rows (-1 = none) -> (N, 5) per-position
  classes: 0 empty, else 1 + (size * 7 + colour) * 3 + shape."""
  out = np.zeros((len(attributes), len(shapes.POSITIONS)), np.int64)
  for i, rows in enumerate(attributes):
    for size, colour, shape, position in rows:
      if position >= 0:
        out[i, position] = 1 + (size * len(shapes.COLORS) + colour) * len(shapes.SHAPES) + shape
  return out


def random_shapes(rng: np.random.Generator) -> list[tuple]:
  colours, positions = list(shapes.COLORS), list(shapes.POSITIONS)
  draw = lambda pos: (shapes.SIZES[rng.integers(2)], colours[rng.integers(len(colours))],
                      shapes.SHAPES[rng.integers(len(shapes.SHAPES))], pos)
  if rng.integers(2):
    return [draw(positions[rng.integers(len(positions))])]
  return [draw(p) for p in shapes.PAIRS[rng.integers(len(shapes.PAIRS))]]


def shapes_data(seed: int, n_train: int = 20_000, n_test: int = 2_000):
  rng = np.random.default_rng(seed)
  colours, positions = list(shapes.COLORS), list(shapes.POSITIONS)
  images, attrs = [], []
  for _ in range(n_train):
    s = random_shapes(rng)
    images.append(shapes.render(s))
    a = np.full((shapes.MAX_SHAPES, 4), -1)
    for i, (size, colour, shape, pos) in enumerate(s):
      a[i] = (shapes.SIZES.index(size), colours.index(colour), shapes.SHAPES.index(shape),
              positions.index(pos))
    attrs.append(a)
  test = [shapes.example("test", i) for i in range(n_test)]
  return ((np.stack(images), shape_labels(np.stack(attrs))),
          (np.stack([t["image"] for t in test]),
           shape_labels(np.stack([t["attributes"] for t in test]))))


def photo_crops(seed: int, n: int, size: int = 32):
  rng = np.random.default_rng(seed)
  names, factors = list(photos.PHOTOS), photos.scales(size)
  scaled = {(p, f): photos.downscale(photos.load_photo(p), f) for p in names for f in factors}
  images, labels = [], []
  while len(images) < n:
    p, s = int(rng.integers(len(names))), int(rng.integers(len(factors)))
    photo = scaled[(names[p], factors[s])]
    top = int(rng.integers(photo.shape[0] - size + 1))
    left = int(rng.integers(photo.shape[1] - size + 1))
    crop = photo[top:top + size, left:left + size]
    if not photos.is_textured(crop):  # As the dataset: flat crops are redrawn.
      continue
    images.append(crop[:, ::-1] if rng.integers(2) else crop)
    labels.append(p * len(factors) + s)
  return np.stack(images), np.asarray(labels)[:, None]


def photos_data(seed: int):
  return photo_crops(2 * seed, 30_000), photo_crops(2 * seed + 1, 3_000)


DATA = {"digits-v1": digits_data, "shapes-v1": shapes_data, "photos-v1": photos_data}
STEPS = {"digits-v1": 2_000, "shapes-v1": 1_500, "photos-v1": 2_000}


def unit_scale_features(model, params, images):
  """Rescales the feature layer so its outputs have mean square 1 per dimension on the
  training images, and the heads to match: relu(c z) = c relu(z) for c > 0, so the
  classifier is unchanged while FD, KID and precision/recall see features of a fixed,
  Inception-like scale (KID's kernel (x.y / D + 1)^3 assumes x.y / D of order 1)."""
  f = np.asarray(model.apply(params, images)["features"], np.float64)
  c = 1.0 / np.sqrt(np.mean(f ** 2))
  p = jax.tree.map(np.asarray, params)["params"]
  p["features"] = {k: v * c for k, v in p["features"].items()}
  for name in p:
    if name.startswith("head"):
      p[name] = {"kernel": p[name]["kernel"] / c, "bias": p[name]["bias"]}
  return {"params": p}


def train(name: str, weights_dir: str, seed: int = 0, batch: int = 128, lr: float = 2e-3) -> dict:
  net = features.FEATURE_NETS[name]
  (x, y), (xt, yt) = DATA[name](seed)
  model = net.module()
  to_float = lambda a: jnp.asarray(a, jnp.float32) / 255.0
  params = model.init(jax.random.key(seed), to_float(x[:1]))
  steps = STEPS[name]
  tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=1e-4)
  opt = tx.init(params)

  def loss_fn(p, images, labels):
    logits = model.apply(p, to_float(images))["logits"]
    return sum(optax.softmax_cross_entropy_with_integer_labels(l, labels[:, i]).mean()
               for i, l in enumerate(logits))

  @jax.jit
  def step(p, o, images, labels):
    loss, grads = jax.value_and_grad(loss_fn)(p, images, labels)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  @jax.jit
  def predict(p, images):
    return jnp.stack([l.argmax(-1) for l in model.apply(p, to_float(images))["logits"]], -1)

  rng = np.random.default_rng(seed)
  t0 = time.perf_counter()
  for i in range(steps):
    idx = rng.choice(len(x), batch, replace=False)
    params, opt, loss = step(params, opt, x[idx], y[idx])
    if (i + 1) % 500 == 0:
      print(f"{name} step {i + 1}/{steps} loss {float(loss):.4f}", flush=True)
  seconds = time.perf_counter() - t0
  params = unit_scale_features(model, params, to_float(x[:2000]))
  pred = np.concatenate([np.asarray(predict(params, xt[i:i + 500])) for i in range(0, len(xt), 500)])
  head_accuracy = (pred == yt).mean(0)
  path = os.path.join(weights_dir, name + ".npz")
  if os.path.exists(path):
    raise SystemExit(f"error: {path} exists; a retrained network is a new version "
                     "(register it under a new name in evaluation/features.py)")
  os.makedirs(weights_dir, exist_ok=True)
  digest = features.save_weights(params, path)
  return {"name": name, "dataset": net.dataset, "train_examples": int(len(x)),
          "held_out_examples": int(len(xt)),
          "held_out_accuracy": float((pred == yt).all(1).mean()),
          "held_out_accuracy_per_head": [float(a) for a in head_accuracy],
          "parameters": int(sum(np.size(v) for v in jax.tree.leaves(params))),
          "feature_dim": net.dim, "steps": steps, "batch": batch, "seed": seed,
          "train_seconds": round(seconds, 1), "sha256": digest,
          "file_bytes": os.path.getsize(path)}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("names", nargs="+", choices=sorted(DATA))
  p.add_argument("--weights-dir", default=features.WEIGHTS_DIR, help="where to write the .npz")
  p.add_argument("--results", default=RESULTS, help="the JSON of accuracies to update")
  args = p.parse_args()
  results = {}
  if os.path.exists(args.results):
    with open(args.results) as f:
      results = json.load(f)
  for name in args.names:
    r = train(name, args.weights_dir)
    print(json.dumps(r), flush=True)
    results[name] = r
    with open(args.results, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
