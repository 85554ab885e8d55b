"""Pose refinement before fusion: a pose graph of LiDAR fragments that corrects ARKit's slow drift.

ARKit's motion between neighbouring frames is accurate (about a millimetre); what goes wrong is the slow
accumulation, which shows when the walk sees a surface again. So ARKit's relative motion is the strong prior,
and only alignments between parts of the walk far apart correct it. Single LiDAR frames are too noisy and too
narrow for that (measured on the synthetic rooms: point-to-plane ICP between two frames, started at the true
pose, ends 2-15 cm off, sliding along walls), so frames are first fused into fragments:

1. Fragments: a frame counts when the camera has moved `NODE_SPACING_M` or turned `NODE_SPACING_DEG` since
   the last counted one (every frame of a keyframed capture); runs of about `FRAGMENT_FRAMES` counted frames
   are fused (TSDF at refine_voxel_m, LiDAR maps within the fuse depth range, confidence >= 1) in the frame of
   their middle frame, the fragment's anchor, and the surface seen at least twice is extracted as points with
   normals. Fragment 0 stays fixed: its anchor's correction is the identity, so the first frame keeps its pose
   (it defines the capture's world).
2. Candidate pairs: fragments at least `MIN_PAIR_GAP` apart whose footprints (occupied `OVERLAP_CELL_M`
   world cells under the predicted poses) overlap by at least `MIN_OVERLAP`; each fragment keeps its
   `PAIRS_PER_FRAGMENT` best earlier partners.
3. Each pair (`align_fragments`): point-to-plane ICP (Huber weights, coarse then fine), started at ARKit's
   relative pose, that moves only along well-constrained directions: directions whose share of the
   information matrix (per correspondence) is below `WEAK_CONSTRAINT` stay at ARKit's value (walls and floor
   alone leave directions free). Kept when finite, overlapping (fitness >= `MIN_FITNESS`), fitting (RMSE <=
   `MAX_RMSE_M`) and within refine_max_correction_m / refine_max_correction_deg of ARKit.
4. Pose graph over the anchors (`optimise_pose_graph`, Gauss-Newton, first anchor fixed): odometry edges from
   ARKit between consecutive anchors (`ODOMETRY_SIGMA_M` / `ODOMETRY_SIGMA_DEG`) and loop edges from the kept
   pairs (information = ICP's per correspondence / `LOOP_SIGMA_M`**2, so weak directions weigh little); while
   a loop edge's information-weighted residual exceeds `LOOP_REJECT_M`, the worst is dropped and it is solved
   again (`solve_with_loops`).
5. Corrections: each anchor's correction is the world-frame transform D = refined @ inverse(predicted); other
   frames get D interpolated by frame index (translation linearly, rotation by slerp; before the first anchor
   the identity, after the last the last's). An anchor whose correction is not finite or beyond
   refine_max_correction_m / _deg keeps its predicted pose, with a warning naming the frame; when pairs were
   tried but none aligned, every frame keeps its predicted pose, with a warning.

Conventions: camera_to_world (4,4), OpenCV camera axes, capture world, metres. An edge (s, t, Z) says
Z = inverse(C_t) @ C_s: it maps points of camera s into camera t. Pose perturbations act in the world frame,
C <- [R(w) | v] @ C, with the 6-vector (w radians, v metres) in this order.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .capture import CaptureTable
from .config import FuseConfig
from .errors import PromptmeshError
from .geometry import rotation_angle_deg, scale_intrinsics
from .images import MM_PER_M, REDO, read_depth_mm

if TYPE_CHECKING:
    from scipy.spatial import cKDTree

log = logging.getLogger(__name__)

NODE_SPACING_M = 0.05
"""A frame counts for the fragments after the camera moved this far since the last counted one, metres."""
NODE_SPACING_DEG = 5.0
"""... or turned this much, degrees."""
MIN_LIDAR_CONFIDENCE = 1
"""LiDAR pixels fused into fragments: ARKit confidence at least this (0 marks edges and flying pixels)."""
FRAGMENT_FRAMES = 8
"""Counted frames fused into one fragment (the counted frames are split into runs of about this length)."""
FRAGMENT_TRUNC_VOXELS = 4.0
"""TSDF truncation of the fragments, in voxels."""
FRAGMENT_MIN_WEIGHT = 2.0
"""Fragment surface must be seen by at least this many frames."""
FRAGMENT_BLOCKS = 4096
"""Voxel blocks pre-allocated per fragment."""
OVERLAP_CELL_M = 0.10
"""World cell edge for the footprint overlap of candidate pairs, metres."""
MIN_OVERLAP = 0.3
"""Share of the smaller footprint's cells that the other must occupy too for a pair to be tried."""
MIN_PAIR_GAP = 2
"""Fragments closer than this in the walk are left to ARKit (their drift is below ICP's accuracy)."""
PAIRS_PER_FRAGMENT = 3
"""Alignments tried per fragment, with its best-overlapping earlier partners."""
ICP_LEVELS = ((3.0, 7.5, 30), (1.5, 2.5, 20))
"""ICP levels: (source downsampling, correspondence distance, iterations); sizes in refine_voxel_m."""
HUBER_VOXELS = 2.5
"""Point-to-plane residuals beyond this many voxels are down-weighted (Huber)."""
MIN_NORMAL_COS = 0.7
"""Corresponding points need normals within ~45 degrees."""
WEAK_CONSTRAINT = 0.01
"""Directions whose eigenvalue of the ICP information matrix per correspondence is below this stay at ARKit's
value (rotation in radians, translation in metres; a plane alone gives 0 in three directions)."""
MIN_FITNESS = 0.2
"""Share of the source fragment's points with a correspondence that an alignment needs."""
MAX_RMSE_M = 0.03
"""Largest point-to-plane RMSE of the correspondences of an accepted alignment, metres."""
ODOMETRY_SIGMA_M = 0.005
"""Standard deviation of ARKit's relative translation between consecutive anchors, metres."""
ODOMETRY_SIGMA_DEG = 0.1
"""Standard deviation of ARKit's relative rotation between consecutive anchors, degrees."""
LOOP_SIGMA_M = 0.003
"""Scale of a loop edge's information: ICP's information per correspondence / LOOP_SIGMA_M**2 (measured
fragment-to-fragment errors are 1-6 mm along well-constrained directions), metres."""
LOOP_REJECT_M = 0.02
"""A loop edge whose residual after the solve, weighted by its information per correspondence
(sqrt(r^T I r): metres along a fully constrained direction, less along weak ones), exceeds this is dropped."""
GAUSS_NEWTON_ITERATIONS = 10
ICP_CONVERGED = 1e-5
"""ICP stops a level when its step is below this in every component (radians, metres)."""


