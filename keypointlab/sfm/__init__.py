"""From features to 3D: structure from motion with COLMAP (pycolmap, the ``sfm`` extra)."""

from keypointlab.sfm.reconstruct import reconstruct, reconstruct_from_features

__all__ = ["reconstruct", "reconstruct_from_features"]
