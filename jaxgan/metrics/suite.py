"""The metric registry and the cache of real-data features.

A metric is a function `(real_features, fake_features, real_labels, fake_labels) ->
{name: value}` over [N, 2048] Inception features (labels: int [N] of the first attribute, or None
when unknown), registered by name in METRICS (`@register(name, ...)`, with what the evaluator
must know before it runs: a `Metric`) and picked by `eval.metrics`. Reference
(real-data) features are cached as .npz keyed by what determines them: a hash of the reals'
pixels and labels, their number and shape, the Inception weights' digest and the preprocessing
(`evaluator.reference_identity`; StyleGAN2-ADA caches its reference statistics the same way), so
a run, its restarts and `jaxgan.evaluate` extract the reals once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Optional

import numpy as np

from jaxgan.atomic_write import save_npz
from jaxgan.config.paths import NOT_LOCAL, is_uri
from jaxgan.metrics import distances, kid, manifold
from jaxgan.registry import Registry

@dataclasses.dataclass(frozen=True)
class Metric:
  """A registered metric: its function, and what is checked or supplied before it runs."""

  compute: Callable[..., dict]
  needs_labels: bool = False  # both sets' class labels (config validation: a conditional run)
  # The fewest samples per set it can be computed from (checked before an evaluation: one metric
  # failing at its end would lose the others' values too).
  min_samples: int = 2
  takes_real_statistics: bool = False  # the evaluator's memoised mean and covariance of the reals


METRICS: Registry[Metric] = Registry("metric")


def register(name: str, **properties: Any) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
  """Decorator: `@register('fid', takes_real_statistics=True)` files the function in METRICS
  as a `Metric` with those properties."""

  def decorator(compute: Callable[..., dict]) -> Callable[..., dict]:
    METRICS.register(name)(Metric(compute, **properties))
    return compute

  return decorator


@register("fid", takes_real_statistics=True)
def _fid(real: np.ndarray, fake: np.ndarray, *_, real_statistics=None) -> dict:
  return {"fid": distances.fid(real, fake, real_statistics)}


@register("kid")
def _kid(real: np.ndarray, fake: np.ndarray, *_) -> dict:
  # Subsets of at most 1000 (Binkowski et al.); 100 subsets, a fixed seed: repeatable values.
  mean, std = kid.kernel_inception_distance(real, fake, num_subsets=100, subset_size=1000)
  return {"kid_mean": mean, "kid_std": std}


@register("per_class_fid", needs_labels=True)
def _per_class_fid(real: np.ndarray, fake: np.ndarray, real_labels: Optional[np.ndarray],
                   fake_labels: Optional[np.ndarray]) -> dict:
  """FID within each class of a conditional model: 'fid_class_<k>' (None for classes with fewer
  than 2 samples on either side) and 'fid_class_<k>_n', the smaller side's sample count. Small
  per-class N makes these biased upwards (a class with tens of images gives a number, not a
  measurement): read each with its N, and compare classes of the same run, not across runs with
  different N."""
  if real_labels is None or fake_labels is None:
    raise ValueError("per_class_fid needs class labels: use `evaluate --workdir` on a "
                     "conditional run, not two unlabelled sets")
  first = lambda labels: np.asarray(labels).reshape(len(labels), -1)[:, 0]
  real_first, fake_first = first(real_labels), first(fake_labels)
  out = {}
  for k, v in distances.per_class_fid(real, real_first, fake, fake_first).items():
    out[f"fid_class_{k}"] = v
    out[f"fid_class_{k}_n"] = int(min(np.sum(real_first == k), np.sum(fake_first == k)))
  return out


PR_NEIGHBOURS = 3


# The k-th neighbour of a sample must be another sample: k + 1 per set (FID and KID take 2).
@register("pr", min_samples=PR_NEIGHBOURS + 1)
def _precision_recall(real: np.ndarray, fake: np.ndarray, *_) -> dict:
  precision, recall = manifold.precision_recall(real, fake, k=PR_NEIGHBOURS)
  return {"precision": precision, "recall": recall}



def split_names(names: str) -> list[str]:
  """'fid, kid' -> ['fid', 'kid'], not checked (callers name the setting in their errors)."""
  return [n.strip() for n in names.split(",") if n.strip()]


def parse_names(names: str) -> list[str]:
  """split_names, each checked against the registry."""
  out = split_names(names)
  for name in out:
    METRICS.get(name, "eval.metrics")
  return out


def needs_labels(names: list[str]) -> list[str]:
  """The metrics of `names` that need class labels (a conditional run)."""
  return [n for n in names if METRICS.get(n, "eval.metrics").needs_labels]


def min_samples(names: list[str]) -> int:
  """The fewest samples per set that every metric of `names` can be computed from (checked
  before an evaluation: one metric failing at the end would lose the others' values too)."""
  return max([2] + [METRICS.get(n, "eval.metrics").min_samples for n in names])


def too_few_reals(names: list[str], available: Optional[int]) -> str:
  """'fid,kid need at least 2 real images; the data holds 1' where the data (`available` images,
  None where unknown) cannot give every metric of `names` its fewest samples, else '': said
  before any Inception work, which otherwise ran for minutes before the metrics failed."""
  fewest = min_samples(names)
  if available is None or available >= fewest:
    return ""
  return (f"{','.join(names)} need at least {fewest} real images; the data holds {available}")


def compute(real: np.ndarray, fake: np.ndarray, names: list[str],
            real_labels: Optional[np.ndarray] = None, fake_labels: Optional[np.ndarray] = None,
            on_error: Optional[Callable[[str, Exception], None]] = None,
            real_statistics: Optional[Callable[[], tuple]] = None) -> dict:
  """Every named metric of the two feature sets, as one flat dict of floats. With `on_error`, a
  metric that raises (KID or precision/recall out of accelerator memory) is reported to it and
  left out, and the others are still computed. `real_statistics` returns the reals' mean and
  covariance, for the metrics that take them (FID)."""
  results: dict = {}
  for name in names:
    metric = METRICS.get(name, "eval.metrics")  # an unknown name is always an error
    extra = ({"real_statistics": real_statistics}
             if real_statistics and metric.takes_real_statistics else {})
    try:
      results.update(metric.compute(real, fake, real_labels, fake_labels, **extra))
    except Exception as e:  # pylint: disable=broad-except
      if on_error is None:
        raise
      on_error(name, e)
  return results


def cache_dir(configured: str = "") -> str:
  """eval.cache_dir / --cache-dir, else $JAXGAN_CACHE, else ~/.cache/jaxgan (a URI refused)."""
  directory = configured or os.environ.get("JAXGAN_CACHE", os.path.expanduser("~/.cache/jaxgan"))
  if is_uri(directory):
    raise ValueError(f"cache folder {directory} (eval.cache_dir, --cache-dir or $JAXGAN_CACHE): "
                     f"{NOT_LOCAL}")
  return directory


def reference_path(directory: str, identity: dict[str, Any]) -> str:
  """Cache file for features determined by `identity` (JSON-serialisable)."""
  key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
  return os.path.join(directory, "reference", f"features_{key[:20]}.npz")


def load_reference(path: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
  """(features, labels) from a cache file, or None when absent or unreadable (then recomputed)."""
  try:
    with np.load(path) as f:
      return f["features"], f["labels"]
  except Exception:  # pylint: disable=broad-except  (a truncated .npz raises BadZipFile, EOFError)
    return None


def save_reference(path: str, features: np.ndarray, labels: np.ndarray,
                   identity: dict[str, Any]) -> None:
  """Atomic write (temp file + rename): concurrent runs never read half a cache file."""
  save_npz(path, features=features, labels=labels,
           identity=np.asarray(json.dumps(identity, sort_keys=True, default=str)))
