"""Evaluation metrics on feature sets (FID: distances.py; KID: kid.py; precision/recall:
manifold.py)."""

from jaxgan.metrics.distances import fid, frechet_distance, feature_statistics, per_class_fid
from jaxgan.metrics.kid import kernel_inception_distance
from jaxgan.metrics.manifold import precision_recall

__all__ = ["fid", "frechet_distance", "feature_statistics", "kernel_inception_distance",
           "per_class_fid", "precision_recall"]
