"""A sample benchmark built from scikit-image's bundled photographs.

Needs no download: each photograph becomes a viewpoint sequence ``v_<name>`` (random
homographies plus mild photometric change) and an illumination sequence ``i_<name>``
(identity homography, strong photometric change), written in the HPatches layout.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from keypointlab.data.augment import Photometric
from keypointlab.data.images import to_rgb_uint8
from keypointlab.geometry import HomographyConfig, sample_homography, warp_image

logger = logging.getLogger(__name__)

SAMPLE_PHOTOS = (
    "astronaut",
    "coffee",
    "rocket",
    "camera",
    "stereo_motorcycle",
    "immunohistochemistry",
)
SAMPLE_SIZE = (480, 640)
VIEWPOINT = HomographyConfig(
    patch_ratio=0.75,
    perspective_amplitude_x=0.15,
    perspective_amplitude_y=0.15,
    scaling_amplitude=0.2,
    max_angle=np.pi / 8,
)


def sample_photo(name: str, size: tuple[int, int] = SAMPLE_SIZE) -> np.ndarray:
    """scikit-image photograph ``name`` as RGB uint8, centre-cropped to ``size``'s aspect
    and resized to ``size = (height, width)``."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo pairs
        image = image[0]
    image = to_rgb_uint8(image, f"skimage.data.{name}")
    h, w = image.shape[:2]
    th, tw = size
    scale = max(th / h, tw / w)
    ch, cw = int(round(th / scale)), int(round(tw / scale))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    crop = image[y0 : y0 + ch, x0 : x0 + cw]
    return cv2.resize(crop, (tw, th), interpolation=cv2.INTER_AREA)


def _write_sequence(folder: Path, images: list[np.ndarray], Hs: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images, start=1):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    for n, H in enumerate(Hs, start=2):
        np.savetxt(folder / f"H_1_{n}", H / H[2, 2])


def build_sample_benchmark(
    out_dir: str | Path,
    photos: tuple[str, ...] = SAMPLE_PHOTOS,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write the sample benchmark into ``out_dir`` (HPatches layout) and return it.

    The same ``seed`` always gives the same images and homographies. An existing complete
    benchmark in ``out_dir`` is reused.
    """
    out = Path(out_dir)
    marker = out / f".complete-seed{seed}-{len(photos)}"
    if marker.exists():
        return out
    strong = Photometric(
        prob=0.9, primitives=["brightness", "contrast", "shading", "gaussian_noise"]
    )
    mild = Photometric(prob=0.3, primitives=["brightness", "contrast", "gaussian_noise"])
    for k, name in enumerate(tqdm(photos, desc="sample benchmark", disable=not progress)):
        rng = np.random.default_rng([seed, k])
        ref = sample_photo(name)
        Hs = [sample_homography(SAMPLE_SIZE, rng, VIEWPOINT) for _ in range(5)]
        views = [mild(warp_image(ref, H, SAMPLE_SIZE), rng) for H in Hs]
        _write_sequence(out / f"v_{name}", [ref, *views], Hs)
        lit = [strong(ref, rng) for _ in range(5)]
        _write_sequence(out / f"i_{name}", [ref, *lit], [np.eye(3)] * 5)
    marker.touch()
    return out
