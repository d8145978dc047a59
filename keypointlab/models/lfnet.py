"""LF-Net (Ono et al., NeurIPS 2018): where, at what scale and in which orientation to take a
keypoint, learned end to end from image pairs; patches cut there are described by a small
CNN.

Detector. The grey image, instance-normalised, goes through a full-resolution trunk: one
convolution and ``blocks`` pre-activation residual blocks (BN, leaky ReLU 0.2, two
convolutions) of ``channels`` channels, then BN + leaky ReLU. For each of ``scales``
factors ``s`` (the reference: 5, from sqrt 2 down to 1 / sqrt 2) the trunk's map is resized
to ``(H / s, W / s)``, one convolution gives a score logit, which is instance-normalised and
resized back to ``(H, W)``: a scale-space volume ``l (B, S, H, W)``. One more convolution on
the trunk gives the orientation as a unit 2-vector (cos, sin) per pixel (initialised to
angle 0).

Scale-space soft NMS. ``p_s(x) = exp(k l_s(x)) / sum over s' and the nms_window^2 pixels y
around x of exp(k l_s'(y))`` (``k = com_strength``, 3); then over scales
``w = softmax_s(scale_strength * p_s)`` (100) gives the score ``sum_s w_s p_s`` and the
keypoint's scale ``sum_s w_s s``, both differentiable. A border of ``border`` pixels scores
zero. Keypoints: ``nms``-window hard maxima of the score, best first, each refined by a
soft-argmax over a 9x9 window of the score map sampled at its scale.

Descriptor. A ``patch_size`` patch (32) of the normalised image, of side ``patch_size * s``
pixels, turned by the orientation (:mod:`keypointlab.geometry.patches`), through three
stride-2 3x3 convolutions (BN, ReLU), a fully connected layer (BN, ReLU) and a linear layer
to an L2-normalised descriptor. The paper's widths: ``lfnet_paper.yaml``.

``Features.scales`` is the patch side in pixels (``patch_size * s``), ``orientations`` the
angle ``atan2(sin, cos)`` in the convention of :mod:`keypointlab.geometry.patches`.
Training (two branches, stop-gradient targets, five losses): :mod:`keypointlab.losses.lfnet`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from keypointlab.geometry.keypoints import sample_map
from keypointlab.geometry.patches import extract_patches_batched
from keypointlab.losses import lfnet as lf
from keypointlab.models.base import BaseModel, register_method, split_views


def _grey(image: torch.Tensor) -> torch.Tensor:
    if image.shape[1] == 3:
        w = image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        image = (image * w).sum(1, keepdim=True)
    return image


def _instance_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean((-2, -1), keepdim=True)
    var = x.var((-2, -1), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


def scale_factors(n: int, low: float, high: float) -> list[float]:
    """``n`` factors from ``high`` down to ``low``, evenly spaced in log."""
    if n == 1:
        return [1.0]
    return [
        math.exp(math.log(high) + (math.log(low) - math.log(high)) * i / (n - 1)) for i in range(n)
    ]


def soft_nms_3d(
    logits: torch.Tensor, factors: torch.Tensor, window: int, strength: float, scale_strength: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score ``(B, H, W)`` and scale ``(B, H, W)`` from a scale-space volume ``(B, S, H, W)``
    (see the module)."""
    z = strength * logits
    z = z - z.amax(dim=(1, 2, 3), keepdim=True).detach()  # one constant per image: exact
    e = torch.exp(z)
    pad = window // 2
    total = F.avg_pool2d(
        e.sum(1, keepdim=True), window, stride=1, padding=pad, count_include_pad=True
    ) * float(window * window)
    p = e / total.clamp_min(1e-30)
    w = torch.softmax(scale_strength * p, dim=1)
    score = (w * p).sum(1)
    scale = (w * factors.view(1, -1, 1, 1)).sum(1)
    return score, scale


