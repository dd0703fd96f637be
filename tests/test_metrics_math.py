"""FID, KID and precision/recall against direct numpy/scipy computations."""

import numpy as np
import pytest
import scipy.linalg

from jaxgan import metrics


def _gaussian(n, d, seed, shift=0.0):
  return np.random.default_rng(seed).normal(size=(n, d)) + shift


def test_fid_of_a_set_with_itself_is_zero():
  x = _gaussian(500, 16, 0)
  assert abs(metrics.fid(x, x)) < 1e-8
  # Never below zero (rounding gave -5.7e-14 for a set against itself), in both formulas (more
  # samples than dimensions, and fewer).
  for n, d in ((500, 16), (40, 64), (40, 2048)):
    for seed in range(5):
      y = _gaussian(n, d, seed)
      assert metrics.fid(y, y) >= 0.0


def test_frechet_distance_of_shifted_gaussians_is_the_squared_shift():
  mu = np.zeros(8)
  shift = np.arange(8) / 4.0
  assert metrics.frechet_distance(mu, np.eye(8), mu + shift, np.eye(8)) == pytest.approx(
      float(shift @ shift), abs=1e-10)
  # Different covariances: FID(N(0, a I), N(0, b I)) = d (sqrt(a) - sqrt(b))^2.
  assert metrics.frechet_distance(mu, 4 * np.eye(8), mu, np.eye(8)) == pytest.approx(8.0, abs=1e-9)


def test_fid_matches_scipy_sqrtm():
  a, b = _gaussian(300, 12, 1), _gaussian(300, 12, 2, shift=0.3) * 1.5
  mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
  mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  direct = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * covmean))
  assert metrics.fid(a, b) == pytest.approx(direct, rel=1e-8)


@pytest.mark.parametrize("n1, n2", [(10, 10), (7, 13), (40, 30)])
def test_few_sample_fid_equals_the_covariance_formula(n1, n2):
  # n < d (singular covariances, where naive sqrtm goes complex) takes the nuclear-norm path in
  # fid(); it must equal the d x d statistics formula (finite: approx fails on NaN).
  a, b = _gaussian(n1, 64, 5), _gaussian(n2, 64, 6, shift=0.2) * 1.3
  want = metrics.frechet_distance(*metrics.feature_statistics(a), *metrics.feature_statistics(b))
  # rel 1e-7, not 1e-9: in the d x d formula each of the ~d - n zero eigenvalues of the singular
  # product comes back as roundoff ~1e-13, whose square root (~3e-7) enters the trace.
  assert metrics.fid(a, b) == pytest.approx(want, rel=1e-7)
  assert abs(metrics.fid(a, a)) < 1e-9


def _kid_direct(x, y):
  d = x.shape[1]
  k = lambda a, b: (a @ b / d + 1) ** 3
  m = len(x)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
  return xx + yy - 2 * xy


def test_kid_matches_a_direct_computation():
  x, y = _gaussian(20, 5, 5), _gaussian(20, 5, 6, shift=0.5)
  mean, std = metrics.kernel_inception_distance(x, y, num_subsets=3, subset_size=20)
  # float32 products on the device (the 512-d case below bounds the error at real scales)
  assert mean == pytest.approx(_kid_direct(x, y), rel=1e-6) and std == pytest.approx(0, abs=1e-12)
  # Unbiased: two samples of one distribution give ~0, a shifted one clearly more.
  same, _ = metrics.kernel_inception_distance(_gaussian(400, 5, 11), _gaussian(400, 5, 12),
                                              num_subsets=10, subset_size=200)
  shifted, _ = metrics.kernel_inception_distance(_gaussian(400, 5, 11), _gaussian(400, 5, 12, 0.5),
                                                 num_subsets=10, subset_size=200)
  assert abs(same) < shifted / 10


def _pr_direct(real, fake, k):
  def radii(s):
    d = np.linalg.norm(s[:, None] - s[None], axis=-1)
    return np.sort(d, axis=1)[:, k]

  def inside(manifold, r, queries):
    d = np.linalg.norm(queries[:, None] - manifold[None], axis=-1)
    return np.mean([(d[i] <= r).any() for i in range(len(queries))])

  return inside(real, radii(real), fake), inside(fake, radii(fake), real)


def test_precision_recall_match_brute_force():
  real, fake = _gaussian(60, 4, 7), _gaussian(50, 4, 8, shift=1.0)
  got = metrics.precision_recall(real, fake, k=3, block=16)  # 4 blocks, the last padded
  assert got == pytest.approx(_pr_direct(real, fake, 3), abs=1e-12)
  assert metrics.precision_recall(real, real, k=3) == (1.0, 1.0)
  far = metrics.precision_recall(real, real + 100.0, k=3)
  assert far == (0.0, 0.0)


