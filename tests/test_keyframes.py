"""Keyframe selection on hand-made trajectories (pipeline/keyframes.py) and in the ingest stage."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline import ingest, keyframes
from pipeline.artifacts import Manifest
from pipeline.capture import CaptureSource, CaptureTable, SourceFrame
from pipeline.config import IngestConfig
from pipeline.geometry import intrinsics_matrix

w, h = 64, 48
K_WIDE = intrinsics_matrix(48.0, 48.0, 31.5, 23.5)  # ~67 deg horizontal field of view, like the phone's
SETTINGS = keyframes.KeyframeSettings(translation_ratio=0.05, rotation_deg=15.0, min_overlap=0.8,
                                     neighbourhood_frames=1)


def _pose(x_m: float = 0.0, yaw_deg: float = 0.0) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.array([0.0, np.deg2rad(yaw_deg), 0.0]))[0]
    T[0, 3] = x_m
    return T


def _wall_view(T: np.ndarray, wall_z_m: float) -> keyframes.View:
    """The z-depth map of the plane z = wall_z_m (world) seen from camera_to_world T."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([(u - K_WIDE[0, 2]) / K_WIDE[0, 0], (v - K_WIDE[1, 2]) / K_WIDE[1, 1], np.ones_like(u)], -1)
    dirs = rays @ T[:3, :3].T
    t = (wall_z_m - T[2, 3]) / dirs[..., 2]  # ray parameter = camera z-depth (rays have z = 1)
    return keyframes.View(T, np.where(t > 0, t, 0).astype(np.float32), K_WIDE)


def _kept(views, settings=SETTINGS) -> list[int]:
    return [i for i, d in enumerate(keyframes.select(views, lambda v: v, settings)) if d.kept]


def test_standing_still_keeps_one_frame():
    decisions = list(keyframes.select([_wall_view(_pose(), 2.0) for _ in range(30)], lambda v: v,
                                      keyframes.KeyframeSettings()))
    assert [d.kept for d in decisions] == [True] + [False] * 29
    assert decisions[0].reason == keyframes.FIRST
    assert {d.reason for d in decisions[1:]} <= {keyframes.REDUNDANT, keyframes.BLURRIER_NEIGHBOUR}


def test_pure_rotation_keeps_one_every_rotation_threshold():
    views = [_wall_view(_pose(yaw_deg=0.5 * i), 3.0) for i in range(81)]  # 40 deg in 0.5 deg steps
    only_rotation = keyframes.KeyframeSettings(rotation_deg=9.9, min_overlap=0.0, neighbourhood_frames=1)
    assert _kept(views, only_rotation) == [0, 20, 40, 60, 80]
    # with the footprint test on as well, a keyframe comes at least every 10 degrees
    kept = _kept(views, keyframes.KeyframeSettings(rotation_deg=10.0, min_overlap=0.8, neighbourhood_frames=1))
    assert kept[0] == 0 and max(np.diff(kept)) <= 20 and len(kept) >= 5


def test_same_translation_keeps_more_frames_close_up_than_across_a_room():
    path = [_pose(x_m=0.002001 * i) for i in range(201)]  # 40 cm sideways in 2 mm steps
    close = _kept([_wall_view(T, 0.3) for T in path])
    room = _kept([_wall_view(T, 3.0) for T in path])
    # translation threshold 0.05 x depth scale: 15 cm across the room, 0.05 x 0.3 x sqrt(0.3) = 8.2 mm close up
    # (and there the footprint test may add more: 8 mm is a larger share of the view)
    assert room == [0, 75, 150]
    assert len(close) >= 40 and max(np.diff(close)) <= 5
    assert len(close) >= 13 * len(room)


