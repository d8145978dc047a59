"""Global descriptors as features: ``NAME-global`` is one descriptor per image from the
network of the learned feature ``NAME`` (its ``global_descriptor``; DELF's GeM pooling).

The descriptor is returned as :class:`~keypointlab.features.base.Features` with a single
"keypoint" at the image centre, so indexing and search treat global and local features the
same way; a global index ranks by cosine similarity and has nothing to verify.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from keypointlab.errors import InputError
from keypointlab.features.base import Extractor, Features

SUFFIX = "-global"


def is_global(name: str) -> bool:
    """Whether ``name`` names a global descriptor (``NAME-global``)."""
    return isinstance(name, str) and name.endswith(SUFFIX) and len(name) > len(SUFFIX)


class GlobalExtractor(Extractor):
    """The global descriptor of the learned extractor ``base`` (its network's
    ``global_descriptor(image)``: ``(1, 3, H, W)`` in ``[0, 1]`` -> ``(D,)`` unit vector).

    Raises:
        InputError: ``base``'s network has no global descriptor.
    """

    is_global = True  # an index of these ranks by similarity, without verification

    def __init__(self, base: Extractor, name: str | None = None) -> None:
        net = getattr(base, "net", None)
        if not callable(getattr(net, "global_descriptor", None)):
            raise InputError(
                f"{base.name}: this feature has no global descriptor (its network defines no "
                f"global_descriptor); use a model that has one, e.g. delf-global"
            )
        self.base = base
        self.net = net
        self.name = name or f"{base.name}{SUFFIX}"

    def identity(self) -> dict[str, Any]:
        return {**self.base.identity(), "name": self.name, "global": True}

    @torch.inference_mode()
    def _extract(self, image: np.ndarray) -> Features:
        h, w = image.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
        device = next(self.net.parameters(), torch.empty(0)).device
        g = self.net.global_descriptor(x.to(device)).float().cpu().numpy().reshape(1, -1)
        return Features(np.array([[(w - 1) / 2, (h - 1) / 2]]), np.ones(1), g, (h, w))


def get_retrieval_extractor(name: str, **kwargs: Any) -> Extractor:
    """The extractor of feature ``name`` for retrieval: ``NAME-global`` wraps the learned
    ``NAME``; anything else is :func:`keypointlab.features.get_extractor`."""
    from keypointlab.features import get_extractor

    if is_global(name):
        return GlobalExtractor(get_extractor(name[: -len(SUFFIX)], **kwargs), name)
    return get_extractor(name, **kwargs)
