"""Tests for keypointlab.data.synthetic: exact corner labels, determinism, dataset, export."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from keypointlab.data.synthetic import (
    PRIMITIVES,
    SyntheticShapes,
    _visible_polygon_points,
    export_synthetic,
    final_blur,
    generate_background,
    generate_sample,
    plot_samples,
)

SIZE = (120, 160)
FLAT = 128  # grey level of the flat test background
CORNER_PRIMITIVES = [
    "lines",
    "polygon",
    "multiple_polygons",
    "star",
    "checkerboard",
    "stripes",
    "cube",
]
NO_POINT_PRIMITIVES = ["ellipses", "gaussian_noise"]
SEEDS = range(25)


def draw_flat(name: str, seed: int, size: tuple[int, int] = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Draw one primitive on a flat grey image (no blur); returns (image, points)."""
    image = np.full(size, FLAT, np.uint8)
    points = PRIMITIVES[name](image, np.random.default_rng(seed))
    return image, points


def distinct_3x3(image: np.ndarray) -> np.ndarray:
    """(H, W) number of distinct grey levels in each pixel's 3x3 neighbourhood."""
    h, w = image.shape
    padded = np.pad(image, 1, mode="edge")
    stack = np.sort(np.stack([padded[i : i + h, j : j + w] for i in range(3) for j in range(3)]), 0)
    return 1 + (np.diff(stack, axis=0) != 0).sum(axis=0)


