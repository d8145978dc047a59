"""DELF's training losses (Noh et al., ICCV 2017), as pure functions of feature maps.

Both stages are image classification with cross-entropy:

- *descriptor* (stage 1): the backbone's feature map is pooled into one vector by
  generalised mean pooling (GeM, Radenovic et al., TPAMI 2018; ``p = 3``), L2-normalised
  and classified by a cosine classifier (logits ``s * cos(g, w_c)`` with scale ``s``), so
  the dense features learn to tell the classes apart. The paper fine-tunes an ImageNet
  ResNet-50 with average pooling and a plain classifier; from scratch the cosine form
  trains faster and keeps the pooled vector usable as a global descriptor (DELG, Cao et
  al., ECCV 2020, made the same choice).
- *attention* (stage 2): with the backbone frozen, ``y = mean_n a_n f_n / |f_n|`` (the
  attention scores ``a_n >= 0`` weighting the L2-normalised features of the locations
  ``n``, as DELF's reference code pools) is classified by a new linear layer: locations
  whose features identify the class get high scores, clutter gets low ones; no location
  is labelled.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

DEFAULT_CONF: dict[str, Any] = {
    # each term is computed only when its weight is positive (the stages select one)
    "descriptor_weight": 1.0,
    "attention_weight": 1.0,
    "scale": 16.0,  # s of the cosine classifier (stage 1)
}


def gem(features: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean ``(mean_n x_n^p)^(1/p)`` over the locations of ``(B, C, h, w)``
    non-negative features: ``(B, C)`` (``p = 1`` average, ``p -> inf`` max pooling)."""
    return features.clamp_min(eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def attention_pool(features: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` mean over locations of ``attention`` ``(B, 1, h, w)`` times the
    L2-normalised ``features`` ``(B, C, h, w)``."""
    return (attention * F.normalize(features, dim=1)).mean(dim=(2, 3))


def cosine_logits(x: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """``(B, K)`` logits ``scale * cos(x_b, weight_k)`` of ``x`` ``(B, C)`` against the
    class vectors ``weight`` ``(K, C)``."""
    return scale * F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T


def classification(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``logits`` ``(B, K)`` against ``labels`` ``(B,)`` and the top-1
    accuracy (a detached scalar)."""
    loss = F.cross_entropy(logits, labels)
    accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
    return loss, accuracy
