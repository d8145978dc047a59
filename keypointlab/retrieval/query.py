"""Ranking a database for a query: kNN votes, then geometric verification (DELF).

Votes. Each query descriptor's ``knn`` nearest database descriptors are looked up; every
image among them gets one vote from that descriptor (however many of its descriptors are
among the ``knn``), and the nearest of them is the descriptor's correspondence in that
image. One vote per image and descriptor keeps an image with many similar descriptors (a
repeated texture) from outvoting one that matches many different parts of the query.

Verification. The ``verify`` best-voted images are verified as DELF does: an affine
transformation fitted by RANSAC (OpenCV's ``estimateAffine2D``, reprojection threshold
``ransac_px`` in the pixels of the images as described, fixed seed) to the correspondences;
the score is the inlier count.

Ranking. Every database image but an excluded one (the query itself, leave-one-out) is
ranked, so that average precision sees the whole list: the verified images by inliers
(ties by votes), then the other voted images by votes, then the images without votes, each
by database order for ties. ``votes_only`` skips verification. A global index (one
descriptor per image) ranks every image by cosine similarity.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from keypointlab import limits
from keypointlab.data.images import read_image
from keypointlab.errors import InputError
from keypointlab.features.base import Extractor, Features
from keypointlab.retrieval.index import RetrievalIndex, resize_to

MIN_CORRESPONDENCES = 3  # an affine transformation needs three
MAX_VERIFY = 10_000  # candidates verified per query


@dataclass
class Ranking:
    """A ranked database: ``images`` ``(M,)`` image indices best first, and for each its
    ``votes``, ``inliers`` (``-1``: not verified) and ``scores`` (what it was ranked by:
    inliers, votes or cosine similarity); ``search_seconds``: the time of the kNN search
    and the vote count (the rest of a query's time is verification and ranking)."""

    images: np.ndarray
    votes: np.ndarray
    inliers: np.ndarray
    scores: np.ndarray
    search_seconds: float = 0.0

    def top(self, k: int) -> Ranking:
        return Ranking(
            self.images[:k], self.votes[:k], self.inliers[:k], self.scores[:k], self.search_seconds
        )


def _order(keys: list[np.ndarray]) -> np.ndarray:
    """Indices sorting by ``keys`` (most significant first, each descending), stable."""
    return np.lexsort([-k for k in reversed(keys)])


def votes_and_correspondences(
    index: RetrievalIndex, features: Features, knn: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(votes per image, query idx, database idx, image)`` of the kNN search: one
    correspondence per (query descriptor, database image) pair, its nearest descriptor."""
    _, ids = index.search(features.descriptors, knn)
    q = np.repeat(np.arange(len(ids)), ids.shape[1])
    db = ids.reshape(-1)
    valid = db >= 0
    q, db = q[valid], db[valid]
    img = index.image_of[db]
    # rows are nearest first: the first (query, image) occurrence is the nearest
    _, first = np.unique(q * index.images + img, return_index=True)
    q, db, img = q[first], db[first], img[first]
    votes = np.bincount(img, minlength=index.images)
    return votes, q, db, img


def affine_inliers(src: np.ndarray, dst: np.ndarray, ransac_px: float) -> int:
    """Inliers of the RANSAC affine fit from ``src`` to ``dst`` ``(n, 2)`` (0 below 3)."""
    if len(src) < MIN_CORRESPONDENCES:
        return 0
    cv2.setRNGSeed(0)
    model, mask = cv2.estimateAffine2D(
        src.astype(np.float32),
        dst.astype(np.float32),
        method=cv2.RANSAC,
        ransacReprojThreshold=float(ransac_px),
        maxIters=1000,
        confidence=0.99,
    )
    return 0 if model is None or mask is None else int(mask.sum())


def rank(
    index: RetrievalIndex,
    features: Features,
    knn: int = 10,
    verify: int = 30,
    ransac_px: float = 15.0,
    votes_only: bool = False,
    exclude: int | None = None,
) -> Ranking:
    """The database ranked for the query ``features`` (see the module docstring).

    Raises:
        InputError: a bad ``knn``, ``verify`` or ``ransac_px``, or descriptors of another
            dimension than the index's.
    """
    knn = limits.check_count(knn, "knn", maximum=1000)
    verify = limits.check_count(verify, "verify", minimum=0, maximum=MAX_VERIFY)
    if not (np.isfinite(ransac_px) and ransac_px > 0):
        raise InputError(f"ransac_px {ransac_px!r}: must be a positive number of pixels")
    n = index.images
    keep = np.ones(n, bool)
    if exclude is not None:
        keep[exclude] = False
    if index.is_global:
        start = time.perf_counter()
        dist, ids = index.search(features.descriptors[:1], index.descriptors)
        searched = time.perf_counter() - start
        sim = np.full(n, -np.inf)
        sim[index.image_of[ids[0]]] = 1.0 - dist[0] / 2.0  # unit vectors: cosine
        images = np.flatnonzero(keep)
        images = images[_order([sim[images]])]
        zeros = np.zeros(len(images), np.int64)
        return Ranking(images, zeros, zeros - 1, sim[images], searched)
    start = time.perf_counter()
    votes, q, db, img = votes_and_correspondences(index, features, knn)
    searched = time.perf_counter() - start
    votes = np.where(keep, votes, 0)
    inliers = np.full(n, -1, np.int64)
    if not votes_only and verify:
        candidates = np.flatnonzero(votes > 0)
        candidates = candidates[_order([votes[candidates]])][:verify]
        for c in candidates:
            sel = img == c
            inliers[c] = affine_inliers(
                features.keypoints[q[sel]], index.keypoints[db[sel]], ransac_px
            )
    images = np.flatnonzero(keep)
    verified = (inliers[images] >= 0).astype(np.int64)
    images = images[_order([verified, inliers[images], votes[images]])]
    scores = np.where(inliers[images] >= 0, inliers[images], votes[images]).astype(float)
    return Ranking(images, votes[images], inliers[images], scores, searched)


def query(
    index: RetrievalIndex, extractor: Extractor, image: Any, **options: Any
) -> list[dict[str, Any]]:
    """The ranked database for a query ``image`` (a path or an array), best first:
    ``image`` (path), ``group``, ``inliers`` (``-1``: not verified), ``votes`` and ``score``
    for each. ``extractor`` must be the index's feature (``index.feature``); the image is
    shrunk to the index's ``max_side`` as the database was; ``options`` go to :func:`rank`.

    Raises:
        InputError: ``extractor`` is not the index's feature, or a bad option.
    """
    if extractor.name != index.feature:
        raise InputError(f"index made with {index.feature!r}, queried with {extractor.name!r}")
    if isinstance(image, (str, Path)):
        image = read_image(image)
    feats = extractor.extract(resize_to(np.asarray(image), int(index.meta.get("max_side", 640))))
    r = rank(index, feats, **options)
    return [
        {
            "image": index.paths[i],
            "group": index.groups[i],
            "inliers": int(n),
            "votes": int(v),
            "score": float(s),
        }
        for i, v, n, s in zip(r.images, r.votes, r.inliers, r.scores, strict=True)
    ]