def test_closer_than_close_range_keyframes_get_denser_than_depth():
    """Pose rule alone: the threshold is ratio x depth down to close_range_m, ratio x depth^1.5 / sqrt(close_range_m)
    below it (2.001 mm steps: 1 m -> 5 cm = every 25th frame; 0.3 m -> 8.2 mm = every 5th; with the close range
    off (1 cm), 1.5 cm = every 8th)."""
    path = [_pose(x_m=0.002001 * i) for i in range(101)]
    pose_only = keyframes.KeyframeSettings(translation_ratio=0.05, rotation_deg=90.0, min_overlap=0.0,
                                           neighbourhood_frames=1)
    assert _kept([_wall_view(T, 1.0) for T in path], pose_only) == list(range(0, 101, 25))
    assert _kept([_wall_view(T, 0.3) for T in path], pose_only) == list(range(0, 101, 5))
    plain = keyframes.KeyframeSettings(translation_ratio=0.05, rotation_deg=90.0, min_overlap=0.0,
                                       neighbourhood_frames=1, close_range_m=0.01)
    assert _kept([_wall_view(T, 0.3) for T in path], plain) == list(range(0, 101, 8))
    assert keyframes.depth_scale_m(2.0, pose_only) == 2.0
    assert keyframes.depth_scale_m(0.25, pose_only) == pytest.approx(0.125)


def test_new_surface_makes_a_keyframe_before_the_pose_thresholds():
    """A frame whose footprint the keyframe did not see is kept though it barely moved: here the wall the
    keyframe saw at 3 m is replaced by a nearer surface (a door swung into view)."""
    first = _wall_view(_pose(), 3.0)
    moved_a_little = _wall_view(_pose(x_m=0.01), 1.0)
    d = list(keyframes.select([first, moved_a_little], lambda v: v, SETTINGS))
    assert [x.kept for x in d] == [True, True] and d[1].reason == keyframes.NEW_SURFACE
    same_wall = _wall_view(_pose(x_m=0.01), 3.0)
    assert [x.kept for x in keyframes.select([first, same_wall], lambda v: v, SETTINGS)] == [True, False]


def test_sharpest_of_the_neighbourhood_wins():
    views = [_wall_view(_pose(x_m=0.001 * i), 2.0) for i in range(5)]  # all within 30 % of the thresholds
    sharp = {id(v): s for v, s in zip(views, [1.0, 3.0, 9.0, 2.0, 1.0])}
    d = list(keyframes.select(views, lambda v: v, keyframes.KeyframeSettings(neighbourhood_frames=6),
                              sharpness_of=lambda v: sharp[id(v)]))
    assert [x.kept for x in d] == [False, False, True, False, False]
    assert d[2].reason == keyframes.FIRST and d[0].reason == keyframes.BLURRIER_NEIGHBOUR


# ----------------------------------------------------------------------------- in the ingest stage
def _source(poses, loaded: list) -> CaptureSource:
    W, H = 64, 48

    def frame(i: int, T: np.ndarray) -> SourceFrame:
        rng = np.random.default_rng(i)

        def load_rgb():
            loaded.append(i)
            return (rng.random((H, W, 3)) * 255).astype(np.uint8)

        return SourceFrame(frame_index=i, timestamp_s=i / 60, camera_to_world=T, K_rgb=K_WIDE, rgb_size=(W, H),
                           load_rgb=load_rgb, load_depth_m=lambda: np.full((48, 64), 2.0, np.float32),
                           load_confidence=lambda: np.full((48, 64), 2, np.uint8), source_name=f"frame {i}")

    return CaptureSource(format="fake", path=Path("fake"), n_frames=len(poses), rgb_size=(W, H), lidar_size=(64, 48),
                         frames=lambda: iter([frame(i, T) for i, T in enumerate(poses)]))


