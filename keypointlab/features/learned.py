"""Learned dense extractors (KP2D, UnsuperPoint, ...) behind the :class:`Extractor` interface.

A dense network maps an image to per-cell ``scores`` ``(B, 1, Hc, Wc)``, pixel
``keypoints`` ``(B, 2, Hc, Wc)`` and a ``descriptors`` map; the extractor pads the image to
the network's stride, keeps the keypoints inside the real image, samples and normalises
their descriptors and returns the best ``max_keypoints`` by score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from keypointlab.features.base import Extractor, Features
from keypointlab.features.orientation import centroid_orientation
from keypointlab.geometry import rotation_canvas, warp_points
from keypointlab.geometry.homography import resize_matrix
from keypointlab.geometry.keypoints import sample_descriptors


class DenseExtractor(Extractor):
    """Runs a dense keypoint network on one image, optionally at several scales.

    Args:
        net: module returning ``scores``, ``keypoints`` and ``descriptors`` (see above).
        name: the name reported in results.
        max_keypoints: keypoints kept per image (by score).
        stride: the network's cell size; images are padded to a multiple of it.
        device: torch device to run on (the caller's choice).
        min_size: smaller images are rejected with a clear error.
        scales: image scales the network runs at (the image is resized by each, area
            interpolation when shrinking); the keypoints of all scales are mapped back to
            the image's pixels and the best ``max_keypoints`` by score are kept. The default
            ``(1.0,)`` runs once on the image as given.
        orientations: 0 (default) keeps the network's upright descriptors. ``K > 0``
            also describes each keypoint in its own frame: its orientation is estimated
            (:func:`centroid_orientation`), the network runs on the image rotated by each of
            ``K`` angles ``2 pi k / K``, and the descriptor is interpolated between the two
            rotations nearest the keypoint's orientation, so it follows rotations of the
            image. Costs ``K`` more network passes on a canvas up to twice the image.
        upright_weight: with ``orientations``, the descriptor is the normalised
            concatenation of ``upright_weight`` times the upright descriptor and the
            rotated one (twice the dimension); 0 keeps the rotated one only.
    """

    def __init__(
        self,
        net: nn.Module,
        name: str = "learned",
        max_keypoints: int = 2000,
        stride: int = 8,
        device: str | torch.device = "cpu",
        min_size: int = 16,
        scales: tuple[float, ...] = (1.0,),
        orientations: int = 0,
        upright_weight: float = 1.0,
    ) -> None:
        self.net = net.to(device).eval()
        self.max_keypoints = max_keypoints
        self.stride = stride
        self.device = torch.device(device)
        self.min_size = min_size
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive numbers, got {scales}")
        if int(orientations) != orientations or orientations < 0 or orientations == 1:
            raise ValueError(f"orientations must be 0 or an integer >= 2, got {orientations}")
        if upright_weight < 0:
            raise ValueError(f"upright_weight must be >= 0, got {upright_weight}")
        self.orientations = int(orientations)
        self.upright_weight = float(upright_weight)
        self.name = name if self.scales == (1.0,) else f"{name}@{scales_label(self.scales)}"
        if self.orientations:
            self.name += f"+rot{self.orientations}"

    def _forward(self, image: np.ndarray) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
        """The network's outputs on ``image`` padded to the stride, and the padded size."""
        h, w = image.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        x = x.permute(2, 0, 1).unsqueeze(0).float() / 255.0
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return self.net({"image": x}), (h + ph, w + pw)

    @torch.inference_mode()
    def _run(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keypoints, scores and descriptors of the best ``max_keypoints`` at one scale."""
        h, w = image.shape[:2]
        out, padded = self._forward(image)
        kp = out["keypoints"][0].flatten(1).T  # (N, 2)
        scores = out["scores"][0].flatten()
        inside = (kp[:, 0] <= w - 1) & (kp[:, 1] <= h - 1)
        kp, scores = kp[inside], scores[inside]
        order = torch.argsort(scores, descending=True, stable=True)[: self.max_keypoints]
        kp, scores = kp[order], scores[order]
        desc = sample_descriptors(out["descriptors"], kp[None], padded)[0]
        if self.orientations:
            rotated = self._rotated_descriptors(image, kp, desc.shape[1])
            if self.upright_weight > 0:
                rotated = F.normalize(torch.cat([desc * self.upright_weight, rotated], 1), dim=1)
            desc = rotated
        return kp, scores, desc

    def _rotated_descriptors(self, image: np.ndarray, kp: torch.Tensor, dim: int) -> torch.Tensor:
        """Descriptors of ``kp`` in each keypoint's own orientation (see the class doc)."""
        points = kp.double().cpu().numpy()
        total = kp.new_zeros((len(points), dim))
        if len(points) == 0:
            return total
        angles = centroid_orientation(image, points)
        k = self.orientations
        pos = np.mod(angles, 2 * np.pi) / (2 * np.pi) * k
        lower = np.floor(pos).astype(np.int64) % k
        frac = pos - np.floor(pos)
        for i in range(k):
            weight = np.where(lower == i, 1 - frac, 0.0) + np.where((lower + 1) % k == i, frac, 0.0)
            sel = np.flatnonzero(weight > 0)
            if len(sel) == 0:
                continue
            H, (ch, cw) = rotation_canvas(image.shape[:2], 2 * np.pi * i / k)
            canvas = cv2.warpAffine(
                image, H[:2], (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
            )
            out, padded = self._forward(canvas)
            xy = kp.new_tensor(warp_points(points[sel], H))
            desc = sample_descriptors(out["descriptors"], xy[None], padded)[0]
            total[torch.from_numpy(sel).to(desc.device)] += (
                desc * desc.new_tensor(weight[sel])[:, None]
            )
        return F.normalize(total, dim=1)

    def _extract(self, image: np.ndarray) -> Features:
        h, w = image.shape[:2]
        parts = []
        for s in self.scales:
            size = (round(h * s), round(w * s))
            if min(size) < self.min_size:
                if s == max(self.scales):
                    raise ValueError(
                        f"image of size {h}x{w} is smaller than {self.min_size} pixels on a "
                        f"side at scale {s}"
                    )
                continue  # a coarse level of a small image: skip it
            scaled = image
            if size != (h, w):
                interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
                scaled = cv2.resize(image, (size[1], size[0]), interpolation=interp)
            kp, scores, desc = self._run(scaled)
            back = kp.new_tensor(resize_matrix(size, (h, w)))  # scaled pixels -> image pixels
            parts.append((warp_points(kp, back), scores, desc))
        kp, scores, desc = (torch.cat(p) for p in zip(*parts, strict=True))
        order = torch.argsort(scores, descending=True, stable=True)[: self.max_keypoints]
        return Features(
            kp[order].double().cpu().numpy(),
            scores[order].double().cpu().numpy(),
            desc[order].float().cpu().numpy(),
            (h, w),
        )


def scales_label(scales: tuple[float, ...]) -> str:
    """``(1.414, 1.0, 0.707)`` -> ``"1.41,1,0.71"`` (for result names)."""
    return ",".join(f"{s:.2f}".rstrip("0").rstrip(".") for s in scales)


WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


def shipped_models() -> list[str]:
    """Names of the trained models shipped inside the package."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(
        p.stem
        for p in WEIGHTS_DIR.glob("*.safetensors")
        if (WEIGHTS_DIR / f"{p.stem}.json").is_file()
    )


def _build(method_name: str, model_conf: dict[str, Any]) -> tuple[Any, nn.Module]:
    from keypointlab.training.methods import get_method

    method = get_method(method_name)
    model = method.model_cls(model_conf)
    return method, model


def load_shipped(
    name: str,
    device: str | torch.device = "cpu",
    max_keypoints: int = 2000,
    scales: tuple[float, ...] | None = None,
    orientations: int | None = None,
) -> DenseExtractor:
    """A shipped model by name; weights are read with safetensors (no code execution).

    ``scales`` and ``orientations`` default to the model's own (its ``.json``'s; 1 and 0 if
    it has none)."""
    from safetensors.torch import load_file

    meta = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    scales = tuple(scales or meta.get("scales", (1.0,)))
    method, model = _build(meta["method"], meta["model"])
    model.load_state_dict(load_file(str(WEIGHTS_DIR / f"{name}.safetensors")))
    if orientations is None:
        orientations = meta.get("orientations", 0)
    return DenseExtractor(
        method.dense_net(model),
        name,
        max_keypoints,
        device=device,
        scales=scales,
        orientations=orientations,
    )


def load_checkpoint_extractor(
    path: str | Path,
    device: str | torch.device = "cpu",
    max_keypoints: int = 2000,
    scales: tuple[float, ...] | None = None,
    orientations: int | None = None,
) -> DenseExtractor:
    """An extractor from a training checkpoint (``ckpt_*.pt``) or a run folder (at scale 1
    and upright unless ``scales`` and ``orientations`` say otherwise)."""
    from keypointlab.training.checkpoint import load_model
    from keypointlab.training.methods import get_method

    state, model = load_model(path, device)
    net = get_method(state["method"]).dense_net(model)
    return DenseExtractor(
        net,
        Path(path).stem,
        max_keypoints,
        device=device,
        scales=scales or (1.0,),
        orientations=orientations or 0,
    )