@dataclass
class RefinedPoses:
    """The pose each frame is fused with, and how refinement got there."""

    camera_to_world: np.ndarray
    """(N,4,4) refined camera_to_world (the predicted one where refinement was not accepted)."""
    correction_m: np.ndarray
    """(N,) distance between the refined and the predicted camera centre, metres."""
    correction_deg: np.ndarray
    """(N,) angle between the refined and the predicted orientation, degrees."""
    accepted: np.ndarray
    """(N,) bool: the refined pose is used (False: the predicted pose is kept)."""
    summary: dict = field(default_factory=dict)
    """Counts and seconds for the manifest."""


@dataclass
class Fragment:
    """Frames fused into one surface, in the camera frame of its anchor frame."""

    frames: np.ndarray
    """Table rows fused into it."""
    anchor: int
    """Table row whose camera frame the points are in."""
    points: np.ndarray
    """(M,3) float64 surface points, anchor camera frame, metres."""
    normals: np.ndarray
    """(M,3) float64 unit normals."""


@dataclass
class Alignment:
    """One ICP alignment between two fragments."""

    source: int
    target: int
    transformation: np.ndarray
    """(4,4) maps source anchor camera points into the target anchor camera."""
    information: np.ndarray
    """(6,6) point-to-plane information per correspondence (rotation first)."""
    fitness: float
    rmse_m: float
    reason: str = ""
    """Why it was rejected ('' = accepted)."""


