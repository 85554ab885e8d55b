"""promptmesh view: the page's files and contents, caching, serving, and the page itself in headless Chromium.

The work directory is built by hand: a 3 m x 3 m wall at z = -2 m whose vertex colours encode where each
point lies (red grows with x, green with y), and a capture whose middle frame looks at it from (0, 1.5, 0)
down -z. The page opens at that frame's pose, so the screenshot's pixel colours and the measuring tool's
picks can be predicted from the camera alone.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import view
from pipeline.artifacts import Manifest
from pipeline.capture import FrameRow, write_frames_table
from pipeline.cli import cli
from pipeline.config import ViewConfig
from pipeline.errors import PromptmeshError
from pipeline.export.gltf import write_glb
from pipeline.mesh import MeshArrays, write_ply
from pipeline.workdir import WorkDir
from view_screenshot import chromium, chromium_binary, serving

WALL_Z_M = -2.0
WALL_X_M, WALL_Y_M = (-1.5, 1.5), (0.0, 3.0)
EYE = np.array([0.0, 1.5, 0.0])
W, H, F_PX = 640, 480, 300.0  # vertical field of view 2 atan(240 / 300) = 77.3 degrees
TAN_HALF_VFOV = (H / 2) / F_PX
EVAL = {"threshold_m": 0.05, "downsample_m": 0.02, "n_frames": 3,
        "culled": {"accuracy_m": 0.0123, "completeness_m": 0.0234, "precision": 0.9012, "recall": 0.8123,
                   "fscore": 0.8544},
        "unculled": {"accuracy_m": 0.0151, "completeness_m": 0.0412, "precision": 0.8811, "recall": 0.6234,
                     "fscore": 0.7302}}
needs_chromium = pytest.mark.skipif(chromium_binary() is None, reason="chromium not installed (tools/setup.sh)")


def wall_colour(x_m: float, y_m: float) -> np.ndarray:
    """The wall's RGB at (x, y): red 0..255 across x, green 0..255 up y, blue 128."""
    return np.array([255 * (x_m - WALL_X_M[0]) / 3.0, 255 * (y_m - WALL_Y_M[0]) / 3.0, 128.0])


def wall(n: int = 40) -> MeshArrays:
    """An (n+1)^2-vertex grid on the wall, 2 n^2 triangles facing +z (the camera)."""
    x, y = np.meshgrid(np.linspace(*WALL_X_M, n + 1), np.linspace(*WALL_Y_M, n + 1))
    vertices = np.stack([x.ravel(), y.ravel(), np.full(x.size, WALL_Z_M)], 1)
    colors = np.rint([wall_colour(px, py) for px, py in vertices[:, :2]]).astype(np.uint8)
    i = np.arange(n)[:, None] * (n + 1) + np.arange(n)[None, :]
    a, b, c, d = i.ravel(), i.ravel() + 1, i.ravel() + n + 1, i.ravel() + n + 2
    triangles = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    return MeshArrays(vertices, triangles, colors)


def looking_down_minus_z(eye: np.ndarray) -> list[float]:
    """camera_to_world (OpenCV axes: x right, y down, z forward) at `eye` with world +y up, looking down -z."""
    T = np.eye(4)
    T[:3, :3] = np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]]).T  # columns: camera x, y, z in the world
    T[:3, 3] = eye
    return T.ravel().tolist()


def make_workdir(root: Path, with_eval: bool = True) -> WorkDir:
    wd = WorkDir(root)
    write_ply(wall(), wd.mesh("ply"))
    rows = [FrameRow(k, 0.1 * k, f"rgb/{k:06d}.jpg", f"lidar/{k:06d}.png", None, W, H, 256, 192, F_PX, F_PX,
                     W / 2, H / 2, looking_down_minus_z(EYE + [0.3 * (k - 1), 0, 0.5 * (k - 1)])) for k in range(3)]
    write_frames_table(wd.frames_parquet, rows)  # the middle frame (k = 1) looks from EYE
    Manifest("ingest", "test", ["frames.parquet"], {}, {"format": "stray", "kept": 3, "listed": 7}).write(wd.capture)
    Manifest("fuse", "test", [], {"depth_model": "promptda-vits", "cfg": {"voxel_size_m": 0.0}},  # automatic
             {"voxel_size_m": 0.0095, "voxel_auto_depth_m": 3.25}).write(wd.fuse)
    if with_eval:
        wd.eval_json.write_text(json.dumps(EVAL))
    return wd


