"""Classical depth models: `lidar` (the LiDAR map resized, the paper's baseline) and `guided`.

Both take the low-resolution LiDAR depth (h, w) in metres (0 = no return) and return depth at the output
size (H', W') in metres, 0 = invalid. Pixel centres follow OpenCV's half-pixel convention, so output pixel
(x', y') sits at LiDAR coordinate ((x' + 0.5) w / W' - 0.5, (y' + 0.5) h / H' - 0.5), matching
`geometry.scale_intrinsics`.

`lidar`: bilinear resize as a normalised convolution. Plain bilinear mixing with the zeros of pixels
without a return would make bogus depths between 0 and the true value, so the depth·valid and valid maps
are resized separately and divided; an output pixel is valid when valid LiDAR pixels carry at least half
of its bilinear weight (holes keep their size, as with nearest-neighbour). Flying pixels (LiDAR samples
that mix foreground and background at depth edges) are kept: this is the baseline.

`guided`: edge-aware, confidence-weighted upsampling in log depth, guided by the RGB image.
  1. Flying pixels are removed: a LiDAR sample that is more than `jump_log` (log depth) behind some
     valid sample and more than `jump_log` in front of another one within `flying_radius_lr` pixels lies
     between two surfaces and measures neither. A slanted plane changes by a few percent per LiDAR pixel,
     so it is not affected.
  2. Each output pixel draws from the (2r x 2r) LiDAR samples around it, weighted by a Gaussian of their
     distance (LiDAR pixels) times their confidence weight (ARKit 0 / 1 / 2; 0 counts as weak).
  3. Where those samples span less than `jump_log`, the result is their weighted mean (smooths noise).
  4. Otherwise the pixel is at a depth edge: it snaps to one surface. Each sample votes for the
     log depths near its own (Gaussian of width `sigma_log_depth`) with its weight times an RGB
     similarity between the output pixel and the sample's footprint; the sample with the most
     votes is the anchor, and the result is the weighted mean of the samples within about
     `sigma_log_depth` of the anchor. So depth edges follow RGB edges and the removed flying pixels
     are refilled from the surface their colour belongs to, never by blending the two.
  Validity is that of `lidar` (the bilinear valid share >= 0.5), so coverage matches the baseline even
  though flying pixels were removed (their neighbours fill them).

References: Kopf et al., "Joint Bilateral Upsampling", SIGGRAPH 2007 (the spatial x colour weights);
Knutsson & Westin, "Normalized and Differential Convolution", CVPR 1993 (the validity-weighted resize).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

LIDAR_MIN_VALID_SHARE = 0.5
"""An output pixel is valid when valid LiDAR pixels carry at least this share of its bilinear weight."""


def coverage(depth_m: np.ndarray) -> float:
    """Share of pixels with valid depth (finite and > 0), in [0, 1]."""
    depth_m = np.asarray(depth_m)
    return float(np.count_nonzero(np.isfinite(depth_m) & (depth_m > 0))) / max(depth_m.size, 1)


def _valid(depth_m: np.ndarray) -> np.ndarray:
    return np.isfinite(depth_m) & (depth_m > 0)


def resize_lidar(depth_m: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(h, w) metres, 0 = no return -> (H', W') float32 metres, bilinear as a normalised convolution.

    See the module docstring: zeros never pull depth towards 0, holes keep their size.
    """
    H, W = out_hw
    valid = _valid(depth_m)
    num = cv2.resize(np.where(valid, depth_m, 0).astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    share = cv2.resize(valid.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    ok = share >= LIDAR_MIN_VALID_SHARE
    return np.where(ok, num / np.where(ok, share, 1.0), 0.0).astype(np.float32)


@dataclass(frozen=True)
class GuidedParams:
    """Settings of the `guided` upsampler (module docstring). Units: LiDAR pixels, log depth, 8-bit RGB."""

    radius_lr: int = 2
    """Each output pixel draws from the (2 radius) x (2 radius) LiDAR samples around it."""
    sigma_spatial_lr: float = 1.0
    """Gaussian spatial weight, LiDAR pixels."""
    sigma_color: float = 12.0
    """Gaussian RGB-similarity weight for choosing the surface at depth edges, 8-bit RGB units (Euclidean)."""
    sigma_log_depth: float = 0.03
    """Width of the depth-similarity kernel in log depth (0.03 = 3 %)."""
    jump_log: float = 0.08
    """Log-depth difference taken as a depth discontinuity (0.08 = 8 %), for edges and flying pixels."""
    flying_radius_lr: int = 2
    """Flying-pixel test window half-width, LiDAR pixels."""
    confidence_weights: tuple[float, float, float] = (0.05, 0.4, 1.0)
    """Sample weight for ARKit confidence 0 (low), 1, 2 (high)."""


def flying_pixels(depth_m: np.ndarray, jump_log: float, radius: int) -> np.ndarray:
    """(h, w) metres -> (h, w) bool: valid samples lying between a nearer and a farther surface.

    A sample is flying when within `radius` pixels some valid sample is nearer by more than `jump_log`
    and another is farther by more than `jump_log` (log depth).
    """
    valid = _valid(depth_m)
    log_d = np.log(np.where(valid, depth_m, 1.0)).astype(np.float32)
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    nearest = cv2.erode(np.where(valid, log_d, np.inf).astype(np.float32), kernel, borderType=cv2.BORDER_REPLICATE)
    farthest = cv2.dilate(np.where(valid, log_d, -np.inf).astype(np.float32), kernel,
                          borderType=cv2.BORDER_REPLICATE)
    return valid & (log_d - nearest > jump_log) & (farthest - log_d > jump_log)


def _sample_grid(n_out: int, n_in: int, radius: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis: for each of the 2 radius taps, the input index (clipped) and Gaussian weight of
    every output pixel; taps outside the input get weight 0. -> ((2r, n_out) int, (2r, n_out) float32)."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5  # output pixel centres in input pixels
    first = np.floor(pos).astype(np.int64)
    idx, wts = [], []
    for offset in range(1 - radius, radius + 1):
        i = first + offset
        w = np.exp(-0.5 * ((pos - i) / sigma) ** 2) * ((i >= 0) & (i < n_in))
        idx.append(np.clip(i, 0, n_in - 1))
        wts.append(w)
    return np.stack(idx), np.stack(wts).astype(np.float32)


def guided_upsample(rgb: np.ndarray, depth_m: np.ndarray, confidence: Optional[np.ndarray],
                    out_hw: tuple[int, int], params: GuidedParams = GuidedParams()) -> np.ndarray:
    """RGB-guided, confidence-weighted upsampling of LiDAR depth (module docstring).

    Args:
        rgb: (H, W, 3) uint8 RGB image (any size; resized to the output size as the guide).
        depth_m: (h, w) LiDAR depth, metres, 0 = no return.
        confidence: (h, w) uint8 ARKit confidence 0 / 1 / 2, or None (all treated as high).
        out_hw: (H', W') output size.
    Returns:
        (H', W') float32 depth, metres, 0 = invalid.
    """
    H, W = out_hw
    h, w = depth_m.shape
    p = params
    valid_in = _valid(depth_m)
    keep = valid_in & ~flying_pixels(depth_m, p.jump_log, p.flying_radius_lr)
    log_lr = np.log(np.where(keep, depth_m, 1.0)).astype(np.float32)
    if confidence is None:
        weight_lr = keep.astype(np.float32)
    else:
        conf_w = np.asarray(p.confidence_weights, np.float32)
        weight_lr = np.where(keep, conf_w[np.clip(confidence, 0, 2)], 0.0).astype(np.float32)
    shrink_rgb = H < rgb.shape[0]
    guide = cv2.resize(rgb, (W, H), interpolation=cv2.INTER_AREA if shrink_rgb else cv2.INTER_LINEAR)
    guide_lr = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)

    # stacks over the K = (2r)^2 samples of every output pixel: (K, H', W')
    iy, wy = _sample_grid(H, h, p.radius_lr, p.sigma_spatial_lr)
    ix, wx = _sample_grid(W, w, p.radius_lr, p.sigma_spatial_lr)
    taps = [(a, b) for a in range(len(iy)) for b in range(len(ix))]
    log_k = np.stack([log_lr.take(iy[a], 0).take(ix[b], 1) for a, b in taps])
    weight_k = np.stack([weight_lr.take(iy[a], 0).take(ix[b], 1) * np.outer(wy[a], wx[b]) for a, b in taps])

    total = weight_k.sum(0)
    out_log = (weight_k * log_k).sum(0) / np.maximum(total, 1e-12)
    has = weight_k > 0
    span = np.where(has, log_k, -np.inf).max(0) - np.where(has, log_k, np.inf).min(0)
    ey, ex = np.nonzero(span > p.jump_log)  # output pixels at depth edges
    if len(ey):
        out_log[ey, ex] = _snap(log_k[:, ey, ex], weight_k[:, ey, ex], guide[ey, ex].astype(np.float32),
                                np.stack([guide_lr[iy[a][ey], ix[b][ex]] for a, b in taps]).astype(np.float32),
                                p)
    share = cv2.resize(valid_in.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    ok = (share >= LIDAR_MIN_VALID_SHARE) & (total > 0)
    return np.where(ok, np.exp(out_log), 0.0).astype(np.float32)


def _snap(log_k: np.ndarray, weight_k: np.ndarray, color: np.ndarray, color_k: np.ndarray,
          p: GuidedParams) -> np.ndarray:
    """Edge pixels: (K, M) sample log depths and weights, (M, 3) pixel colour, (K, M, 3) sample colours
    -> (M,) log depth of the colour-preferred surface."""
    dist2 = ((color_k - color[None]) ** 2).sum(-1)
    votes = weight_k * np.exp(-0.5 * dist2 / p.sigma_color ** 2)  # (K, M)
    inv_two_s2 = 0.5 / p.sigma_log_depth ** 2
    best_score = np.full(log_k.shape[1], -1.0, np.float32)
    anchor = log_k[0].copy()
    for j in range(len(log_k)):  # score of each sample's depth as the surface: votes within ~sigma
        score = (votes * np.exp(-inv_two_s2 * (log_k - log_k[j]) ** 2)).sum(0)
        score = np.where(weight_k[j] > 0, score, -1.0)
        better = score > best_score
        best_score = np.where(better, score, best_score)
        anchor = np.where(better, log_k[j], anchor)
    near = weight_k * np.exp(-inv_two_s2 * (log_k - anchor) ** 2)
    return (near * log_k).sum(0) / np.maximum(near.sum(0), 1e-12)


class _FrameByFrame:
    """Batching for models that work one frame at a time."""

    batch_size = 1

    def predict(self, rgb: np.ndarray, lidar_depth_m: np.ndarray, confidence: Optional[np.ndarray],
                out_hw: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    def predict_batch(self, rgbs: Sequence[np.ndarray], lidar_depths_m: Sequence[np.ndarray],
                      confidences: Sequence[Optional[np.ndarray]], out_hw: tuple[int, int]) -> list[np.ndarray]:
        return [self.predict(*frame, out_hw) for frame in zip(rgbs, lidar_depths_m, confidences)]


class LidarResize(_FrameByFrame):
    """`lidar`: the LiDAR depth resized to the output size (normalised bilinear; the baseline)."""

    name = "lidar"
    settings = {"method": "normalised-bilinear", "min_valid_share": LIDAR_MIN_VALID_SHARE}

    def predict(self, rgb, lidar_depth_m, confidence, out_hw):
        return resize_lidar(lidar_depth_m, out_hw)


class GuidedUpsampler(_FrameByFrame):
    """`guided`: RGB-guided, confidence-weighted, flying-pixel-free upsampling (module docstring)."""

    name = "guided"

    def __init__(self, params: GuidedParams = GuidedParams()):
        self.params = params
        self.settings = {"method": "guided-snap-v1", **dataclasses.asdict(params)}

    def predict(self, rgb, lidar_depth_m, confidence, out_hw):
        return guided_upsample(rgb, lidar_depth_m, confidence, out_hw, self.params)
