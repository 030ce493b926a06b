"""FID, KID, Inception Score and precision/recall against hand-worked values,
brute-force formulas and (where installed) pytorch-fid."""

import itertools

import numpy as np
import pytest
import scipy.linalg

from diffusion_jax.evaluation import metrics
from tests.evaluation.test_inception import import_pytorch_fid


def _clouds(n=400, d=16, shift=0.5, scale=1.3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d))
  mix = np.eye(d) + 0.2 * rng.standard_normal((d, d))
  y = scale * rng.standard_normal((n, d)) @ mix + shift
  return x, y


def test_fid_equals_pytorch_fid():
  fid_score = import_pytorch_fid("pytorch_fid.fid_score")
  x, y = _clouds()
  mu1, s1 = metrics.gaussian_stats(x)
  mu2, s2 = metrics.gaussian_stats(y)
  want = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
  assert metrics.fid(x, y) == pytest.approx(want, rel=1e-4)
  # pytorch-fid's own statistics: float32 activations, np.mean / np.cov.
  x32, y32 = x.astype(np.float32), y.astype(np.float32)
  want32 = fid_score.calculate_frechet_distance(x32.mean(0), np.cov(x32, rowvar=False),
                                                y32.mean(0), np.cov(y32, rowvar=False))
  assert metrics.fid(x32, y32) == pytest.approx(want32, rel=1e-4)


def test_singular_product_is_handled_as_pytorch_fid(monkeypatch):
  fid_score = import_pytorch_fid("pytorch_fid.fid_score")
  x, y = _clouds(d=6)
  stats = (*metrics.gaussian_stats(x), *metrics.gaussian_stats(y))
  product = stats[1].dot(stats[3])
  sqrtm = scipy.linalg.sqrtm

  def failing_sqrtm(a, *args, **kwargs):
    # As older scipy did on a singular product: non-finite, so eps must be added.
    if np.array_equal(a, product):
      nan = np.full_like(a, np.nan)
      return (nan, np.inf) if kwargs.get("disp") is False else nan
    return sqrtm(a, *args, **kwargs)

  monkeypatch.setattr(scipy.linalg, "sqrtm", failing_sqrtm)
  want = fid_score.calculate_frechet_distance(*stats, eps=1e-3)
  with pytest.warns(UserWarning, match="singular product"):
    got = metrics.frechet_distance_from_stats(*stats, eps=1e-3)
  assert np.isfinite(got) and got == pytest.approx(want, rel=1e-10)


def test_rank_deficient_stats_agree_with_pytorch_fid():
  fid_score = import_pytorch_fid("pytorch_fid.fid_score")
  x, y = _clouds(n=5, d=12)  # Covariances of rank 4.
  stats = (*metrics.gaussian_stats(x), *metrics.gaussian_stats(y))
  try:
    want = fid_score.calculate_frechet_distance(*stats)
  except ValueError:
    with pytest.raises(ValueError, match="imaginary"):
      metrics.frechet_distance_from_stats(*stats)
  else:
    assert metrics.frechet_distance_from_stats(*stats) == pytest.approx(want, rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
  x, y = _clouds()
  assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-8)
  # Equal covariances: FID is exactly the squared mean shift.
  assert metrics.fid(x, x + 0.5) == pytest.approx(16 * 0.25, rel=1e-8)
  assert metrics.fid(x, y) > 1.0


def test_fid_needs_more_samples_than_dimensions_kid_does_not():
  x, y = _clouds(n=10, d=16)
  with pytest.raises(ValueError, match="10 samples for 16 feature dimensions"):
    metrics.fid(x, y)
  assert np.isfinite(metrics.kid(x, y, num_subsets=3).mean)


