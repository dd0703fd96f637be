"""Sanity figures for docs/metrics.md on a prepared data set: FID/KID between two disjoint random
halves (should be small, and shrink with N), and of uniform noise against the data (huge).

  python benchmarks/metrics_sanity.py --prepared /tmp/catalog64 --num 1000

Prints one JSON line per comparison (features extracted once per image).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from jaxgan.data import prepared
from jaxgan.metrics import suite
from jaxgan.metrics.features import FeatureExtractor


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--prepared", required=True)
  p.add_argument("--num", type=int, default=1000, help="images per half (and noise images)")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()
  images, _, info = prepared.read_prepared(a.prepared)
  order = np.random.default_rng(a.seed).permutation(len(images))
  n = min(a.num, len(images) // 2)
  half_a, half_b = images[order[:n]], images[order[n:2 * n]]
  noise = np.random.default_rng(a.seed + 1).integers(0, 256, half_a.shape).astype(np.uint8)
  extractor = FeatureExtractor()
  start = time.perf_counter()
  feats = {name: extractor(x, desc=name) for name, x in
           (("half_a", half_a), ("half_b", half_b), ("noise", noise))}
  seconds = time.perf_counter() - start
  for name in ("half_b", "noise"):
    row = suite.compute(feats["half_a"], feats[name], ["fid", "kid"])
    row.update(comparison=f"half_a vs {name}", num_each=n, image_size=info["image_size"],
               extraction_images_per_sec=3 * n / seconds)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
