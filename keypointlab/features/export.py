"""Extract a folder of images into an HDF5 feature file (hloc layout), resumably.

Work goes into ``<out>.partial`` (flushed after every image) and is renamed to ``<out>``
only when the folder is done, so a crash never leaves a file that looks complete, and
``resume=True`` continues from the partial file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from keypointlab.data.images import list_images, read_images
from keypointlab.features.base import Extractor
from keypointlab.features.h5 import write_features
from keypointlab.io.h5 import partial_h5, safe_key

logger = logging.getLogger(__name__)


@dataclass
class ExtractReport:
    """What :func:`extract_folder` did."""

    written: int = 0
    reused: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def extract_folder(
    extractor: Extractor,
    folder: str | Path,
    out: str | Path,
    max_keypoints: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> ExtractReport:
    """Extract every image below ``folder`` into ``out``; unreadable files are reported and
    skipped.

    Raises:
        FileNotFoundError: ``folder`` is missing or has no image files.
    """
    folder, out = Path(folder), Path(out)
    paths = list_images(folder)
    if not paths:
        raise FileNotFoundError(f"{folder}: no image files found")
    report = ExtractReport()
    with partial_h5(out, resume=resume) as h5:
        todo = []
        owner: dict[str, Path] = {}
        for p in paths:
            key = safe_key(p.relative_to(folder).as_posix())
            if key in owner:  # e.g. 'a\\b.png' beside 'a/b.png': never overwrite silently
                report.skipped.append((str(p), f"same feature key {key!r} as {owner[key]}"))
                continue
            owner[key] = p
            if key in h5 and "descriptors" in h5[key]:
                report.reused += 1
            else:
                todo.append(p)
        for path, image, error in tqdm(
            read_images(todo), total=len(todo), desc="extract", disable=not progress
        ):
            if image is None:
                report.skipped.append((str(path), error or "unreadable"))
                continue
            try:
                feats = extractor.extract(image).top_k(max_keypoints)
            except ValueError as exc:  # e.g. an image smaller than the network stride
                report.skipped.append((str(path), str(exc)))
                continue
            write_features(h5, safe_key(path.relative_to(folder).as_posix()), feats)
            h5.flush()
            report.written += 1
    return report
