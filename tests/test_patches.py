"""The patch sampler (geometry.patches) and the local scale and rotation of the ground truth."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from keypointlab.geometry.groundtruth import HomographyGroundTruth
from keypointlab.geometry.patches import extract_patches, extract_patches_batched, patch_affines


def _image(h: int = 60, w: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.0)


def test_upright_unit_patch_is_the_crop_and_a_quarter_turn_is_the_turned_crop():
    img = _image()
    t = torch.from_numpy(img)[None]
    size, x0, y0 = 9, 20, 11  # crop img[y0 : y0 + 9, x0 : x0 + 9], centre (x0 + 4, y0 + 4)
    kp = torch.tensor([[x0 + 4.0, y0 + 4.0]])
    crop = img[y0 : y0 + size, x0 : x0 + size]
    upright = extract_patches(t, kp, torch.tensor([9.0]), None, size)[0, 0].numpy()
    np.testing.assert_allclose(upright, crop, atol=1e-6)
    # theta = 90 degrees: sample (u, v) at offset R (u - 4, v - 4) = (4 - v, u - 4)
    turned = extract_patches(t, kp, torch.tensor([9.0]), torch.tensor([math.pi / 2]), size)
    v, u = np.mgrid[0:size, 0:size]
    np.testing.assert_allclose(turned[0, 0].numpy(), crop[u, size - 1 - v], atol=1e-5)


@pytest.mark.parametrize("theta,support", [(0.6, 24.0), (-2.3, 40.0), (3.0, 7.5)])
def test_sampler_matches_cv2_warp_affine_on_a_known_rotation_and_scale(theta, support):
    img = _image(seed=1)
    size = 16
    kp = torch.tensor([[40.3, 30.7]], dtype=torch.float64)
    A = patch_affines(kp, torch.tensor([support]), torch.tensor([theta]), size)[0].numpy()
    # the map is a rotation by theta and a scale of support / size
    s = support / size
    np.testing.assert_allclose(
        A[:, :2],
        s * np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]),
    )
    np.testing.assert_allclose(A @ [(size - 1) / 2, (size - 1) / 2, 1], [40.3, 30.7])
    ref = cv2.warpAffine(
        img,
        A,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    ours = extract_patches(
        torch.from_numpy(img)[None],
        kp.float(),
        torch.tensor([support]),
        torch.tensor([theta]),
        size,
    )[0, 0].numpy()
    assert ours.std() > 0.05  # the patch is inside the image and textured
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_patches_come_from_their_own_image_in_order():
    imgs = torch.stack([torch.full((1, 20, 20), float(i)) for i in range(3)])
    kp = torch.tensor([[10.0, 10.0]] * 4)
    batch = torch.tensor([2, 0, 2, 1])
    p = extract_patches(imgs, kp, torch.full((4,), 4.0), None, 4, batch)
    assert p.shape == (4, 1, 4, 4)
    assert p.mean((1, 2, 3)).tolist() == [2.0, 0.0, 2.0, 1.0]
    # outside the image the patch is zero
    far = extract_patches(imgs, torch.tensor([[-50.0, 5.0]]), torch.tensor([4.0]), None, 4)
    assert float(far.abs().max()) == 0.0
    assert extract_patches(imgs, kp[:0], torch.zeros(0), None, 4).shape == (0, 1, 4, 4)
    # k keypoints per image in one pass: the same patches
    rnd = torch.rand(3, 2, 30, 40)
    xy, sup, ang = torch.rand(3, 5, 2) * 30, 4 + 10 * torch.rand(3, 5), torch.randn(3, 5)
    one = extract_patches_batched(rnd, xy, sup, ang, 6)
    each = extract_patches(
        rnd,
        xy.reshape(-1, 2),
        sup.flatten(),
        ang.flatten(),
        6,
        torch.arange(3).repeat_interleave(5),
    )
    assert one.shape == (3, 5, 2, 6, 6)
    torch.testing.assert_close(one.flatten(0, 1), each)


def test_gradients_flow_to_the_image_the_keypoints_the_support_and_the_orientation():
    img = torch.from_numpy(_image(20, 24, seed=2)).double()[None, None].requires_grad_()
    kp = torch.tensor([[11.3, 9.6], [7.7, 12.2]], dtype=torch.float64, requires_grad=True)
    support = torch.tensor([6.3, 8.1], dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([0.4, -1.1], dtype=torch.float64, requires_grad=True)

    def f(img, kp, support, theta):
        return extract_patches(img, kp, support, theta, 5)

    assert torch.autograd.gradcheck(f, (img, kp, support, theta), eps=1e-6, atol=1e-5)


def test_bad_shapes_are_refused_with_their_name():
    img = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="keypoints must be"):
        extract_patches(img, torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="support and orientations"):
        extract_patches(img, torch.zeros(3, 2), torch.ones(2))
    with pytest.raises(ValueError, match="batch must be"):
        extract_patches(img, torch.zeros(1, 2), torch.ones(1), batch=torch.tensor([1]))
    with pytest.raises(ValueError, match="size must be positive"):
        extract_patches(img, torch.zeros(1, 2), torch.ones(1), size=0)


def test_local_frames_of_a_similarity_are_its_scale_and_angle():
    s, a = 1.7, 0.45
    H = torch.tensor(
        [
            [s * math.cos(a), -s * math.sin(a), 12.0],
            [s * math.sin(a), s * math.cos(a), -5.0],
            [0.0, 0.0, 1.0],
        ],
        dtype=torch.float64,
    )[None]
    gt = HomographyGroundTruth(H)
    pts = torch.tensor([[[10.0, 20.0], [55.5, 3.25]]], dtype=torch.float64)
    warped, scale, angle, known = gt.local_frames(pts)
    assert known.all()
    torch.testing.assert_close(scale, torch.full_like(scale, s))
    torch.testing.assert_close(angle, torch.full_like(angle, a))
    _, back_scale, back_angle, _ = gt.local_frames(warped, forward=False)
    torch.testing.assert_close(back_scale, torch.full_like(scale, 1 / s))
    torch.testing.assert_close(back_angle, torch.full_like(angle, -a))
    # a patch of support r at angle t around a point, warped, is the patch of support s r at
    # angle t + a around the warped point: same samples, mapped by H
    A0 = patch_affines(pts[0], torch.tensor([8.0, 8.0]), torch.tensor([0.2, -0.3]), 8)
    A1 = patch_affines(warped[0], 8.0 * scale[0], torch.tensor([0.2, -0.3]) + angle[0], 8)
    uv1 = torch.tensor([[0.0, 0.0, 1.0], [7.0, 3.0, 1.0]], dtype=torch.float64)
    through_h = torch.stack(
        [
            (torch.cat([A0[i] @ uv1.T, torch.ones(1, 2, dtype=torch.float64)]).T @ H[0].T)[:, :2]
            for i in range(2)
        ]
    )
    torch.testing.assert_close(torch.stack([(A1[i] @ uv1.T).T for i in range(2)]), through_h)


def test_local_frames_of_a_projective_warp_follow_its_jacobian():
    H = torch.tensor([[1.1, 0.2, 3.0], [-0.1, 0.9, 1.0], [1e-3, -2e-3, 1.0]], dtype=torch.float64)
    gt = HomographyGroundTruth(H[None])
    p = torch.tensor([[[30.0, 40.0]]], dtype=torch.float64)
    _, scale, angle, _ = gt.local_frames(p, eps=1e-4)
    # the Jacobian by hand: d/dp of (Hp)_xy / (Hp)_z
    x, y = 30.0, 40.0
    hx, hy, hz = (H @ torch.tensor([x, y, 1.0], dtype=torch.float64)).tolist()
    J = (H[:2, :2] * hz - torch.tensor([[hx], [hy]], dtype=torch.float64) * H[2, :2]) / hz**2
    assert float(scale) == pytest.approx(math.sqrt(abs(float(torch.linalg.det(J)))), rel=1e-6)
    expect = math.atan2(float(J[1, 0] - J[0, 1]), float(J[0, 0] + J[1, 1]))
    assert float(angle) == pytest.approx(expect, abs=1e-6)
