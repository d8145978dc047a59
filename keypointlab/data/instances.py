"""Instance discrimination: every training photograph is its own class (``data.source:
instances``).

DELF is trained with image-level landmark labels; none exist here. The self-supervised
stand-in is the one of Exemplar-CNN (Dosovitskiy et al., NeurIPS 2014) and instance
discrimination (Wu et al., CVPR 2018): image ``k`` of ``data.train`` (after the hold-out
split and ``data.exclude``) is class ``k``, and its random crops, homographic warps and
photometric changes are the class's samples. A classifier that tells 500 photographs apart
under viewpoint and lighting change has to describe what is *in* them, which is what
retrieval of the same place needs; two views of a photo stand in for two photographs of a
landmark.

Items are dicts: ``image0``, ``image1`` float ``(3, h, w)`` in ``[0, 1]`` (two views of
the same photograph: a crop and a homographic warp of it, as
:class:`~keypointlab.data.pairs.HomographicPairs` makes them, each with its own
photometric change) and ``label`` (int64, the photograph's index). Item ``i`` shows image
``perm_e[i mod N]`` with ``perm_e`` a permutation drawn from ``(seed, e = i // N)``: every
photograph is seen once per epoch of ``N`` items, and each item is a pure function of
``(seed, i)`` so training resumes exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from keypointlab.data.augment import Photometric
from keypointlab.data.pairs import HomographicPairs, to_tensor
from keypointlab.data.sources import register_source


class InstancePairs(Dataset):
    """Two augmented views of training photograph ``label`` per item (see the module
    docstring); ``views`` makes the pair (its crop, homography and rendering settings)."""

    def __init__(
        self,
        views: HomographicPairs,
        photometric: Photometric | None = None,
        seed: int = 0,
        length: int = 10**9,
    ) -> None:
        self.pairs = views
        self.photometric = photometric
        self.seed = seed
        self.length = length

    @property
    def classes(self) -> int:
        """The number of classes: one per photograph."""
        return len(self.pairs.images)

    def __len__(self) -> int:
        return self.length

    def label(self, index: int) -> int:
        """The photograph (class) item ``index`` shows."""
        n = self.classes
        epoch, k = divmod(int(index), n)
        return int(np.random.default_rng([self.seed, epoch, n]).permutation(n)[k])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        label = self.label(index)
        rng = np.random.default_rng([self.seed, int(index)])
        view0, view1, _, _ = self.pairs.views(self.pairs.images[label], rng)
        if self.photometric is not None:
            view0, view1 = self.photometric(view0, rng), self.photometric(view1, rng)
        return {
            "image0": to_tensor(view0),
            "image1": to_tensor(view1),
            "label": torch.tensor(label, dtype=torch.long),
        }


def _build_instances(conf: dict[str, Any], images: list[np.ndarray] | None, seed: int) -> Dataset:
    if images is None:
        raise ValueError("the 'instances' source needs the images of data.train")
    photometric = Photometric(**conf["photometric"]) if conf.get("photometric") else None
    views = HomographicPairs(
        images,
        tuple(conf["size"]),
        conf["homography"],
        None,
        seed,
        crop_scale=tuple(conf["crop_scale"]),
        render_from_source=conf["render_from_source"],
    )
    return InstancePairs(views, photometric, seed)


register_source("instances", _build_instances, needs_images=True)
