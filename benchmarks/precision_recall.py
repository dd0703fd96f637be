"""Precision/recall of jaxgan (float32 distances on the JAX default device) against a float64
numpy computation of the same k-NN manifolds (the blocked algorithm jaxgan used until
2026-12-02), on synthetic Inception-like features: non-negative, 2048-d, with shared structure.

  python benchmarks/precision_recall.py [--n 10000] [--repeats 3]

Prints both results (they should be equal) and the median time of each over `--repeats` runs;
jaxgan's first, compiling run is reported apart.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxgan.metrics import manifold


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
  start = time.perf_counter()
  manifold.precision_recall(real, fake)
  first = time.perf_counter() - start
  jax_s, jax_pr = median_seconds(lambda: manifold.precision_recall(real, fake), args.repeats)
  np_s, np_pr = median_seconds(lambda: numpy_precision_recall(real, fake), args.repeats)
  print(f"n={args.n} per side, 2048-d, k=3")
  print(f"numpy float64: {np_pr}  median {np_s:.2f} s")
  print(f"jaxgan (jax float32, {jax.default_backend()}): {jax_pr}  median {jax_s:.2f} s "
        f"(first, compiling: {first:.2f} s)  ratio {np_s / jax_s:.2f}x")


if __name__ == "__main__":
  main()
