"""Sample-quality metrics on network features: FID, KID, Inception Score, precision/recall.

Pure numpy (float64) functions of feature arrays (N, D) or class probabilities (N, C);
computing the features (inception.py) is separate, so any embedding can be used.
"""

import warnings
from typing import Callable, NamedTuple

import numpy as np
import scipy.linalg
import scipy.special


def _features(x: np.ndarray, name: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f"{name}: expected features of shape (N, D), got {x.shape}")
  return x


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean (D,) and unbiased covariance (D, D) of features (N, D), as pytorch-fid."""
  x = _features(features, "gaussian_stats")
  if len(x) < 2:
    raise ValueError(f"gaussian_stats: a covariance needs at least 2 samples, got {len(x)}")
  return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                                sigma2: np.ndarray, eps: float = 1e-6) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):

    d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).

  Follows pytorch-fid's `calculate_frechet_distance` step for step, so the numbers
  agree: when sqrtm of the (near-)singular product is not finite, `eps` is added to
  both diagonals and it is taken again (with a warning); a complex result is accepted
  when the imaginary parts of its diagonal are within 1e-3 of zero (then dropped), and
  raises ValueError otherwise.
  """
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"frechet_distance: means {mu1.shape} vs {mu2.shape}, covariances "
                     f"{sigma1.shape} vs {sigma2.shape} differ")
  diff = mu1 - mu2
  covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    warnings.warn(f"frechet_distance: singular product, adding {eps} to the diagonal of "
                  "both covariances")
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError("frechet_distance: sqrtm has a large imaginary component "
                       f"{np.max(np.abs(covmean.imag)):.3g}")
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(features1: np.ndarray, features2: np.ndarray, eps: float = 1e-6) -> float:
  """Fréchet Inception Distance between two feature sets (N1, D) and (N2, D).

  Each set needs more samples than dimensions (N > D, so 2049+ for pool3 features;
  50k is usual): with N <= D its covariance is singular and FID is dominated by that,
  so it raises ValueError instead. KID has no such limit.
  """
  x, y = _features(features1, "fid"), _features(features2, "fid")
  for name, f in (("first", x), ("second", y)):
    if len(f) <= f.shape[1]:
      raise ValueError(f"fid: the {name} set has {len(f)} samples for {f.shape[1]} feature "
                       "dimensions; FID needs more samples than dimensions (its covariance "
                       "is singular otherwise): use more samples, or KID")
  return frechet_distance_from_stats(*gaussian_stats(x), *gaussian_stats(y), eps=eps)


