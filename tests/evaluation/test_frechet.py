import numpy as np
import pytest

from diffusion_jax.evaluation.frechet import frechet_distance


def test_frechet_distance_of_gaussians_matches_closed_form():
  # Diagonal covariances commute: FD = |m1 - m2|^2 + sum (s1 - s2)^2.
  rng = np.random.default_rng(0)
  n = 200_000
  s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([1.5, 1.0, 0.5])
  m1, m2 = np.zeros(3), np.array([1.0, 0.0, -2.0])
  x = m1 + s1 * rng.standard_normal((n, 3))
  y = m2 + s2 * rng.standard_normal((n, 3))
  want = np.sum((m1 - m2) ** 2) + np.sum((s1 - s2) ** 2)
  assert frechet_distance(x, y) == pytest.approx(want, rel=0.02)


def test_frechet_distance_is_zero_for_identical_sets_and_symmetric():
  x = np.random.default_rng(1).standard_normal((500, 4))
  y = np.random.default_rng(2).standard_normal((500, 4)) + 0.5
  assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
  assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-6)
