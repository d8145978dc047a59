"""SuperPoint and MagicPoint losses (DeTone et al. 2018) as pure functions.

Detector loss ``L_p``. The keypoint map of an image (1 at labelled pixels) is cut into 8x8
cells; each cell's label is the index ``dy * 8 + dx`` of its keypoint pixel, or 64 (the
dustbin) when it has none. A cell with several keypoints takes one of them at random
(``random_ties``; the random numbers come from the ``generator`` passed, by default
torch's global one, whose state the trainer checkpoints) or, deterministically, the first
in raster order. ``L_p`` is the cross-entropy of the 65 logits against that label,
averaged over the *valid* cells: a cell is valid when all its pixels lie in the valid
region of the view (the part of a warped view that comes from inside the source image).

Descriptor loss ``L_d``. For every pair of cells ``(hw, h'w')`` of view 0 and view 1, with
``s = 1`` when the centre of ``hw`` warped by ``H_0to1`` is less than
``descriptor_threshold`` (8) px from the centre of ``h'w'``::

    l_d = lambda_d * s * max(0, m_p - d . d') + (1 - s) * max(0, d . d' - m_n)

with ``d, d'`` the L2-normalised coarse descriptors of the cells. ``L_d`` is the mean over
the pairs of valid cells (the paper's ``1 / (Hc Wc)^2`` sum when every cell is valid). The
paper writes ``<= 8``; the strict ``< 8`` keeps the neighbours of a cell, exactly 8 px away
under an identity-like warp, from counting as positives (rpautrat/SuperPoint uses
``<= 7.5`` for the same reason).

Totals::

    SuperPoint:  L_p(view 0) + L_p(view 1) + descriptor_weight * L_d
    MagicPoint:  L_p averaged over all its images

``lambda_d_cells`` (off by default) scales ``lambda_d`` with the number of cells, see
:func:`scaled_lambda_d`.

Weights (:data:`DEFAULT_CONF`) are the paper's: ``lambda_d = 250``, ``m_p = 1``,
``m_n = 0.2`` and ``lambda = descriptor_weight = 0.0001``; the same values are the model
defaults of rpautrat/SuperPoint (``lambda_loss: 0.0001``), whose later COCO config moved to
``lambda_d = 800`` and ``lambda_loss = 1`` together with an extra normalisation of the dot
products that is not used here. The small weight does not stall the descriptor: with Adam,
whose steps do not depend on the gradient's scale, the descriptor head (trained by ``L_d``
alone) learns at the full learning rate; the weight sets how much ``L_d`` shapes the
shared encoder relative to the detector.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from keypointlab.geometry.groundtruth import GroundTruth, as_ground_truth, finite_points
from keypointlab.geometry.keypoints import cell_centers
from keypointlab.losses import loss_conf

DETECTOR_CONF: dict[str, Any] = {
    "random_ties": True,  # several labelled keypoints in a cell: pick one at random
}

DEFAULT_CONF: dict[str, Any] = {
    **DETECTOR_CONF,
    "descriptor_weight": 0.0001,  # the paper's lambda
    "lambda_d": 250.0,  # weight of the positive pairs
    "margin_positive": 1.0,
    "margin_negative": 0.2,
    "descriptor_threshold": 8.0,  # px (strictly less) between cell centres of positive pairs
    # > 0: lambda_d is meant for images of this many cells and scales with the actual
    # count (1200: the paper's 240x320); 0: lambda_d as given
    "lambda_d_cells": 0,
}


def _cell_size(logits: torch.Tensor, image_hw: tuple[int, int]) -> int:
    cell = image_hw[-1] // logits.shape[-1]
    if cell * logits.shape[-1] != image_hw[-1] or cell * logits.shape[-2] != image_hw[-2]:
        raise ValueError(
            f"map of size {tuple(image_hw)} does not match logits of size "
            f"{tuple(logits.shape[-2:])} times a whole cell"
        )
    if logits.shape[1] != cell * cell + 1:
        raise ValueError(f"expected {cell * cell + 1} logits per cell, got {logits.shape[1]}")
    return cell


def cell_labels(
    keypoint_map: torch.Tensor,
    cell: int = 8,
    random_ties: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-cell class of a keypoint map: the keypoint's pixel index in its cell, or the
    dustbin ``cell * cell`` when the cell has none.

    Args:
        keypoint_map: ``(B, H, W)`` or ``(B, 1, H, W)``; pixels ``> 0.5`` are keypoints.
        cell: cell size (``H`` and ``W`` multiples of it).
        random_ties: a cell with several keypoints takes a random one (else the first in
            raster order).
        generator: random source for ``random_ties`` (``None``: torch's global one).

    Returns:
        ``(B, H / cell, W / cell)`` int64 labels in ``[0, cell * cell]``.
    """
    km = keypoint_map if keypoint_map.dim() == 4 else keypoint_map.unsqueeze(1)
    occupied = F.pixel_unshuffle((km > 0.5).float(), cell)  # (B, cell^2, Hc, Wc)
    if random_ties:
        noise = torch.rand(occupied.shape, generator=generator).to(occupied.device)
        occupied = occupied * (1.0 + noise)  # keypoints in [1, 2), others 0
    dustbin = torch.full_like(occupied[:, :1], 0.5)  # below any keypoint, above none
    return torch.cat([occupied, dustbin], dim=1).argmax(dim=1)


