"""Reference features of a dataset split, computed once and cached beside the data.

The cache lives in the dataset's tfds data_dir:

  <data_dir>/diffusion_jax_reference/<dataset>[/<config>]/<version>/
      <split>_<size>px_<count>_<feature net>-<hash[:12]>.npz

keyed by the dataset's version, the split, the image size, the number of examples and
the feature network's content hash, so a new dataset version or other weights never
reuse stale statistics. A cache of another version of the same dataset is reported
(with a note) and left as it is; the statistics are computed anew beside it.
"""

import glob
import os
from typing import Callable, NamedTuple

import numpy as np

from diffusion_jax.data import pipeline, tfds_source
from diffusion_jax.evaluation import features
from diffusion_jax.evaluation.metrics import gaussian_stats

CACHE_DIR = "diffusion_jax_reference"


class Reference(NamedTuple):
  features: np.ndarray  # (N, D) float64.
  mu: np.ndarray
  sigma: np.ndarray
  path: str  # The cache file ("" when it could not be written).
  cached: bool  # Read from the cache rather than computed.


def cache_path(data_root: str, full_name: str, split: str, image_size: int, count: int,
               net: str, sha256: str) -> str:
  """full_name is tfds's "<dataset>[/<config>]/<version>"; count 0 = the whole split."""
  safe_split = split.replace("/", "_").replace(":", "_").replace("[", "_").replace("]", "")
  name = (f"{safe_split}_{image_size}px_{count or 'all'}_{net}-{sha256[:12]}.npz")
  return os.path.join(data_root, CACHE_DIR, full_name, name)


def _other_versions(path: str, full_name: str) -> list[str]:
  """Caches with the same key under another version of the dataset."""
  version_dir = os.path.dirname(path)
  pattern = os.path.join(os.path.dirname(version_dir), "*", os.path.basename(path))
  return sorted(p for p in glob.glob(pattern) if os.path.dirname(p) != version_dir)


def _read(path: str, count_hint: int) -> Reference | None:
  try:
    with np.load(path, allow_pickle=False) as f:
      feats, mu, sigma = f["features"], f["mu"], f["sigma"]
  except (OSError, KeyError, ValueError):
    return None
  if feats.ndim != 2 or mu.shape != (feats.shape[1],) or (count_hint and len(feats) != count_hint):
    return None
  return Reference(feats.astype(np.float64), mu, sigma, path, True)


def _write(path: str, feats: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> bool:
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
      np.savez(f, features=feats.astype(np.float32), mu=mu, sigma=sigma)
    os.replace(tmp, path)
    return True
  except OSError:
    return False


def _compute(data_cfg, split: str, max_examples: int, extractor: features.Extractor,
             batch_size: int) -> Reference:
  images = pipeline.load_split_numpy(data_cfg, split, max_examples or None)["image"]
  feats = features.extract(extractor, images, batch_size)["features"]
  mu, sigma = gaussian_stats(feats) if len(feats) > 1 else (feats.mean(0), np.zeros((0, 0)))
  return Reference(feats, mu, sigma, "", False)


def reference_features(data_cfg, split: str, max_examples: int, extractor: features.Extractor,
                       batch_size: int, note: Callable[[str], None] = print) -> Reference:
  """The features (and their mean and covariance) of `split`'s first `max_examples`
  images (0 = all) at data.image_size, from the cache or computed and cached."""
  if data_cfg.name in pipeline.SOURCES:  # A folder of the user's: nothing written there.
    return _compute(data_cfg, split, max_examples, extractor, batch_size)
  builder = tfds_source.get_builder(data_cfg.name, data_cfg.data_dir or None)
  tfds_source.prepare(builder)
  full_name = builder.info.full_name
  data_dir = os.fspath(builder.data_dir)
  root = data_dir[:-len(full_name)].rstrip("/") if data_dir.endswith(full_name) else \
      os.path.dirname(data_dir)
  path = cache_path(root, full_name, split, data_cfg.image_size, max_examples,
                    extractor.name, extractor.sha256)
  if os.path.exists(path):
    ref = _read(path, 0)
    if ref is not None:
      return ref
    note(f"note: reference cache {path} is unreadable; recomputed, not cached "
         "(delete it to cache again)")
  else:
    others = _other_versions(path, full_name)
    if others:
      note(f"note: reference statistics of {split!r} exist only for another version of "
           f"the dataset ({', '.join(others)}); computing them for {full_name}")
  ref = _compute(data_cfg, split, max_examples, extractor, batch_size)
  feats, mu, sigma = ref.features, ref.mu, ref.sigma
  written = not os.path.exists(path) and _write(path, feats, mu, sigma)
  if not written and not os.path.exists(path):
    note(f"note: could not write the reference cache {path}; computed without caching")
  return Reference(feats, mu, sigma, path if written else "", False)
