"""`promptmesh benchmark` over tiny synthetic ScanNet++ / ARKitScenes scenes: tables, resume, Ray, protocols."""
import dataclasses
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from make_dataset_fixtures import make_arkitscenes_video, make_scannetpp_scene
from pipeline import benchmark, evaluate
from pipeline.cli import cli
from pipeline.config import EvalConfig, PipelineConfig
from pipeline.evaluate import load_mesh
from pipeline.errors import PromptmeshError
from pipeline.metrics import table2_metrics
from pipeline.readers import scannetpp
from pipeline.workdir import WorkDir

SCENES = ["0a0a0a0a0a", "1b1b1b1b1b", "2c2c2c2c2c"]


def tiny_cfg() -> PipelineConfig:
    """LiDAR model, 160x120 depth, 4 cm voxels, coarse evaluation samples: a scene takes a few seconds."""
    c = PipelineConfig()
    r = dataclasses.replace
    return r(c, ingest=r(c.ingest, blur_select=False), depth=r(c.depth, long_side_px=160),
             fuse=r(c.fuse, voxel_size_m=0.04), eval=r(c.eval, sample_spacing_m=0.02, downsample_m=0.04))


@pytest.fixture(scope="module")
def snpp_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scannetpp")
    for k, sid in enumerate(SCENES):
        make_scannetpp_scene(root / "data", sid, n_frames=5, rgb_size=(160, 120), colmap_every=2, seed=k)
    return root


def _lidar_f(result: dict, section: str = "culled") -> float:
    return result["models"]["lidar"][section]["fscore"]


