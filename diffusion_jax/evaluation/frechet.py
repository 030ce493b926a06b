"""Sample-quality measures computed offline (no downloaded networks)."""

import numpy as np
import scipy.linalg


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of features x (N, D)."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
  """Frechet distance between Gaussians fitted to features x (N, D) and y (M, D).

  |mu_x - mu_y|^2 + tr(C_x + C_y - 2 (C_x C_y)^(1/2)), as in FID but on any features.
  """
  m1, c1 = gaussian_stats(x)
  m2, c2 = gaussian_stats(y)
  covmean = scipy.linalg.sqrtm(c1 @ c2)
  if not np.isfinite(covmean).all():
    eps = 1e-6 * np.eye(len(c1))
    covmean = scipy.linalg.sqrtm((c1 + eps) @ (c2 + eps))
  covmean = np.real(covmean)
  return float(np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2.0 * covmean))
