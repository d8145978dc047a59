"""Sequences with ground-truth homographies in the HPatches layout (and Oxford's spelling).

A sequence folder holds ``1.<ext>`` ... ``6.<ext>`` with ``H_1_2`` ... ``H_1_6`` (HPatches),
or ``img1.<ext>`` ... ``img6.<ext>`` with ``H1to2p`` ... ``H1to6p`` (Oxford affine). Each
homography maps pixel xy of image 1 to image N. A dataset is any folder below which such
sequence folders are found.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keypointlab.data.images import IMAGE_EXTENSIONS
from keypointlab.geometry import InvalidHomographyError, check_homography

logger = logging.getLogger(__name__)

N_IMAGES = 6


@dataclass
class Sequence:
    """One sequence: a reference image and the images it is paired with.

    Attributes:
        name: path of the folder relative to the dataset root, with ``/`` separators.
        root: the dataset root the name is relative to.
        images: image index (1..6) -> file path.
        homographies: image index N (2..6) -> ``H_1toN`` as a (3, 3) float64 array.
    """

    name: str
    root: Path
    images: dict[int, Path]
    homographies: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def split(self) -> str:
        """``illumination`` for ``i_*``, ``viewpoint`` for ``v_*``, ``other`` otherwise."""
        base = self.name.rsplit("/", 1)[-1]
        if base.startswith("i_"):
            return "illumination"
        if base.startswith("v_"):
            return "viewpoint"
        return "other"

    def pairs(self) -> list[tuple[int, int]]:
        """The evaluated pairs ``(1, N)`` for which both images and ``H_1toN`` exist."""
        return [(1, n) for n in sorted(self.homographies) if n in self.images]

    def relative(self, index: int) -> str:
        """Path of image ``index`` relative to the dataset root (the feature-file key)."""
        return self.images[index].relative_to(self.root).as_posix()


@dataclass
class Skipped:
    """Something that was not evaluated, and why."""

    item: str
    reason: str


def _find_image(folder: Path, index: int) -> Path | None:
    for stem in (str(index), f"img{index}"):
        for ext in IMAGE_EXTENSIONS:
            for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def read_homography(path: Path) -> np.ndarray:
    """Read a whitespace-separated 3x3 homography, validated (finite, invertible).

    Raises:
        InvalidHomographyError: the file does not hold a usable homography; names the file.
    """
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise InvalidHomographyError(f"{path}: cannot parse homography ({exc})") from exc
    if values.size != 9:
        raise InvalidHomographyError(f"{path}: expected 9 numbers, found {values.size}")
    return check_homography(values.reshape(3, 3), name=str(path))


def _is_sequence_folder(folder: Path) -> bool:
    return _find_image(folder, 1) is not None and _find_image(folder, 2) is not None


def load_sequence(folder: Path, root: Path) -> tuple[Sequence | None, list[Skipped]]:
    """Load one sequence folder; bad homographies are skipped pair by pair and reported."""
    name = folder.relative_to(root).as_posix() if folder != root else folder.name
    images = {i: p for i in range(1, N_IMAGES + 1) if (p := _find_image(folder, i))}
    skipped: list[Skipped] = []
    seq = Sequence(name=name, root=root, images=images)
    if not any(
        (folder / f).is_file() for n in range(2, N_IMAGES + 1) for f in (f"H_1_{n}", f"H1to{n}p")
    ):
        return None, [Skipped(name, "no homography files (H_1_N or H1toNp): sequence skipped")]
    for n in range(2, N_IMAGES + 1):
        hfile = next((p for p in (folder / f"H_1_{n}", folder / f"H1to{n}p") if p.is_file()), None)
        if n not in images:
            if hfile is not None:
                skipped.append(
                    Skipped(f"{name} 1-{n}", f"{hfile.name} exists but image {n} is missing")
                )
            continue
        if hfile is None:
            skipped.append(Skipped(f"{name} 1-{n}", f"no homography file H_1_{n} or H1to{n}p"))
            continue
        try:
            seq.homographies[n] = read_homography(hfile)
        except InvalidHomographyError as exc:
            skipped.append(Skipped(f"{name} 1-{n}", str(exc)))
    if not seq.homographies:
        skipped.append(Skipped(name, "sequence has no usable homography; skipped"))
        return None, skipped
    return seq, skipped


def load_dataset(root: str | Path) -> tuple[list[Sequence], list[Skipped]]:
    """Find and load every sequence below ``root`` (or ``root`` itself if it is one).

    Returns:
        The usable sequences sorted by name, and what was skipped with the reason.

    Raises:
        FileNotFoundError: ``root`` is missing, or holds no sequence at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder")
    folders = (
        [root]
        if _is_sequence_folder(root)
        else sorted(d for d in root.rglob("*") if d.is_dir() and _is_sequence_folder(d))
    )
    if not folders:
        raise FileNotFoundError(
            f"{root}: no sequence found (expected folders with 1.png/H_1_2 or img1.png/H1to2p)"
        )
    sequences, skipped = [], []
    for folder in folders:
        seq, skips = load_sequence(folder, root)
        skipped.extend(skips)
        if seq is not None:
            sequences.append(seq)
    for s in skipped:
        logger.warning("skipped %s: %s", s.item, s.reason)
    return sequences, skipped
