"""Learned extractors: any model of the method contract behind the :class:`Extractor`
interface, at several image scales and in rotated copies.

A model returns sparse detections of one image and describes the ones it is asked to (see
:mod:`keypointlab.models.base`); :class:`LearnedExtractor` pads the image to the model's
input multiple, keeps the detections inside the real image, describes the best
``max_keypoints`` by score and maps them back to the image's pixels. Plain dense cell
networks (``scores``, ``keypoints``, ``descriptors`` maps) are wrapped by
:func:`keypointlab.models.cells.as_sparse_model`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from keypointlab import limits
from keypointlab.features.base import Extractor, Features
from keypointlab.geometry import rotation_canvas, warp_points
from keypointlab.geometry.homography import resize_matrix
from keypointlab.models.cells import as_sparse_model
from keypointlab.models.loading import load_model, shipped_models

__all__ = ["LearnedExtractor", "load_learned", "scales_label", "shipped_models"]

OPTIONAL = ("scales", "orientations")


class LearnedExtractor(Extractor):
    """Runs a model of the method contract on one image, optionally at several scales.

    Args:
        net: a model with ``detect`` / ``describe`` (see :mod:`keypointlab.models.base`),
            or a plain module returning dense cell maps (see the module docstring).
        name: the name reported in results.
        max_keypoints: keypoints kept per image (by score).
        stride: images are padded to a multiple of this (default: the model's
            ``input_multiple()``; the cell size of a plain dense module, 8 if not given).
        device: torch device to run on (the caller's choice).
        min_size: smaller images are rejected with a clear error.
        scales: image scales the network runs at (the image is resized by each, area
            interpolation when shrinking); the keypoints of all scales are mapped back to
            the image's pixels and the best ``max_keypoints`` by score are kept. The default
            ``(1.0,)`` runs once on the image as given.
        rotations: ``K > 1`` also runs the network on the image rotated by each of the
            angles ``360 k / K`` degrees (on a canvas that holds the whole rotated image)
            and pools the keypoints of all of them, each mapped back to the image's
            pixels and described in the rotated copy it was found in. A point of an image
            turned by any angle is then found and described in a copy turned back to
            within ``180 / K`` degrees of upright, so matching no longer depends on the
            rotation; the keypoint budget is shared by the copies (a point may appear
            once per copy, as SIFT repeats a keypoint for each of its orientations).
            Costs ``K`` network passes per scale, on canvases up to twice the image.
    """

    def __init__(
        self,
        net: nn.Module,
        name: str = "learned",
        max_keypoints: int = 2000,
        stride: int | None = None,
        device: str | torch.device = "cpu",
        min_size: int = 16,
        scales: tuple[float, ...] = (1.0,),
        rotations: int = 1,
    ) -> None:
        self.max_keypoints = limits.check_count(max_keypoints, "max_keypoints")
        self.scales = limits.check_scales(scales)
        self.rotations = limits.check_rotations(rotations)
        self.net = as_sparse_model(net, stride or 8).to(device).eval()
        self.stride = int(stride or self.net.input_multiple())
        self.device = torch.device(device)
        self.min_size = min_size
        self.name = name if self.scales == (1.0,) else f"{name}@{scales_label(self.scales)}"
        if self.rotations > 1:
            self.name += f"+rot{self.rotations}"

    def identity(self) -> dict[str, Any]:
        """Name, settings, the network's class and config, and a SHA-256 of its weights."""
        return {
            **super().identity(),
            "max_keypoints": self.max_keypoints,
            "scales": list(self.scales),
            "rotations": self.rotations,
            "stride": self.stride,
            "model": f"{type(self.net).__module__}.{type(self.net).__qualname__}",
            "model_conf": json.loads(json.dumps(getattr(self.net, "conf", {}), default=str)),
            "weights_sha256": weights_sha256(self.net),
        }

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        """``image`` as ``(1, 3, H, W)`` float in ``[0, 1]``, padded to the stride."""
        h, w = image.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        x = x.permute(2, 0, 1).unsqueeze(0).float() / 255.0
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x

    @torch.inference_mode()
    def _run(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        """The best ``max_keypoints`` at one scale, over every rotated copy of ``image``."""
        parts = [
            self._run_rotated(image, 2 * np.pi * k / self.rotations) for k in range(self.rotations)
        ]
        return _best(_concat(parts), self.max_keypoints)

    def _run_rotated(self, image: np.ndarray, angle: float) -> dict[str, torch.Tensor]:
        """The best keypoints of ``image`` turned by ``-angle``, in ``image``'s pixels."""
        h, w = image.shape[:2]
        H = None
        if angle:
            H, (ch, cw) = rotation_canvas((h, w), angle)
            image = cv2.warpAffine(
                image, H[:2], (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
            )
        x = self._tensor(image)
        det, context = self.net.detect(x)
        kp = det["keypoints"]
        back = kp
        if H is not None:  # to image pixels; the copy's corners are reflected padding
            back = warp_points(kp, kp.new_tensor(np.linalg.inv(H)))
        eps = 1e-3  # round-off of the rotation at the image's border
        bx, by = back[:, 0], back[:, 1]
        inside = (bx >= -eps) & (bx <= w - 1 + eps) & (by >= -eps) & (by <= h - 1 + eps)
        det = {k: v[inside] for k, v in det.items()}
        back = torch.stack([bx[inside].clamp(0, w - 1), by[inside].clamp(0, h - 1)], 1)
        order = torch.argsort(det["scores"], descending=True, stable=True)[: self.max_keypoints]
        det = {k: v[order] for k, v in det.items()}
        out = {**det, "keypoints": back[order], "descriptors": self.net.describe(x, context, det)}
        if angle and "orientations" in out:  # the copy is turned by -angle
            out["orientations"] = out["orientations"] + angle
        return out

    def check_input_size(self, height: int, width: int) -> None:
        """Refuse an image whose largest network input (the image at the largest scale,
        or its rotated canvas) is above :func:`keypointlab.limits.max_pixels`; checked
        before any pass runs.

        Raises:
            LimitError: names the image size, the scale and the limit.
        """
        s = max(self.scales)
        size = (round(height * s), round(width * s))
        what = f"image of size {height}x{width} at scale {s:g}: network input"
        for k in range(1, self.rotations):
            _, canvas = rotation_canvas(size, 2 * np.pi * k / self.rotations)
            if canvas[0] * canvas[1] > size[0] * size[1]:
                size = canvas
                what = f"image of size {height}x{width} at scale {s:g}, rotated: network input"
        limits.check_pixels(*size, what)

    def _extract(self, image: np.ndarray) -> Features:
        h, w = image.shape[:2]
        self.check_input_size(h, w)
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
            out = self._run(scaled)
            back = out["keypoints"].new_tensor(resize_matrix(size, (h, w)))  # to image pixels
            out["keypoints"] = warp_points(out["keypoints"], back)
            if "scales" in out:
                out["scales"] = out["scales"] * float(torch.sqrt(back[0, 0] * back[1, 1]))
            parts.append(out)
        out = _best(_concat(parts), self.max_keypoints)
        return Features(
            out["keypoints"].double().cpu().numpy(),
            out["scores"].double().cpu().numpy(),
            out["descriptors"].float().cpu().numpy(),
            (h, w),
            **{k: out[k].double().cpu().numpy() for k in OPTIONAL if k in out},
        )


def _concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _best(out: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """The ``k`` best entries by score (stable: ties keep their order)."""
    order = torch.argsort(out["scores"], descending=True, stable=True)[:k]
    return {name: v[order] for name, v in out.items()}


def weights_sha256(net: nn.Module) -> str:
    """SHA-256 of a module's state (parameters and buffers: names, dtypes, shapes, bytes),
    the same for the same weights whatever file or device they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def scales_label(scales: tuple[float, ...]) -> str:
    """``(1.414, 1.0, 0.707)`` -> ``"1.41,1,0.71"`` (for result names)."""
    return ",".join(f"{s:.2f}".rstrip("0").rstrip(".") for s in scales)


def load_learned(
    source: str | Path,
    device: str | torch.device = "cpu",
    max_keypoints: int = 2000,
    scales: tuple[float, ...] | None = None,
    rotations: int = 1,
) -> LearnedExtractor:
    """The extractor of a shipped model (by name) or of a checkpoint / run folder.

    ``scales`` defaults to the shipped model's own (its ``.json``'s ``scales``), 1 for
    checkpoints; see :class:`LearnedExtractor` for ``rotations``."""
    loaded = load_model(source, device)
    return LearnedExtractor(
        loaded.model,
        loaded.name,
        max_keypoints,
        device=device,
        scales=tuple(scales or loaded.options.get("scales", (1.0,))),
        rotations=rotations,
    )