def page_data(page: str) -> dict:
    """The JSON block the page's script reads (start view, mesh file)."""
    return json.loads(re.search(r'<script type="application/json" id="view-data">(.*?)</script>', page, re.S).group(1))


def glb_triangles(path: Path) -> int:
    data = path.read_bytes()
    json_len = int.from_bytes(data[12:16], "little")
    gltf = json.loads(data[20:20 + json_len])
    return gltf["accessors"][gltf["meshes"][0]["primitives"][0]["indices"]]["count"] // 3


def test_page_is_offline_and_shows_scores_facts_and_a_decimated_mesh(tmp_path):
    make_workdir(tmp_path)
    index = view.run(ViewConfig(target_triangles=1000), tmp_path)
    page = index.read_text()
    for text in ("0.854", "0.730", "0.901", "0.812", "1.23", "2.34",  # F, precision, recall, Acc / Comp in cm
                 "stray", "3 of 7", "promptda-vits", "640×480", "mesh.ply, decimated",
                 # the voxel fused with, not the settings' 0 (= automatic)
                 "<th>TSDF voxel</th><td>9.5 mm (automatic, for a median depth of 3.25 m)</td>"):
        assert text in page, text
    assert "<th>F</th>" in page and "<th>Precision</th>" in page
    assert re.search(r'id="scores-culled">.*0\.854', page) and re.search(r'id="scores-unculled">.*0\.730', page)
    # everything the page loads lies beside it: no URL with a scheme, every reference resolves in view/
    js = (index.parent / "viewer.js").read_text()
    assert not re.search(r"https?://", page) and not re.search(r"https?://", js)
    importmap = json.loads(re.search(r'<script type="importmap">(.*?)</script>', page, re.S).group(1))["imports"]
    refs = re.findall(r'(?:src|href)="([^"#?]+)"', page) + list(importmap.values())
    refs += [m for m in re.findall(r"from '([^']+)'", js) if m.startswith("three/addons/")]
    for ref in refs:
        ref = ref.replace("three/addons/", "./three/addons/") if ref.startswith("three/addons/") else ref
        assert (index.parent / ref).exists(), ref
    for module in ("addons/controls/OrbitControls.js", "addons/loaders/GLTFLoader.js", "three.core.js"):
        assert (index.parent / "three" / module).is_file()
    data = page_data(page)
    np.testing.assert_allclose(data["start"]["eye"], EYE)
    np.testing.assert_allclose(data["start"]["forward"], [0, 0, -1], atol=1e-12)
    assert data["start"]["vfov_deg"] == pytest.approx(np.degrees(2 * np.arctan(TAN_HALF_VFOV)), abs=1e-3)
    assert 800 <= glb_triangles(index.parent / "mesh.glb") <= 1000 < len(wall().triangles)
    # a flat wall stays flat when decimated: the shown surface is on mesh.ply's
    assert re.search(r"<th>off mesh.ply by</th><td>0\.0 mm mean, 0\.[01] mm p95</td>", page)


def test_vendored_three_is_the_pinned_release_unchanged():
    folder = view.ASSETS / "three"
    sums = dict(line.split()[::-1] for line in (folder / "SHA256SUMS").read_text().splitlines())
    assert len(sums) == 6 and "three.module.js" in sums
    for name, digest in sums.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert "three 0.187.0" in (folder / "VERSION").read_text() and "MIT" in (folder / "LICENSE").read_text()