class KID(NamedTuple):
  """Mean and standard deviation of the unbiased MMD^2 over random subsets."""
  mean: float
  std: float


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """k(x, y) = (x.y / D + 1)^3, the kernel of KID (Binkowski et al. 2018)."""
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 between samples x (m, D) and y (n, D) with `polynomial_kernel`:

    1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j)
      - 2/(mn) sum_{i,j} k(x_i, y_j).
  """
  m, n = len(x), len(y)
  kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)
  within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
  within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
  return float(within_x + within_y - 2.0 * polynomial_kernel(x, y).mean())


def kid(features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> KID:
  """Kernel Inception Distance (Binkowski et al. 2018), as clean-fid and torch-fidelity.

  Draws `num_subsets` pairs of subsets of min(N1, N2, subset_size) samples, each
  without replacement, and returns the mean and std of `mmd2_unbiased` over them.
  Unbiased, so it can be slightly negative when the sets match; works for any N >= 2,
  also below the feature dimension. Deterministic for a given `seed`.
  """
  x, y = _features(features1, "kid"), _features(features2, "kid")
  m = min(len(x), len(y), subset_size)
  if m < 2:
    raise ValueError(f"kid: needs at least 2 samples per set, got {len(x)} and {len(y)}")
  rng = np.random.default_rng(seed)
  estimates = [mmd2_unbiased(x[rng.choice(len(x), m, replace=False)],
                             y[rng.choice(len(y), m, replace=False)])
               for _ in range(num_subsets)]
  return KID(float(np.mean(estimates)), float(np.std(estimates)))


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """Inception Score (Salimans et al. 2016) of class probabilities p(y|x) (N, C).

  The samples are cut into `splits` consecutive parts, as in the original code (shuffle
  first if they are ordered); in each part, with p(y) its mean prediction,

    IS = exp( mean_x KL(p(y|x) || p(y)) ),  KL(p || q) = sum_y p_y (log p_y - log q_y).

  Returns the mean and std over parts. The original uses the softmax of the Inception's
  1008 logits without bias ("logits_unbiased" in inception.py) and 10 splits of 50k.
  """
  p = np.asarray(probs, np.float64)
  if p.ndim != 2 or len(p) < splits or splits < 1:
    raise ValueError(f"inception_score: expected (N, C) probabilities with N >= splits="
                     f"{splits}, got {p.shape}")
  scores = []
  for i in range(splits):
    part = p[i * len(p) // splits:(i + 1) * len(p) // splits]
    marginal = part.mean(axis=0, keepdims=True)
    # xlogy: 0 log 0 = 0, so classes a sample never predicts add nothing.
    kl = (scipy.special.xlogy(part, part) - scipy.special.xlogy(part, marginal)).sum(axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


class PrecisionRecall(NamedTuple):
  precision: float
  recall: float


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
  return np.maximum(d, 0.0)  # Rounding can make |a - a|^2 slightly negative.


def knn_radii(features: np.ndarray, k: int = 3, batch_size: int = 1024) -> np.ndarray:
  """Squared distance from each sample to its k-th nearest other sample, in row batches."""
  x = _features(features, "knn_radii")
  if len(x) <= k:
    raise ValueError(f"knn_radii: needs more than k={k} samples, got {len(x)}")
  radii = np.empty(len(x))
  for start in range(0, len(x), batch_size):
    d = _squared_distances(x[start:start + batch_size], x)
    # Index 0 of each sorted row is the sample itself (distance 0), so k is the k-th other.
    radii[start:start + batch_size] = np.partition(d, k, axis=1)[:, k]
  return radii


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3,
                     batch_size: int = 1024) -> PrecisionRecall:
  """Improved precision and recall (Kynkäänniemi et al. 2019).

  Each set's manifold is the union of balls around its samples, the radius of each
  the distance to its k-th nearest neighbour in the same set (k=3 in the paper).
    precision = fraction of fake samples inside the real manifold,
    recall    = fraction of real samples inside the fake manifold,
  with "inside" meaning |f - r| <= radius(r) for some r (boundary included). Distances
  are computed in blocks of `batch_size` rows, so memory is O(batch_size * N), not N^2.
  """
  r, f = _features(real, "precision_recall"), _features(fake, "precision_recall")
  real_radii, fake_radii = knn_radii(r, k, batch_size), knn_radii(f, k, batch_size)
  fake_inside = np.zeros(len(f), bool)
  real_inside = np.zeros(len(r), bool)
  # One pass over the fake-real distances answers both questions.
  for start in range(0, len(f), batch_size):
    d = _squared_distances(f[start:start + batch_size], r)
    fake_inside[start:start + batch_size] = (d <= real_radii[None, :]).any(axis=1)
    real_inside |= (d <= fake_radii[start:start + batch_size, None]).any(axis=0)
  return PrecisionRecall(float(fake_inside.mean()), float(real_inside.mean()))


class SampleSets:
  """The inputs of the sample metrics: reference and sample features (N, D), and the
  samples' class probabilities (N, K) where the feature network classifies. Results
  shared between metrics (precision and recall) are computed once."""

  def __init__(self, real: np.ndarray, fake: np.ndarray, fake_probs: np.ndarray | None = None):
    self.real, self.fake, self.fake_probs = real, fake, fake_probs
    self._pr = None

  def precision_recall(self) -> PrecisionRecall:
    if self._pr is None:
      self._pr = precision_recall(self.real, self.fake, k=3)
    return self._pr


class SampleMetric(NamedTuple):
  """A named sample metric: sets -> scalars (the name first, then its spread if any)."""
  compute: Callable[[SampleSets], dict[str, float]]
  lower_is_better: bool
  needs_classes: bool = False  # Needs a feature network with a single classifier head.


def _kid(s: SampleSets) -> dict[str, float]:
  k = kid(s.real, s.fake)
  return {"kid": k.mean, "kid_std": k.std}


def _is(s: SampleSets) -> dict[str, float]:
  mean, std = inception_score(s.fake_probs, splits=min(10, len(s.fake_probs)))
  return {"is": mean, "is_std": std}


# eval.metrics names of the sample metrics (the likelihood's "bpd" is added by
# evaluation.eval_config). "fd" on the Inception's features is FID.
SAMPLE_METRICS: dict[str, SampleMetric] = {
    "fd": SampleMetric(lambda s: {"fd": fid(s.real, s.fake)}, lower_is_better=True),
    "kid": SampleMetric(_kid, lower_is_better=True),
    "precision": SampleMetric(lambda s: {"precision": s.precision_recall().precision},
                              lower_is_better=False),
    "recall": SampleMetric(lambda s: {"recall": s.precision_recall().recall},
                           lower_is_better=False),
    "is": SampleMetric(_is, lower_is_better=False, needs_classes=True),
}


def sample_metrics(names, sets: SampleSets) -> dict[str, float]:
  """The named metrics of SAMPLE_METRICS on `sets`, in the order given."""
  out = {}
  for name in names:
    out.update(SAMPLE_METRICS[name].compute(sets))
  return out
