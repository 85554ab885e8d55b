"""Pose refinement (pipeline/refine.py): the pose graph, the correction interpolation and the ICP on hand-made
cases; on the generator's drifting captures, culled F with refinement against the true poses' F; the poses
parquet, the setting's fingerprint, bad alignments, and the real 3D Scanner App sample end to end."""
import json
import logging

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from conftest import SAMPLES
from make_synthetic_capture import make_capture
from pipeline import refine, runner
from pipeline.capture import CaptureTable
from pipeline.geometry import rotation_angle_deg
from pipeline.config import PipelineConfig, override
from pipeline.poses import fused_camera_to_world, read_poses
from pipeline.workdir import WorkDir

DRIFT_M, DRIFT_DEG = 0.05, 1.0


def _pose(rotvec_deg=(0.0, 0.0, 0.0), t=(0.0, 0.0, 0.0)) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(np.radians(rotvec_deg)).as_matrix()
    T[:3, 3] = t
    return T


# --------------------------------------------------------------------------- hand-made cases
def test_pose_graph_spreads_a_loop_closure_evenly_and_keeps_the_first_node():
    # Truth: nodes 1 m apart along x. ARKit's steps are each 1 cm too long (4 cm over the chain); a loop edge
    # 4 -> 0 measures the true relative pose. Equal odometry weights spread the 4 cm evenly: every step
    # shrinks by 1 cm, so the nodes land on the truth.
    predicted = np.stack([_pose(t=(1.01 * k, 0.0, 0.0)) for k in range(5)])
    odo_s, odo_t = np.arange(1, 5), np.arange(4)
    measured = np.concatenate([np.linalg.inv(predicted[odo_t]) @ predicted[odo_s], [_pose(t=(4.0, 0.0, 0.0))]])
    information = np.concatenate([np.broadcast_to(np.eye(6), (4, 6, 6)), [1e6 * np.eye(6)]])
    refined = refine.optimise_pose_graph(predicted, np.r_[odo_s, 4], np.r_[odo_t, 0], measured, information)
    np.testing.assert_array_equal(refined[0], predicted[0])
    np.testing.assert_allclose(refined[:, 0, 3], [0.0, 1.0, 2.0, 3.0, 4.0], atol=1e-5)
    np.testing.assert_allclose(refined[:, :3, :3], predicted[:, :3, :3], atol=1e-6)


