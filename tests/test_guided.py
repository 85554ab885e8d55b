"""Classical depth models (pipeline/depth/classical.py): `lidar` resize and the `guided` upsampler."""
import cv2
import numpy as np
import pytest

from pipeline.depth.classical import GuidedParams, coverage, flying_pixels, guided_upsample, resize_lidar


def step_scene(seed: int = 0, H: int = 192, W: int = 256, noise_m: float = 0.01):
    """A box 1.2 m away in front of a slanted, textured wall at ~3 m, seen at RGB size (H, W).

    LiDAR (H/4, W/4): the GT sampled on a grid twice coarser still and bilinearly upsampled, as depth sensors
    smooth their sparse returns, so samples at the box outline mix box and wall (flying pixels) and the
    outline is displaced; plus Gaussian noise and a hole with no return. Returns (rgb, gt_m, lidar_m).
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    gt = 3.0 + 0.002 * x
    rgb = np.empty((H, W, 3), np.float32)
    rgb[:] = (170, 160, 140)
    rgb += 12 * np.sin(x / 5.0)[..., None]  # wall texture
    box = (x >= 70) & (x < 150) & (y >= 50) & (y < 140)
    gt[box] = 1.2
    rgb[box] = (60, 90, 160)
    rgb = np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
    h, w = H // 4, W // 4
    coarse = cv2.resize(gt, (w // 2, h // 2), interpolation=cv2.INTER_NEAREST)
    lidar = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR) + rng.normal(0, noise_m, (h, w))
    lidar[5:8, 5:9] = 0
    return rgb, gt, lidar.astype(np.float32)


def l1_and_bad(depth_m, gt_m):
    valid = depth_m > 0
    err = np.abs(depth_m - gt_m)[valid]
    return float(err.mean()), int((err > 0.10).sum())


def test_coverage_counts_valid_pixels():
    assert coverage(np.array([[0.0, 1.0], [np.nan, 2.0]])) == 0.5
    assert coverage(np.zeros((3, 3))) == 0.0


def test_resize_lidar_hand_computed():
    # centres of 4 output pixels fall at input x = -0.25, 0.25, 0.75, 1.25 (clamped at the borders)
    np.testing.assert_allclose(resize_lidar(np.array([[1.0, 3.0]], np.float32), (1, 4)), [[1, 1.5, 2.5, 3]])
    # a zero (no return) never pulls depth towards 0: valid share 1, .75, .25, 0 -> 2, 2, invalid, invalid
    np.testing.assert_allclose(resize_lidar(np.array([[2.0, 0.0]], np.float32), (1, 4)), [[2, 2, 0, 0]])


def test_resize_lidar_keeps_holes_and_values():
    d = np.full((12, 16), 1.5, np.float32)
    d[4:8, 4:8] = 0
    out = resize_lidar(d, (48, 64))
    assert set(np.unique(out).round(5)) == {0.0, 1.5}
    assert coverage(out) == pytest.approx(coverage(d), abs=0.01)


def test_flying_pixels_flags_mixed_samples_not_slopes():
    row = np.array([[1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0]], np.float32)
    assert flying_pixels(row, 0.08, 2).tolist() == [[False, False, False, True, False, False, False]]
    slope = (2.0 * 1.03 ** np.arange(20, dtype=np.float32))[None]  # 3 % per pixel: a slanted plane
    assert not flying_pixels(slope, 0.08, 2).any()


def test_guided_is_exact_on_a_smooth_surface():
    H, W = 96, 128
    y, x = np.mgrid[0:H, 0:W]
    gt = (1.0 / (0.4 + 0.001 * x + 0.0005 * y)).astype(np.float32)  # a plane: inverse depth is affine
    lidar = cv2.resize(gt, (W // 4, H // 4), interpolation=cv2.INTER_AREA)
    rgb = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)  # colour must not matter here
    out = guided_upsample(rgb, lidar, None, (H, W))
    assert coverage(out) == 1.0
    assert np.abs(out - gt).mean() < 0.003


@pytest.mark.parametrize("with_confidence", [False, True])
def test_guided_beats_lidar_on_step_edges(with_confidence):
    rgb, gt, lidar = step_scene()
    confidence = None
    if with_confidence:  # ARKit-like: low confidence where depth jumps, medium on a patch, high elsewhere
        grad = np.abs(cv2.Laplacian(lidar, cv2.CV_32F))
        confidence = np.where(grad > 0.2, 0, 2).astype(np.uint8)
        confidence[30:40, 40:60] = 1
    base = resize_lidar(lidar, gt.shape)
    out = guided_upsample(rgb, lidar, confidence, gt.shape)
    l1_base, bad_base = l1_and_bad(base, gt)
    l1, bad = l1_and_bad(out, gt)
    assert l1 <= 0.9 * l1_base, (l1, l1_base)
    assert coverage(out) >= coverage(base) - 0.01
    assert bad <= 0.5 * bad_base, (bad, bad_base)  # flying pixels removed, not smoothed in
    assert coverage(out) == pytest.approx(1 - 12 * 16 / gt.size, abs=0.005)  # only the no-return hole is empty


def test_guided_depth_edge_follows_rgb_edge():
    rgb, gt, lidar = step_scene(seed=3, noise_m=0.0)
    out = guided_upsample(rgb, lidar, None, gt.shape)
    row = 100  # crosses the box's left edge at x = 70 and right edge at x = 150
    wrong = np.abs(out[row] - gt[row]) > 0.10
    assert wrong.sum() <= 2, np.nonzero(wrong)
    params = GuidedParams(sigma_color=1e6)  # colour ignored: the surface is picked by weight alone
    blind = guided_upsample(rgb, lidar, None, gt.shape, params)
    assert (np.abs(blind[row] - gt[row]) > 0.10).sum() > wrong.sum()