# --------------------------------------------------------------------------- small SE(3) helpers
def pose_difference(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre distance m, orientation angle deg) between camera_to_world poses a and b, (...,4,4) each."""
    return (np.linalg.norm(a[..., :3, 3] - b[..., :3, 3], axis=-1),
            rotation_angle_deg(a[..., :3, :3] @ np.swapaxes(b[..., :3, :3], -1, -2)))


def _twist_to_matrix(xi: np.ndarray) -> np.ndarray:
    """(...,6) [w radians, v metres] -> (...,4,4) [R(w) | v]."""
    from scipy.spatial.transform import Rotation  # where used: commands start ~0.5 s sooner (tests/test_imports.py)

    xi = np.asarray(xi, np.float64)
    T = np.zeros(xi.shape[:-1] + (4, 4))
    T[..., :3, :3] = Rotation.from_rotvec(xi.reshape(-1, 6)[:, :3]).as_matrix().reshape(xi.shape[:-1] + (3, 3))
    T[..., :3, 3] = xi[..., 3:]
    T[..., 3, 3] = 1.0
    return T


def _matrix_to_twist(T: np.ndarray) -> np.ndarray:
    """(...,4,4) -> (...,6) [rotation vector, translation] (inverse of `_twist_to_matrix`)."""
    from scipy.spatial.transform import Rotation

    w = Rotation.from_matrix(T[..., :3, :3].reshape(-1, 3, 3)).as_rotvec().reshape(T.shape[:-2] + (3,))
    return np.concatenate([w, T[..., :3, 3]], -1)


# --------------------------------------------------------------------------- fragments
def select_frames(camera_to_world: np.ndarray, spacing_m: float = NODE_SPACING_M,
                 spacing_deg: float = NODE_SPACING_DEG) -> np.ndarray:
    """Indices of the frames that fragments fuse: frame 0, then each frame that moved `spacing_m` or turned
    `spacing_deg` from the previous one kept, and the last frame."""
    nodes = [0]
    for i in range(1, len(camera_to_world)):
        moved_m, turned_deg = pose_difference(camera_to_world[i], camera_to_world[nodes[-1]])
        if moved_m >= spacing_m or turned_deg >= spacing_deg:
            nodes.append(i)
    if nodes[-1] != len(camera_to_world) - 1:
        nodes.append(len(camera_to_world) - 1)
    return np.asarray(nodes)


def _masked_lidar_mm(table: CaptureTable, i: int, cfg: FuseConfig) -> np.ndarray:
    """Frame i's LiDAR map (h,w) uint16 mm with pixels outside the fuse depth range or with a confidence below
    MIN_LIDAR_CONFIDENCE zeroed (`fuse.mask_depth_mm`), whatever the depth model fused."""
    from .fuse import mask_depth_mm, read_confidence

    depth_mm = read_depth_mm(table.root / table.lidar_path[i], REDO)
    confidence = read_confidence(table, i, depth_mm.shape[::-1])
    return mask_depth_mm(depth_mm, confidence, dataclasses.replace(cfg, min_confidence=MIN_LIDAR_CONFIDENCE))


def build_fragment(table: CaptureTable, frames: np.ndarray, camera_to_world: np.ndarray, cfg: FuseConfig) -> Fragment:
    """Fuse the LiDAR maps of `frames` (TSDF at cfg.refine_voxel_m) in the camera frame of their middle frame
    and extract the surface seen at least FRAGMENT_MIN_WEIGHT times. Unreadable maps are left out."""
    import open3d as o3d

    from .fuse import open3d_intrinsics

    anchor = int(frames[len(frames) // 2])
    grid = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight"), attr_dtypes=(o3d.core.float32, o3d.core.float32), attr_channels=((1), (1)),
        voxel_size=cfg.refine_voxel_m, block_resolution=8, block_count=FRAGMENT_BLOCKS, device=o3d.core.Device("CPU:0"))
    anchor_from_world = np.linalg.inv(camera_to_world[anchor])
    for i in frames:
        try:
            depth_mm = _masked_lidar_mm(table, int(i), cfg)
        except PromptmeshError:  # the depth and fuse stages name it
            continue
        if not depth_mm.any():
            continue
        h, w = depth_mm.shape
        K = o3d.core.Tensor(open3d_intrinsics(scale_intrinsics(table.K_rgb[i], (int(table.width[i]),
                                                                               int(table.height[i])), (w, h))))
        extrinsic = o3d.core.Tensor(np.linalg.inv(anchor_from_world @ camera_to_world[i]))  # anchor -> camera i
        depth = o3d.t.geometry.Image(o3d.core.Tensor.from_numpy(depth_mm))
        blocks = grid.compute_unique_block_coordinates(depth, K, extrinsic, MM_PER_M, cfg.depth_max_m,
                                                       FRAGMENT_TRUNC_VOXELS)
        grid.integrate(blocks, depth, K, extrinsic, MM_PER_M, cfg.depth_max_m, FRAGMENT_TRUNC_VOXELS)
    points = np.zeros((0, 3))
    normals = np.zeros((0, 3))
    if grid.hashmap().size() > 0:
        try:
            cloud = grid.extract_point_cloud(weight_threshold=FRAGMENT_MIN_WEIGHT)
        except RuntimeError:  # Open3D raises when no voxel passes the weight threshold
            cloud = None
        if cloud is not None and "positions" in cloud.point and len(cloud.point.positions) > 0:
            points = cloud.point.positions.numpy().astype(np.float64)
            normals = cloud.point.normals.numpy().astype(np.float64)
            order = np.lexsort(points.T[::-1])  # Open3D's order depends on its threads; the result must not
            points, normals = points[order], normals[order]
    return Fragment(np.asarray(frames), anchor, points, normals)


def _cell_keys(points: np.ndarray, cell_m: float) -> np.ndarray:
    """(N,) int64 key of the `cell_m` cell of each of (N,3) points (|coordinate| < 2**20 cells)."""
    from .fuse import _pack_block_keys

    return _pack_block_keys(np.floor(points / cell_m).astype(np.int64))


def footprint_overlap(world_points: list[np.ndarray], cell_m: float = OVERLAP_CELL_M) -> np.ndarray:
    """(N,N) share of the smaller footprint that two point sets share: occupied `cell_m` cells in common over
    the smaller number of occupied cells (0 for empty sets)."""
    from scipy import sparse

    cells = [np.unique(_cell_keys(p, cell_m)) for p in world_points]
    _, column = np.unique(np.concatenate(cells), return_inverse=True)
    row = np.repeat(np.arange(len(cells)), [len(c) for c in cells])
    occupancy = sparse.csr_matrix((np.ones(len(row)), (row, column.ravel())),
                                  shape=(len(cells), int(column.max(initial=-1)) + 1))
    shared = (occupancy @ occupancy.T).toarray()
    sizes = np.array([len(c) for c in cells], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(shared / np.minimum.outer(sizes, sizes))


def candidate_pairs(overlap: np.ndarray, min_gap: int = MIN_PAIR_GAP, min_overlap: float = MIN_OVERLAP,
                    per_fragment: int = PAIRS_PER_FRAGMENT) -> list[tuple[int, int]]:
    """(source, target) pairs, source later than target by >= min_gap, overlap >= min_overlap; each source
    keeps its `per_fragment` best-overlapping targets."""
    pairs = []
    for s in range(len(overlap)):
        targets = sorted((t for t in range(s - min_gap + 1) if overlap[s, t] >= min_overlap),
                         key=lambda t: -overlap[s, t])
        pairs += [(s, t) for t in targets[:per_fragment]]
    return pairs


# --------------------------------------------------------------------------- pairwise alignment
def _downsample(points: np.ndarray, normals: np.ndarray, voxel_m: float) -> tuple[np.ndarray, np.ndarray]:
    """One point (and normal) per occupied `voxel_m` cell: the first of each cell."""
    _, first = np.unique(_cell_keys(points, voxel_m), return_index=True)
    return points[first], normals[first]


def point_to_plane_icp(source: Fragment, target: Fragment, target_tree: cKDTree, init: np.ndarray,
                       voxel_m: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Align `source` onto `target` from `init` (4,4); returns (transformation, information per correspondence
    (6,6), fitness, point-to-plane RMSE m). Moves only along directions the information constrains (module
    docstring, step 3); each step is a Gauss-Newton step of the Huber-weighted point-to-plane error with a
    penalty 10 * |deviation from init|^2 along the weak directions."""
    T = np.array(init, np.float64)
    information = np.zeros((6, 6))
    fitness, rmse = 0.0, math.inf
    huber_m = HUBER_VOXELS * voxel_m
    for downsample_voxels, distance_voxels, iterations in ICP_LEVELS:
        points, normals = _downsample(source.points, source.normals, downsample_voxels * voxel_m)
        for _ in range(iterations):
            p = points @ T[:3, :3].T + T[:3, 3]
            distance, j = target_tree.query(p, distance_upper_bound=distance_voxels * voxel_m)
            ok = np.isfinite(distance)
            ok[ok] = np.abs(np.einsum("ij,ij->i", normals[ok] @ T[:3, :3].T, target.normals[j[ok]])) > MIN_NORMAL_COS
            fitness = float(ok.mean()) if len(ok) else 0.0
            if ok.sum() < 6:
                return T, np.zeros((6, 6)), 0.0, math.inf
            p, n = p[ok], target.normals[j[ok]]
            r = np.einsum("ij,ij->i", p - target.points[j[ok]], n)
            weight = np.minimum(1.0, huber_m / np.maximum(np.abs(r), 1e-12))
            J = np.concatenate([np.cross(p, n), n], 1)  # d r / d [w, v] of a world-side perturbation
            information = (J * weight[:, None]).T @ J / len(r)
            values, vectors = np.linalg.eigh(information)
            weak = vectors[:, values < WEAK_CONSTRAINT]
            penalty = 1e-6 * np.eye(6) + 10.0 * weak @ weak.T
            deviation = _matrix_to_twist(T @ np.linalg.inv(init))
            step = np.linalg.solve(information + penalty, -(J * weight[:, None]).T @ r / len(r) - penalty @ deviation)
            T = _twist_to_matrix(step) @ T
            rmse = float(np.sqrt(np.mean(r ** 2)))
            if np.abs(step).max() < ICP_CONVERGED:
                break
    return T, information, fitness, rmse