def cell_valid_mask(valid_mask: torch.Tensor | None, shape: torch.Size, cell: int) -> torch.Tensor:
    """``(B, Hc, Wc)`` cells whose pixels are all valid (``> 0.5``) in a ``(B, H, W)`` or
    ``(B, 1, H, W)`` mask; all cells when ``valid_mask`` is ``None``. ``shape`` is the
    ``(B, C, Hc, Wc)`` shape of the logits or descriptors."""
    b, _, hc, wc = shape
    if valid_mask is None:
        return torch.ones(b, hc, wc, dtype=torch.bool)
    v = valid_mask if valid_mask.dim() == 4 else valid_mask.unsqueeze(1)
    invalid = F.max_pool2d((v <= 0.5).float(), cell)  # any invalid pixel in the cell
    return invalid[:, 0] == 0


def detector_loss(
    logits: torch.Tensor,
    keypoint_map: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
    random_ties: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy of the ``(B, 65, Hc, Wc)`` logits against the cell labels of
    ``keypoint_map`` ``(B, H, W)``, averaged over the valid cells of ``valid_mask``.

    Returns:
        ``(loss, labels, valid)``: the scalar loss, ``(B, Hc, Wc)`` labels and valid cells.
    """
    cell = _cell_size(logits, tuple(keypoint_map.shape[-2:]))
    labels = cell_labels(keypoint_map, cell, random_ties, generator).to(logits.device)
    valid = cell_valid_mask(valid_mask, logits.shape, cell).to(logits.device)
    ce = F.cross_entropy(logits, labels, reduction="none")
    w = valid.to(ce.dtype)
    return (ce * w).sum() / w.sum().clamp(min=1.0), labels, valid


def detector_metrics(
    logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Cell-level detection: ``precision`` (predicted keypoint cells, argmax not the
    dustbin, that hold a labelled keypoint), ``recall`` (labelled cells predicted as
    keypoint cells) and ``accuracy`` (cells whose argmax is their exact label)."""
    dust = logits.shape[1] - 1
    pred = logits.detach().argmax(dim=1)
    p, t = (pred != dust) & valid, (labels != dust) & valid
    return {
        "precision": (p & t).sum() / p.sum().clamp(min=1),
        "recall": (p & t).sum() / t.sum().clamp(min=1),
        "accuracy": ((pred == labels) & valid).sum() / valid.sum().clamp(min=1),
    }


def descriptor_loss(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    gt: GroundTruth | torch.Tensor,
    valid_mask0: torch.Tensor | None = None,
    valid_mask1: torch.Tensor | None = None,
    lambda_d: float = 250.0,
    margin_positive: float = 1.0,
    margin_negative: float = 0.2,
    threshold: float = 8.0,
    cell: int = 8,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SuperPoint's hinge loss over all pairs of cells of two views.

    Args:
        desc0, desc1: ``(B, D, Hc, Wc)`` coarse descriptor maps (normalised here).
        gt: the pair's ground truth (or ``(B, 3, 3)`` homographies ``H_0to1``); cells
            whose centre has no known correspondence have no positive.
        valid_mask0, valid_mask1: ``(B, H, W)`` valid pixels of each view (``None``: all).
        threshold: a pair is positive when the warped view-0 cell centre is less than this
            many pixels from the view-1 cell centre.
        cell: cell size in pixels.

    Returns:
        ``(loss, metrics)``: the mean of the per-pair losses over pairs of valid cells;
        metrics ``desc_positive`` / ``desc_negative`` (mean dot product of the positive /
        negative valid pairs) and ``desc_recall`` (fraction of valid view-0 cells with a
        positive whose most similar valid view-1 cell is a positive).
    """
    b, _, hc, wc = desc0.shape
    d0 = F.normalize(desc0.flatten(2), dim=1).transpose(1, 2)  # (B, N, D)
    d1 = F.normalize(desc1.flatten(2), dim=1).transpose(1, 2)  # (B, M, D)
    centers = cell_centers(hc, wc, cell, desc0.device, desc0.dtype).flatten(1).T  # (N, 2)
    warped, known = as_ground_truth(gt).warp_0to1(centers.expand(b, -1, -1))
    warped = finite_points(warped)
    dist = torch.cdist(
        warped, centers.expand(b, -1, -1), compute_mode="donot_use_mm_for_euclid_dist"
    )
    positive = (dist < threshold) & known[:, :, None]  # (B, N, M); exact distances
    dot = d0 @ d1.transpose(1, 2)
    per_pair = torch.where(
        positive,
        lambda_d * F.relu(margin_positive - dot),
        F.relu(dot - margin_negative),
    )
    v0 = cell_valid_mask(valid_mask0, desc0.shape, cell).to(desc0.device).flatten(1)
    v1 = cell_valid_mask(valid_mask1, desc1.shape, cell).to(desc0.device).flatten(1)
    valid = v0[:, :, None] & v1[:, None, :]
    w = valid.to(dot.dtype)
    loss = (per_pair * w).sum() / w.sum().clamp(min=1.0)

    with torch.no_grad():
        pos, neg = valid & positive, valid & ~positive
        best = dot.masked_fill(~valid, -2.0).argmax(dim=-1, keepdim=True)
        has_pos = pos.any(dim=-1)
        hit = positive.gather(-1, best)[..., 0] & has_pos
        metrics = {
            "desc_positive": (dot * pos).sum() / pos.sum().clamp(min=1),
            "desc_negative": (dot * neg).sum() / neg.sum().clamp(min=1),
            "desc_recall": hit.sum() / has_pos.sum().clamp(min=1),
        }
    return loss, metrics


def scaled_lambda_d(lambda_d: float, reference_cells: int, shape: torch.Size) -> float:
    """``lambda_d`` for descriptor maps of ``shape`` ``(B, D, Hc, Wc)``.

    Over all cell pairs of an image of ``N`` cells the positives (about three per cell at
    8 px) weigh about ``3 lambda_d N`` against ``N^2`` negatives of weight 1: the balance
    ``3 lambda_d / N`` depends on the image size. With ``reference_cells > 0`` the weight
    keeps the balance it has at that many cells (the paper's 250 at 240x320, 1200 cells:
    62.5 at 120x160); 0 leaves it as given (benchmarks/README.md, SuperPoint diagnosis).
    """
    if reference_cells <= 0:
        return float(lambda_d)
    return float(lambda_d) * shape[-2] * shape[-1] / reference_cells


def magicpoint_loss(
    logits: torch.Tensor,
    keypoint_map: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
    conf: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The detector loss of a batch of labelled images (MagicPoint).

    Args:
        logits: ``(B, 65, Hc, Wc)`` detector logits.
        keypoint_map: ``(B, H, W)`` labels (1 at keypoint pixels).
        valid_mask: ``(B, H, W)`` valid pixels (``None``: all).
        conf: overrides of :data:`DETECTOR_CONF`.

    Returns:
        ``(losses, metrics)`` with ``losses["total"] = losses["detector"]``.
    """
    c = loss_conf(conf, DETECTOR_CONF, "magicpoint_loss")
    loss, labels, valid = detector_loss(
        logits, keypoint_map, valid_mask, c["random_ties"], generator
    )
    return {"detector": loss, "total": loss}, detector_metrics(logits, labels, valid)


def superpoint_loss(
    pred0: dict[str, torch.Tensor],
    pred1: dict[str, torch.Tensor],
    keypoint_map0: torch.Tensor,
    keypoint_map1: torch.Tensor,
    gt: GroundTruth | torch.Tensor,
    valid_mask0: torch.Tensor | None = None,
    valid_mask1: torch.Tensor | None = None,
    conf: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Detector losses of both views plus the weighted descriptor loss.

    Args:
        pred0, pred1: SuperPoint outputs (``logits``, ``descriptors``) of view 0 and view 1.
        keypoint_map0, keypoint_map1: ``(B, H, W)`` labels of each view.
        gt: the pair's ground truth (or ``(B, 3, 3)`` homographies ``H_0to1``).
        valid_mask0, valid_mask1: ``(B, H, W)`` valid pixels of each view (``None``: all).
        conf: overrides of :data:`DEFAULT_CONF`.

    Returns:
        ``(losses, metrics)``; ``losses["total"]`` is
        ``detector0 + detector1 + descriptor_weight * descriptor``.
    """
    c = loss_conf(conf, DEFAULT_CONF, "superpoint_loss")
    l0, lab0, val0 = detector_loss(
        pred0["logits"], keypoint_map0, valid_mask0, c["random_ties"], generator
    )
    l1, lab1, val1 = detector_loss(
        pred1["logits"], keypoint_map1, valid_mask1, c["random_ties"], generator
    )
    cell = _cell_size(pred0["logits"], tuple(keypoint_map0.shape[-2:]))
    ld, desc_metrics = descriptor_loss(
        pred0["descriptors"],
        pred1["descriptors"],
        gt,
        valid_mask0,
        valid_mask1,
        scaled_lambda_d(c["lambda_d"], c["lambda_d_cells"], pred0["descriptors"].shape),
        c["margin_positive"],
        c["margin_negative"],
        c["descriptor_threshold"],
        cell,
    )
    losses = {
        "detector0": l0,
        "detector1": l1,
        "descriptor": ld,
        "total": l0 + l1 + c["descriptor_weight"] * ld,
    }
    metrics = detector_metrics(
        torch.cat([pred0["logits"], pred1["logits"]]),
        torch.cat([lab0, lab1]),
        torch.cat([val0, val1]),
    )
    return losses, {**metrics, **desc_metrics}