def test_kid_hand_worked():
  # D = 1, k(a, b) = (ab + 1)^3. x = {0, 1}: k(0, 1) = 1, so the x term is 1; the same
  # for y = {0, -1}; cross terms k = 1, 1, 1, k(1, -1) = 0, mean 3/4. MMD^2 = 1 + 1 - 1.5.
  x, y = np.array([[0.0], [1.0]]), np.array([[0.0], [-1.0]])
  assert metrics.mmd2_unbiased(x, y) == 0.5
  assert metrics.kid(x, y, num_subsets=5) == (0.5, 0.0)  # Every subset is the whole set.


def _brute_force_mmd2(x, y):
  d = x.shape[1]
  k = lambda a, b: (float(np.dot(a, b)) / d + 1) ** 3  # noqa: E731
  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
  xy = sum(k(a, b) for a in x for b in y) / (m * n)
  return xx + yy - 2 * xy


def test_kid_equals_brute_force_and_behaves():
  x, y = _clouds(n=30, d=5)
  want = _brute_force_mmd2(x, y)
  # One subset of all samples is a permutation: the unbiased estimate is unchanged.
  assert metrics.kid(x, y, num_subsets=1, subset_size=30).mean == pytest.approx(want, rel=1e-10)
  assert metrics.kid(x, y, num_subsets=4, subset_size=10, seed=1) == \
      metrics.kid(x, y, num_subsets=4, subset_size=10, seed=1)
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((2, 500, 5))
  same = metrics.kid(a, b, subset_size=100)
  shifted = metrics.kid(a, b + 1.0, subset_size=100)
  # The same distribution: an unbiased estimate near 0, well within its spread.
  assert abs(same.mean) < same.std
  assert shifted.mean > 5 * shifted.std > 0


def test_inception_score_of_uniform_and_of_one_hot_predictions():
  assert metrics.inception_score(np.full((64, 8), 1 / 8), splits=4) == (1.0, 0.0)
  is_mean, _ = metrics.inception_score(np.full((100, 1008), 1 / 1008), splits=10)
  assert is_mean == pytest.approx(1.0, abs=1e-12)
  c = 10
  one_hot = np.eye(c)[np.arange(200) % c]  # Each split sees every class equally often.
  is_mean, is_std = metrics.inception_score(one_hot, splits=4)
  assert is_mean == pytest.approx(c, rel=1e-12) and is_std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_splits_are_consecutive():
  # First half always class 0, second half always class 1: each split is one class.
  probs = np.eye(2)[np.repeat([0, 1], 10)]
  assert metrics.inception_score(probs, splits=2) == (1.0, 0.0)
  assert metrics.inception_score(probs, splits=1)[0] == pytest.approx(2.0, rel=1e-12)


def test_precision_recall_hand_worked():
  real = np.arange(5.0)[:, None]
  # Third-neighbour radii of 0..4 are 3, 2, 2, 2, 3: the real manifold is [-3, 7].
  fake = np.array([-4.0, -3.0, 5.0, 7.0, 8.0, 10.0])[:, None]
  # Fake radii 11, 10, 5, 3, 3, 5: their balls cover [-15, 15], so every real point.
  assert metrics.precision_recall(real, fake) == (0.5, 1.0)
  assert metrics.precision_recall(fake, real) == (1.0, 0.5)
  assert metrics.precision_recall(real, fake, batch_size=2) == (0.5, 1.0)


def _brute_force_pr(real, fake, k):
  def radii(a):
    d = np.linalg.norm(a[:, None] - a[None], axis=-1)
    return np.sort(d, axis=1)[:, k]
  def inside(points, centres, r):
    return np.mean([any(np.linalg.norm(p - c) <= rc for c, rc in zip(centres, r))
                    for p in points])
  return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_equals_brute_force_on_gaussian_clouds(k):
  real, fake = _clouds(n=120, d=4, shift=0.7, scale=1.5, seed=3)
  got = metrics.precision_recall(real, fake[:90], k=k, batch_size=32)
  want = _brute_force_pr(real, fake[:90], k)
  assert got == pytest.approx(want, abs=1e-12)
  assert 0.0 < got.precision < 1.0 and 0.0 < got.recall < 1.0