def align_fragments(source: Fragment, target: Fragment, target_tree: cKDTree, init: np.ndarray,
                    cfg: FuseConfig) -> Alignment:
    """`point_to_plane_icp` of source onto target from `init`, with the acceptance tests of the module
    docstring (step 3)."""
    T, information, fitness, rmse = point_to_plane_icp(source, target, target_tree, init, cfg.refine_voxel_m)
    alignment = Alignment(-1, -1, T, information, fitness, rmse)
    moved_m, turned_deg = pose_difference(T, np.asarray(init))
    if not (np.all(np.isfinite(T)) and np.all(np.isfinite(information))):
        alignment.reason = "diverged (not finite)"
    elif moved_m > cfg.refine_max_correction_m or turned_deg > cfg.refine_max_correction_deg:
        alignment.reason = f"implausible jump ({moved_m * 100:.1f} cm, {turned_deg:.2f} deg from ARKit)"
    elif fitness < MIN_FITNESS:
        alignment.reason = f"little overlap (fitness {fitness:.2f})"
    elif rmse > MAX_RMSE_M:
        alignment.reason = f"poor fit (RMSE {rmse * 100:.1f} cm)"
    return alignment


# --------------------------------------------------------------------------- pose graph
def _edge_residuals(source_poses: np.ndarray, target_poses: np.ndarray, inverse_measured: np.ndarray) -> np.ndarray:
    """(E,6) residual twists of Z^-1 C_t^-1 C_s, edge by edge ((E,4,4) each)."""
    return _matrix_to_twist(inverse_measured @ np.linalg.inv(target_poses) @ source_poses)