def test_rerun_is_up_to_date_and_a_new_eval_rewrites_the_page(tmp_path):
    wd = make_workdir(tmp_path, with_eval=False)
    index = view.run(ViewConfig(), tmp_path)
    assert "No evaluation yet" in index.read_text()
    manifest_ns = Manifest.path_in(wd.view).stat().st_mtime_ns
    view.run(ViewConfig(), tmp_path)
    assert Manifest.path_in(wd.view).stat().st_mtime_ns == manifest_ns
    mesh_ns = (wd.view / "mesh.glb").stat().st_mtime_ns
    wd.eval_json.write_text(json.dumps(EVAL))
    assert "0.854" in view.run(ViewConfig(), tmp_path).read_text()
    assert (wd.view / "mesh.glb").stat().st_mtime_ns == mesh_ns  # new scores, same mesh: not decimated again
    assert "mesh.ply, decimated" in view.run(ViewConfig(target_triangles=1000), tmp_path).read_text()
    assert (wd.view / "mesh.glb").stat().st_mtime_ns != mesh_ns


def test_ar_export_is_preferred_and_copied_unchanged(tmp_path):
    wd = make_workdir(tmp_path)
    mesh = wall(4)
    offset_m = np.array([1.0, 0.0, -2.0])  # an export with --recenter moved the mesh by this
    ar = write_glb(view.ar_mesh(wd), mesh.vertices + offset_m, mesh.triangles, colors_rgb8=mesh.colors)
    Manifest("export-ar", "test", ["mesh.glb"], {}, {"recenter_offset_m": offset_m.tolist(), "triangles": 128,
                                                      "triangles_full": 3200, "distance_to_full_mean_m": 0.00079,
                                                      "distance_to_full_p95_m": 0.0023}).write(ar.parent)
    index = view.run(ViewConfig(), tmp_path)
    assert (index.parent / "mesh.glb").read_bytes() == ar.read_bytes()
    page = index.read_text()
    assert "AR export (textured)" in page and "<td>128 of 3,200</td>" in page
    assert "<th>off mesh.ply by</th><td>0.8 mm mean, 2.3 mm p95</td>" in page
    data = page_data(page)
    np.testing.assert_allclose(data["start"]["eye"], EYE + offset_m)  # the camera moved with the mesh
    later_ns = ar.stat().st_mtime_ns + 10**9
    os.utime(wd.mesh("ply"), ns=(later_ns, later_ns))  # mesh.ply redone after the export: it shows an old mesh
    assert "mesh.ply, decimated" not in page and "AR export" not in view.run(ViewConfig(), tmp_path).read_text()


def test_compare_figures_are_copied_and_listed(tmp_path):
    wd = make_workdir(tmp_path)
    figure = tmp_path / "compare" / "figures" / "fscore_vs_threshold.png"
    figure.parent.mkdir(parents=True)
    cv2.imwrite(str(figure), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "compare.json").write_text(json.dumps({
        "models": {"lidar": EVAL, "guided": {**EVAL, "culled": {**EVAL["culled"], "fscore": 0.9111}}},
        "skipped": {"promptda-vits": "no weights"}, "figures": [str(figure.relative_to(tmp_path))]}))
    page = view.run(ViewConfig(), tmp_path).read_text()
    assert (wd.view / "figures" / figure.name).read_bytes() == figure.read_bytes()
    assert 'src="figures/fscore_vs_threshold.png"' in page
    assert "0.911" in page and "no weights" in page and "<th>guided</th>" in page


def test_cli_target_triangles_reaches_the_mesh(tmp_path):
    wd = make_workdir(tmp_path)
    result = CliRunner().invoke(cli, ["view", str(tmp_path), "--target-triangles", "500"])
    assert result.exit_code == 0 and f"view: {wd.view / 'index.html'}" in result.output
    assert 400 <= glb_triangles(wd.view / "mesh.glb") <= 500