class _Block(nn.Module):
    def __init__(self, c: int, k: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, c, k, padding=k // 2),
            nn.BatchNorm2d(c),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, c, k, padding=k // 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@register_method("lfnet")
class LFNet(BaseModel):
    """LF-Net's detector (scale-space scores, orientation) and patch descriptor.

    Outputs of ``forward`` (``H, W`` the input size):
        logits: ``(B, S, H, W)`` the scale-space score volume.
        scores: ``(B, H, W)`` soft-NMS scores (zero in the border).
        scales: ``(B, H, W)`` the keypoint scale factor at each pixel.
        orientations: ``(B, 2, H, W)`` unit (cos, sin).
        grey: ``(B, 1, H, W)`` the normalised grey image patches are cut from.
    """

    default_conf: dict[str, Any] = {
        "channels": 16,
        "blocks": 2,  # residual blocks (reference: 3)
        "kernel": 3,  # trunk and head kernels (reference: 5)
        "scales": 5,
        "min_scale": 0.7071,
        "max_scale": 1.4142,
        "nms_window": 15,  # soft NMS window (pixels, all scales)
        "com_strength": 3.0,
        "scale_strength": 100.0,
        "nms": 5,  # hard NMS window of the keypoints
        "border": 8,  # pixels scoring zero (reference: 16)
        "refine_window": 9,
        "refine_strength": 1.0,
        "patch_size": 32,
        "desc_channels": [16, 32, 64],  # reference: 64, 128, 256
        "desc_fc": 128,  # reference: 512
        "descriptor_dim": 128,  # reference: 256
        "max_detections": 4096,  # candidates detect() returns (the extractor keeps top-k)
        # inference ablations: False takes every keypoint upright / at scale 1
        "learned_orientation": True,
        "learned_scale": True,
    }
    loss_defaults: dict[str, Any] = lf.DEFAULT_CONF
    tiny_conf: dict[str, Any] = {
        "channels": 4,
        "blocks": 1,
        "scales": 3,
        "nms_window": 5,
        "border": 4,
        "patch_size": 8,
        "desc_channels": [4, 8, 8],
        "desc_fc": 16,
        "descriptor_dim": 8,
    }
    onnx_export = False  # a data-dependent number of detections

    def _init(self, conf: dict[str, Any]) -> None:
        c, k, n = int(conf["channels"]), int(conf["kernel"]), int(conf["scales"])
        if c < 1 or k < 1 or k % 2 == 0 or n < 1 or int(conf["blocks"]) < 0:
            raise ValueError(
                f"LFNet: channels, scales must be positive, kernel odd, blocks >= 0; got "
                f"channels={c}, kernel={k}, scales={n}, blocks={conf['blocks']}"
            )
        if not 0 < float(conf["min_scale"]) <= float(conf["max_scale"]):
            raise ValueError(
                f"LFNet: need 0 < min_scale <= max_scale, got {conf['min_scale']}, "
                f"{conf['max_scale']}"
            )
        ps = int(conf["patch_size"])
        if ps < 8 or ps % 8:
            raise ValueError(f"LFNet: patch_size must be a multiple of 8, got {ps}")
        self.trunk = nn.Sequential(
            nn.Conv2d(1, c, k, padding=k // 2),
            *[_Block(c, k) for _ in range(int(conf["blocks"]))],
            nn.BatchNorm2d(c),
            nn.LeakyReLU(0.2),
        )
        self.score_heads = nn.ModuleList(nn.Conv2d(c, 1, k, padding=k // 2) for _ in range(n))
        self.ori_head = nn.Conv2d(c, 2, k, padding=k // 2)
        nn.init.zeros_(self.ori_head.weight)
        with torch.no_grad():
            self.ori_head.bias.copy_(torch.tensor([1.0, 0.0]))
        self.register_buffer(
            "factors",
            torch.tensor(scale_factors(n, float(conf["min_scale"]), float(conf["max_scale"]))),
            persistent=False,
        )
        layers: list[nn.Module] = []
        cin = 1
        for width in conf["desc_channels"]:
            layers += [
                nn.Conv2d(cin, int(width), 3, stride=2, padding=1),
                nn.BatchNorm2d(int(width)),
                nn.ReLU(),
            ]
            cin = int(width)
        side = ps // 2 ** len(conf["desc_channels"])
        if side < 1:
            raise ValueError(
                f"LFNet: patch_size {ps} is too small for "
                f"{len(conf['desc_channels'])} stride-2 layers"
            )
        self.descriptor = nn.Sequential(
            *layers,
            nn.Flatten(),
            nn.Linear(cin * side * side, int(conf["desc_fc"])),
            nn.BatchNorm1d(int(conf["desc_fc"])),
            nn.ReLU(),
            nn.Linear(int(conf["desc_fc"]), int(conf["descriptor_dim"])),
        )

    # -- dense maps -----------------------------------------------------------------
    def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        grey = _instance_norm(_grey(data["image"]), 1e-5)
        f = self.trunk(grey)
        h, w = f.shape[-2:]
        logits = []
        for s, head in zip(self.factors.tolist(), self.score_heads, strict=True):
            size = (max(round(h / s), 1), max(round(w / s), 1))
            fs = (
                f
                if size == (h, w)
                else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            )
            ls = _instance_norm(head(fs), 1e-3)
            if size != (h, w):
                ls = F.interpolate(ls, size=(h, w), mode="bilinear", align_corners=False)
            logits.append(ls[:, 0])
        logits = torch.stack(logits, 1)
        c = self.conf
        score, scale = soft_nms_3d(
            logits,
            self.factors,
            int(c["nms_window"]),
            float(c["com_strength"]),
            float(c["scale_strength"]),
        )
        b = int(c["border"])
        if b > 0:
            mask = torch.zeros_like(score)
            mask[:, b : h - b, b : w - b] = 1.0
            score = score * mask
        ori = F.normalize(self.ori_head(f), dim=1, eps=1e-8)
        return {
            "logits": logits,
            "scores": score,
            "scales": scale,
            "orientations": ori,
            "grey": grey,
        }

    # -- keypoints and patches ------------------------------------------------------------
    def keypoints(
        self, out: dict[str, torch.Tensor], k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``k`` best hard-NMS maxima of each image, refined by a soft-argmax:
        ``(xy (B, k, 2), score, scale, angle (B, k), valid (B, k))``; differentiable in the
        maps (the integer peaks are not)."""
        score, scale, ori = out["scores"], out["scales"], out["orientations"]
        b, h, w = score.shape
        xy, valid = lf.top_k_peaks(score.detach(), k, int(self.conf["nms"]))
        flat = xy[..., 1] * w + xy[..., 0]
        s = scale.flatten(1).gather(1, flat)
        o = ori.flatten(2).gather(2, flat[:, None].expand(-1, 2, -1))  # (B, 2, k)
        angle = torch.atan2(o[:, 1], o[:, 0])
        value = score.flatten(1).gather(1, flat)
        xy = xy.to(score.dtype)
        r = int(self.conf["refine_window"])
        if r > 1 and xy.shape[1]:
            win = extract_patches_batched(score[:, None], xy, r * s, None, r).reshape(b, -1, r * r)
            prob = torch.softmax(float(self.conf["refine_strength"]) * win, dim=-1)
            grid = torch.arange(r, dtype=xy.dtype, device=xy.device) - (r - 1) / 2
            gy, gx = torch.meshgrid(grid, grid, indexing="ij")
            offset = torch.stack([(prob * gx.flatten()).sum(-1), (prob * gy.flatten()).sum(-1)], -1)
            xy = xy + offset * s[..., None]
            xy = torch.stack([xy[..., 0].clamp(0, w - 1), xy[..., 1].clamp(0, h - 1)], -1)
        return xy, value, s, angle, valid

    def patches(
        self, grey: torch.Tensor, xy: torch.Tensor, scale: torch.Tensor, angle: torch.Tensor
    ) -> torch.Tensor:
        """Patches ``(B * k, 1, P, P)`` of ``grey`` at batched keypoints ``(B, k, ...)``."""
        ps = int(self.conf["patch_size"])
        return extract_patches_batched(grey, xy, ps * scale, angle, ps).flatten(0, 1)

    def describe_patches(self, patches: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """L2-normalised descriptors of ``patches``; ``frozen``: gradients reach the patches
        but not the network (batch statistics are used, running ones left alone)."""
        if len(patches) == 0:
            return patches.new_zeros((0, int(self.conf["descriptor_dim"])))
        if len(patches) == 1 and self.training:  # BatchNorm1d needs two samples
            patches = patches.expand(2, -1, -1, -1)
            return self.describe_patches(patches, frozen)[:1]
        if frozen:
            params = {n: p.detach() for n, p in self.descriptor.named_parameters()}
            buffers = {n: b.clone() for n, b in self.descriptor.named_buffers()}
            out = functional_call(self.descriptor, {**params, **buffers}, (patches,))
        else:
            out = self.descriptor(patches)
        return F.normalize(out, dim=1)

    # -- training ---------------------------------------------------------------------
    def loss(
        self, batch: dict[str, torch.Tensor], gt: Any, conf: dict[str, Any], step: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if gt is None:
            raise ValueError("LFNet is trained from pairs with ground truth (H_0to1 or depth)")
        from keypointlab.geometry.groundtruth import as_ground_truth, finite_points
        from keypointlab.geometry.keypoints import cell_grid

        gt = as_ground_truth(gt)
        views = split_views(self, batch)
        b, h, w = views[0]["scores"].shape
        grid = cell_grid(h, w, device=views[0]["scores"].device).expand(b, -1, -1)
        bounds = (float(self.conf["min_scale"]), float(self.conf["max_scale"]))
        terms: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("score", "orientation", "scale", "pair", "triplet")
        }
        metrics: dict[str, list[torch.Tensor]] = {}
        for i, j, forward in ((0, 1, True), (1, 0, False)):
            vi, vj = views[i], views[j]
            # dense: view i's pixels in view j, with the warp's local zoom and turn
            warped, zoom, turn, known = gt.local_frames(grid, forward=forward)
            warped = finite_points(warped)
            inside = (warped[..., 0] >= 0) & (warped[..., 0] <= w - 1)
            inside &= (warped[..., 1] >= 0) & (warped[..., 1] <= h - 1)
            known = (known & inside).reshape(b, h, w)
            at_j = sample_map(
                torch.cat([vj["scores"][:, None], vj["scales"][:, None], vj["orientations"]], 1),
                warped,
            ).reshape(b, h, w, 4)
            target = lf.clean_target(
                at_j[..., 0].detach(),
                known,
                int(conf["target_top_k"]),
                int(conf["target_nms"]),
                int(conf["target_window"]),
                float(conf["target_sigma"]),
            )
            terms["score"].append(lf.score_loss(vi["scores"], target, known))
            ori_i = vi["orientations"].permute(0, 2, 3, 1)
            ori_j = F.normalize(at_j[..., 2:], dim=-1, eps=1e-8)
            terms["orientation"].append(
                lf.orientation_loss(ori_i, ori_j, turn.reshape(b, h, w), known)
            )
            terms["scale"].append(
                lf.scale_loss(vi["scales"], at_j[..., 1], zoom.reshape(b, h, w), known, bounds)
            )
            # sparse: view i's keypoints, their patches there and at the warped place in j
            xy, _, s_i, a_i, valid = self.keypoints(vi, int(conf["train_top_k"]))
            xy_j, known_kp = (gt.warp_0to1 if forward else gt.warp_1to0)(xy.detach())
            xy_j = finite_points(xy_j)
            border = float(self.conf["border"])
            inside = (xy_j[..., 0] >= border) & (xy_j[..., 0] <= w - 1 - border)
            inside &= (xy_j[..., 1] >= border) & (xy_j[..., 1] <= h - 1 - border)
            valid = valid & known_kp & inside
            at_kp = sample_map(
                torch.cat([vj["scales"][:, None], vj["orientations"]], 1), xy_j
            )  # (B, k, 3), view j's own scale and orientation there (not detached)
            a_j = torch.atan2(at_kp[..., 2], at_kp[..., 1])
            p_i = self.patches(vi["grey"], xy, s_i, a_i)
            p_j = self.patches(vj["grey"], xy_j, at_kp[..., 0], a_j)
            k = xy.shape[1]
            d_i = self.describe_patches(p_i, frozen=True).reshape(b, k, -1)
            d_j = self.describe_patches(p_j, frozen=True).reshape(b, k, -1)
            terms["pair"].append(lf.pair_loss(d_i, d_j, valid))
            if i == 0:  # the descriptor's triplet loss, once per pair, on detached patches
                t_i = self.describe_patches(p_i.detach()).reshape(b, k, -1)
                t_j = self.describe_patches(p_j.detach()).reshape(b, k, -1)
                for n in range(b):
                    loss, m = lf.triplet_loss(
                        t_i[n], t_j[n], xy_j[n].detach(), valid[n], conf, step * b + n
                    )
                    terms["triplet"].append(loss)
                    for key, value in m.items():
                        metrics.setdefault(key, []).append(value)
                metrics.setdefault("keypoints_used", []).append(valid.float().sum(1).mean())
        parts = {k: torch.stack(v).mean() for k, v in terms.items()}
        total = sum(float(conf[f"{k}_weight"]) * v for k, v in parts.items())
        losses = {"total": total, **{k: v.detach() for k, v in parts.items()}}
        return losses, {k: torch.stack(v).mean() for k, v in metrics.items()}

    # -- inference --------------------------------------------------------------------
    def detect(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
        out = self._forward({"image": image})
        xy, score, scale, angle, valid = self.keypoints(out, int(self.conf["max_detections"]))
        keep = valid[0]
        ps = float(self.conf["patch_size"])
        if not self.conf["learned_orientation"]:
            angle = torch.zeros_like(angle)
        if not self.conf["learned_scale"]:
            scale = torch.ones_like(scale)
        det = {
            "keypoints": xy[0][keep],
            "scores": score[0][keep],
            "scales": ps * scale[0][keep],
            "orientations": angle[0][keep],
        }
        return det, out["grey"]

    def describe(
        self, image: torch.Tensor, context: Any, keypoints: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        ps = float(self.conf["patch_size"])
        xy = keypoints["keypoints"][None]
        patches = self.patches(
            context, xy, keypoints["scales"][None] / ps, keypoints["orientations"][None]
        )
        return self.describe_patches(patches)
