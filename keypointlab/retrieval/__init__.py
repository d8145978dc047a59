"""Image retrieval with local features (DELF-style) or global descriptors.

- :mod:`~keypointlab.retrieval.index`: every database image's features in one
  nearest-neighbour index (faiss), saved as a folder (``keypointlab index``);
- :mod:`~keypointlab.retrieval.query`: kNN votes of a query's descriptors, then RANSAC
  verification of the best-voted images (``keypointlab query``);
- :mod:`~keypointlab.retrieval.global_features`: one descriptor per image (``NAME-global``);
- :mod:`~keypointlab.retrieval.distractors`: augmented photographs that grow a database.
"""

from keypointlab.retrieval.global_features import GlobalExtractor, is_global
from keypointlab.retrieval.index import RetrievalIndex, build_index, load_index
from keypointlab.retrieval.query import Ranking, query, rank

__all__ = [
    "GlobalExtractor",
    "Ranking",
    "RetrievalIndex",
    "build_index",
    "is_global",
    "load_index",
    "query",
    "rank",
]
