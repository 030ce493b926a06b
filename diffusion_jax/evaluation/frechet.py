"""Sample-quality measures computed offline (no downloaded networks).

The implementations live in `diffusion_jax.evaluation.metrics`; these are the
pixel-space forms the experiments use (any features, images flattened).
"""

import numpy as np

from diffusion_jax.evaluation import metrics as _metrics


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of features x (N, ...), flattened to (N, D)."""
  return _metrics.gaussian_stats(np.reshape(x, (len(x), -1)))


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
  """Frechet distance between Gaussians fitted to features x (N, D) and y (M, D).

  |mu_x - mu_y|^2 + tr(C_x + C_y - 2 (C_x C_y)^(1/2)), as in FID but on any features.
  Unlike `evaluation.metrics.fid` it accepts N <= D (singular covariances): pixel
  features of small sets are compared only with each other.
  """
  return _metrics.frechet_distance_from_stats(*gaussian_stats(x), *gaussian_stats(y))
