"""`promptmesh run` end to end on a synthetic capture: against a plain reference fusion loop, caching,
guided vs lidar, and the CLI report."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import pytest

from make_synthetic_capture import make_capture
from pipeline import runner
from pipeline.capture import CaptureTable
from pipeline.config import PipelineConfig, override
from pipeline.geometry import scale_intrinsics
from pipeline.metrics import mesh_metrics, sample_surface, voxel_downsample
from pipeline.workdir import WorkDir

VOXEL_M = 0.02


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    return make_capture(out, scene="easy", n_frames=16, width=320, height=240, layouts=("stray",), seed=3)


def _cfg(model: str) -> PipelineConfig:
    cfg = override(PipelineConfig(), "fuse", voxel_size_m=VOXEL_M)
    cfg = override(cfg, "depth", model=model, long_side_px=320)
    return override(cfg, "ingest", blur_select=False)


def _points(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    return voxel_downsample(sample_surface(vertices, triangles, 0.01, seed=0), 0.02)


def _mesh_points(path: Path) -> np.ndarray:
    m = o3d.io.read_triangle_mesh(str(path))
    return _points(np.asarray(m.vertices), np.asarray(m.triangles))


def _reference_mesh(workdir: Path, cfg: PipelineConfig) -> np.ndarray:
    """The plain loop a user would write: per frame, read depth, integrate into a VoxelBlockGrid, extract."""
    table = CaptureTable.load(workdir)
    grid = o3d.t.geometry.VoxelBlockGrid(("tsdf", "weight", "color"), (o3d.core.float32,) * 3, (1, 1, 3),
                                         voxel_size=VOXEL_M, block_resolution=8, block_count=20000)
    for i in range(len(table)):
        depth_mm = cv2.imread(str(WorkDir(workdir).depth("lidar") / f"{table.stem(i)}.png"), cv2.IMREAD_UNCHANGED)
        conf = cv2.imread(str(table.root / table.confidence_path[i]), cv2.IMREAD_UNCHANGED)
        conf = cv2.resize(conf, depth_mm.shape[::-1], interpolation=cv2.INTER_NEAREST)
        depth_mm[conf < cfg.fuse.min_confidence] = 0
        rgb = cv2.resize(cv2.imread(str(table.root / table.rgb_path[i])), depth_mm.shape[::-1])
        K = scale_intrinsics(table.K_rgb[i], table.rgb_size, depth_mm.shape[::-1])
        depth = o3d.t.geometry.Image(depth_mm)
        color = o3d.t.geometry.Image(np.ascontiguousarray(rgb[..., ::-1]))
        K_t = o3d.core.Tensor(K)
        ext = o3d.core.Tensor(np.linalg.inv(table.camera_to_world[i]))
        blocks = grid.compute_unique_block_coordinates(depth, K_t, ext, 1000.0, cfg.fuse.depth_max_m, 4.0)
        grid.integrate(blocks, depth, color, K_t, K_t, ext, 1000.0, cfg.fuse.depth_max_m, 4.0)
    mesh = grid.extract_triangle_mesh(weight_threshold=0.5).to_legacy()
    return _points(np.asarray(mesh.vertices), np.asarray(mesh.triangles))


@pytest.fixture
def work_done(monkeypatch):
    """Calls of each stage's unit of work (frames written, depth maps predicted, frames integrated, meshes
    extracted, meshes sampled for eval), counted while the real functions run."""
    from pipeline import evaluate, fuse, ingest, mesh
    from pipeline.depth.classical import LidarResize

    calls = {}
    for owner, name in ((ingest, "_write_frame"), (LidarResize, "predict"), (fuse, "integrate_frame"),
                        (mesh, "marching_cubes"), (evaluate, "sampled_points")):
        real = getattr(owner, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)
    return calls


def test_run_matches_reference_loop_and_caches(capture, tmp_path, work_done):
    cfg = _cfg("lidar")
    wd = tmp_path / "wd"
    first = runner.run(cfg, capture["stray"], wd, gt_mesh=capture["gt_mesh"])
    assert work_done == {"_write_frame": 16, "predict": 16, "integrate_frame": 16, "marching_cubes": 1, "sampled_points": 2}
    gt = o3d.io.read_triangle_mesh(str(capture["gt_mesh"]))
    gt_pts = _points(np.asarray(gt.vertices), np.asarray(gt.triangles))
    ours = mesh_metrics(_mesh_points(WorkDir(wd).mesh("ply")), gt_pts, 0.05)
    ref = mesh_metrics(_reference_mesh(wd, cfg), gt_pts, 0.05)
    # unculled: 16 frames do not see the whole room, so recall (not precision) limits both
    assert ref["precision"] > 0.95 and ref["fscore"] > 0.6
    assert abs(ours["fscore"] - ref["fscore"]) <= 0.03, (ours, ref)

    ev = json.loads(WorkDir(wd).eval_json.read_text())
    assert set(ev) == {"threshold_m", "downsample_m", "n_frames", "culled", "unculled", "depth"}
    assert ev["n_frames"] == 16 and ev["culled"]["fscore"] > 0.9

    mtimes = {p: p.stat().st_mtime_ns for p in wd.rglob("*") if p.is_file() and p.name != "timings.json"}
    work_done.clear()
    second = runner.run(cfg, capture["stray"], wd, gt_mesh=capture["gt_mesh"])
    assert work_done == {}  # no stage did any work
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing rewritten
    assert second.mesh_paths == first.mesh_paths

    # a new voxel size reruns fuse onward, not ingest or depth
    depth_manifest = (WorkDir(wd).depth("lidar") / "manifest.json").stat().st_mtime_ns
    capture_manifest = (WorkDir(wd).capture / "manifest.json").stat().st_mtime_ns
    runner.run(override(cfg, "fuse", voxel_size_m=0.03), capture["stray"], wd)
    assert (WorkDir(wd).depth("lidar") / "manifest.json").stat().st_mtime_ns == depth_manifest
    assert (WorkDir(wd).capture / "manifest.json").stat().st_mtime_ns == capture_manifest
    assert WorkDir(wd).mesh("ply").stat().st_mtime_ns != mtimes[WorkDir(wd).mesh("ply")]


def test_guided_at_least_lidar_and_cli_report(capture, tmp_path):
    wd = tmp_path / "wd"
    lidar = runner.run(_cfg("lidar"), capture["stray"], wd / "lidar", gt_mesh=capture["gt_mesh"])
    guided = runner.run(_cfg("guided"), capture["stray"], wd / "guided", gt_mesh=capture["gt_mesh"])
    f = {r.depth_model: json.loads(r.eval_path.read_text())["culled"]["fscore"] for r in (lidar, guided)}
    assert f["guided"] >= f["lidar"] - 0.002, f

    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "run", str(capture["stray"]), "-o",
                          str(wd / "cli"), "--gt-mesh", str(capture["gt_mesh"]), "--voxel-size", "0.03",
                          "--depth-resolution", "160", "--no-blur-select"],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert "depth model: guided" in out.stdout  # auto without weights
    assert f"mesh:        {wd / 'cli' / 'mesh.ply'}" in out.stdout
    assert f"report:      {wd / 'cli' / 'eval.json'}" in out.stdout
    timings = json.loads(WorkDir(wd / "cli").timings_json.read_text())
    assert set(timings["seconds"]) == {"ingest", "depth", "fuse", "mesh", "eval"}


def test_compare_runs_each_model_once_and_skips_missing_weights(capture, tmp_path):
    from pipeline import compare, fuse
    from pipeline.artifacts import Manifest

    cfg = override(_cfg("lidar"), "eval", sample_spacing_m=0.02)
    md = compare.run(cfg, capture["stray"], tmp_path / "cmp", gt_mesh=capture["gt_mesh"],
                     models=["lidar", "promptda-vits"])  # the test session's Hugging Face cache is empty
    wd = WorkDir(tmp_path / "cmp")
    report = json.loads(wd.compare_json.read_text())
    assert list(report["models"]) == ["lidar"] and "hf download" in report["skipped"]["promptda-vits"]
    lidar = wd.compare_model("lidar")
    assert report["models"]["lidar"] == {**json.loads(lidar.eval_json.read_text()),
                                         "depth": {**json.loads(lidar.eval_json.read_text())["depth"],
                                                   "coverage": report["models"]["lidar"]["depth"]["coverage"]}}
    text = md.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| lidar |"))
    assert f"{report['models']['lidar']['culled']['fscore']:.3f}" in row and "`promptda-vits`" in text
    assert not lidar.depth("promptda-vits").exists() and lidar.mesh("ply").is_file()
    fused = Manifest.read(lidar.fuse).summary  # the header names the voxel fused with
    assert f"TSDF voxel {fuse.voxel_line(fused['voxel_size_m'], fused['voxel_auto_depth_m'])}, " in text


def test_overlaps_change_no_output(capture, tmp_path):
    """Each overlap of runner.OVERLAPS is taken up (the manifests say so) and the outputs are byte-identical to a
    run without them."""
    from pipeline.artifacts import Manifest

    cfg = override(_cfg("lidar"), "fuse", refine_poses=True, device="cpu")  # the grid is handed over on the CPU
    runs = {name: WorkDir(tmp_path / name) for name in ("with", "without")}
    runner.run(cfg, capture["stray"], runs["with"].root, gt_mesh=capture["gt_mesh"])
    runner.run(cfg, capture["stray"], runs["without"].root, gt_mesh=capture["gt_mesh"], overlaps=())
    def overlaps_taken(wd: WorkDir) -> tuple[bool, bool, bool, bool]:
        s = Manifest.read(wd.fuse).summary
        return (s["refined_ahead"], s["presized_ahead"], s["depth_maps_from_memory"] == len(CaptureTable.load(wd)),
                s["saved_while_meshing"])

    taken = {name: overlaps_taken(wd) for name, wd in runs.items()}
    assert taken == {"with": (True, True, True, True), "without": (False, False, False, False)}
    for rel in ("mesh.ply", "eval.json", "eval/curve.json", "fuse/tsdf.npz", "fuse/poses.parquet"):
        assert (runs["with"].root / rel).read_bytes() == (runs["without"].root / rel).read_bytes(), rel


def test_compare_refines_poses_once_for_all_models(capture, tmp_path, monkeypatch):
    from pipeline import compare, fuse
    from pipeline.artifacts import Manifest

    calls = []
    real = fuse.refine_poses
    monkeypatch.setattr(fuse, "refine_poses", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = override(_cfg("lidar"), "eval", sample_spacing_m=0.02)
    compare.run(cfg, capture["stray"], tmp_path / "cmp", gt_mesh=capture["gt_mesh"], models=["lidar", "guided"])
    out = {m: WorkDir(tmp_path / "cmp").compare_model(m) for m in ("lidar", "guided")}
    assert len(calls) == 1  # refinement depends on the capture only: one serves both models
    assert all(Manifest.read(o.fuse).summary["refined_ahead"] for o in out.values())
    assert out["lidar"].poses_parquet.read_bytes() == out["guided"].poses_parquet.read_bytes()