def optimise_pose_graph(poses: np.ndarray, sources: np.ndarray, targets: np.ndarray, measured: np.ndarray,
                        information: np.ndarray, iterations: int = GAUSS_NEWTON_ITERATIONS) -> np.ndarray:
    """Gauss-Newton on a pose graph with node 0 fixed; returns the optimised (N,4,4) camera_to_world.

    poses: (N,4,4) initial camera_to_world. Edge k: sources[k] -> targets[k], measured[k] (4,4) =
    inverse(C_t) @ C_s, information[k] (6,6) for the residual twist (rotation radians, translation metres).
    Jacobians are numerical (central differences of world-frame perturbations), all edges at once.
    """
    poses = np.array(poses, np.float64)
    n = len(poses)
    if n < 2 or len(sources) == 0:
        return poses
    inverse_measured = np.linalg.inv(measured)
    step = 1e-6
    for _ in range(iterations):
        source_poses, target_poses = poses[sources], poses[targets]
        r = _edge_residuals(source_poses, target_poses, inverse_measured)
        J = {}  # node role -> (E,6,6) d residual / d perturbation of that node
        for role in ("s", "t"):
            cols = []
            for d in range(6):
                xi = np.zeros(6)
                xi[d] = step
                plus, minus = _twist_to_matrix(xi), _twist_to_matrix(-xi)
                if role == "s":
                    difference = (_edge_residuals(plus @ source_poses, target_poses, inverse_measured)
                                  - _edge_residuals(minus @ source_poses, target_poses, inverse_measured))
                else:
                    difference = (_edge_residuals(source_poses, plus @ target_poses, inverse_measured)
                                  - _edge_residuals(source_poses, minus @ target_poses, inverse_measured))
                cols.append(difference / (2 * step))
            J[role] = np.stack(cols, -1)
        H = np.zeros((n, 6, n, 6))  # normal equations, block (node, node)
        b = np.zeros((n, 6))
        for a_role, a_nodes in (("s", sources), ("t", targets)):
            JtL = np.swapaxes(J[a_role], 1, 2) @ information  # (E,6,6)
            np.add.at(b, a_nodes, -np.einsum("eij,ej->ei", JtL, r))
            for b_role, b_nodes in (("s", sources), ("t", targets)):
                np.add.at(H, (a_nodes, slice(None), b_nodes), JtL @ J[b_role])
        H, b = H.reshape(6 * n, 6 * n), b.reshape(6 * n)
        free = slice(6, None)  # node 0 is fixed
        H_free = H[free, free] + 1e-9 * np.eye(6 * (n - 1))
        delta = np.linalg.solve(H_free, b[free]).reshape(n - 1, 6)
        poses[1:] = _twist_to_matrix(delta) @ poses[1:]
        if np.abs(delta).max() < 1e-9:
            break
    return poses