@pytest.mark.parametrize("blur_select", [False, True])
def test_ingest_writes_keyframes_only_and_says_why(monkeypatch, tmp_path, blur_select):
    """Standing still, then a 30 cm step, then still again: two keyframes. The others are never decoded
    (without blur selection) or only within a neighbourhood, and never written."""
    poses = [_pose()] * 10 + [_pose(x_m=0.3)] * 10
    loaded: list[int] = []
    monkeypatch.setattr(ingest, "open_capture", lambda p: _source(poses, loaded))
    (tmp_path / "cap").mkdir()
    ingest.run(IngestConfig(blur_select=blur_select), tmp_path / "cap", tmp_path / "wd")
    capture = tmp_path / "wd" / "capture"
    table = CaptureTable.load(tmp_path / "wd")
    kept = table.frame_index.tolist()
    assert len(kept) == 2 and kept[0] < 10 <= kept[1]
    assert sorted(p.name for p in (capture / "rgb").glob("*.jpg")) == [f"{i:06d}.jpg" for i in kept]
    assert sorted(p.name for p in (capture / "lidar").glob("*.png")) == [f"{i:06d}.png" for i in kept]
    if blur_select:  # the neighbourhoods: frames 0-5 and 10-15
        assert set(loaded) <= set(range(6)) | set(range(10, 16))
    else:
        assert sorted(loaded) == [0, 10]
    summary = Manifest.read(capture).summary
    assert summary["kept"] == 2 and summary["kept_because"] == {"first": 1, "moved": 1}
    assert summary["redundant"] + summary["blurrier_neighbour"] == 18 and summary["not_selected"] == 0
    line = ingest.summary_line(summary)
    assert line == (f"2 of 20 frames used (0 bad frames skipped, 0 dropped as blurry, {summary['redundant']} seeing "
                    f"nothing the keyframes don't, {summary['blurrier_neighbour']} blurrier than a kept neighbour, 0 "
                    "not selected by stride/limit; keyframes: 1 first, 1 moved)")


def test_all_frames_keeps_every_frame(monkeypatch, tmp_path):
    loaded: list[int] = []
    monkeypatch.setattr(ingest, "open_capture", lambda p: _source([_pose()] * 6, loaded))
    (tmp_path / "cap").mkdir()
    ingest.run(IngestConfig(all_frames=True, blur_select=False), tmp_path / "cap", tmp_path / "wd")
    assert CaptureTable.load(tmp_path / "wd").frame_index.tolist() == list(range(6))


@pytest.mark.slow
def test_closeup_keeps_enough_keyframes_and_gets_a_finer_voxel(tmp_path):
    """The issue's close-up check on the synthetic desk (objects at 0.2-0.45 m, 0.4 m of orbit), at the
    defaults (keyframes, automatic voxel, `guided`; `lidar` ties at this small size, docs/benchmarks.md): F
    with keyframes within 0.005 of all frames, and with the
    automatic voxel (4 mm, truncation 3 cm) accuracy and completeness lower than at 1 cm. Scored at millimetre
    scale (1 cm threshold, 4 mm downsampling): at the default 5 cm every variant scores ~1. Small for the suite
    (60 frames at 320x240)."""
    from make_synthetic_capture import make_capture
    from pipeline import depth, evaluate, fuse, mesh
    from pipeline.config import DepthConfig, EvalConfig, FuseConfig, MeshConfig
    from pipeline.workdir import WorkDir

    capture = make_capture(tmp_path / "desk", scene="closeup", n_frames=60, width=320, height=240, codec="mp4v")
    scoring = EvalConfig(threshold_m=0.01, downsample_m=0.004, sample_spacing_m=0.002)
    result = {}
    for frames, ingest_cfg in (("keyframes", IngestConfig()), ("all", IngestConfig(all_frames=True))):
        wd = tmp_path / frames
        ingest.run(ingest_cfg, capture["stray"], wd)
        depth.run(DepthConfig(model="guided"), wd)
        for voxel in ("auto", "1cm") if frames == "keyframes" else ("auto",):
            out = WorkDir(wd, wd / voxel)
            fuse.run(FuseConfig(voxel_size_m=0.0 if voxel == "auto" else 0.01), out, depth_model="guided")
            mesh.run(MeshConfig(), out)
            report = json.loads(evaluate.run(scoring, out, gt_mesh=capture["gt_mesh"]).read_text())["culled"]
            result[frames, voxel] = (report["fscore"], report["accuracy_m"], report["completeness_m"],
                                     Manifest.read(out.fuse).summary["voxel_size_m"], len(CaptureTable.load(wd)))
    (f_kf, acc, comp, voxel, n_kf) = result["keyframes", "auto"]
    (f_all, _, _, _, n_all) = result["all", "auto"]
    (_, acc_1cm, comp_1cm, _, _) = result["keyframes", "1cm"]
    assert voxel == 0.004 and n_all == 60 and n_kf < n_all, result
    assert f_kf >= f_all - 0.005, result
    assert acc < acc_1cm and comp < comp_1cm, result