def test_precision_recall_in_float32_match_float64_on_inception_like_features():
  """Non-negative 512-d features with shared structure (pooled ReLUs, as Inception's) and a few
  exact and near duplicates: the device's float32 distances decide every ball as float64
  does, and a point's own distance never pushes a near duplicate out of its k nearest."""
  rng = np.random.default_rng(3)
  basis = rng.normal(size=(16, 512))

  def features(n, shift):
    return np.maximum(rng.normal(size=(n, 16)) @ basis / 4 + shift + rng.normal(size=(n, 512)), 0)

  real, fake = features(150, 0.0), features(130, 0.1)
  real[10], real[11] = real[12], real[12] + 1e-4  # duplicates of one image
  got = metrics.precision_recall(real.astype(np.float32), fake.astype(np.float32), k=3, block=64)
  want = _pr_direct(real.astype(np.float32).astype(np.float64),
                    fake.astype(np.float32).astype(np.float64), 3)
  assert got == pytest.approx(want, abs=1e-12) and 0.1 < min(want) and max(want) < 0.95
  # Shifted far from the origin (distances unchanged): centred first, float32 still agrees (the
  # uncentred |a|^2 + |b|^2 - 2ab gave (0.538, 0.867) here against float64's (0.523, 0.873)).
  far = metrics.precision_recall((real + 100).astype(np.float32), (fake + 100).astype(np.float32),
                                 k=3, block=64)
  assert far == pytest.approx(want, abs=1e-12)


def test_kid_in_float32_matches_float64_on_inception_like_features():
  """Non-negative 512-d features with shared structure, as Inception's, and a KID near 1e-3 (a
  good model's): the device's float32 products and row sums stay within 1e-8 of float64, far
below the spread between subsets (~5e-4 here)."""
  rng = np.random.default_rng(4)
  basis = rng.normal(size=(16, 512))

  def features(n, shift):
    return np.maximum(rng.normal(size=(n, 16)) @ basis / 8 + shift
                      + 0.3 * rng.normal(size=(n, 512)), 0).astype(np.float32)

  x, y = features(120, 0.0), features(100, 0.02)
  mean, std = metrics.kernel_inception_distance(x, y, num_subsets=3, subset_size=80, seed=2)
  draw = np.random.default_rng(2)
  values = []
  for _ in range(3):
    a, b = x[draw.choice(120, 80, replace=False)], y[draw.choice(100, 80, replace=False)]
    values.append(_kid_direct(a.astype(np.float64), b.astype(np.float64)))
  assert 1e-4 < abs(np.mean(values)) < 1e-2
  assert abs(mean - np.mean(values)) < 1e-8 and abs(std - np.std(values)) < 1e-8


def test_kid_averages_random_subsets_when_the_sets_are_larger():
  """Subsets smaller than the sets: the mean and std are over independent random subsets (the
  seeded draws, a then b per subset), each the unbiased MMD^2 of the direct formula."""
  x, y = _gaussian(30, 4, 21), _gaussian(25, 4, 22, shift=0.3)
  mean, std = metrics.kernel_inception_distance(x, y, num_subsets=4, subset_size=10, seed=5)
  rng = np.random.default_rng(5)
  values = []
  for _ in range(4):
    a, b = x[rng.choice(30, 10, replace=False)], y[rng.choice(25, 10, replace=False)]
    values.append(_kid_direct(a, b))
  assert mean == pytest.approx(np.mean(values), rel=1e-6)
  assert std == pytest.approx(np.std(values), rel=1e-6) and std > 0


def test_kid_draws_subsets_when_only_one_set_is_the_subset_size():
  """One set of 10 (all of it in every subset) and one of 14: the 14 still give random subsets of
  10, so several subsets and a spread, not the one-subset shortcut of two whole sets."""
  x, y = _gaussian(10, 4, 23), _gaussian(14, 4, 24, shift=0.3)
  mean, std = metrics.kernel_inception_distance(x, y, num_subsets=5, subset_size=1000, seed=2)
  rng = np.random.default_rng(2)
  values = [_kid_direct(x[rng.choice(10, 10, replace=False)], y[rng.choice(14, 10, replace=False)])
            for _ in range(5)]
  assert mean == pytest.approx(np.mean(values), rel=1e-6)
  assert std == pytest.approx(np.std(values), rel=1e-6) and std > 0


