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
        stride: int = 8,
        device: str | torch.device = "cpu",
        min_size: int = 16,
        scales: tuple[float, ...] = (1.0,),
        rotations: int = 1,
    ) -> None:
        self.net = net.to(device).eval()
        self.max_keypoints = max_keypoints
        self.stride = stride
        self.device = torch.device(device)
        self.min_size = min_size
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive numbers, got {scales}")
        if int(rotations) != rotations or rotations < 1:
            raise ValueError(f"rotations must be an integer >= 1, got {rotations}")
        self.rotations = int(rotations)
        self.name = name if self.scales == (1.0,) else f"{name}@{scales_label(self.scales)}"
        if self.rotations > 1:
            self.name += f"+rot{self.rotations}"

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
        """Keypoints, scores and descriptors of the best ``max_keypoints`` at one scale,
        over every rotated copy of ``image``."""
        parts = [
            self._run_rotated(image, 2 * np.pi * k / self.rotations) for k in range(self.rotations)
        ]
        kp, scores, desc = (torch.cat(p) for p in zip(*parts, strict=True))
        order = torch.argsort(scores, descending=True, stable=True)[: self.max_keypoints]
        return kp[order], scores[order], desc[order]

    def _run_rotated(
        self, image: np.ndarray, angle: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The best keypoints of ``image`` turned by ``-angle``, in ``image``'s pixels."""
        h, w = image.shape[:2]
        H = None
        if angle:
            H, (ch, cw) = rotation_canvas((h, w), angle)
            image = cv2.warpAffine(
                image, H[:2], (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
            )
        out, padded = self._forward(image)
        kp = out["keypoints"][0].flatten(1).T  # (N, 2)
        scores = out["scores"][0].flatten()
        back = kp
        if H is not None:  # to image pixels; the copy's corners are reflected padding
            back = warp_points(kp, kp.new_tensor(np.linalg.inv(H)))
        eps = 1e-3  # round-off of the rotation at the image's border
        x, y = back[:, 0], back[:, 1]
        inside = (x >= -eps) & (x <= w - 1 + eps) & (y >= -eps) & (y <= h - 1 + eps)
        kp, scores = kp[inside], scores[inside]
        back = torch.stack([x[inside].clamp(0, w - 1), y[inside].clamp(0, h - 1)], 1)
        order = torch.argsort(scores, descending=True, stable=True)[: self.max_keypoints]
        desc = sample_descriptors(out["descriptors"], kp[order][None], padded)[0]
        return back[order], scores[order], desc

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
    rotations: int = 1,
) -> DenseExtractor:
    """A shipped model by name; weights are read with safetensors (no code execution).

    ``scales`` defaults to the model's own (its ``.json``'s ``scales``; 1 if none); see
    :class:`DenseExtractor` for ``rotations``."""
    from safetensors.torch import load_file

    meta = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    scales = tuple(scales or meta.get("scales", (1.0,)))
    method, model = _build(meta["method"], meta["model"])
    model.load_state_dict(load_file(str(WEIGHTS_DIR / f"{name}.safetensors")))
    return DenseExtractor(
        method.dense_net(model),
        name,
        max_keypoints,
        device=device,
        scales=scales,
        rotations=rotations,
    )


def load_checkpoint_extractor(
    path: str | Path,
    device: str | torch.device = "cpu",
    max_keypoints: int = 2000,
    scales: tuple[float, ...] | None = None,
    rotations: int = 1,
) -> DenseExtractor:
    """An extractor from a training checkpoint (``ckpt_*.pt``) or a run folder (at scale 1
    and upright unless ``scales`` and ``rotations`` say otherwise)."""
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
        rotations=rotations,
    )