def distance_to_points(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) Euclidean distance from each pixel centre to the nearest (x, y) point."""
    yy, xx = np.mgrid[: size[0], : size[1]]
    if len(points) == 0:
        return np.full(size, np.inf)
    d = np.hypot(xx[..., None] - points[:, 0], yy[..., None] - points[:, 1])
    return d.min(axis=-1)


def arcs_on_circle(mask: np.ndarray, x: float, y: float, radius: float) -> int:
    """Number of separate arcs of ``mask`` on a circle around (x, y); -1 if the whole circle.

    The mask is dilated by one pixel first so that 1-px diagonal strokes cannot slip between
    the sampled circle pixels, and gaps of <= 8 degrees (pixel steps) are closed."""
    mask = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    t = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    xs, ys = (
        np.rint(x + radius * np.cos(t)).astype(int),
        np.rint(y + radius * np.sin(t)).astype(int),
    )
    inside = (xs >= 0) & (xs < mask.shape[1]) & (ys >= 0) & (ys < mask.shape[0])
    on = np.zeros(t.size, bool)
    on[inside] = mask[ys[inside], xs[inside]]
    for _ in range(2):  # close gaps of up to 4 samples: dilate twice, erode twice (circular)
        on = on | np.roll(on, 1) | np.roll(on, -1)
    for _ in range(2):
        on = on & np.roll(on, 1) & np.roll(on, -1)
    return -1 if on.all() else int((on & ~np.roll(on, 1)).sum())


def touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


# --------------------------------------------------------------------- primitives


def test_registry_lists_every_primitive():
    assert set(PRIMITIVES) == set(CORNER_PRIMITIVES + NO_POINT_PRIMITIVES)
    for name, fn in PRIMITIVES.items():
        assert fn.__name__ == f"draw_{name}"


@pytest.mark.parametrize("name", CORNER_PRIMITIVES + NO_POINT_PRIMITIVES)
def test_sample_format_and_bounds(name):
    counts = []
    for seed in range(10):
        image, points, got = generate_sample(SIZE, np.random.default_rng(seed), [name])
        assert got == name
        assert image.dtype == np.uint8 and image.shape == SIZE
        assert points.dtype == np.float64 and points.ndim == 2 and points.shape[1] == 2
        assert np.all(points >= 0)
        assert np.all(points[:, 0] <= SIZE[1] - 1) and np.all(points[:, 1] <= SIZE[0] - 1)
        counts.append(len(points))
    if name in NO_POINT_PRIMITIVES:
        assert counts == [0] * 10
    else:
        assert min(counts) > 0


@pytest.mark.parametrize("name", CORNER_PRIMITIVES)
def test_every_point_is_on_an_intensity_change(name):
    """Each label sits where the drawing is not uniform (catches xy swaps, occluded corners,
    hidden cube vertices, points inside shapes)."""
    for seed in SEEDS:
        image, points = draw_flat(name, seed)
        assert (image != FLAT).any()
        for x, y in np.rint(points).astype(int):
            if x in (0, SIZE[1] - 1) or y in (0, SIZE[0] - 1):
                continue  # a corner on the outermost pixels may point out of the image
            # Thick strokes: stroke ends lie up to 2.5 px, a star's centre up to 5 px, inside.
            r = {"lines": 3, "star": 5}.get(name, 1)
            window = image[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1]
            assert np.unique(window).size >= 2, (name, seed, x, y)


@pytest.mark.parametrize("name", CORNER_PRIMITIVES + ["ellipses"])
def test_no_unlabelled_junctions(name):
    """Wherever three grey levels meet (T/X/Y junctions, occlusions) there is a label."""
    for seed in SEEDS:
        image, points = draw_flat(name, seed)
        junction = distinct_3x3(image) >= 3
        # Junctions of corners just outside the image (dropped labels) reach 4 px inside.
        junction[:4], junction[-4:], junction[:, :4], junction[:, -4:] = False, False, False, False
        # Rasterised wedges (sharp corners, >= 30 deg) keep 3 levels up to ~4 px from the apex.
        far = distance_to_points(points, SIZE) > 4.0
        assert not (junction & far).any(), (name, seed, np.argwhere(junction & far)[:3])


@pytest.mark.parametrize("name", ["checkerboard", "stripes", "cube", "multiple_polygons"])
def test_touching_parts_have_contrasting_levels(name):
    """Cells, faces and overlapping polygons that share an edge differ clearly in grey level
    (diagonal cells may touch at a vertex, hence the labels are excluded)."""
    for seed in SEEDS:
        image, points = draw_flat(name, seed)
        img = image.astype(int)
        far = distance_to_points(points, SIZE) > 2.5
        for diff, ok in (
            (np.abs(img[:, 1:] - img[:, :-1]), far[:, 1:] & far[:, :-1]),
            (np.abs(img[1:] - img[:-1]), far[1:] & far[:-1]),
        ):
            assert diff[ok & (diff > 0)].min() >= 20, (name, seed)


def test_polygon_points_are_exactly_the_drawn_vertices():
    checked = 0
    for seed in range(40):
        image, points = draw_flat("polygon", seed)
        drawn = image != FLAT
        if touches_border(drawn):
            continue  # vertices outside the image are (correctly) dropped
        redrawn = np.zeros(SIZE, np.uint8)
        cv2.fillPoly(redrawn, [points.astype(np.int32).reshape(-1, 1, 2)], 1, cv2.LINE_8)
        np.testing.assert_array_equal(redrawn.astype(bool), drawn, err_msg=f"seed {seed}")
        assert np.array_equal(points, np.rint(points))  # integer vertices, no antialiasing
        checked += 1
    assert checked >= 10


def test_lines_points_are_the_two_ends_of_each_segment():
    for seed in SEEDS:
        image, points = draw_flat("lines", seed)
        drawn = (image != FLAT).astype(np.uint8)
        n_labels, labels = cv2.connectedComponents(drawn, connectivity=8)
        assert len(points) % 2 == 0 and n_labels - 1 == len(points) // 2
        ids = [labels[int(y), int(x)] for x, y in points]
        assert sorted(ids[::2]) == list(range(1, n_labels)) and ids[::2] == ids[1::2]
        for (x, y), i in zip(points, ids, strict=True):
            assert arcs_on_circle(labels == i, x, y, 7) == 1, (seed, x, y)  # a stroke end


def test_star_centre_and_ray_ends():
    for seed in SEEDS:
        image, points = draw_flat("star", seed)
        drawn = image != FLAT
        centre, ends = points[0], points[1:]
        assert arcs_on_circle(drawn, *centre, 12) >= 3  # at least three rays meet here
        assert len(ends) <= 6
        for x, y in ends:
            assert arcs_on_circle(drawn, x, y, 6) == 1, (seed, x, y)


def test_cube_has_seven_visible_vertices_and_a_hidden_one_removed():
    fully_inside = 0
    for seed in range(40):
        image, points = draw_flat("cube", seed)
        drawn = image != FLAT
        assert len(points) <= 7
        if touches_border(drawn):
            continue
        fully_inside += 1
        assert len(points) == 7
        hull = cv2.convexHull(np.argwhere(drawn)[:, ::-1].astype(np.float32))
        dist = np.array([cv2.pointPolygonTest(hull, (float(x), float(y)), True) for x, y in points])
        assert np.sum(np.abs(dist) <= 1.0) == 6  # silhouette vertices
        (front,) = points[dist > 2.0]  # the vertex shared by the three visible faces
        x, y = front.astype(int)
        faces = np.unique(image[y - 2 : y + 3, x - 2 : x + 3])
        assert faces.size == 3 and FLAT not in faces
    assert fully_inside >= 20


def test_checkerboard_corner_count_is_plausible():
    counts = [len(draw_flat("checkerboard", seed)[1]) for seed in SEEDS]
    assert min(counts) >= 4
    assert max(counts) <= 7 * 8  # (rows + 1) * (cols + 1) at most
    assert np.mean(counts) >= 10


def test_stripes_points_lie_on_the_band_outline():
    for seed in SEEDS:
        image, points = draw_flat("stripes", seed)
        assert len(points) >= 2
        for x, y in np.rint(points).astype(int):
            if x in (0, SIZE[1] - 1) or y in (0, SIZE[0] - 1):
                continue  # the background may be outside the image there
            window = image[y - 1 : y + 2, x - 1 : x + 2]
            assert FLAT in window  # at the band border, next to the background


def square(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def test_occlusion_bookkeeping_on_known_squares():
    """A, then B over A, then C over both: hidden vertices and hidden crossings are dropped
    (this uses the private helper, since random scenes rarely stack three polygons)."""
    a, b, c = square(10, 10, 50, 50), square(30, 30, 70, 70), square(40, 20, 80, 40)
    got = _visible_polygon_points([a, b, c])
    expected = [
        *[(10, 10), (50, 10), (10, 50)],  # A; (50, 50) is under B
        (30, 50),  # A x B; (50, 30) is under C
        (50, 20),  # A x C; (50, 40) is where B already hides A's edge
        *[(30, 30), (70, 70), (30, 70)],  # B; (70, 30) is under C
        *[(40, 30), (70, 40)],  # B x C
        *[(40, 20), (80, 20), (80, 40), (40, 40)],  # C, on top
    ]
    assert len(got) == len(expected)
    dist = np.linalg.norm(np.array(got)[:, None] - np.array(expected, float)[None], axis=-1)
    assert np.all(dist.min(axis=0) <= 1.0)  # crossings sit up to ~0.7 px outward (rasterised)
    assert np.all(dist.min(axis=1) <= 1.0)


def test_multiple_polygons_exercise_occlusion_junctions():
    fractional = 0
    for seed in SEEDS:
        _, points = draw_flat("multiple_polygons", seed)
        fractional += int(np.any(points != np.rint(points)))
    assert fractional >= 3  # boundary crossings (non-integer) appear in several samples


def test_ellipses_and_noise_have_no_points():
    image, points = draw_flat("ellipses", 0)
    assert points.shape == (0, 2) and (image != FLAT).any()
    image, points = draw_flat("gaussian_noise", 0)
    assert points.shape == (0, 2)
    assert np.abs(np.diff(image.astype(int), axis=1)).mean() > 5


@pytest.mark.parametrize("name", CORNER_PRIMITIVES)
def test_points_visible_on_random_background(name):
    """Colours are chosen against the local background: every corner has contrast."""
    for seed in range(15):
        image, points, _ = generate_sample(SIZE, np.random.default_rng(seed), [name])
        for x, y in np.rint(points).astype(int):
            window = image[max(y - 3, 0) : y + 4, max(x - 3, 0) : x + 4].astype(int)
            assert window.max() - window.min() >= 10, (name, seed, x, y)


def test_background_is_smooth_and_blur_keeps_dtype():
    bg = generate_background(SIZE, np.random.default_rng(0))
    assert bg.dtype == np.uint8 and bg.shape == SIZE
    assert np.abs(np.diff(bg.astype(int), axis=1)).max() <= 20  # blurred: no sharp edges
    blurred = final_blur(np.kron(np.eye(2, dtype=np.uint8) * 255, np.ones((8, 8), np.uint8)))
    assert blurred.dtype == np.uint8 and 0 < blurred[7, 8] < 255


# ------------------------------------------------------------------- determinism


def test_generate_sample_is_deterministic():
    a = generate_sample(SIZE, np.random.default_rng(7))
    b = generate_sample(SIZE, np.random.default_rng(7))
    c = generate_sample(SIZE, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


def test_generate_sample_respects_primitives():
    names = {
        generate_sample(SIZE, np.random.default_rng(s), ["cube", "star"])[2] for s in range(20)
    }
    assert names == {"cube", "star"}
    with pytest.raises(ValueError):
        generate_sample(SIZE, np.random.default_rng(0), ["hexagon"])


# ------------------------------------------------------------------ dataset & io


def test_dataset_items():
    ds = SyntheticShapes(size=(60, 80), length=5, seed=1)
    assert len(ds) == 5
    item = ds[2]
    assert set(item) == {"image", "keypoints", "keypoint_map", "primitive"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, 60, 80)
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    kp, kmap = item["keypoints"], item["keypoint_map"]
    assert kp.dtype == torch.float32 and kp.ndim == 2 and kp.shape[1] == 2
    assert kmap.dtype == torch.float32 and kmap.shape == (60, 80)
    ij = torch.round(kp).long()
    assert torch.all(kmap[ij[:, 1], ij[:, 0]] == 1)
    assert kmap.sum() == len(torch.unique(ij, dim=0))
    assert set(torch.unique(kmap).tolist()) <= {0.0, 1.0}
    assert item["primitive"] in PRIMITIVES
    assert torch.equal(ds[2]["image"], item["image"])
    assert not torch.equal(SyntheticShapes((60, 80), 5, seed=2)[2]["image"], item["image"])
    with pytest.raises(IndexError):
        ds[5]


def test_dataset_collate():
    ds = SyntheticShapes(size=(60, 80), length=3, seed=0)
    batch = SyntheticShapes.collate([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 1, 60, 80)
    assert batch["keypoint_map"].shape == (3, 60, 80)
    assert isinstance(batch["keypoints"], list) and len(batch["keypoints"]) == 3
    assert torch.equal(batch["keypoints"][1], ds[1]["keypoints"])
    assert batch["primitive"] == [ds[i]["primitive"] for i in range(3)]
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=SyntheticShapes.collate)
    assert next(iter(loader))["image"].shape == (3, 1, 60, 80)


def test_export_synthetic(tmp_path):
    out = export_synthetic(tmp_path / "shapes", 3, size=(60, 80), seed=4)
    assert out == tmp_path / "shapes"
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"{i:06d}.{ext}" for i in range(3) for ext in ("npy", "png")]
    ds = SyntheticShapes(size=(60, 80), seed=4)
    for i in range(3):
        image = cv2.imread(str(out / f"{i:06d}.png"), cv2.IMREAD_GRAYSCALE)
        points = np.load(out / f"{i:06d}.npy")
        assert image.shape == (60, 80) and points.dtype == np.float64
        np.testing.assert_array_equal(image, np.rint(ds[i]["image"][0].numpy() * 255))
        np.testing.assert_allclose(points, ds[i]["keypoints"].numpy(), atol=1e-4)


def test_plot_samples_returns_figure():
    fig = plot_samples(n=4, size=(60, 80), seed=0)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4
    assert all(ax.get_title() in PRIMITIVES for ax in fig.axes)
    assert all(len(ax.images) == 1 for ax in fig.axes)