def test_precision_recall_by_hand_in_one_dimension():
  # Reals 0, 1, 2, 3, 10 with k=1: squared radii 1, 1, 1, 1, 49. Fakes 0.5, 1.5 lie inside;
  # 20 is 100 from 10 (> 49): precision 2/3. Fakes' radii 1, 1, 342.25 (20 to 1.5): every real
  # is inside (3 and 10 through 20's radius), recall 1.
  real, fake = np.array([[0.0], [1], [2], [3], [10]]), np.array([[0.5], [1.5], [20]])
  assert metrics.precision_recall(real, fake, k=1) == pytest.approx((2 / 3, 1.0))
  # k=2: reals' radii 4, 1, 1, 4, 64; 20 is still out. Fakes' radii 380.25, 342.25, 380.25.
  assert metrics.precision_recall(real, fake, k=2) == pytest.approx((2 / 3, 1.0))
  # Without the outlying fake (radii 1, 1): 3 (2.25 from 1.5) and 10 fall outside, recall 3/5.
  assert metrics.precision_recall(real, fake[:2], k=1) == pytest.approx((1.0, 0.6))


def test_the_suite_uses_the_reference_settings(monkeypatch):
  """KID: 100 subsets of at most 1000 (StyleGAN2-ADA's kid50k); precision/recall: k = 3. Each
  gets the reals and the fakes in that order, and each of its two results lands under its name
  (precision and recall swapped, or KID's mean and spread, would pass bounds-only checks)."""
  from jaxgan.metrics import kid, manifold, suite

  seen = {}

  def recorder(name, results):
    def record(real, fake, **kwargs):
      seen[name] = (real, fake, kwargs)
      return results
    return record

  monkeypatch.setattr(kid, "kernel_inception_distance", recorder("kid", (0.25, 0.75)))
  monkeypatch.setattr(manifold, "precision_recall", recorder("pr", (0.125, 0.625)))
  real, fake = _gaussian(8, 3, 1), _gaussian(8, 3, 2)
  out = suite.compute(real, fake, ["kid", "pr"], None, None)
  settings = {name: kwargs for name, (_, _, kwargs) in seen.items()}
  assert settings == {"kid": {"num_subsets": 100, "subset_size": 1000}, "pr": {"k": 3}}
  assert all(v[0] is real and v[1] is fake for v in seen.values())
  assert {k: out[k] for k in ("kid_mean", "kid_std", "precision", "recall")} == {
      "kid_mean": 0.25, "kid_std": 0.75, "precision": 0.125, "recall": 0.625}


def test_per_class_fid():
  x, y = _gaussian(40, 3, 9), _gaussian(40, 3, 10)
  labels = np.repeat([0, 1], 20)
  out = metrics.per_class_fid(x, labels, y, labels)
  assert set(out) == {0, 1}
  assert out[0] == pytest.approx(metrics.fid(x[:20], y[:20]))
  assert metrics.per_class_fid(x, labels, y[:1], labels[:1])[1] is None
  # Exactly min_count samples on a side is enough (fewer is not).
  two = metrics.per_class_fid(x, labels, y[[0, 1, 20]], labels[[0, 1, 20]], min_count=2)
  assert two[0] == pytest.approx(metrics.fid(x[:20], y[:2])) and two[1] is None


def test_per_class_fid_metric_reports_each_class_with_its_sample_count():
  from jaxgan.metrics import suite

  x, y = _gaussian(40, 3, 9), _gaussian(30, 3, 10)
  real_labels = np.stack([np.repeat([0, 1], 20), np.zeros(40, int)], axis=1)  # [N, A]: first col
  fake_labels = np.stack([np.repeat([0, 1, 2], 10), np.ones(30, int)], axis=1)
  out = suite.compute(x, y, ["per_class_fid"], real_labels, fake_labels)
  assert out["fid_class_0_n"] == 10 and out["fid_class_1_n"] == 10 and out["fid_class_2_n"] == 0
  assert out["fid_class_0"] == pytest.approx(metrics.fid(x[:20], y[:10]))
  assert out["fid_class_2"] is None


def test_reference_cache_round_trip_and_damaged_files_are_recomputed(tmp_path):
  from jaxgan.metrics import suite
  path = suite.reference_path(str(tmp_path), {"data": "x"})
  features, labels = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([0, 1])
  suite.save_reference(path, features, labels, {"data": "x"})
  got = suite.load_reference(path)
  np.testing.assert_array_equal(got[0], features)
  np.testing.assert_array_equal(got[1], labels)
  data = open(path, "rb").read()
  for damaged in (data[: len(data) // 2], b""):  # truncated (BadZipFile), empty (EOFError)
    open(path, "wb").write(damaged)
    assert suite.load_reference(path) is None