def odometry_information() -> np.ndarray:
    """(6,6) information of an ARKit odometry edge (rotation first)."""
    return np.diag([1.0 / math.radians(ODOMETRY_SIGMA_DEG) ** 2] * 3 + [1.0 / ODOMETRY_SIGMA_M ** 2] * 3)


def solve_with_loops(anchor_poses: np.ndarray, loops: list[Alignment]) -> tuple[np.ndarray, list[Alignment]]:
    """(refined (N,4,4) anchor poses, the loop edges kept): ARKit odometry between consecutive anchors plus the
    loop edges, solved; while some loop edge's information-weighted residual exceeds LOOP_REJECT_M, the worst is
    dropped and it is solved again. Without loops (or when all are dropped) the anchors keep their poses."""
    if not loops:
        return anchor_poses.copy(), []
    odo_s, odo_t = np.arange(1, len(anchor_poses)), np.arange(len(anchor_poses) - 1)
    odo_z = np.linalg.inv(anchor_poses[odo_t]) @ anchor_poses[odo_s]
    odo_info = np.broadcast_to(odometry_information(), (len(odo_s), 6, 6))
    kept = list(loops)
    while kept:
        sources = np.concatenate([odo_s, [a.source for a in kept]]).astype(np.int64)
        targets = np.concatenate([odo_t, [a.target for a in kept]]).astype(np.int64)
        measured = np.concatenate([odo_z, np.stack([a.transformation for a in kept])])
        information = np.concatenate([odo_info, np.stack([a.information / LOOP_SIGMA_M ** 2 for a in kept])])
        refined = optimise_pose_graph(anchor_poses, sources, targets, measured, information)
        loop = slice(len(odo_s), None)
        residual = _edge_residuals(refined[sources[loop]], refined[targets[loop]], np.linalg.inv(measured[loop]))
        weighted_m = np.sqrt(np.einsum("ei,eij,ej->e", residual, information[loop] * LOOP_SIGMA_M ** 2, residual))
        if weighted_m.max() <= LOOP_REJECT_M:
            return refined, kept
        kept.pop(int(np.argmax(weighted_m)))  # the worst one only: a wrong edge also bends the right ones
    return anchor_poses.copy(), []