def test_benchmark_three_scenes_tables_and_resume_after_interruption(snpp_root, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    real_run_scene = benchmark.run_scene

    def interrupted(job):  # Ctrl-C while the second scene runs
        if job.scene_id == SCENES[1]:
            raise KeyboardInterrupt
        return real_run_scene(job)

    monkeypatch.setattr(benchmark, "run_scene", interrupted)
    with pytest.raises(KeyboardInterrupt):
        benchmark.run(tiny_cfg(), snpp_root, out, "scannetpp", ["all"], ["lidar"], jobs=1)
    first = WorkDir(out).scene(SCENES[0]).benchmark_scene_json
    assert first.is_file() and not (WorkDir(out).scene(SCENES[1]).benchmark_scene_json).exists()
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(benchmark, "run_scene", real_run_scene)

    md = benchmark.run(tiny_cfg(), snpp_root, out, "scannetpp", ["all"], ["lidar"], jobs=2)  # process pool
    assert first.stat().st_mtime_ns == stamp  # the finished scene was skipped, not redone
    report = json.loads(WorkDir(out).benchmark_report("json").read_text())
    assert list(report["scenes"]) == SCENES and report["failed"] == {}
    per_scene = [_lidar_f(report["scenes"][s]) for s in SCENES]
    assert report["mean"]["lidar"]["n_scenes"] == 3
    assert report["mean"]["lidar"]["culled"]["fscore"] == pytest.approx(np.mean(per_scene))
    assert min(per_scene) > 0.8  # exact LiDAR of a box room: the fused mesh is right
    assert "depth" in report["scenes"][SCENES[0]]["models"]["lidar"]  # iphone/render_depth is the GT depth
    text = md.read_text()
    assert "| lidar | 3 |" in text and sum(f"| {s} | lidar |" in text for s in SCENES) == 3
    assert f"{np.mean(per_scene):.3f}" in text
    png = cv2.imread(str(WorkDir(out).benchmark_report("png")))
    assert png is not None and png.shape[0] > 100 and png.shape[1] > 100
    # a scene whose result file is lost (interrupted between its last stage and the write) redoes only that file
    (WorkDir(out).scene(SCENES[2]).benchmark_scene_json).unlink()
    ingest_manifest = WorkDir(out).scene(SCENES[2]).capture / "manifest.json"
    before = ingest_manifest.stat().st_mtime_ns
    benchmark.run(tiny_cfg(), snpp_root, out, "scannetpp", [SCENES[2]], ["lidar"], jobs=1)
    assert ingest_manifest.stat().st_mtime_ns == before  # every stage was up to date
    assert json.loads(WorkDir(out).benchmark_report("json").read_text())["mean"]["lidar"]["n_scenes"] == 1
    # changed settings make a finished scene unfinished
    changed = dataclasses.replace(tiny_cfg(), eval=dataclasses.replace(tiny_cfg().eval, threshold_m=0.02))
    job = benchmark.SceneJob(SCENES[0], snpp_root / "data" / SCENES[0], WorkDir(out).scene(SCENES[0]), None,
                             benchmark.make_reader("scannetpp"), changed, ("lidar",), "default")
    assert benchmark.finished(job) is None


def test_benchmark_on_a_local_ray_instance(snpp_root, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed here (pip install 'promptmesh[ray]')")
    try:
        md = benchmark.run(tiny_cfg(), snpp_root, tmp_path / "ray", "scannetpp", [SCENES[0]], ["lidar"],
                           ray_address="local")
    finally:
        ray.shutdown()
    report = json.loads((tmp_path / "ray" / "benchmark.json").read_text())
    assert list(report["scenes"]) == [SCENES[0]] and _lidar_f(report["scenes"][SCENES[0]]) > 0.8
    assert md.is_file()


def test_cli_table2_protocol_with_overrides(snpp_root, tmp_path, monkeypatch):
    out = tmp_path / "t2"
    (tmp_path / "fast.toml").write_text("[eval]\nsample_spacing_m = 0.02\n[ingest]\nblur_select = false\n")
    res = CliRunner().invoke(cli, ["-q", "benchmark", str(snpp_root), "-o", str(out), "--dataset", "scannetpp",
                                   "--config", str(tmp_path / "fast.toml"),
                                   "--scenes", SCENES[1], "--depth-models", "lidar", "--protocol", "promptda-table2",
                                   "--voxel-size", "0.04", "--depth-resolution", "160", "--pose-source", "colmap",
                                   "--keep-largest-clusters", "50", "--jobs", "1"])
    assert res.exit_code == 0, res.output
    report = json.loads(WorkDir(out).benchmark_report("json").read_text())
    cfg = report["config"]
    assert cfg["fuse"]["voxel_size_m"] == 0.04  # the option given wins over the protocol's 2 cm
    assert cfg["fuse"]["voxel_size_m"] * cfg["fuse"]["sdf_trunc_voxels"] == pytest.approx(0.15)  # protocol
    assert (cfg["fuse"]["depth_min_m"], cfg["fuse"]["depth_max_m"]) == (0.0, 5.0)
    ev = report["scenes"][SCENES[1]]["models"]["lidar"]
    assert ev["table2"]["keep_largest_clusters"] == 50 and ev["table2"]["fscore"] > 0.5
    assert "culled" in ev  # our protocol's numbers stay in the JSON
    assert report["pose_source"] == "colmap"
    text = (out / "benchmark.md").read_text()
    assert "protocol promptda-table2" in text and "F unculled" not in text
    assert f"{ev['table2']['fscore']:.3f}" in text
    # the eval stage wrote the Table 2 report (the protocol sets [eval] table2_report) beside an unchanged eval.json
    wd = WorkDir(out).scene(SCENES[1]).compare_model("lidar")
    ev_cfg = EvalConfig(**cfg["eval"])
    assert ev_cfg.table2_report and ev_cfg.table2_keep_largest_clusters == 50
    assert set(json.loads(wd.eval_json.read_text())) == {"threshold_m", "downsample_m", "n_frames", "culled",
                                                         "unculled", "depth"}
    pred_vertices, pred_triangles = load_mesh(wd.mesh("ply"))
    gt_mesh = scannetpp.gt_mesh_path(snpp_root / "data" / SCENES[1])
    gt_vertices, _ = load_mesh(gt_mesh)
    expected = table2_metrics(pred_vertices, pred_triangles, gt_vertices, 0.05, 0.02, 0.1, 50)
    assert ev["table2"] == {"threshold_m": 0.05, "downsample_m": 0.02, "crop_margin_m": 0.1,
                            "keep_largest_clusters": 50, **expected}
    assert json.loads(wd.eval_table2_json.read_text()) == ev["table2"]
    # cached with the stage: the option is part of its fingerprint; off drops the report, on writes it again
    stamp = wd.eval_table2_json.stat().st_mtime_ns
    evaluate.run(ev_cfg, wd, gt_mesh)
    assert wd.eval_table2_json.stat().st_mtime_ns == stamp
    evaluate.run(dataclasses.replace(ev_cfg, table2_report=False), wd, gt_mesh)
    assert not wd.eval_table2_json.exists()
    evaluate.run(ev_cfg, wd, gt_mesh)
    assert json.loads(wd.eval_table2_json.read_text()) == ev["table2"]


def test_arkitscenes_benchmark_is_depth_only(tmp_path):
    make_arkitscenes_video(tmp_path / "raw" / "Validation", "41069021", n_frames=8)
    out = tmp_path / "bench"
    benchmark.run(tiny_cfg(), tmp_path, out, "arkitscenes", ["all"], ["lidar"], jobs=1)
    ev = json.loads(WorkDir(out).benchmark_report("json").read_text())["scenes"]["41069021"]["models"]["lidar"]
    assert set(ev) == {"depth"} and ev["depth"]["delta_0.5"] > 0.9
    assert not WorkDir(out).scene("41069021").compare_model("lidar").fuse.exists()  # no GT mesh: nothing fused


def test_table2_metrics_hand_computed():
    """GT: a 1 m x 1 m vertex grid (1 cm spacing, downsampled at 2 cm). Prediction: the same grid 1 cm above,
    plus vertices outside the GT box + 10 cm (cropped away) and a small piece 3 cm off (kept unless only the
    largest cluster is)."""
    g = np.stack(np.meshgrid(np.arange(100) * 0.01 + 0.005, np.arange(100) * 0.01 + 0.005), -1).reshape(-1, 2)
    gt = np.c_[g, np.zeros(len(g))]
    n = len(g)
    a = (np.arange(99)[:, None] * 100 + np.arange(99)).ravel()  # lower-left corner of each grid cell
    tri = np.r_[np.c_[a, a + 1, a + 100], np.c_[a + 1, a + 101, a + 100]]
    far = np.array([[5.0, 5.0, 0.0], [5.01, 5.0, 0.0], [5.0, 5.01, 0.0]])  # outside the box: cropped
    # 9 cm above the GT voxel centroid (0.51, 0.51, 0), inside the margin; one 2 cm voxel after downsampling
    near = np.array([[0.505, 0.505, 0.09], [0.515, 0.515, 0.09], [0.51, 0.51, 0.09]])
    pred = np.r_[gt + [0, 0, 0.01], far, near]
    pred_tri = np.r_[tri, [[n, n + 1, n + 2], [n + 3, n + 4, n + 5]]]
    m = table2_metrics(pred, pred_tri, gt, 0.05, 0.02, 0.1)
    # 2500 downsampled grid points 1 cm off + the voxel of `near` 9 cm off
    assert m["accuracy_m"] == pytest.approx((2500 * 0.01 + 0.09) / 2501, abs=1e-9)
    assert m["precision"] == pytest.approx(2500 / 2501)
    assert m["completeness_m"] == pytest.approx(0.01, abs=1e-9) and m["recall"] == 1.0
    m1 = table2_metrics(pred, pred_tri, gt, 0.05, 0.02, 0.1, keep_largest_clusters=1)
    assert m1["accuracy_m"] == pytest.approx(0.01, abs=1e-9) and m1["fscore"] == 1.0
    empty = table2_metrics(far, np.array([[0, 1, 2]]), gt, 0.05, 0.02, 0.1)
    assert empty["fscore"] == 0.0 and empty["accuracy_m"] == float("inf")


def test_protocol_preset_and_scene_lists(snpp_root):
    cfg = benchmark.apply_protocol(PipelineConfig(), "promptda-table2")
    assert cfg.depth.long_side_px == 1008 and cfg.fuse.voxel_size_m == 0.02
    assert cfg.fuse.voxel_size_m * cfg.fuse.sdf_trunc_voxels == pytest.approx(0.15)
    assert (cfg.fuse.depth_min_m, cfg.fuse.depth_max_m, cfg.eval.threshold_m, cfg.eval.downsample_m) == (
        0.0, 5.0, 0.05, 0.02)
    assert benchmark.apply_protocol(PipelineConfig(), "default") == PipelineConfig()
    assert len(benchmark.SCENE_LISTS["promptda-table2"]) == 13
    assert len(benchmark.SCENE_LISTS["promptda-table2-ext"]) == 15
    with pytest.raises(PromptmeshError, match="scenes not found: \\['09c1414f1b'"):
        benchmark.select_scenes(snpp_root, "scannetpp", ["promptda-table2"])
    assert list(benchmark.select_scenes(snpp_root, "scannetpp", [SCENES[2], SCENES[0]])) == [SCENES[2], SCENES[0]]


def test_table2_protocol_preset_settings():
    cfg = benchmark.apply_protocol(PipelineConfig(), "promptda-table2")  # pipeline/protocols/promptda-table2.toml
    assert (cfg.depth.long_side_px, cfg.fuse.voxel_size_m, cfg.fuse.depth_min_m, cfg.fuse.depth_max_m,
            cfg.fuse.min_confidence, cfg.mesh.min_component_triangles, cfg.eval.threshold_m,
            cfg.eval.downsample_m, cfg.eval.table2_report) == (1008, 0.02, 0.0, 5.0, 0, 0, 0.05, 0.02, True)
    assert not PipelineConfig().eval.table2_report
    assert cfg.fuse.sdf_trunc_voxels * cfg.fuse.voxel_size_m == pytest.approx(0.15)
    coarse = benchmark.apply_protocol(PipelineConfig(), "promptda-table2", voxel_size_m=0.05)
    assert coarse.fuse.voxel_size_m == 0.05 and coarse.fuse.sdf_trunc_voxels * 0.05 == pytest.approx(0.15)
    assert benchmark.apply_protocol(PipelineConfig(), "default") == PipelineConfig()
