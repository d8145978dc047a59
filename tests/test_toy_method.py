"""A method defined only in this file (no edit anywhere else) trains through
``keypointlab train``, evaluates through ``keypointlab evaluate --features RUN_DIR`` and
extracts through ``kl.load_extractor(RUN_DIR)``.

The toy is not a cell model: it detects the local maxima of a full-resolution heatmap,
gives every keypoint a scale and an orientation, and learns its descriptor from the
pair's ground truth object (``gt.warp_0to1``), as a depth-supervised method would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import keypointlab as kl
from keypointlab.data.samples import sample_photo
from keypointlab.geometry.keypoints import sample_descriptors
from keypointlab.models.base import BaseModel, register_method, split_views

HERE = Path(__file__).resolve().parent
METHOD = f"{Path(__file__).stem}:ToyMethod"  # found by import path


@register_method("toy_test_method")
class ToyMethod(BaseModel):
    """Two convolutions: a heatmap and a descriptor map at full resolution."""

    default_conf: dict[str, Any] = {"width": 8, "descriptor_dim": 8, "max_detections": 300}
    loss_defaults: dict[str, Any] = {"temperature": 0.1, "grid": 8}
    tiny_conf: dict[str, Any] = {"width": 4, "descriptor_dim": 8}
    onnx_export = False  # a data-dependent number of peaks (nonzero) does not trace

    def _init(self, conf: dict[str, Any]) -> None:
        w, d = conf["width"], conf["descriptor_dim"]
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 1 + d, 3, padding=1)
        )

    def input_multiple(self) -> int:
        return 1

    def _forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = data["image"]
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        out = self.net(image * 2 - 1)
        return {"heatmap": torch.sigmoid(out[:, :1]), "descriptors": out[:, 1:]}

    def detect(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
        out = self({"image": image})
        heat = out["heatmap"]
        peaks = (heat == F.max_pool2d(heat, 3, stride=1, padding=1))[0, 0]
        ys, xs = torch.nonzero(peaks, as_tuple=True)
        scores = heat[0, 0, ys, xs]
        order = torch.argsort(scores, descending=True)[: self.conf["max_detections"]]
        kp = torch.stack([xs[order], ys[order]], 1).to(heat.dtype)
        n = len(order)
        det = {
            "keypoints": kp,
            "scores": scores[order],
            "scales": heat.new_full((n,), 8.0),
            "orientations": heat.new_zeros(n),
        }
        return det, out["descriptors"]

    def describe(
        self, image: torch.Tensor, context: Any, keypoints: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        return sample_descriptors(context, keypoints["keypoints"][None], image.shape[-2:])[0]

    def loss(
        self, batch: dict[str, torch.Tensor], gt: Any, conf: dict[str, Any], step: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        p0, p1 = split_views(self, batch)
        b, _, h, w = batch["image0"].shape
        g = conf["grid"]
        ys, xs = torch.meshgrid(
            torch.arange(g / 2, h, g), torch.arange(g / 2, w, g), indexing="ij"
        )
        pts = torch.stack([xs.flatten(), ys.flatten()], -1).expand(b, -1, -1)
        warped, known = gt.warp_0to1(pts)
        inside = known & (warped[..., 0] >= 0) & (warped[..., 0] <= w - 1)
        inside &= (warped[..., 1] >= 0) & (warped[..., 1] <= h - 1)
        warped = torch.nan_to_num(warped)
        d0 = sample_descriptors(p0["descriptors"], pts, (h, w))
        d1 = sample_descriptors(p1["descriptors"], warped, (h, w))
        logits = d0 @ d1.transpose(1, 2) / conf["temperature"]
        target = torch.arange(pts.shape[1]).expand(b, -1)
        ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
        desc = (ce * inside.flatten()).sum() / inside.sum().clamp(min=1)
        heat = (p0["heatmap"].mean() - 0.1).pow(2) + (p1["heatmap"].mean() - 0.1).pow(2)
        return {"descriptor": desc, "heatmap": heat, "total": desc + heat}, {
            "valid": inside.float().mean()
        }


def _write_train_images(folder: Path) -> None:
    folder.mkdir(parents=True)
    for i, name in enumerate(("astronaut", "coffee", "chelsea")):
        cv2.imwrite(str(folder / f"{i}.png"), sample_photo(name, (100, 140))[..., ::-1])


def _write_sequence(folder: Path) -> None:
    """One HPatches-format sequence: image 2 is image 1 moved by (5, 3) pixels."""
    seq = folder / "v_toy"
    seq.mkdir(parents=True)
    image = sample_photo("rocket", (140, 180))
    cv2.imwrite(str(seq / "1.png"), image[10:130, 10:170, ::-1])
    cv2.imwrite(str(seq / "2.png"), image[7:127, 5:165, ::-1])
    np.savetxt(seq / "H_1_2", np.array([[1, 0, 5], [0, 1, 3], [0, 0, 1]], float))


def _cli(*args: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "keypointlab.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_toy_method_trains_evaluates_and_extracts(tmp_path):
    _write_train_images(tmp_path / "train")
    _write_sequence(tmp_path / "bench")
    run = tmp_path / "run"
    config = tmp_path / "toy.yaml"
    config.write_text(
        f"method: '{METHOD}'\n"
        f"data: {{train: '{tmp_path / 'train'}', size: [48, 64], max_side: 128, workers: 0}}\n"
        f"train: {{steps: 2, batch_size: 2, out: '{run}', checkpoint_every: 1, log_every: 1}}\n"
        "eval: {data: none}\n"
    )
    done = _cli("train", str(config), "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert all(np.isfinite(r["total"]) for r in log)

    out = tmp_path / "report"
    done = _cli(
        "evaluate", "--features", str(run), "--data", str(tmp_path / "bench"),
        "--size", "120x160", "--top-k", "50", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["pairs"] == 1
    assert 0 <= results["summary"]["repeatability"] <= 1

    extractor = kl.load_extractor(str(run), max_keypoints=50)
    feats = extractor.extract(str(tmp_path / "bench" / "v_toy" / "1.png"))
    assert 0 < len(feats) <= 50
    assert feats.descriptors.shape == (len(feats), 8)
    np.testing.assert_array_equal(feats.scales, 8.0)
    np.testing.assert_array_equal(feats.orientations, 0.0)
