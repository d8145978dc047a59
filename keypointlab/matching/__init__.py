"""Matching: nearest-neighbour descriptor matching and robust homography estimation."""

from keypointlab.matching.nearest import descriptor_distances, match_nn, matches_to_pairs
from keypointlab.matching.robust import HomographyEstimate, estimate_homography

__all__ = [
    "HomographyEstimate",
    "descriptor_distances",
    "estimate_homography",
    "match_nn",
    "matches_to_pairs",
]
