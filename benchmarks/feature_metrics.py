"""KID and precision/recall of jaxgan (float32 products on the JAX default device) against
float64 numpy computations of the same quantities (the algorithms jaxgan ran on the host until
2026-12-02), on synthetic Inception-like features: non-negative, 2048-d, with shared structure.

  python benchmarks/feature_metrics.py [--n 10000] [--repeats 3]

Prints both results of each metric (precision/recall equal, KID within float32 rounding) and the
median time of each over `--repeats` runs; jaxgan's first, compiling run is reported apart.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxgan.metrics import kid, manifold


def numpy_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, batch: int = 1024
                           ) -> tuple[float, float]:
  x, y = np.asarray(real, np.float64), np.asarray(fake, np.float64)

  def squared(a, b):
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0)

  def radii(s):
    return np.concatenate([np.partition(squared(s[i:i + batch], s), k, axis=1)[:, k]
                           for i in range(0, len(s), batch)])

  def inside(manifold_points, r, queries):
    return float(np.concatenate([(squared(queries[i:i + batch], manifold_points) <= r).any(1)
                                 for i in range(0, len(queries), batch)]).mean())

  return inside(x, radii(x), y), inside(y, radii(y), x)


def numpy_kid(real: np.ndarray, fake: np.ndarray, num_subsets: int = 100,
              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
  x, y = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  d, m = x.shape[1], min(subset_size, len(x), len(y))
  if m == len(x) == len(y):  # as jaxgan's: every subset would be both whole sets, one value
    num_subsets = 1
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_subsets):
    a = x[rng.choice(len(x), m, replace=False)]
    b = y[rng.choice(len(y), m, replace=False)]
    k_aa, k_bb, k_ab = ((p @ q.T / d + 1) ** 3 for p, q in ((a, a), (b, b), (a, b)))
    values.append((k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
                  + (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1)) - 2 * k_ab.mean())
  return float(np.mean(values)), float(np.std(values))


def features(rng: np.random.Generator, basis: np.ndarray, n: int, shift: float) -> np.ndarray:
  structured = rng.normal(size=(n, basis.shape[0])) @ basis / 8
  return np.maximum(structured + shift + 0.3 * rng.normal(size=(n, basis.shape[1])),
                    0).astype(np.float32)


def median_seconds(fn, repeats: int) -> tuple[float, object]:
  times, out = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times)), out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--n", type=int, default=10000, help="samples per side")
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  rng = np.random.default_rng(0)
  basis = rng.normal(size=(64, 2048))
  real, fake = features(rng, basis, args.n, 0.0), features(rng, basis, args.n, 0.05)
  kid_subsets = ("100 subsets of 1000" if args.n > 1000 else f"one subset: both whole sets of "
                 f"{args.n}")
  print(f"n={args.n} per side, 2048-d; KID: {kid_subsets}; precision/recall: k=3; "
        f"jax backend: {jax.default_backend()}")
  for name, ours, numpy_version in [("kid", kid.kernel_inception_distance, numpy_kid),
                                    ("precision_recall", manifold.precision_recall,
                                     numpy_precision_recall)]:
    start = time.perf_counter()
    ours(real, fake)
    first = time.perf_counter() - start
    jax_s, jax_out = median_seconds(lambda: ours(real, fake), args.repeats)
    np_s, np_out = median_seconds(lambda: numpy_version(real, fake), args.repeats)
    print(f"{name}: numpy float64 {np_out}, median {np_s:.2f} s | jaxgan float32 {jax_out}, "
          f"median {jax_s:.2f} s (first, compiling: {first:.2f} s) | {np_s / jax_s:.2f}x")


if __name__ == "__main__":
  main()
