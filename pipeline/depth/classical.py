"""Classical depth models: `lidar` (the LiDAR map resized, the paper's baseline) and `guided`.

Both take the low-resolution LiDAR depth (h, w) in metres (0 = no return) and return depth at the output
size (H', W') in metres, 0 = invalid. Output pixel (x', y') sits at LiDAR coordinate (x' w / W', y' h / H')
(pixel centres at integer coordinates), the mapping of `geometry.scale_intrinsics`, with which fusion
back-projects the output; OpenCV's `resize` would put it at ((x' + 0.5) w / W' - 0.5, ...), 0.37 LiDAR
pixels (1.4 pixels at 960x720) off that.

`lidar`: bilinear resize as a normalised convolution. Plain bilinear mixing with the zeros of pixels
without a return would make bogus depths between 0 and the true value, so the depth·valid and valid maps
are resized separately and divided; an output pixel is valid when valid LiDAR pixels carry at least half
of its bilinear weight (holes keep their size, as with nearest-neighbour). Flying pixels (LiDAR samples
that mix foreground and background at depth edges) are kept: this is the baseline.

`guided`: RGB-guided, confidence-aware depth completion in two steps.

  1. `refine_lidar`, at LiDAR resolution. Samples with ARKit confidence >= 1 that are not flying pixels
     are *reliable*. Flying pixels: a sample more than `jump_log` (log depth) behind one valid sample and
     in front of another within `flying_radius_lr` pixels lies between two surfaces (a slanted plane
     changes by a few percent per pixel and is not affected). From the reliable samples alone, an
     edge-aware normalised convolution (a domain-transform filter guided by the RGB image at LiDAR size,
     so it does not cross colour edges) fits a local plane in disparity at every pixel, with a support
     (the filtered weight: how much reliable evidence of the same colour region is near).
     - Reliable samples are kept as they are.
     - Weak samples (confidence 0, or flying) are where sensors smear depth edges and thin structures.
       Where the estimate is supported they take it: the surface of their own colour region,
       extrapolated as a plane ("snapping"). Unsupported ones are dropped when they are flying or lie
       near a depth edge (range of depth within `edge_radius_lr` > `jump_log`): nothing trustworthy is
       known there. Kept are the others (e.g. a far wall that is uniformly low-confidence) and the nearest
       returns of their neighbourhood: a blend lies behind the nearest return, so that one is the thin
       structure's (chair leg, stem) own sample.
     - Pixels without a return are filled from the estimate where it is supported (`fill_holes`).
     Without a confidence map every non-flying sample is reliable.
  2. `snap_upsample`, to the output size. Each output pixel draws from the (2r x 2r) refined samples
     around it with Gaussian spatial weights. Where those samples span less than `jump_log`, the result
     is their weighted mean in log depth. Otherwise the pixel is at a depth edge and snaps to one surface:
     each sample votes for the log depths near its own (Gaussian `sigma_log_depth`) with its weight times
     the RGB similarity of the output pixel and the sample's footprint; the result is the weighted mean of
     the samples near the winning depth. So edges follow the full-resolution RGB edges, never blending.
     Validity: as in `lidar` (bilinear share >= 0.5) of the refined samples; over dropped samples, output
     pixels whose colour matches one of the refined samples among their 2r x 2r are refilled by the
     snapping (so a dropped sample straddling a colour edge is replaced at full resolution).

Coverage (`coverage`) is therefore the LiDAR's, minus wide dropped areas (thin structures and far regions
the LiDAR smears, no-return borders), plus filled holes; the stage reports it. On the hard synthetic room
(tests/test_guided.py) `guided` keeps ~87 % of the pixels against the LiDAR's ~89 % and the ~77 % it has
with confidence >= 1.

References: Kopf et al., "Joint Bilateral Upsampling", SIGGRAPH 2007 (spatial x colour weights at the
output size); Knutsson & Westin, "Normalized and Differential Convolution", CVPR 1993 (validity-weighted
resize, first-order normalised convolution); Gastal & Oliveira, "Domain Transform for Edge-Aware Image and
Video Processing", SIGGRAPH 2011 (the recursive edge-aware filter).
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


def _warp(values: np.ndarray, output_to_input: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling: output pixel (x', y') takes the input at output_to_input @ (x', y', 1) (pixel centres at
    integer coordinates; beyond the input's last pixel its value is repeated)."""
    return cv2.warpAffine(values, output_to_input, out_hw[::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def resize_linear(values: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(h, w) float32 -> (H', W') bilinear, output pixel (x', y') sampling the input at (x' w / W', y' h / H')
    (`geometry.scale_intrinsics`' mapping; beyond the last input pixel its value is repeated)."""
    h, w = values.shape[:2]
    H, W = out_hw
    return _warp(values, np.array([[w / W, 0.0, 0.0], [0.0, h / H, 0.0]]), out_hw)


def resize_image(rgb: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (H', W', 3) in `resize_linear`'s mapping: pixel averages when shrinking (OpenCV's
    INTER_AREA, whose pixel x' is centred at input (x' + 0.5) W / W' - 0.5, shifted back by that half-pixel
    difference), bilinear when enlarging; an image already at that size is returned as is."""
    H, W = out_hw
    if rgb.shape[:2] == (H, W):
        return rgb
    if H >= rgb.shape[0]:
        return resize_linear(rgb, out_hw)
    area = cv2.resize(rgb, (W, H), interpolation=cv2.INTER_AREA)
    shift_x, shift_y = 0.5 * (1 - W / rgb.shape[1]), 0.5 * (1 - H / rgb.shape[0])
    return _warp(area, np.array([[1.0, 0.0, -shift_x], [0.0, 1.0, -shift_y]]), out_hw)


def resize_lidar(depth_m: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(h, w) metres, 0 = no return -> (H', W') float32 metres, bilinear as a normalised convolution.

    See the module docstring: zeros never pull depth towards 0, holes keep their size.
    """
    H, W = out_hw
    valid = _valid(depth_m)
    num = resize_linear(np.where(valid, depth_m, 0).astype(np.float32), (H, W))
    share = resize_linear(valid.astype(np.float32), (H, W))
    ok = share >= LIDAR_MIN_VALID_SHARE
    np.divide(num, share, out=num, where=ok)  # in place: no full-size temporaries
    num[~ok] = 0.0
    return num


@dataclass(frozen=True)
class GuidedParams:
    """Settings of `guided` (module docstring). Units: LiDAR pixels, log depth, 8-bit RGB."""

    jump_log: float = 0.08
    """Log-depth difference taken as a depth discontinuity (0.08 = 8 %): flying pixels, edges, snapping."""
    flying_radius_lr: int = 2
    """Flying-pixel test window half-width, LiDAR pixels."""
    edge_radius_lr: int = 4
    """A weak sample is near a depth edge when the valid depths within this many pixels span > jump_log."""
    confidence_weights: tuple[float, float, float] = (0.0, 0.5, 1.0)
    """Weight of a sample with ARKit confidence 0 (low), 1, 2 (high) in the plane fit; 0 = weak."""
    fit_sigma_spatial_lr: float = 10.0
    """Spatial scale of the edge-aware plane fit, LiDAR pixels."""
    fit_sigma_color: float = 30.0
    """Colour scale of the edge-aware plane fit: a step of this L1 RGB distance counts like one more pixel
    of distance times fit_sigma_spatial_lr / fit_sigma_color."""
    fit_iterations: int = 3
    """Passes of the recursive domain-transform filter."""
    fit_ridge: float = 1.0
    """Ridge on the plane's slope (pixels^2): keeps the fit a constant where evidence is one-sided."""
    min_support: float = 0.1
    """Support (filtered reliable weight, 0..1) above which the plane estimate replaces a weak sample."""
    nearest_tolerance_log: float = 0.02
    """An unsupported weak sample within this (log depth) of the nearest valid depth within edge_radius_lr is
    kept: blends lie behind the nearest return, so the nearest one is a thin structure's own sample."""
    fill_holes: bool = True
    """Fill pixels without a return from the plane estimate where it is supported."""
    radius_lr: int = 2
    """Upsampling: each output pixel draws from the (2 radius) x (2 radius) refined samples around it."""
    sigma_spatial_lr: float = 1.0
    """Upsampling: Gaussian spatial weight, LiDAR pixels."""
    sigma_color: float = 12.0
    """Upsampling: Gaussian RGB-similarity weight for choosing the surface at an edge (Euclidean, 8-bit)."""
    min_refill_color_match: float = 0.5
    """Upsampling: an output pixel over dropped samples is refilled only if some nearby sample's colour
    weight (exp(-d^2 / 2 sigma_color^2)) reaches this."""
    sigma_log_depth: float = 0.03
    """Upsampling: width of the depth-similarity kernel in log depth (0.03 = 3 %)."""


def flying_pixels(depth_m: np.ndarray, jump_log: float, radius: int) -> np.ndarray:
    """(h, w) metres -> (h, w) bool: valid samples lying between a nearer and a farther surface.

    A sample is flying when within `radius` pixels some valid sample is nearer by more than `jump_log`
    and another is farther by more than `jump_log` (log depth).
    """
    valid = _valid(depth_m)
    log_d = np.log(np.where(valid, depth_m, 1.0)).astype(np.float32)
    nearest, farthest = _local_min_max(log_d, valid, radius)
    return valid & (log_d - nearest > jump_log) & (farthest - log_d > jump_log)


def _local_min_max(values: np.ndarray, valid: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of the valid `values` within a (2 radius + 1)^2 window ((h, w) float32 each; +-inf where
    the window has no valid value)."""
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    lo = cv2.erode(np.where(valid, values, np.inf).astype(np.float32), kernel, borderType=cv2.BORDER_REPLICATE)
    hi = cv2.dilate(np.where(valid, values, -np.inf).astype(np.float32), kernel, borderType=cv2.BORDER_REPLICATE)
    return lo, hi


def edge_aware_smooth(channels: np.ndarray, guide: np.ndarray, sigma_spatial: float, sigma_color: float,
                      iterations: int = 3) -> np.ndarray:
    """Domain-transform recursive filter: (C, h, w) -> (C, h, w) float64, guided by `guide` (h, w, 3).

    Smooths each channel with an exponential kernel of scale `sigma_spatial` pixels in the domain where a
    step between neighbours costs 1 + (sigma_spatial / sigma_color) x (L1 colour difference), so it does not
    leak across colour edges. Alternating horizontal and vertical causal + anti-causal passes, with the
    per-iteration scales of Gastal & Oliveira (2011). Constants are preserved (a weighted average).
    """
    ratio = sigma_spatial / sigma_color
    guide = guide.astype(np.float64)
    step_x = 1.0 + ratio * np.abs(np.diff(guide, axis=1)).sum(-1)  # (h, w-1): cost from x-1 to x
    step_y = 1.0 + ratio * np.abs(np.diff(guide, axis=0)).sum(-1)  # (h-1, w)
    out = np.array(channels, np.float64)
    for k in range(iterations):
        sigma_k = sigma_spatial * np.sqrt(3.0) * 2.0 ** (iterations - k - 1) / np.sqrt(4.0 ** iterations - 1)
        a = np.exp(-np.sqrt(2.0) / sigma_k)
        out = _recursive_pass(out.transpose(2, 0, 1), (a ** step_x).T).transpose(1, 2, 0)  # along x
        out = _recursive_pass(out.transpose(1, 0, 2), a ** step_y).transpose(1, 0, 2)  # along y
    return out


def _recursive_pass(x: np.ndarray, feedback: np.ndarray) -> np.ndarray:
    """Causal then anti-causal first-order recursion along axis 0 of x (n, C, m); feedback (n-1, m) is the
    coefficient between entries i and i+1."""
    x = np.ascontiguousarray(x)
    for i in range(1, len(x)):
        x[i] += feedback[i - 1] * (x[i - 1] - x[i])
    for i in range(len(x) - 2, -1, -1):
        x[i] += feedback[i] * (x[i + 1] - x[i])
    return x


def fit_planes(disparity: np.ndarray, weight: np.ndarray, guide: np.ndarray,
               p: GuidedParams) -> tuple[np.ndarray, np.ndarray]:
    """Edge-aware first-order normalised convolution: at every pixel, the weighted least-squares plane
    disparity = a + b (x - x0) + c (y - y0) over the samples of its colour region, evaluated at the pixel.

    Args:
        disparity: (h, w) 1 / depth_m of the samples (any value where weight is 0).
        weight: (h, w) sample weights, 0 = no sample.
        guide: (h, w, 3) RGB at the same size.
    Returns:
        ((h, w) estimated disparity, (h, w) support = edge-aware average of `weight`).
    """
    h, w = disparity.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    x -= w / 2.0  # centred coordinates keep the moments well conditioned
    y -= h / 2.0
    q = np.where(weight > 0, disparity, 0.0)
    m = edge_aware_smooth(np.stack([weight, weight * q, weight * x, weight * y, weight * x * q, weight * y * q,
                                    weight * x * x, weight * x * y, weight * y * y]),
                          guide, p.fit_sigma_spatial_lr, p.fit_sigma_color, p.fit_iterations)
    s0, sq, sx, sy, sxq, syq, sxx, sxy, syy = m
    # moments about the pixel itself (u = x - x0, v = y - y0), so the plane's offset is the estimate
    su, sv = sx - s0 * x, sy - s0 * y
    suu = sxx - 2 * x * sx + s0 * x * x
    svv = syy - 2 * y * sy + s0 * y * y
    suv = sxy - x * sy - y * sx + s0 * x * y
    suq, svq = sxq - x * sq, syq - y * sq
    ridge = p.fit_ridge * s0
    A = np.stack([np.stack([s0 + 1e-12, su, sv], -1),
                  np.stack([su, suu + ridge, suv], -1),
                  np.stack([sv, suv, svv + ridge], -1)], -2)  # (h, w, 3, 3)
    b = np.stack([sq, suq, svq], -1)[..., None]
    return np.linalg.solve(A, b)[..., 0, 0], s0


def refine_lidar(rgb: np.ndarray, depth_m: np.ndarray, confidence: Optional[np.ndarray],
                 params: GuidedParams = GuidedParams()) -> np.ndarray:
    """Step 1 of `guided` (module docstring): (h, w) LiDAR depth, metres -> (h, w) refined depth, 0 = none.

    rgb: (H, W, 3) uint8 at any size; confidence: (h, w) uint8 0/1/2 or None.
    """
    p = params
    h, w = depth_m.shape
    valid = _valid(depth_m)
    if not valid.any():
        return np.zeros((h, w), np.float32)
    flying = flying_pixels(depth_m, p.jump_log, p.flying_radius_lr)
    conf_w = np.asarray(p.confidence_weights, np.float64)[np.clip(confidence, 0, 2)] if confidence is not None else 1.0
    weight = np.where(valid & ~flying, conf_w, 0.0)
    reliable = weight > 0
    out = np.where(valid, depth_m, 0.0)
    weak = valid & ~reliable
    if not reliable.any():
        return np.where(flying, 0.0, out).astype(np.float32)
    disparity = 1.0 / np.where(valid, depth_m, 1.0)
    guide = resize_image(rgb, (h, w))
    disparity_fit, support = fit_planes(disparity, weight, guide, p)
    lo, hi = disparity[reliable].min(), disparity[reliable].max()
    estimate = 1.0 / np.clip(disparity_fit, lo, hi)  # never extrapolate beyond the reliable depth range
    supported = support >= p.min_support
    log_d = np.log(np.where(valid, depth_m, 1.0)).astype(np.float32)
    nearest, farthest = _local_min_max(log_d, valid, p.edge_radius_lr)
    near_edge = farthest - nearest > p.jump_log
    nearest_return = log_d <= nearest + p.nearest_tolerance_log  # a thin structure's own sample, not a blend
    out = np.where(weak & supported, estimate, out)
    out = np.where(weak & ~supported & (flying | near_edge) & ~nearest_return, 0.0, out)
    if p.fill_holes:
        out = np.where(~valid & supported, estimate, out)
    return out.astype(np.float32)


def _sample_grid(n_out: int, n_in: int, radius: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis: for each of the 2 radius taps, the input index (clipped) and Gaussian weight of
    every output pixel; taps outside the input get weight 0. -> ((2r, n_out) int, (2r, n_out) float32)."""
    pos = np.arange(n_out) * (n_in / n_out)  # output pixel centres in input pixels (`resize_linear`)
    first = np.floor(pos).astype(np.int64)
    idx, wts = [], []
    for offset in range(1 - radius, radius + 1):
        i = first + offset
        w = np.exp(-0.5 * ((pos - i) / sigma) ** 2) * ((i >= 0) & (i < n_in))
        idx.append(np.clip(i, 0, n_in - 1))
        wts.append(w)
    return np.stack(idx), np.stack(wts).astype(np.float32)


def snap_upsample(rgb: np.ndarray, depth_m: np.ndarray, out_hw: tuple[int, int],
                  params: GuidedParams = GuidedParams(), footprint: Optional[np.ndarray] = None,
                  rgb_lr: Optional[np.ndarray] = None) -> np.ndarray:
    """Step 2 of `guided` (module docstring): (h, w) depth, metres, 0 = none -> (H', W') float32 metres,
    edges snapped to the RGB image (H, W, 3) uint8 of any size (`rgb_lr`: the same at (h, w), if the caller has it).

    footprint: (h, w) bool, a wider area where the output may be valid (bilinear share >= 0.5): output
    pixels there that the valid depth does not cover are filled from the valid samples around them when
    their colour matches one of those samples' (min_refill_color_match).
    """
    H, W = out_hw
    h, w = depth_m.shape
    p = params
    valid = _valid(depth_m)
    log_lr = np.log(np.where(valid, depth_m, 1.0)).astype(np.float32)
    weight_lr = valid.astype(np.float32)
    guide = resize_image(rgb, (H, W))
    guide_lr = resize_image(rgb, (h, w)) if rgb_lr is None else rgb_lr

    # each output pixel draws on K = (2r)^2 samples (taps (a, b): row tap a, column tap b) with weight
    # valid * wy[a] * wx[b]; the weighted mean and the range of the valid samples are separable (rows, then
    # columns), so only the pixels that need every sample (edges, refills) gather them
    iy, wy = _sample_grid(H, h, p.radius_lr, p.sigma_spatial_lr)
    ix, wx = _sample_grid(W, w, p.radius_lr, p.sigma_spatial_lr)
    taps = [(a, b) for a in range(len(iy)) for b in range(len(ix))]

    def separable_sum(values: np.ndarray) -> np.ndarray:  # (h, w) -> (H', W'): sum over taps of weight * value
        rows = sum(wy[a][:, None] * values.take(iy[a], 0) for a in range(len(iy)))
        return sum(wx[b][None, :] * rows.take(ix[b], 1) for b in range(len(ix)))

    def separable_extreme(values: np.ndarray, pick, empty: float) -> np.ndarray:  # over the valid taps
        masked = np.where(valid, values, empty).astype(np.float32)
        rows = pick.reduce([np.where(wy[a][:, None] > 0, masked.take(iy[a], 0), empty) for a in range(len(iy))])
        return pick.reduce([np.where(wx[b][None, :] > 0, rows.take(ix[b], 1), empty) for b in range(len(ix))])

    def samples_at(ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K, M) log depths and weights of the samples of output pixels (ys, xs)."""
        log_k = np.stack([log_lr[iy[a][ys], ix[b][xs]] for a, b in taps])
        weight_k = np.stack([weight_lr[iy[a][ys], ix[b][xs]] * (wy[a][ys] * wx[b][xs]) for a, b in taps])
        return log_k, weight_k

    total = separable_sum(weight_lr)
    out_log = separable_sum(weight_lr * log_lr) / np.maximum(total, 1e-12)
    span = separable_extreme(log_lr, np.maximum, -np.inf) - separable_extreme(log_lr, np.minimum, np.inf)
    ey, ex = np.nonzero(span > p.jump_log)  # output pixels at depth edges

    def color_weights(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """(K, M) RGB similarity of output pixels (ys, xs) to the footprints of their K samples."""
        color = guide[ys, xs].astype(np.float32)
        return np.stack([np.exp(-0.5 / p.sigma_color ** 2 * ((guide_lr[iy[a][ys], ix[b][xs]].astype(np.float32)
                                                               - color) ** 2).sum(-1)) for a, b in taps])

    if len(ey):
        out_log[ey, ex] = _snap(*samples_at(ey, ex), color_weights(ey, ex), p)
    own = resize_linear(weight_lr, (H, W)) >= LIDAR_MIN_VALID_SHARE
    ok = own & (total > 0)
    if footprint is not None:  # refill pixels of the footprint whose colour matches one of their samples
        inside = resize_linear(footprint.astype(np.float32), (H, W))
        ry, rx = np.nonzero(~own & (total > 0) & (inside >= LIDAR_MIN_VALID_SHARE))
        if len(ry):
            match = (color_weights(ry, rx) * (samples_at(ry, rx)[1] > 0)).max(0)
            keep = match >= p.min_refill_color_match
            ok[ry[keep], rx[keep]] = True
    return np.where(ok, np.exp(out_log), 0.0).astype(np.float32)


def _snap(log_k: np.ndarray, weight_k: np.ndarray, color_w: np.ndarray, p: GuidedParams) -> np.ndarray:
    """Edge pixels: (K, M) sample log depths, weights and RGB similarities -> (M,) log depth of the
    colour-preferred surface."""
    votes = weight_k * color_w  # (K, M)
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


def guided_upsample(rgb: np.ndarray, depth_m: np.ndarray, confidence: Optional[np.ndarray],
                    out_hw: tuple[int, int], params: GuidedParams = GuidedParams()) -> np.ndarray:
    """`guided` (module docstring): RGB-guided, confidence-aware completion and upsampling of LiDAR depth.

    Args:
        rgb: (H, W, 3) uint8 RGB image (any size; resized as the guide).
        depth_m: (h, w) LiDAR depth, metres, 0 = no return.
        confidence: (h, w) uint8 ARKit confidence 0 / 1 / 2, or None (all samples count as reliable).
        out_hw: (H', W') output size.
    Returns:
        (H', W') float32 depth, metres, 0 = invalid.
    """
    rgb_lr = resize_image(rgb, depth_m.shape)  # the guide of both steps at LiDAR size, resized once
    refined = refine_lidar(rgb_lr, depth_m, confidence, params)
    return snap_upsample(rgb, refined, out_hw, params, footprint=(refined > 0) | _valid(depth_m), rgb_lr=rgb_lr)


class _FrameByFrame:
    """Batching for models that work one frame at a time."""

    batch_size = 1
    frames_in_parallel = True  # numpy/OpenCV on one frame: thread-safe, one core each

    @classmethod
    def build(cls, spec, cfg, depth_root):
        """The registry's constructor (pipeline.depth_models): these models need no settings or files."""
        return cls()

    def predict(self, rgb: np.ndarray, lidar_depth_m: np.ndarray, confidence: Optional[np.ndarray],
                out_hw: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    def predict_batch(self, rgbs: Sequence[np.ndarray], lidar_depths_m: Sequence[np.ndarray],
                      confidences: Sequence[Optional[np.ndarray]], out_hw: tuple[int, int]) -> list[np.ndarray]:
        return [self.predict(*frame, out_hw) for frame in zip(rgbs, lidar_depths_m, confidences)]


class LidarResize(_FrameByFrame):
    """`lidar`: the LiDAR depth resized to the output size (normalised bilinear; the baseline)."""

    name = "lidar"
    settings = {"method": "normalised-bilinear", "pixel_mapping": "scale_intrinsics",
                "min_valid_share": LIDAR_MIN_VALID_SHARE}

    def predict(self, rgb, lidar_depth_m, confidence, out_hw):
        return resize_lidar(lidar_depth_m, out_hw)


class GuidedUpsampler(_FrameByFrame):
    """`guided`: RGB-guided, confidence-weighted, flying-pixel-free upsampling (module docstring)."""

    name = "guided"

    def __init__(self, params: GuidedParams = GuidedParams()):
        self.params = params
        self.settings = {"method": "guided-v2", "pixel_mapping": "scale_intrinsics", **dataclasses.asdict(params)}

    def predict(self, rgb, lidar_depth_m, confidence, out_hw):
        return guided_upsample(rgb, lidar_depth_m, confidence, out_hw, self.params)
