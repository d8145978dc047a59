"""Distractor images that grow a retrieval database: augmented training photographs.

Distractor ``i`` is a random crop of a photograph of ``train_dir`` warped by a random
homography and photometrically changed (:class:`keypointlab.data.pairs.HomographicPairs`
view 1 and :class:`keypointlab.data.augment.Photometric`), drawn from ``(seed, i)``, so
the set is the same on every machine. They show none of the benchmark's places (pass the
training subfolders that do as ``exclude``) and are never queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from keypointlab import limits
from keypointlab.data.augment import Photometric
from keypointlab.data.holdout import holdout_paths
from keypointlab.data.images import read_image
from keypointlab.data.pairs import HomographicPairs
from keypointlab.io.outputs import atomic_output

MAX_DISTRACTORS = 100_000
HOMOGRAPHY = {"patch_ratio": 0.8, "max_angle": 0.2618, "scaling_amplitude": 0.3}


def make_distractors(
    train_dir: str | Path,
    out_dir: str | Path,
    count: int,
    seed: int = 0,
    exclude: Sequence[str] = (),
    size: tuple[int, int] = (480, 640),
    progress: bool = True,
) -> list[Path]:
    """Write ``count`` distractors ``out_dir/distractor_XXXXX.jpg`` (``size = (h, w)``);
    files already there are kept (they are a pure function of ``(seed, i)``)."""
    count = limits.check_count(count, "distractor count", maximum=MAX_DISTRACTORS)
    paths = holdout_paths(train_dir, 0.0, 0, list(exclude))[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    views = HomographicPairs(
        [np.zeros((1, 1, 3), np.uint8)], size, HOMOGRAPHY, crop_scale=(0.3, 1.0)
    )
    photometric = Photometric(["brightness", "contrast", "gaussian_noise", "shading"], prob=0.5)
    written = []
    for i in tqdm(range(count), desc="distractors", disable=not progress, leave=False):
        target = out / f"distractor_{i:05d}.jpg"
        written.append(target)
        if target.is_file():
            continue
        rng = np.random.default_rng([seed, i])
        image = read_image(paths[int(rng.integers(len(paths)))])
        view = photometric(views.views(image, rng)[1], rng)
        with atomic_output(target) as tmp:
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(view, cv2.COLOR_RGB2BGR))
            tmp.write_bytes(data.tobytes())
    return written
