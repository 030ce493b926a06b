"""Evaluates a digits sample set: classifier agreement and pixel-space Frechet distance.

  python -m diffusion_jax.main --config=configs/digits.py --workdir=runs/digits \
      --mode=sample --config.sample.num_samples=1000
  python experiments/digits_eval.py runs/digits/samples/step_3000-1.npz

The classifier is an RBF SVM trained on the digits' train split (independent of the
diffusion model); its accuracy on the test split is printed as a sanity check.
The Frechet distance is computed on raw pixels in the data's own 0..16 scale
(samples are mapped from uint8 and rounded to that scale). References printed with
it, at the same sizes: real-vs-real (two disjoint halves of the 1,797 digits), and
class means plus Gaussian noise.
"""

import argparse
import json
import sys

import numpy as np
from sklearn.svm import SVC

from diffusion_jax.data.digits import digits_arrays, split_indices
from diffusion_jax.evaluation.frechet import frechet_distance


def to_digit_scale(images_uint8: np.ndarray) -> np.ndarray:
  return np.round(images_uint8.reshape(len(images_uint8), -1).astype(np.float64) * 16 / 255)


def evaluate(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
  real_u8, real_y = digits_arrays()
  real = to_digit_scale(real_u8)
  tr, te = split_indices("train", len(real)), split_indices("test", len(real))
  clf = SVC(gamma=0.001, C=10.0).fit(real[tr], real_y[tr])
  fake = to_digit_scale(images)
  rng = np.random.default_rng(seed)
  perm = rng.permutation(len(real))
  half = len(real) // 2
  ref_a, ref_b = real[perm[:half]], real[perm[half:2 * half]]
  n = min(half, len(fake))
  means = np.stack([real[real_y == k].mean(0) for k in range(10)])
  noise_lab = np.arange(n) % 10
  noisy_means = means[noise_lab] + rng.normal(0.0, real.std(), (n, real.shape[1]))
  return {
      "num_samples": int(len(fake)),
      "classifier_test_accuracy": float(clf.score(real[te], real_y[te])),
      "classifier_agreement": float(np.mean(clf.predict(fake) == labels)),
      "per_class_agreement": [float(np.mean(clf.predict(fake[labels == k]) == k))
                              for k in range(10) if np.any(labels == k)],
      "frechet_pixels": frechet_distance(fake[:n], ref_a[:n]),
      "frechet_real_vs_real": frechet_distance(ref_b[:n], ref_a[:n]),
      "frechet_class_means_plus_noise": frechet_distance(noisy_means, ref_a[:n]),
      "frechet_size": int(n),
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("samples", help="a samples/step_<N>.npz written by diffusion_jax")
  p.add_argument("--out", help="also write the result as JSON here (must not exist)")
  args = p.parse_args(argv)
  try:
    data = np.load(args.samples)
    images, labels = data["images"], data["labels"]
  except (OSError, KeyError, ValueError) as e:
    print(f"error: cannot read samples from {args.samples}: {e}", file=sys.stderr)
    return 2
  if images.shape[1:] != (8, 8, 1):
    print(f"error: expected 8x8x1 digit images, got {images.shape[1:]}", file=sys.stderr)
    return 2
  result = evaluate(images, labels)
  text = json.dumps(result, indent=2)
  print(text)
  if args.out:
    with open(args.out, "x") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
