"""Synthetic shapes with exact corner labels, for MagicPoint-style detector pretraining.

Follows the idea of DeTone et al. (2018, "SuperPoint"): simple primitives (lines, polygons,
ellipses, stars, checkerboards, stripes, cubes, noise) drawn on a smooth random background,
labelled with the corners and junctions they create.

Conventions
-----------
* Images are uint8 grey arrays of shape (H, W). Every ``draw_<name>`` function draws in place
  and returns the visible points as an (N, 2) float64 array of (x, y) pixel coordinates, where
  pixel (col, row) is the point (x=col, y=row). Points lie in [0, W-1] x [0, H-1].
* Antialiasing is OFF everywhere (``cv2.LINE_8``): every shape is a hard-edged set of pixels
  whose vertices are integer pixel centres, so the returned vertices are exactly the ones
  used for rasterising. The only smoothing of shapes is :func:`final_blur`, applied once to
  the whole image. Points created by occlusion (edge crossings in ``multiple_polygons``) are
  computed geometrically (see ``_crossings``) and are therefore non-integer, accurate to
  about half a pixel.
* Each shape gets a grey level at least ``MIN_CONTRAST`` away from the dark, median and
  bright levels (10th/50th/90th percentiles) of the pixels around it, and at least
  ``MIN_NEIGHBOUR_CONTRAST`` away from the touching cells, faces or polygons; both margins are
  relaxed when no grey level satisfies them.
* All randomness comes from the ``np.random.Generator`` passed in: same seed, same sample.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LINE_TYPE = cv2.LINE_8  # no antialiasing, see module docstring
MIN_CONTRAST = 50  # grey levels between a shape and its surroundings
MIN_NEIGHBOUR_CONTRAST = 35  # between touching parts: cells, cube faces, overlapping polygons
MIN_CORNER_ANGLE = np.deg2rad(30.0)  # polygon corners sharper than this, or flatter
MAX_CORNER_ANGLE = np.deg2rad(140.0)  # than this, are rejected
FINAL_BLUR_SIGMA = 0.8  # pixels
RASTER_OFFSET = 0.5  # px that cv2.LINE_8 filling reaches outside a polygon edge, on average

# Vertices of a unit cube as (+-1, +-1, +-1); index = 4*bit_x + 2*bit_y + bit_z.
_CUBE_CORNERS = np.array(list(itertools.product((-1, 1), repeat=3)), np.float64)


# ----------------------------------------------------------------------------- helpers


def _empty() -> np.ndarray:
    """An empty (0, 2) float64 point array."""
    return np.zeros((0, 2), np.float64)


def _inside(points: np.ndarray | Sequence, shape: tuple[int, ...]) -> np.ndarray:
    """Keep the (N, 2) xy points that lie in [0, W-1] x [0, H-1]; returns float64."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    h, w = shape[:2]
    ok = (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
    return pts[ok]


def _contrasting_colour(
    rng: np.random.Generator, surround: Sequence[float], neighbours: Sequence[float] = ()
) -> int:
    """A random grey level in [0, 255] at least ``MIN_CONTRAST`` from every ``surround`` level
    and ``MIN_NEIGHBOUR_CONTRAST`` from every ``neighbours`` level.

    When no level qualifies, the margins are relaxed step by step (the surround margin first,
    since touching parts must stay distinct for their junctions to exist); as a last resort
    the level with the largest relative margin is returned.
    """
    levels = np.arange(256.0)[:, None]
    sur = np.abs(levels - np.asarray(surround, np.float64)[None]).min(1, initial=255.0)
    nbr = np.abs(levels - np.asarray(neighbours, np.float64)[None]).min(1, initial=255.0)
    sur, nbr = sur / MIN_CONTRAST, nbr / MIN_NEIGHBOUR_CONTRAST
    for f_sur, f_nbr in ((1, 1), (2 / 3, 1), (1 / 3, 1), (1 / 3, 2 / 3), (0, 2 / 3), (0, 1 / 3)):
        allowed = np.flatnonzero((sur >= f_sur) & (nbr >= f_nbr))
        if allowed.size:
            return int(rng.choice(allowed))
    return int(np.argmax(np.minimum(sur, nbr)))


def _surround_levels(image: np.ndarray, mask: np.ndarray, width: int = 3) -> np.ndarray:
    """10th, 50th and 90th percentile grey levels of the ``width``-pixel ring around the
    non-zero pixels of ``mask`` (H, W), so that a colour avoiding them contrasts with the
    darker and the brighter parts of the surroundings too."""
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    ring = (cv2.dilate(mask, kernel) > 0) & (mask == 0)
    region = ring if ring.any() else np.ones(mask.shape, bool)
    return np.percentile(image[region], [10, 50, 90])


def _paint(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> int:
    """Fill ``mask`` with a level contrasting the pixels around it; returns the level."""
    colour = _contrasting_colour(rng, _surround_levels(image, mask))
    image[mask > 0] = colour
    return colour


def _overlaps(occupied: np.ndarray, mask: np.ndarray, gap: int = 2) -> bool:
    """Whether ``mask`` comes within ``gap`` pixels of the ``occupied`` mask."""
    kernel = np.ones((2 * gap + 1, 2 * gap + 1), np.uint8)
    return bool((cv2.dilate(mask, kernel) & occupied).any())


def _as_cv(points: np.ndarray) -> np.ndarray:
    """(N, 2) integer-valued xy points -> int32 (N, 1, 2) contour for cv2."""
    return np.asarray(points).astype(np.int32).reshape(-1, 1, 2)


def _poly_mask(shape: tuple[int, ...], vertices: np.ndarray) -> np.ndarray:
    """uint8 (H, W) mask (255 inside) of the polygon with integer (N, 2) xy vertices."""
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mask, [_as_cv(vertices)], 255, LINE_TYPE)
    return mask


def _segments_mask(
    shape: tuple[int, ...], segments: Sequence[tuple[np.ndarray, np.ndarray]], thickness: int
) -> np.ndarray:
    """uint8 (H, W) mask of line segments between integer xy endpoints."""
    mask = np.zeros(shape[:2], np.uint8)
    for p, q in segments:
        cv2.line(mask, _pt(p), _pt(q), 255, thickness, LINE_TYPE)
    return mask


def _pt(p: np.ndarray) -> tuple[int, int]:
    """Integer-valued xy point -> (x, y) int tuple for cv2."""
    return int(p[0]), int(p[1])


def _random_point(rng: np.random.Generator, shape: tuple[int, ...], margin: float) -> np.ndarray:
    """Integer xy point at least ``margin`` (fraction of each side) from the image border."""
    h, w = shape[:2]
    lo, hi = np.array([margin * (w - 1), margin * (h - 1)]), np.array([w - 1, h - 1])
    return np.rint(rng.uniform(lo, hi - lo))


def _thickness(rng: np.random.Generator, shape: tuple[int, ...], per_px: int = 40) -> int:
    """Random cv2 stroke thickness: 1 to (smaller image side // ``per_px``), at least 1."""
    return int(rng.integers(1, max(1, min(shape[:2]) // per_px) + 1))


def _spread_angles(rng: np.random.Generator, n: int, min_sep: float) -> np.ndarray:
    """``n`` increasing angles (rad), jittered around a regular fan, whose circular gaps are
    all at least ``min_sep`` (requires ``n * min_sep <= 2 pi``)."""
    spacing = 2 * np.pi / n
    jitter = max(0.0, (spacing - min_sep) / 2)
    return rng.uniform(0, 2 * np.pi) + spacing * np.arange(n) + rng.uniform(-jitter, jitter, n)


def _corner_angles(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unsigned angle (rad) at each vertex of a closed polygon and each edge length."""
    to_prev = np.roll(vertices, 1, axis=0) - vertices
    to_next = np.roll(vertices, -1, axis=0) - vertices
    lengths = np.linalg.norm(to_next, axis=1)
    prev_len = np.roll(lengths, 1)
    cos = (to_prev * to_next).sum(1) / np.maximum(prev_len * lengths, 1e-9)
    return np.arccos(np.clip(cos, -1, 1)), lengths


def _valid_polygon(vertices: np.ndarray, min_edge: float) -> bool:
    """Edges long enough and every corner clearly a corner (not a spike, not flat)."""
    angles, lengths = _corner_angles(vertices)
    return bool(
        lengths.min() >= min_edge
        and angles.min() >= MIN_CORNER_ANGLE
        and angles.max() <= MAX_CORNER_ANGLE
    )


def _random_polygon(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    radius_range: tuple[float, float],
    centre: np.ndarray | None = None,
) -> np.ndarray:
    """Integer (N, 2) xy vertices, N in 3..6, of a simple polygon around ``centre`` (xy px,
    default random in the image).

    Vertices are jittered around a regular polygon, in angular order around the centre (so
    the polygon is simple); the radius is a fraction ``radius_range`` of the smaller side.
    """
    s = min(shape[:2])
    centre = _random_point(rng, shape, 0.1) if centre is None else centre
    radius = rng.uniform(*radius_range) * s
    n = int(rng.integers(3, 7))
    for _ in range(30):
        angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi / n * (
            np.arange(n) + rng.uniform(-0.4, 0.4, n)
        )
        radii = radius * rng.uniform(0.5, 1.0, n)
        verts = np.rint(centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1))
        if _valid_polygon(verts, 0.08 * s):
            return verts
    angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n) / n
    return np.rint(centre + radius * np.stack([np.cos(angles), np.sin(angles)], 1))


# ------------------------------------------------------------------- polygon occlusion


def _edges(poly: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Edges (start, end, unit outward normal) of a simple closed (N, 2) xy polygon."""
    pts = np.asarray(poly, np.float64)
    nxt = np.roll(pts, -1, axis=0)
    area2 = np.sum(pts[:, 0] * nxt[:, 1] - nxt[:, 0] * pts[:, 1])
    d = nxt - pts
    normals = np.sign(area2) * np.stack([d[:, 1], -d[:, 0]], 1) / np.linalg.norm(d, axis=1)[:, None]
    return list(zip(pts, nxt, normals, strict=True))


def _intersect(
    p1: np.ndarray, p2: np.ndarray, q1: np.ndarray, q2: np.ndarray
) -> tuple[float, float, float] | None:
    """(t, u, |sin angle|) with p1 + t (p2 - p1) = q1 + u (q2 - q1); None if parallel."""
    d1, d2, r = p2 - p1, q2 - q1, q1 - p1
    denom = d1[0] * d2[1] - d1[1] * d2[0]
    if abs(denom) < 1e-9:
        return None
    t = (r[0] * d2[1] - r[1] * d2[0]) / denom
    u = (r[0] * d1[1] - r[1] * d1[0]) / denom
    return t, u, abs(denom) / (np.linalg.norm(d1) * np.linalg.norm(d2))


def _crossings(a: np.ndarray, b: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Boundary crossings of polygons ``a`` and ``b`` as (xy point, |sin angle|).

    Filling without antialiasing also covers pixels up to about half a pixel outside each
    edge, so the reported point is where the two edges, pushed out by ``RASTER_OFFSET``,
    meet: that is where the rasterised boundaries cross (about 0.5 px mean error, against
    about 1 px for the exact geometric crossing).
    """
    hits = []
    for (p1, p2, na), (q1, q2, nb) in itertools.product(_edges(a), _edges(b)):
        hit = _intersect(p1, p2, q1, q2)
        if hit is None or not (0 <= hit[0] <= 1 and 0 <= hit[1] <= 1):
            continue
        oa, ob = RASTER_OFFSET * na, RASTER_OFFSET * nb
        t = _intersect(p1 + oa, p2 + oa, q1 + ob, q2 + ob)[0]
        hits.append((p1 + oa + t * (p2 - p1), hit[2]))
    return hits


def _signed_distance(poly: np.ndarray, point: np.ndarray) -> float:
    """Distance (px) from ``point`` to the boundary of ``poly``; > 0 inside, < 0 outside."""
    contour = np.asarray(poly, np.float32).reshape(-1, 1, 2)
    return cv2.pointPolygonTest(contour, (float(point[0]), float(point[1])), True)


def _covered(point: np.ndarray, polys: Sequence[np.ndarray]) -> bool:
    """Whether ``point`` lies strictly inside any of ``polys``."""
    return any(_signed_distance(p, point) > 0 for p in polys)


def _compatible(cand: np.ndarray, polys: Sequence[np.ndarray], min_dist: float = 4.0) -> bool:
    """A new polygon may overlap others, but no vertex may lie within ``min_dist`` px of
    another polygon's boundary and boundaries may only cross at angles >= 45 degrees, so
    every corner and occlusion junction is well defined. (Boundaries that do not cross are
    then also >= ``min_dist`` apart: the distance of disjoint segments is reached at an
    endpoint.)"""
    for poly in polys:
        near = [abs(_signed_distance(poly, v)) < min_dist for v in cand]
        near += [abs(_signed_distance(cand, v)) < min_dist for v in poly]
        if any(near) or any(sin < np.sin(np.pi / 4) for _, sin in _crossings(cand, poly)):
            return False
    return True


def _visible_polygon_points(polys: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Visible vertices and occlusion junctions of polygons painted in the given order.

    A vertex of polygon i is hidden when a later polygon covers it. A crossing of the
    boundaries of i and j (i < j) is a junction when no polygon painted after i, other than j,
    covers it (a polygon between i and j would hide i's edge there, a later one the junction).
    """
    points = []
    for i, poly in enumerate(polys):
        points += [v for v in poly if not _covered(v, polys[i + 1 :])]
        for j in range(i + 1, len(polys)):
            others = [polys[k] for k in range(i + 1, len(polys)) if k != j]
            points += [c for c, _ in _crossings(poly, polys[j]) if not _covered(c, others)]
    return points


# ----------------------------------------------------------------------- grid boards


def _warp_grid(rng: np.random.Generator, grid: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Random mild homography (perspective, rotation, translation) of an (R, C, 2) xy grid
    centred on 0; returns integer-valued coordinates, centred near the image centre."""
    h, w = shape[:2]
    extent = np.abs(grid).max(axis=(0, 1)) * 2 + 1e-9
    px, py = rng.uniform(-0.3, 0.3, 2) / extent
    denom = 1 + px * grid[..., 0] + py * grid[..., 1]
    warped = grid / denom[..., None]
    theta = rng.uniform(-np.pi, np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    centre = rng.uniform([0.35 * w, 0.35 * h], [0.65 * w, 0.65 * h])
    return np.rint(warped @ rot.T + centre)


def _grid_colours(
    rng: np.random.Generator, rows: int, cols: int, surround: np.ndarray
) -> np.ndarray:
    """(rows, cols) grey levels, each contrasting its left and top neighbour; cells on the
    board border also contrast the ``surround`` levels."""
    colours = np.zeros((rows, cols))
    for r, c in itertools.product(range(rows), range(cols)):
        neighbours = ([colours[r, c - 1]] if c else []) + ([colours[r - 1, c]] if r else [])
        border = r in (0, rows - 1) or c in (0, cols - 1)
        colours[r, c] = _contrasting_colour(rng, surround if border else (), neighbours)
    return colours


def _draw_grid(
    image: np.ndarray, rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    """Draw a warped board of cells bounded by column edges ``xs`` and row edges ``ys`` (px).

    Every grid vertex is a junction (X inside, T on the border, L at the board corners);
    returns the (N, 2) xy vertices inside the image.
    """
    grid = np.stack(np.meshgrid(xs - xs.mean(), ys - ys.mean()), axis=-1)  # (R+1, C+1, 2)
    grid = _warp_grid(rng, grid, image.shape)
    rows, cols = len(ys) - 1, len(xs) - 1
    outline = np.concatenate([grid[0, :], grid[1:, -1], grid[-1, -2::-1], grid[-2:0:-1, 0]])
    colours = _grid_colours(
        rng, rows, cols, _surround_levels(image, _poly_mask(image.shape, outline))
    )
    for r, c in itertools.product(range(rows), range(cols)):
        quad = np.array([grid[r, c], grid[r, c + 1], grid[r + 1, c + 1], grid[r + 1, c]])
        cv2.fillConvexPoly(image, _as_cv(quad), int(colours[r, c]), LINE_TYPE)
    return _inside(grid.reshape(-1, 2), image.shape)


# --------------------------------------------------------------------------- cube


def _view_rotation(rng: np.random.Generator, min_facing: float = 0.35) -> np.ndarray:
    """3x3 rotation whose third row (viewing direction in object coordinates) has all
    components >= ``min_facing`` in magnitude, so three faces are clearly visible."""
    view = np.ones(3) / np.sqrt(3)
    for _ in range(100):
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        if np.abs(v).min() >= min_facing:
            view = v
            break
    x = rng.normal(size=3)
    x -= x.dot(view) * view
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(view, x), view])


def _cube_face(axis: int, sign: int) -> list[int]:
    """Indices into ``_CUBE_CORNERS`` of the face ``corner[axis] == sign``, in cyclic order."""
    a, b = (i for i in range(3) if i != axis)
    face = []
    for ua, ub in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        corner = np.zeros(3)
        corner[[axis, a, b]] = sign, ua, ub
        face.append(int(np.flatnonzero((_CUBE_CORNERS == corner).all(1))[0]))
    return face


# ------------------------------------------------------------------------ primitives


def draw_lines(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1-5 non-touching straight segments; returns their (N, 2) xy endpoints."""
    s = min(image.shape)
    occupied = np.zeros_like(image)
    points: list[np.ndarray] = []
    target = int(rng.integers(1, 6))
    for _ in range(5 * target):
        p = _random_point(rng, image.shape, 0.03)
        theta, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.25, 0.8) * s
        q = np.rint(p + length * np.array([np.cos(theta), np.sin(theta)]))
        mask = _segments_mask(image.shape, [(p, q)], _thickness(rng, image.shape))
        if len(_inside(q, image.shape)) == 0 or _overlaps(occupied, mask, gap=3):
            continue
        _paint(image, mask, rng)
        occupied |= mask
        points += [p, q]
        if len(points) == 2 * target:
            break
    return _inside(points, image.shape)


def draw_polygon(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One filled polygon with 3-6 vertices; returns its (N, 2) xy vertices, in order."""
    vertices = _random_polygon(rng, image.shape, (0.2, 0.45))
    _paint(image, _poly_mask(image.shape, vertices), rng)
    return _inside(vertices, image.shape)


def draw_multiple_polygons(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """2-5 filled, possibly overlapping polygons painted in turn; returns visible vertices
    and the junctions where a later polygon's boundary crosses an earlier one's."""
    target = int(rng.integers(2, 6))
    polys: list[np.ndarray] = []
    for _ in range(5 * target):
        # Half of the candidates are centred on a vertex of the previous polygon, to overlap.
        centre = polys[-1][rng.integers(len(polys[-1]))] if polys and rng.random() < 0.5 else None
        cand = _random_polygon(rng, image.shape, (0.12, 0.3), centre)
        if _compatible(cand, polys):
            polys.append(cand)
        if len(polys) == target:
            break
    background = image.copy()
    masks = [_poly_mask(image.shape, p) for p in polys]
    colours: list[int] = []
    for k, mask in enumerate(masks):
        touching = [colours[m] for m in range(k) if _overlaps(masks[m], mask)]
        colours.append(_contrasting_colour(rng, _surround_levels(background, mask), touching))
        image[mask > 0] = colours[-1]
    return _inside(_visible_polygon_points(polys), image.shape)


def draw_ellipses(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1-6 filled, non-touching ellipses; smooth outlines have no corners: returns (0, 2)."""
    s = min(image.shape)
    occupied = np.zeros_like(image)
    target, drawn = int(rng.integers(1, 7)), 0
    for _ in range(5 * target):
        centre = _pt(_random_point(rng, image.shape, 0.05))
        minor = rng.uniform(0.08, 0.2) * s
        axes = (int(round(minor * rng.uniform(1, 2.5))), int(round(minor)))
        mask = np.zeros_like(image)
        cv2.ellipse(mask, centre, axes, rng.uniform(0, 180), 0, 360, 255, -1, LINE_TYPE)
        if _overlaps(occupied, mask, gap=3):
            continue
        _paint(image, mask, rng)
        occupied |= mask
        drawn += 1
        if drawn == target:
            break
    return _empty()


def draw_star(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """3-6 rays from a common centre, at least 50 degrees apart; returns the centre and
    the ray ends."""
    s = min(image.shape)
    centre = _random_point(rng, image.shape, 0.2)
    n = int(rng.integers(3, 7))
    angles = _spread_angles(rng, n, np.deg2rad(50))
    lengths = rng.uniform(0.3, 0.6, n) * s
    ends = np.rint(centre + lengths[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1))
    thickness = _thickness(rng, image.shape, per_px=60)
    mask = _segments_mask(image.shape, [(centre, e) for e in ends], thickness)
    _paint(image, mask, rng)
    return _inside(np.vstack([centre, ends]), image.shape)


def draw_checkerboard(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A warped board of 3-6 x 3-7 cells of contrasting levels; returns its visible vertices."""
    s = min(image.shape)
    rows, cols = int(rng.integers(3, 7)), int(rng.integers(3, 8))
    cell_w, cell_h = rng.uniform(0.12, 0.3, 2) * s
    return _draw_grid(image, rng, np.arange(cols + 1) * cell_w, np.arange(rows + 1) * cell_h)


def draw_stripes(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A warped band of 5-14 stripes of random widths; returns the stripe ends (T-junctions
    with the background) and band corners that are inside the image."""
    h, _ = image.shape
    s = min(image.shape)
    widths = rng.uniform(0.05, 0.12, int(rng.integers(5, 15))) * s
    xs = np.concatenate([[0.0], np.cumsum(widths)])
    return _draw_grid(image, rng, xs, np.array([0.0, rng.uniform(0.3, 0.8) * h]))


def draw_cube(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A box seen in orthographic projection with three visible faces; returns its 7 visible
    vertices (the vertex hidden behind the box is excluded) that are inside the image."""
    h, w = image.shape
    rot = _view_rotation(rng)
    half = rng.uniform(0.1, 0.22, 3) * min(h, w)
    projected = (_CUBE_CORNERS * half) @ rot.T
    centre = rng.uniform([0.3 * w, 0.3 * h], [0.7 * w, 0.7 * h])
    verts = np.rint(projected[:, :2] + centre)
    # Face corner[k] == s has outward normal s * e_k, seen when it points to the viewer (-z).
    faces = [_cube_face(k, -int(np.sign(rot[2, k]))) for k in range(3)]
    masks = [_poly_mask(image.shape, verts[f]) for f in faces]
    surround = _surround_levels(image, np.maximum.reduce(masks))
    colours: list[int] = []
    for mask in masks:
        colours.append(_contrasting_colour(rng, surround, colours))
        image[mask > 0] = colours[-1]
    visible = sorted(set(itertools.chain(*faces)))
    return _inside(verts[visible], image.shape)


def draw_gaussian_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add i.i.d. Gaussian noise (sigma 10-40 grey levels) to the whole image; no points."""
    noisy = image + rng.normal(0.0, rng.uniform(10, 40), image.shape)
    image[...] = np.clip(np.rint(noisy), 0, 255)
    return _empty()


PRIMITIVES: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "lines": draw_lines,
    "polygon": draw_polygon,
    "multiple_polygons": draw_multiple_polygons,
    "ellipses": draw_ellipses,
    "star": draw_star,
    "checkerboard": draw_checkerboard,
    "stripes": draw_stripes,
    "cube": draw_cube,
    "gaussian_noise": draw_gaussian_noise,
}


# ------------------------------------------------------------------- sample level


def generate_background(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Smooth random background, uint8 (H, W): a flat level plus 15-40 random discs,
    Gaussian-blurred (sigma 3-5% of the larger side) so it has no corners of its own."""
    h, w = size
    image = np.full((h, w), rng.uniform(0, 255), np.float32)
    for _ in range(int(rng.integers(15, 41))):
        centre = _pt(rng.integers([0, 0], [w, h]))
        radius = int(rng.uniform(0.03, 0.1) * max(h, w))
        cv2.circle(image, centre, radius, float(rng.uniform(0, 255)), -1, LINE_TYPE)
    sigma = rng.uniform(0.03, 0.05) * max(h, w)
    return np.clip(np.rint(cv2.GaussianBlur(image, (0, 0), sigma)), 0, 255).astype(np.uint8)


def final_blur(image: np.ndarray, sigma: float = FINAL_BLUR_SIGMA) -> np.ndarray:
    """Gaussian blur (``sigma`` px, 5x5 kernel) applied once to the finished uint8 image."""
    return cv2.GaussianBlur(image, (5, 5), sigma)


def generate_sample(
    size: tuple[int, int], rng: np.random.Generator, primitives: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """One sample: (uint8 image (H, W), float64 xy points (N, 2), primitive name).

    The primitive is drawn uniformly from ``primitives`` (default: all of ``PRIMITIVES``).
    """
    names = _check_primitives(primitives)
    name = names[int(rng.integers(len(names)))]
    image = generate_background(size, rng)
    points = PRIMITIVES[name](image, rng)
    return final_blur(image), points, name


def _check_primitives(primitives: Sequence[str] | None) -> list[str]:
    """Validated list of primitive names (all when None)."""
    names = list(PRIMITIVES) if primitives is None else list(primitives)
    unknown = sorted(set(names) - set(PRIMITIVES))
    if not names or unknown:
        raise ValueError(f"unknown or empty primitives {unknown}; choose from {list(PRIMITIVES)}")
    return names


def _indexed_sample(
    size: tuple[int, int], seed: int, index: int, primitives: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Sample ``index`` of the stream ``seed`` (shared by the dataset, export and plots)."""
    return generate_sample(size, np.random.default_rng([seed, index]), primitives)


def points_to_map(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 (H, W) map with 1 at the pixel round(point) of each (N, 2) xy point."""
    heatmap = np.zeros(size, np.float32)
    ij = np.rint(np.asarray(points).reshape(-1, 2)).astype(np.int64)
    ij[:, 0] = ij[:, 0].clip(0, size[1] - 1)
    ij[:, 1] = ij[:, 1].clip(0, size[0] - 1)
    heatmap[ij[:, 1], ij[:, 0]] = 1.0
    return heatmap


class SyntheticShapes(Dataset):
    """Deterministic synthetic-shapes dataset: item i comes from ``default_rng([seed, i])``.

    Items are dicts: "image" float32 (1, H, W) in [0, 1], "keypoints" float32 (N, 2) xy px,
    "keypoint_map" float32 (H, W) with 1 at rounded keypoints, "primitive" str.
    """

    def __init__(
        self,
        size: tuple[int, int] = (120, 160),
        length: int = 10000,
        seed: int = 0,
        primitives: Sequence[str] | None = None,
    ) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.length = int(length)
        self.seed = int(seed)
        self.primitives = _check_primitives(primitives)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for length {self.length}")
        image, points, name = _indexed_sample(
            self.size, self.seed, index % self.length, self.primitives
        )
        return {
            "image": torch.from_numpy(image).float().div_(255.0).unsqueeze(0),
            "keypoints": torch.from_numpy(points).float(),
            "keypoint_map": torch.from_numpy(points_to_map(points, self.size)),
            "primitive": name,
        }

    @staticmethod
    def collate(batch: Sequence[dict]) -> dict:
        """Stack "image" (B, 1, H, W) and "keypoint_map" (B, H, W); keep "keypoints" and
        "primitive" as lists of length B (point counts differ)."""
        return {
            "image": torch.stack([b["image"] for b in batch]),
            "keypoint_map": torch.stack([b["keypoint_map"] for b in batch]),
            "keypoints": [b["keypoints"] for b in batch],
            "primitive": [b["primitive"] for b in batch],
        }


def export_synthetic(
    out_dir: str | Path,
    n: int,
    size: tuple[int, int] = (120, 160),
    seed: int = 0,
    primitives: Sequence[str] | None = None,
) -> Path:
    """Write samples 0..n-1 (same as ``SyntheticShapes(size, seed=seed)[i]``) as
    ``NNNNNN.png`` (uint8 grey) and ``NNNNNN.npy`` (float64 (N, 2) xy points); returns the
    output directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(n), desc="synthetic shapes", unit="img"):
        image, points, _ = _indexed_sample(size, seed, i, primitives)
        if not cv2.imwrite(str(out / f"{i:06d}.png"), image):
            raise OSError(f"could not write {out / f'{i:06d}.png'}")
        np.save(out / f"{i:06d}.npy", points)
    return out


def plot_samples(n: int = 16, size: tuple[int, int] = (120, 160), seed: int = 0) -> Figure:
    """Grid of the first ``n`` samples of stream ``seed``, corners as red dots, primitive
    names as titles. Returns a ``matplotlib.figure.Figure`` (no pyplot involved)."""
    from matplotlib.figure import Figure

    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(2.6 * cols, 2.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i >= n:
            fig.delaxes(ax)
            continue
        image, points, name = _indexed_sample(size, seed, i, None)
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.scatter(points[:, 0], points[:, 1], s=8, c="red", linewidths=0)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    return fig


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("synthetic_samples.png")
    plot_samples().savefig(target, dpi=120)
    print(f"saved {target.resolve()}")
