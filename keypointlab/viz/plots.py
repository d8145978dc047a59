"""Figures for reports: MMA curves, per-sequence bars, match pictures, retrieval results.

Built with :class:`matplotlib.figure.Figure` directly, so no GUI backend or global pyplot
state is involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from keypointlab.errors import OutputError
from keypointlab.geometry import image_corners, warp_points
from keypointlab.io.outputs import atomic_output, check_output_file


def figure_format(path: str | Path) -> str:
    """The image format of ``path``'s suffix (``png`` when it has none).

    Raises:
        OutputError: matplotlib cannot write that format.
    """
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    supported = Figure().canvas.get_supported_filetypes()
    if fmt not in supported:
        raise OutputError(
            f"{path}: cannot write a figure as {fmt!r}; use one of {', '.join(sorted(supported))}"
        )
    return fmt


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` atomically (a temporary file of its own renamed into place; removed
    if writing fails).

    Raises:
        OutputError: ``path`` is a folder, or its suffix is not an image format.
    """
    path = check_output_file(path)
    fmt = figure_format(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt)
    return path


def mma_figure(curves: dict[str, dict[str, Sequence[float]]], title: str = "") -> Figure:
    """MMA against the pixel threshold, one panel per split.

    Args:
        curves: split name -> {label: MMA values at thresholds 1..10}.
    """
    splits = list(curves)
    fig = Figure(figsize=(4.2 * len(splits), 3.6))
    axes = fig.subplots(1, len(splits), squeeze=False)[0]
    for ax, split in zip(axes, splits, strict=True):
        for label, values in curves[split].items():
            ax.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=label)
        ax.set_title(split)
        ax.set_xlabel("threshold [px]")
        ax.set_ylim(0, 1)
        ax.set_xlim(1, 10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean matching accuracy")
    axes[-1].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    return fig


def sequence_bars_figure(values: dict[str, dict[str, float]], metric: str) -> Figure:
    """Grouped bars of ``metric`` per sequence.

    Args:
        values: label (method) -> {sequence: value}.
    """
    labels = list(values)
    seqs = sorted({s for v in values.values() for s in v})
    fig = Figure(figsize=(max(5.0, 0.9 * len(seqs) * max(1, len(labels)) / 2 + 2), 3.4))
    ax = fig.subplots()
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(seqs))
    for k, label in enumerate(labels):
        ax.bar(
            x + k * width - 0.4 + width / 2,
            [values[label].get(s, 0.0) for s in seqs],
            width,
            label=label,
        )
    ax.set_xticks(x, seqs, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def matches_figure(
    image0: np.ndarray,
    image1: np.ndarray,
    points0: np.ndarray,
    points1: np.ndarray,
    inliers: np.ndarray | None = None,
    H_0to1: np.ndarray | None = None,
    title: str = "",
    max_lines: int = 300,
) -> Figure:
    """Two images side by side with match lines (inliers green, outliers red).

    Args:
        image0, image1: RGB or grey images.
        points0, points1: ``(M, 2)`` matched xy coordinates.
        inliers: ``(M,)`` boolean mask; all matches drawn as inliers when None.
        H_0to1: if given, image 0's outline warped by it is drawn on image 1.
    """
    h0, w0 = image0.shape[:2]
    h1, w1 = image1.shape[:2]
    canvas = np.zeros((max(h0, h1), w0 + w1, 3), dtype=np.uint8)
    for img, off in ((image0, 0), (image1, w0)):
        rgb = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
        canvas[: img.shape[0], off : off + img.shape[1]] = rgb
    fig = Figure(figsize=(10, 10 * canvas.shape[0] / canvas.shape[1] + 0.5))
    ax = fig.subplots()
    ax.imshow(canvas)
    ax.axis("off")
    m = len(points0)
    inl = np.ones(m, dtype=bool) if inliers is None else np.asarray(inliers, dtype=bool)
    order = np.argsort(inl, kind="stable")  # outliers first, inliers drawn on top
    if m > max_lines:
        order = order[np.linspace(0, m - 1, max_lines).astype(int)]
    for i in order:
        color = "lime" if inl[i] else "red"
        ax.plot(
            [points0[i, 0], points1[i, 0] + w0],
            [points0[i, 1], points1[i, 1]],
            color=color,
            lw=0.6,
            alpha=0.8,
        )
    ax.scatter(points0[:, 0], points0[:, 1], s=2, c="yellow")
    ax.scatter(points1[:, 0] + w0, points1[:, 1], s=2, c="yellow")
    if H_0to1 is not None:
        c = warp_points(image_corners((h0, w0))[[0, 1, 3, 2, 0]], H_0to1)
        ax.plot(c[:, 0] + w0, c[:, 1], color="cyan", lw=1.5)
    ax.set_title(title or f"{int(inl.sum())} inliers / {m} matches", fontsize=10)
    return fig


def reconstruction_figure(
    points: np.ndarray,
    centres: np.ndarray,
    true_centres: np.ndarray | None = None,
    title: str = "",
    max_points: int = 20000,
    hidden: int = 0,
) -> Figure:
    """A sparse model from above (x-y) and from the side (x-z): 3D points ``(N, 3)``
    (a fixed random subset of at most ``max_points``, axes around their 5-95 percentiles
    and every camera), registered camera centres ``(M, 3)`` and, when given, the true centres in
    the same frame; ``hidden``: registered cameras left out (far off), said in the legend."""
    fig = Figure(figsize=(11, 5))
    if len(points) > max_points:
        points = points[np.random.default_rng(0).choice(len(points), max_points, replace=False)]
    both = np.concatenate([x for x in (points, centres) if len(x)] or [np.zeros((1, 3))])
    lo, hi = np.percentile(both, 5, axis=0), np.percentile(both, 95, axis=0)
    if len(centres):
        lo, hi = np.minimum(lo, centres.min(0)), np.maximum(hi, centres.max(0))
    pad = 0.15 * (hi - lo + 1e-9)
    for ax, (a, b), label in zip(
        fig.subplots(1, 2),
        ((0, 1), (0, 2)),
        ("from above (x, y)", "from the side (x, z)"),
        strict=True,
    ):
        if len(points):
            ax.scatter(points[:, a], points[:, b], s=1.0, c="0.25", alpha=0.6, lw=0)
        if true_centres is not None:
            ax.scatter(
                true_centres[:, a],
                true_centres[:, b],
                s=40,
                facecolors="none",
                edgecolors="tab:green",
                label="true cameras",
            )
        if len(centres):
            legend = "registered cameras" + (f" ({hidden} far off, not shown)" if hidden else "")
            ax.scatter(centres[:, a], centres[:, b], s=12, c="tab:red", label=legend)
        ax.set_xlim(lo[a] - pad[a], hi[a] + pad[a])
        ax.set_ylim(lo[b] - pad[b], hi[b] + pad[b])
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    return fig


def retrieval_figure(
    panels: Sequence[tuple[tuple[Path, str | None], Sequence[tuple[Path, str | None]], float]],
    title: str = "",
    thumb: int = 160,
) -> Figure:
    """One row per query: the query, then its ranked results framed green when they share
    the query's group and red otherwise (distractors have group ``None``). ``panels`` are
    ``((query path, group), [(result path, group), ...], average precision)``."""
    from keypointlab.data.images import read_image, resize_image

    cols = 1 + max((len(r) for _, r, _ in panels), default=0)
    fig = Figure(figsize=(2.0 * cols, 1.7 * max(len(panels), 1) + 0.3))
    for row, ((qpath, qgroup), results, ap) in enumerate(panels):
        for col, (path, group) in enumerate([(qpath, qgroup), *results]):
            ax = fig.add_subplot(len(panels), cols, row * cols + col + 1)
            image = read_image(path)
            h, w = image.shape[:2]
            s = thumb / max(h, w)
            ax.imshow(resize_image(image, (max(1, round(h * s)), max(1, round(w * s)))))
            ax.set_xticks([])
            ax.set_yticks([])
            colour = "black" if col == 0 else ("green" if group == qgroup else "red")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(1 if col == 0 else 4)
            label = (
                f"query ({qgroup}, AP {ap:.2f})" if col == 0 else f"{col}: {group or 'distractor'}"
            )
            ax.set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