def test_cli_without_mesh_is_one_line_error(tmp_path):
    result = CliRunner().invoke(cli, ["view", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "no mesh to show" in result.output


def test_cli_serves_the_folder_and_prints_the_url(tmp_path):
    make_workdir(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "view", str(tmp_path), "--serve", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        url = re.search(r"http://127\.0\.0\.1:\d+/", lines[1]).group(0)
        with urllib.request.urlopen(url + "index.html", timeout=10) as r:
            assert "0.854" in r.read().decode()
        with urllib.request.urlopen(url + "three/three.module.js", timeout=10) as r:
            assert "javascript" in r.headers["Content-Type"]  # module scripts need a JavaScript MIME type
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@needs_chromium
def test_chromium_renders_the_mesh_unlit_from_the_capture_pose(tmp_path):
    make_workdir(tmp_path)
    index = view.run(ViewConfig(), tmp_path)
    png = tmp_path / "shot.png"
    with serving(index.parent) as base:
        chromium(base + "index.html", screenshot=png, window_wh=(1000, 700))
        dom = chromium(base + "index.html")
    shot = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB).astype(int)
    assert 'data-ready="1"' in dom and re.search(r'id="scores-culled">.*0\.854', dom)  # the F-score, rendered
    h, w = shot.shape[:2]
    middle = shot[h // 3:2 * h // 3, w // 3:w // 2]  # the canvas (the panel is at the right edge)
    assert len(np.unique(middle.reshape(-1, 3), axis=0)) > 300
    # unlit, colours as stored: the centre ray hits the wall at (0, 1.5); the ray a quarter of the height up
    # at y = 1.5 + 0.5 tan(vfov / 2) * 2 m
    np.testing.assert_allclose(shot[h // 2, w // 2], wall_colour(0.0, 1.5), atol=4)
    np.testing.assert_allclose(shot[h // 4, w // 2], wall_colour(0.0, 1.5 + TAN_HALF_VFOV), atol=4)


@needs_chromium
def test_chromium_measures_between_two_picked_points_in_metres(tmp_path):
    make_workdir(tmp_path)
    index = view.run(ViewConfig(), tmp_path)
    with serving(index.parent) as base:
        dom = chromium(base + "index.html?pick=0.4,0.5;0.7,0.5")
    result = re.search(r'<span id="measure-result" data-distance-m="([^"]+)" data-points="([^"]+)">([^<]*)</span>',
                       dom)
    assert result, dom[-2000:]
    distance_m, points = float(result.group(1)), np.array(json.loads(result.group(2).replace("&quot;", '"')))
    vw, vh = (int(v) for v in re.search(r'data-viewport="(\d+)x(\d+)"', dom).groups())
    half_width_m = TAN_HALF_VFOV * vw / vh * 2.0  # at the wall, 2 m away
    expected = np.array([[-0.2 * half_width_m, 1.5, WALL_Z_M], [0.4 * half_width_m, 1.5, WALL_Z_M]])
    np.testing.assert_allclose(points, expected, atol=2e-3)
    assert distance_m == pytest.approx(0.6 * half_width_m, abs=2e-3)
    assert result.group(3) == f"{distance_m:.3f} m"


def test_view_without_mesh_raises(tmp_path):
    with pytest.raises(PromptmeshError, match="no mesh to show"):
        view.run(ViewConfig(), tmp_path)


@needs_chromium
def test_chromium_shows_a_textured_ar_export(tmp_path):
    """An AR export textured like the wall (glTF UV (0, 0) at the image's top-left): the texture reaches the
    screen through the page's TextureLoader (createImageBitmap never resolves under SwiftShader) unchanged."""
    wd = make_workdir(tmp_path)
    mesh = wall(8)
    uv = np.stack([(mesh.vertices[:, 0] - WALL_X_M[0]) / 3.0, (WALL_Y_M[1] - mesh.vertices[:, 1]) / 3.0], 1)
    n = 64
    centres = (np.arange(n) + 0.5) / n
    texture = np.rint([[wall_colour(WALL_X_M[0] + 3 * u, WALL_Y_M[1] - 3 * v) for u in centres] for v in centres])
    ok, png = cv2.imencode(".png", cv2.cvtColor(texture.astype(np.uint8), cv2.COLOR_RGB2BGR))
    write_glb(view.ar_mesh(wd), mesh.vertices, mesh.triangles, uv=uv, texture=png.tobytes(), texture_mime="image/png")
    index = view.run(ViewConfig(), tmp_path)
    png_path = tmp_path / "shot.png"
    with serving(index.parent) as base:
        chromium(base + "index.html", screenshot=png_path, window_wh=(1000, 700))
    shot = cv2.cvtColor(cv2.imread(str(png_path)), cv2.COLOR_BGR2RGB).astype(int)
    h, w = shot.shape[:2]
    np.testing.assert_allclose(shot[h // 2, w // 2], wall_colour(0.0, 1.5), atol=5)
    np.testing.assert_allclose(shot[h // 4, w // 2], wall_colour(0.0, 1.5 + TAN_HALF_VFOV), atol=5)


def test_serving_on_a_taken_port_is_one_line_error(tmp_path):
    first = view.server(tmp_path, 0)
    try:
        with pytest.raises(PromptmeshError, match=rf"127\.0\.0\.1:{first.server_address[1]}: cannot serve there"):
            view.server(tmp_path, first.server_address[1])
    finally:
        first.server_close()


@needs_chromium
def test_page_opened_as_a_file_says_to_serve_it(tmp_path):
    make_workdir(tmp_path)
    dom = chromium(view.run(ViewConfig(), tmp_path).as_uri())
    assert "promptmesh view WORKDIR --serve" in re.search(r'<p id="status"[^>]*>([^<]*)</p>', dom).group(1)
    assert "0.854" in dom  # the scores are there all the same


def test_after_a_real_run_the_page_reads_the_stages_outputs(tmp_path):
    """The facts and the start pose come from what ingest, fuse (pose refinement on) and eval really write."""
    from make_synthetic_capture import make_capture
    from pipeline import runner
    from pipeline.capture import CaptureTable
    from pipeline.config import PipelineConfig, override
    from pipeline.poses import fused_camera_to_world

    capture = make_capture(tmp_path / "syn", scene="easy", n_frames=5, width=96, height=72, seed=2)
    cfg = override(override(PipelineConfig(), "fuse", voxel_size_m=0.04), "depth", model="lidar", long_side_px=96)
    cfg = override(cfg, "eval", sample_spacing_m=0.02)
    result = runner.run(override(cfg, "ingest", blur_select=False), capture["stray"], tmp_path / "wd",
                        gt_mesh=capture["gt_mesh"])
    page = view.run(ViewConfig(), tmp_path / "wd").read_text()
    fscore = json.loads(result.eval_path.read_text())["culled"]["fscore"]
    assert re.search(rf'id="scores-culled">.*<td>{fscore:.3f}</td></tr>', page)
    for fact in ("<th>format</th><td>stray</td>", "<th>frames kept</th><td>5 of 5</td>", "<td>96×72</td>",
                 "<th>depth model</th><td>lidar</td>", "<th>TSDF voxel</th><td>40 mm</td>"):
        assert fact in page, fact
    wd = WorkDir(tmp_path / "wd")
    middle = fused_camera_to_world(wd, CaptureTable.load(wd))[2]
    np.testing.assert_allclose(page_data(page)["start"]["eye"], middle[:3, 3])
    np.testing.assert_allclose(page_data(page)["start"]["forward"], middle[:3, 2])


def test_mesh_alone_is_enough(tmp_path):
    """No capture, eval or compare (a mesh.ply from elsewhere): the page fits the whole mesh and says what is
    missing instead of failing."""
    write_ply(wall(), WorkDir(tmp_path).mesh("ply"))
    page = view.run(ViewConfig(), tmp_path).read_text()
    assert page_data(page)["start"] is None and "No evaluation yet" in page and "<td>3,200</td>" in page


@needs_chromium
def test_chromium_fits_the_whole_mesh_without_a_capture(tmp_path):
    write_ply(wall(), WorkDir(tmp_path).mesh("ply"))
    index = view.run(ViewConfig(), tmp_path)
    png = tmp_path / "shot.png"
    with serving(index.parent) as base:
        chromium(base + "index.html", screenshot=png, window_wh=(1000, 700))
    shot = cv2.imread(str(png))
    h, w = shot.shape[:2]
    assert len(np.unique(shot[h // 3:2 * h // 3, w // 3:w // 2].reshape(-1, 3), axis=0)) > 300