# --------------------------------------------------------------------------- corrections
def interpolate_corrections(n_frames: int, nodes: np.ndarray, node_correction: np.ndarray) -> np.ndarray:
    """(n_frames,4,4) world-frame corrections: a node's own at its frame, in between interpolated by frame
    index (translation linearly, rotation by slerp); before the first node the first's, after the last the
    last's. `nodes`: increasing frame indices; `node_correction`: (len(nodes),4,4)."""
    from scipy.spatial.transform import Rotation, Slerp

    out = np.tile(np.eye(4), (n_frames, 1, 1))
    if len(nodes) == 1:
        out[:] = node_correction[0]
        return out
    at = np.clip(np.arange(n_frames), nodes[0], nodes[-1])
    out[:, :3, :3] = Slerp(nodes, Rotation.from_matrix(node_correction[:, :3, :3]))(at).as_matrix()
    for k in range(3):
        out[:, k, 3] = np.interp(at, nodes, node_correction[:, k, 3])
    return out


# --------------------------------------------------------------------------- entry point
def refine_poses(table: CaptureTable, cfg: FuseConfig) -> RefinedPoses:
    """Refined camera_to_world for every frame of `table` (see the module docstring)."""
    from scipy.spatial import cKDTree

    t0, cpu0 = time.perf_counter(), time.process_time()
    predicted = table.camera_to_world
    n_frames = len(table)
    counted = select_frames(predicted)
    fragments = [build_fragment(table, frames, predicted, cfg)
                 for frames in np.array_split(counted, max(1, round(len(counted) / FRAGMENT_FRAMES)))]
    anchors = np.array([f.anchor for f in fragments])
    t_fragments = time.perf_counter()
    world_points = [f.points[:: max(1, len(f.points) // 4000)] @ predicted[f.anchor][:3, :3].T
                    + predicted[f.anchor][:3, 3] for f in fragments]
    pairs = [(s, t) for s, t in candidate_pairs(footprint_overlap(world_points))
             if len(fragments[s].points) and len(fragments[t].points)]
    trees: dict[int, cKDTree] = {}
    alignments = []
    for s, t in pairs:
        if t not in trees:
            trees[t] = cKDTree(fragments[t].points)
        init = np.linalg.inv(predicted[anchors[t]]) @ predicted[anchors[s]]
        a = align_fragments(fragments[s], fragments[t], trees[t], init, cfg)
        a.source, a.target = s, t
        alignments.append(a)
        what = f"fragment at frame {table.stem(int(anchors[s]))} onto the one at frame {table.stem(int(anchors[t]))}"
        if a.reason.startswith(("diverged", "implausible")):
            log.warning("refine: alignment of the %s %s; kept ARKit's relative pose", what, a.reason)
        else:
            log.debug("refine: %s: fitness %.2f, RMSE %.1f mm, %s", what, a.fitness, a.rmse_m * 1000,
                      a.reason or "accepted")
    t_align = time.perf_counter()
    loops = [a for a in alignments if not a.reason]

    anchor_poses = predicted[anchors]
    refined, kept = solve_with_loops(anchor_poses, loops)
    t_graph = time.perf_counter()

    refined = np.array(refined)
    anchor_accepted = np.full(len(anchors), bool(kept))
    moved_m, turned_deg = pose_difference(refined, anchor_poses)
    diverged = ~np.isfinite(refined).all(axis=(1, 2)) | ~(moved_m <= cfg.refine_max_correction_m) | ~(
        turned_deg <= cfg.refine_max_correction_deg)
    for k in np.flatnonzero(diverged):
        log.warning("refine: frame %s: refined pose diverged (moved %.1f cm, %.2f deg); keeping its ARKit pose",
                    table.stem(int(anchors[k])), moved_m[k] * 100, turned_deg[k])
        refined[k] = anchor_poses[k]
        anchor_accepted[k] = False
    if alignments and not kept:
        log.warning("refine: no two parts of the walk aligned (%d pairs tried); fusing with the capture's poses, "
                    "unrefined", len(alignments))
    elif not alignments:
        log.info("refine: the walk does not come back to surfaces it saw (no fragments overlap); poses unrefined")
    if kept:
        correction = interpolate_corrections(n_frames, anchors, refined @ np.linalg.inv(anchor_poses))
        camera_to_world = correction @ predicted
        camera_to_world[:, 3] = (0.0, 0.0, 0.0, 1.0)
        camera_to_world[:anchors[0] + 1] = predicted[:anchors[0] + 1]  # the first anchor is fixed: exactly
    else:
        camera_to_world = predicted.copy()
    correction_m, correction_deg = pose_difference(camera_to_world, predicted)
    accepted = np.full(n_frames, bool(kept))
    for k in np.flatnonzero(~anchor_accepted & bool(kept)):
        accepted[fragments[k].frames] = False
    seconds = time.perf_counter() - t0
    summary = {"fragments": len(fragments), "pairs_tried": len(alignments), "pairs_aligned": len(loops),
               "loop_edges_kept": len(kept), "frames_accepted": int(accepted.sum()),
               "max_correction_m": round(float(correction_m.max()), 4),
               "max_correction_deg": round(float(correction_deg.max()), 3),
               "seconds": round(seconds, 3), "cpu_seconds": round(time.process_time() - cpu0, 3),
               "seconds_fragments": round(t_fragments - t0, 3),
               "seconds_align": round(t_align - t_fragments, 3), "seconds_graph": round(t_graph - t_align, 3)}
    log.info("refine: %d fragments, %d of %d alignments kept, largest correction %.1f cm / %.2f deg, in %.1f s",
             len(fragments), len(kept), len(alignments), correction_m.max() * 100, correction_deg.max(), seconds)
    return RefinedPoses(camera_to_world, correction_m, correction_deg, accepted, summary)
