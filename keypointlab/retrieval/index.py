"""A database of images as one nearest-neighbour index of their descriptors (faiss).

:func:`build_index` extracts the features of every image (resized so its longer side is at
most ``max_side``; keypoints stay in the resized image's pixels, which is all verification
needs) and puts all descriptors in a faiss index: exact (``IndexFlatL2``) up to
:data:`FLAT_LIMIT` descriptors, an inverted file (``IndexIVFFlat``, ``4 sqrt(N)`` lists,
:data:`NPROBE` probed) above, where exact search would cost too much per query.

Saved as a folder (:meth:`RetrievalIndex.save`): ``index.faiss``, ``arrays.npz``
(per-descriptor image and keypoint xy) and ``meta.json`` (feature name and identity, image
paths relative to the database folder, their groups and sizes), written beside the target
under a temporary name and renamed into place when whole; ``meta.json`` is written last.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from keypointlab import limits
from keypointlab.data.images import read_image, resize_image
from keypointlab.errors import InputError, OutputError
from keypointlab.features.base import Extractor, Features
from keypointlab.io.outputs import temporary_path

FLAT_LIMIT = 200_000  # descriptors searched exactly; an inverted file above
NPROBE = 16  # inverted lists visited per query descriptor
MAX_IMAGES = 100_000  # images in one database (bounded before any extraction)
FORMAT = 1


def faiss_module() -> Any:
    """faiss, or a clear error saying how to install it."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-probing chatter
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError(
            "image retrieval needs faiss: pip install faiss-cpu (or the extra: pip install "
            '"keypointlab[retrieval]")'
        ) from exc
    return faiss


def _faiss_index(descriptors: np.ndarray, kind: str) -> Any:
    faiss = faiss_module()
    n, d = descriptors.shape
    if kind not in ("auto", "flat", "ivf"):
        raise InputError(f"index kind {kind!r}: use auto, flat or ivf")
    if kind == "flat" or (kind == "auto" and n <= FLAT_LIMIT):
        index = faiss.IndexFlatL2(d)
    else:
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))  # faiss wants >= 39 per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        rng = np.random.default_rng(0)
        sample = descriptors[rng.permutation(n)[: 256 * nlist]]
        index.train(np.ascontiguousarray(sample))
        index.nprobe = min(NPROBE, nlist)
    index.add(np.ascontiguousarray(descriptors))
    return index


