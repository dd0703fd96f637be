"""FID between feature sets, in float64 numpy (KID and precision/recall, which take products of
every pair of samples, run on the accelerator: kid.py, manifold.py).

These are the standard definitions, written to be numerically stable and checked against direct
scipy/numpy computations in tests/test_metrics_math.py. The Inception features they are meant
for come from jaxgan/metrics/features.py.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (unbiased) covariance of [N, D] features, in float64."""
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise ValueError(f"need [N >= 2, D] features, got shape {x.shape}")
  return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  """Square root of a symmetric positive semi-definite matrix via its eigendecomposition."""
  w, v = np.linalg.eigh((matrix + matrix.T) / 2)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

  Tr((S1 S2)^(1/2)) equals Tr((A S2 A)^(1/2)) with A = S1^(1/2); A S2 A is symmetric PSD, so its
  square root's trace is the sum of the square roots of its (clipped) eigenvalues: no complex
  sqrtm, no ill-conditioned products, and no 'imaginary component' fix-ups.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  a = _sqrt_psd(s1)
  product = a @ s2 @ a  # once: each 2048^3 product costs a second on a small host
  eig = np.linalg.eigvalsh((product + product.T) / 2)
  trace_sqrt = float(np.sum(np.sqrt(np.clip(eig, 0, None))))
  diff = mu1 - mu2
  return _squared(float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt))


def _squared(distance: float) -> float:
  """A squared distance as 0 where rounding made it negative (identical sets gave -5.7e-14);
  NaN stays NaN."""
  return 0.0 if distance < 0 else distance


def fid(real_features: np.ndarray, fake_features: np.ndarray,
        real_statistics: Optional[Callable[[], tuple[np.ndarray, np.ndarray]]] = None) -> float:
  """FID of two feature sets. With fewer samples than dimensions (small evaluations) the same
  value is computed from the features themselves: with S1 = A^T A and S2 = B^T B (A, B the
  centred features over sqrt(n - 1)), the eigenvalues of S1 S2 are the squared singular values
  of A B^T, so Tr((S1 S2)^(1/2)) is the nuclear norm of the small n1 x n2 matrix A B^T: exact,
  and no d x d eigendecompositions.

  `real_statistics`: returns `feature_statistics(real_features)`, called only where they are
  needed; the evaluator keeps its reals' across evaluations (at 50k x 2048 they cost seconds
  to tens of seconds of host time each)."""
  x, y = np.asarray(real_features, np.float64), np.asarray(fake_features, np.float64)
  d = x.shape[1] if x.ndim == 2 else 0
  if x.ndim != 2 or y.ndim != 2 or min(len(x), len(y)) < 2 or y.shape[1] != d:
    raise ValueError(f"need two [N >= 2, D] feature sets, got {x.shape} and {y.shape}")
  if max(len(x), len(y)) >= d:
    real_statistics = real_statistics or (lambda: feature_statistics(x))
    return frechet_distance(*real_statistics(), *feature_statistics(y))
  a = (x - x.mean(0)) / np.sqrt(len(x) - 1)
  b = (y - y.mean(0)) / np.sqrt(len(y) - 1)
  trace_sqrt = float(np.sum(np.linalg.svd(a @ b.T, compute_uv=False)))
  diff = x.mean(0) - y.mean(0)
  return _squared(float(diff @ diff + np.sum(a * a) + np.sum(b * b) - 2.0 * trace_sqrt))


def per_class_fid(real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray,
                  fake_labels: np.ndarray, min_count: int = 2) -> dict[int, Optional[float]]:
  """FID per class label (None where either side has fewer than `min_count` samples)."""
  out: dict[int, Optional[float]] = {}
  for label in np.unique(np.concatenate([real_labels, fake_labels])):
    a, b = real[real_labels == label], fake[fake_labels == label]
    out[int(label)] = fid(a, b) if min(len(a), len(b)) >= min_count else None
  return out