def test_pose_graph_edge_convention_is_target_from_source():
    # One edge 1 -> 0 saying camera 1 sits 2 m along camera 0's z (its optical axis) and is turned 90 degrees
    # about camera 0's y: Z = inverse(C_0) @ C_1. Node 0 is turned 90 degrees about world y, so camera 0's z is
    # world +x: camera 1 must end at world (2, 0, 0), turned 180 degrees.
    c0 = _pose(rotvec_deg=(0.0, 90.0, 0.0))
    Z = _pose(rotvec_deg=(0.0, 90.0, 0.0), t=(0.0, 0.0, 2.0))
    refined = refine.optimise_pose_graph(np.stack([c0, np.eye(4)]), np.array([1]), np.array([0]), Z[None],
                                         np.eye(6)[None])
    np.testing.assert_allclose(refined[1][:3, 3], [2.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(refined[1], c0 @ Z, atol=1e-6)


def test_a_wrong_loop_edge_is_dropped_and_the_right_one_kept():
    # The chain of the test above, with the true loop edge 4 -> 0 and a wrong one 3 -> 0 (30 cm off).
    predicted = np.stack([_pose(t=(1.01 * k, 0.0, 0.0)) for k in range(5)])
    loops = [refine.Alignment(4, 0, _pose(t=(4.0, 0.0, 0.0)), np.eye(6), 1.0, 0.0),
             refine.Alignment(3, 0, _pose(t=(3.3, 0.0, 0.0)), np.eye(6), 1.0, 0.0)]
    refined, kept = refine.solve_with_loops(predicted, loops)
    assert kept == loops[:1]
    np.testing.assert_allclose(refined[:, 0, 3], [0.0, 1.0, 2.0, 3.0, 4.0], atol=0.005)  # the odometry bends too
    refined, kept = refine.solve_with_loops(predicted, loops[1:])  # alone, the wrong edge still disagrees
    assert kept == [] and np.array_equal(refined, predicted)


def test_corrections_are_interpolated_by_frame_index():
    end = _pose(rotvec_deg=(0.0, 40.0, 0.0), t=(0.4, 0.0, -0.2))
    out = refine.interpolate_corrections(9, np.array([2, 6]), np.stack([np.eye(4), end]))
    np.testing.assert_allclose(out[:3], np.eye(4)[None].repeat(3, 0), atol=1e-12)  # up to the first node
    np.testing.assert_allclose(out[4], _pose(rotvec_deg=(0.0, 20.0, 0.0), t=(0.2, 0.0, -0.1)), atol=1e-12)
    np.testing.assert_allclose(out[5], _pose(rotvec_deg=(0.0, 30.0, 0.0), t=(0.3, 0.0, -0.15)), atol=1e-12)
    np.testing.assert_allclose(out[6:], end[None].repeat(3, 0), atol=1e-12)  # from the last node on


def _planes(*which: str, spacing_m: float = 0.02) -> refine.Fragment:
    """Points with normals on squares of the floor (y = 1, below an OpenCV camera), a wall ahead (z = 3) and a
    wall to the right (x = 1.5)."""
    a, b = np.meshgrid(np.arange(-1.0, 1.0, spacing_m), np.arange(0.0, 2.0, spacing_m))
    a, b = a.ravel(), b.ravel()
    parts = {"floor": (np.stack([a, np.full_like(a, 1.0), b + 1.0], 1), (0.0, -1.0, 0.0)),
             "ahead": (np.stack([a, b - 1.0, np.full_like(a, 3.0)], 1), (0.0, 0.0, -1.0)),
             "right": (np.stack([np.full_like(a, 1.5), b - 1.0, a + 2.0], 1), (-1.0, 0.0, 0.0))}
    points = np.concatenate([parts[w][0] for w in which])
    normals = np.concatenate([np.tile(parts[w][1], (len(parts[w][0]), 1)) for w in which])
    return refine.Fragment(np.arange(1), 0, points, normals)


def _moved(fragment: refine.Fragment, target_from_source: np.ndarray) -> refine.Fragment:
    """The same surface seen from a camera that `target_from_source` maps into the target's."""
    source_from_target = np.linalg.inv(target_from_source)
    return refine.Fragment(fragment.frames, 0,
                           fragment.points @ source_from_target[:3, :3].T + source_from_target[:3, 3],
                           fragment.normals @ source_from_target[:3, :3].T)


def test_icp_recovers_the_motion_between_views_of_a_corner():
    target = _planes("floor", "ahead", "right")
    truth = _pose(rotvec_deg=(0.3, -0.8, 0.5), t=(0.03, -0.02, 0.04))
    T, information, fitness, rmse = refine.point_to_plane_icp(_moved(target, truth), target,
                                                              cKDTree(target.points), np.eye(4), 0.02)
    moved_m, turned_deg = refine.pose_difference(T, truth)
    assert moved_m < 1e-3 and turned_deg < 0.02, (moved_m, turned_deg)
    assert fitness > 0.95 and rmse < 1e-3
    assert np.linalg.eigvalsh(information).min() > refine.WEAK_CONSTRAINT


def test_icp_moves_a_lone_plane_only_along_its_normal():
    # A floor constrains y (its normal), rotation about x and z; sliding along x and z and turning about y are
    # free: those stay at the prior (identity) instead of drifting, the normal offset is recovered.
    target = _planes("floor")
    truth = _pose(rotvec_deg=(0.0, 2.0, 0.0), t=(0.05, 0.02, -0.04))
    T, _, _, _ = refine.point_to_plane_icp(_moved(target, truth), target, cKDTree(target.points), np.eye(4), 0.02)
    assert abs(T[1, 3] - 0.02) < 1e-3  # the normal offset
    assert abs(T[0, 3]) < 2e-3 and abs(T[2, 3]) < 2e-3 and rotation_angle_deg(T[:3, :3]) < 0.05  # prior kept


# --------------------------------------------------------------------------- on the generator's drift
@pytest.fixture(scope="module")
def drift_runs(tmp_path_factory):
    """The hard room (60 frames, 256x192) with true poses and with 5 cm / 1 deg of drift, each fused from the
    `lidar` depth with refinement on and off: {(drift, refine): (culled F, fused poses, fuse manifest)}."""
    root = tmp_path_factory.mktemp("drift")
    captures = {drift: make_capture(root / f"capture_{drift}", scene="hard", n_frames=60, width=256, height=192,
                                    seed=0, drift_m=DRIFT_M * drift, drift_deg=DRIFT_DEG * drift)
                for drift in (0, 1)}
    cfg = override(PipelineConfig(), "fuse", voxel_size_m=0.02)
    cfg = override(cfg, "depth", model="lidar", long_side_px=256)
    cfg = override(cfg, "ingest", blur_select=False, all_frames=True)  # compared with the GT pose of every frame
    cfg = override(cfg, "eval", sample_spacing_m=0.01, cull_stride=2)
    results = {}
    for drift, capture in captures.items():
        workdir = root / f"work_{drift}"
        for refine_poses in (False, True):  # one work directory: toggling reruns fuse onward only
            result = runner.run(override(cfg, "fuse", refine_poses=refine_poses), capture["stray"], workdir,
                                gt_mesh=capture["gt_mesh"])
            manifest = json.loads((WorkDir(workdir).fuse / "manifest.json").read_text())
            table = CaptureTable.load(workdir)
            results[drift, refine_poses] = (json.loads(result.eval_path.read_text())["culled"]["fscore"],
                                            fused_camera_to_world(workdir, table), manifest, read_poses(
                                                WorkDir(workdir).poses_parquet), table)
        results[drift, "gt"] = np.load(capture["gt_poses"])
        results[drift, "workdir"] = workdir
    return results


def test_refinement_recovers_the_true_pose_f_score_under_drift(drift_runs):
    true_f = drift_runs[0, False][0]
    drifted_f, refined_f = drift_runs[1, False][0], drift_runs[1, True][0]
    assert drifted_f < true_f - 0.03, (drifted_f, true_f)  # the drift matters: measured 0.750 against 0.806
    assert abs(refined_f - true_f) <= 0.02, (refined_f, true_f)  # measured 0.803
    gt = drift_runs[1, "gt"]
    before, before_deg = refine.pose_difference(drift_runs[1, False][1], gt)
    after, _ = refine.pose_difference(drift_runs[1, True][1], gt)
    assert before[0] == pytest.approx(0, abs=1e-6)  # the generator's drift option: zero at the first frame,
    assert before[-1] == pytest.approx(DRIFT_M, abs=1e-5)  # its size at the last
    assert before_deg[-1] == pytest.approx(DRIFT_DEG, abs=1e-4)
    assert after.mean() < 0.5 * before.mean(), (after.mean(), before.mean())
    np.testing.assert_array_equal(drift_runs[1, True][1][0], drift_runs[1, False][1][0])  # frame 0 defines the world


def test_refinement_leaves_a_capture_without_drift_as_it_was(drift_runs):
    assert abs(drift_runs[0, True][0] - drift_runs[0, False][0]) <= 0.005, (drift_runs[0, True][0],
                                                                            drift_runs[0, False][0])  # 0.806, 0.806
    moved_m, turned_deg = refine.pose_difference(drift_runs[0, True][1], drift_runs[0, "gt"])
    assert moved_m.max() < 0.015 and turned_deg.max() < 0.2, (moved_m.max(), turned_deg.max())


def test_poses_parquet_holds_the_fused_poses_and_the_setting_is_fingerprinted(drift_runs):
    import pyarrow.parquet as pq

    for refine_poses in (False, True):
        _, fused, manifest, (frame_index, camera_to_world), table = drift_runs[1, refine_poses]
        np.testing.assert_array_equal(frame_index, table.frame_index)
        np.testing.assert_array_equal(camera_to_world, fused)
        assert manifest["settings"]["cfg"]["refine_poses"] is refine_poses and "poses.parquet" in manifest["outputs"]
    unrefined = drift_runs[1, False]
    np.testing.assert_array_equal(unrefined[1], unrefined[4].camera_to_world)  # off: the capture's poses
    assert unrefined[2]["fingerprint"] != drift_runs[1, True][2]["fingerprint"]
    columns = pq.read_table(WorkDir(drift_runs[1, "workdir"]).poses_parquet).to_pydict()  # the last run: refined
    moved_m, turned_deg = refine.pose_difference(drift_runs[1, True][1], unrefined[4].camera_to_world)
    np.testing.assert_allclose(columns["correction_m"], moved_m, atol=1e-12)
    np.testing.assert_allclose(columns["correction_deg"], turned_deg, atol=1e-9)
    assert all(columns["accepted"]) and columns["correction_m"][0] == 0.0
    assert max(columns["correction_m"]) > 0.02  # the end of the walk moved back by centimetres
    summary = drift_runs[1, True][2]["summary"]
    assert summary["refine"]["loop_edges_kept"] >= 1 and summary["seconds_refine"] > 0


def test_refinement_is_deterministic(drift_runs):
    table = drift_runs[1, False][4]
    first = refine.refine_poses(table, PipelineConfig().fuse)
    second = refine.refine_poses(table, PipelineConfig().fuse)
    np.testing.assert_array_equal(first.camera_to_world, second.camera_to_world)  # Open3D's point order is not


def test_diverging_alignments_keep_the_capture_poses_with_warnings(drift_runs, monkeypatch, caplog):
    table = drift_runs[1, False][4]
    cfg = PipelineConfig().fuse
    monkeypatch.setattr(refine, "point_to_plane_icp",
                        lambda source, target, tree, init, voxel_m: (np.full((4, 4), np.nan), np.eye(6), 1.0, 0.0))
    with caplog.at_level(logging.WARNING, logger="pipeline.refine"):
        result = refine.refine_poses(table, cfg)
    np.testing.assert_array_equal(result.camera_to_world, table.camera_to_world)
    assert not result.accepted.any() and result.correction_m.max() == 0.0
    diverged = [r.message for r in caplog.records if "diverged (not finite)" in r.message]
    assert diverged and all("frame 0000" in m for m in diverged)
    assert any("no two parts of the walk aligned" in r.message and "unrefined" in r.message for r in caplog.records)

    caplog.clear()  # a jump of a metre is implausible (refine_max_correction_m = 0.3)
    monkeypatch.setattr(refine, "point_to_plane_icp", lambda source, target, tree, init, voxel_m: (
        _pose(t=(1.0, 0.0, 0.0)) @ init, np.eye(6), 1.0, 0.0))
    with caplog.at_level(logging.WARNING, logger="pipeline.refine"):
        result = refine.refine_poses(table, cfg)
    np.testing.assert_array_equal(result.camera_to_world, table.camera_to_world)
    assert any("implausible jump (100.0 cm" in r.message for r in caplog.records)


# --------------------------------------------------------------------------- a real capture
def test_real_3dscannerapp_sample_runs_end_to_end_with_refinement(tmp_path):
    cfg = override(PipelineConfig(), "fuse", voxel_size_m=0.03)
    cfg = override(cfg, "depth", model="lidar", long_side_px=256)
    result = runner.run(cfg, SAMPLES / "3dscannerapp_corridor" / "All_Data", tmp_path / "wd")
    table = CaptureTable.load(tmp_path / "wd")
    frame_index, camera_to_world = read_poses(WorkDir(tmp_path / "wd").poses_parquet)
    assert list(frame_index) == list(table.frame_index) and len(frame_index) >= 12
    assert np.isfinite(camera_to_world).all()
    moved_m, turned_deg = refine.pose_difference(camera_to_world, table.camera_to_world)
    assert moved_m[0] == 0.0 and moved_m.max() <= 0.3 and turned_deg.max() <= 5.0
    assert result.mesh_paths[0].stat().st_size > 10_000