def resize_to(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` shrunk (area interpolation) so its longer side is at most ``max_side``."""
    h, w = image.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return image
    return resize_image(image, (max(1, round(h * s)), max(1, round(w * s))))


@dataclass
class RetrievalIndex:
    """Descriptors of a database of images in one faiss index.

    Attributes:
        feature: the feature's name (a query must use the same).
        paths: the images, relative to the database folder (or as given).
        groups: one label per image (the first folder below the database; "" if none).
        sizes: ``(h, w)`` of each image as described (after ``max_side``).
        image_of: ``(N,)`` image of each descriptor.
        keypoints: ``(N, 2)`` keypoint xy of each descriptor, in its image as described.
        index: the faiss index of the ``N`` descriptors.
        meta: feature identity, ``max_side``, ``kind`` (``local`` or ``global``), timings.
    """

    feature: str
    paths: list[str]
    groups: list[str]
    sizes: list[tuple[int, int]]
    image_of: np.ndarray
    keypoints: np.ndarray
    index: Any
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> int:
        return len(self.paths)

    @property
    def descriptors(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_global(self) -> bool:
        return self.meta.get("kind") == "global"

    def search(self, descriptors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(squared distances, ids)`` ``(M, k)`` of the ``k`` nearest database descriptors
        of each row of ``descriptors`` (ids ``-1`` where fewer exist)."""
        q = np.ascontiguousarray(descriptors, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.index.d:
            raise InputError(
                f"query descriptors of shape {q.shape}: the index of {self.feature!r} holds "
                f"{self.index.d}-D descriptors"
            )
        k = min(int(k), self.descriptors)
        if len(q) == 0 or k == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        return self.index.search(q, k)

    def nbytes(self) -> int:
        """Bytes of the index as saved (faiss index + per-descriptor arrays)."""
        faiss = faiss_module()
        return int(faiss.serialize_index(self.index).nbytes) + int(
            self.image_of.nbytes + self.keypoints.nbytes
        )

    # -- files ---------------------------------------------------------------------
    def save(self, out: str | Path) -> Path:
        """Write the index folder ``out`` (replacing an older index folder there; anything
        else there is refused)."""
        faiss = faiss_module()
        out = Path(out)
        if out.exists() and not (out.is_dir() and (out / "meta.json").is_file()):
            if not (out.is_dir() and not any(out.iterdir())):
                raise OutputError(f"{out}: exists and is not a retrieval index; not replacing it")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(out)
        tmp.mkdir()
        try:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            np.savez(tmp / "arrays.npz", image_of=self.image_of, keypoints=self.keypoints)
            meta = {
                **self.meta,
                "format": FORMAT,
                "feature": self.feature,
                "paths": self.paths,
                "groups": self.groups,
                "sizes": [list(s) for s in self.sizes],
                "descriptors": self.descriptors,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            old = None
            if out.exists():
                old = temporary_path(out)
                os.replace(out, old)
            os.replace(tmp, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return out


def load_index(folder: str | Path) -> RetrievalIndex:
    """The index saved in ``folder`` by :meth:`RetrievalIndex.save`.

    Raises:
        FileNotFoundError: ``folder`` or one of its files is missing (named).
        InputError: a file is corrupt or the files disagree (named).
    """
    faiss = faiss_module()
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such index folder (made by `keypointlab index`)")
    for name in ("meta.json", "index.faiss", "arrays.npz"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: missing; {folder} is not a whole index")
    try:
        meta = json.loads((folder / "meta.json").read_text())
        paths, groups, sizes = meta["paths"], meta["groups"], meta["sizes"]
        feature = meta["feature"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{folder / 'meta.json'}: not a retrieval index's metadata ({exc})"
        ) from None
    try:
        index = faiss.read_index(str(folder / "index.faiss"))
    except RuntimeError as exc:
        raise InputError(f"{folder / 'index.faiss'}: cannot be read as a faiss index") from exc
    try:
        with np.load(folder / "arrays.npz") as arrays:
            image_of, keypoints = arrays["image_of"], arrays["keypoints"]
    except (ValueError, KeyError, OSError) as exc:
        raise InputError(f"{folder / 'arrays.npz'}: corrupt ({exc})") from None
    n = int(index.ntotal)
    ok = len(paths) == len(groups) == len(sizes) and image_of.shape == (n,)
    ok = (
        ok
        and keypoints.shape == (n, 2)
        and (n == 0 or 0 <= image_of.min() <= image_of.max() < len(paths))
    )
    if not ok:
        raise InputError(
            f"{folder}: the files disagree ({n} descriptors in index.faiss, {image_of.shape} "
            f"images and {keypoints.shape} keypoints in arrays.npz, {len(paths)} paths)"
        )
    return RetrievalIndex(
        feature, paths, groups, [tuple(s) for s in sizes], image_of, keypoints, index, meta
    )


def group_of(path: Path, root: Path) -> str:
    """The first folder of ``path`` below ``root`` ("" for an image directly in ``root``)."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else ""


def extract_all(
    paths: Sequence[str | Path],
    extractor: Extractor,
    max_side: int = 640,
    progress: bool = True,
    desc: str = "extracting",
) -> tuple[list[Features], float]:
    """Features of every image (resized to ``max_side``) and the mean seconds per image."""
    max_side = limits.check_count(max_side, "max_side", minimum=16)
    feats, seconds = [], 0.0
    for path in tqdm(paths, desc=desc, disable=not progress, leave=False):
        image = resize_to(read_image(path), max_side)
        start = time.perf_counter()
        feats.append(extractor.extract(image))
        seconds += time.perf_counter() - start
    return feats, seconds / max(len(paths), 1)


def index_features(
    features: Sequence[Features],
    paths: Sequence[str],
    groups: Sequence[str],
    feature: str,
    meta: dict[str, Any] | None = None,
    kind: str = "auto",
) -> RetrievalIndex:
    """The index of already extracted ``features`` (one per image of ``paths``)."""
    if not features:
        raise InputError("an empty database: no image to index")
    if not (len(features) == len(paths) == len(groups)):
        raise InputError(f"{len(features)} feature sets for {len(paths)} paths")
    dims = {f.descriptors.shape[1] for f in features if len(f)}
    if len(dims) > 1:
        raise InputError(f"{feature}: descriptors of different dimensions {sorted(dims)}")
    d = dims.pop() if dims else 1
    desc = np.concatenate([f.descriptors.reshape(-1, d) for f in features]).astype(np.float32)
    image_of = np.concatenate([np.full(len(f), i, np.int64) for i, f in enumerate(features)])
    keypoints = np.concatenate([f.keypoints.reshape(-1, 2) for f in features]).astype(np.float32)
    return RetrievalIndex(
        feature,
        list(paths),
        list(groups),
        [tuple(int(v) for v in f.image_size) for f in features],
        image_of,
        keypoints,
        _faiss_index(desc, kind),
        dict(meta or {}),
    )


def build_index(
    root: str | Path,
    extractor: Extractor,
    max_side: int = 640,
    progress: bool = True,
    kind: str = "auto",
    paths: Sequence[Path] | None = None,
) -> RetrievalIndex:
    """The index of every image below ``root`` (or of ``paths``, all below ``root``), its
    group the first folder below ``root``.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no image.
        LimitError: more than :data:`MAX_IMAGES` images.
    """
    from keypointlab.data.images import list_images

    root = Path(root)
    paths = list(paths) if paths is not None else list_images(root)
    if not paths:
        raise FileNotFoundError(f"{root}: no image files found below this folder")
    limits.check_count(len(paths), f"{root}: number of images", maximum=MAX_IMAGES)
    feats, seconds = extract_all(paths, extractor, max_side, progress, f"indexing {extractor.name}")
    meta = {
        "identity": extractor.identity(),
        "max_side": int(max_side),
        "kind": "global" if getattr(extractor, "is_global", False) else "local",
        "extract_seconds_per_image": seconds,
    }
    rel = [p.relative_to(root).as_posix() for p in paths]
    return index_features(
        feats, rel, [group_of(p, root) for p in paths], extractor.name, meta, kind
    )
