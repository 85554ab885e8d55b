"""Crash safety, the work-directory lock and determinism.

- `promptmesh run` killed with SIGKILL at random points inside every stage, then rerun, ends with exactly
  the artifacts of an uninterrupted run (a subprocess per attempt, on a tiny synthetic capture).
- A second concurrent `promptmesh run` on the same work directory is refused with one line; a lock left by
  a killed process is taken over, and the temporaries killed writers left are swept.
- What makes "exactly" possible: the mesh is put in a canonical order, the fused volume is saved sorted
  and reloads to the same geometry; prefetching stays bounded.
"""
from __future__ import annotations

import hashlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import fuse, mesh
from pipeline.artifacts import WorkdirLock, remove_temporaries
from pipeline.capture import CaptureTable
from pipeline.config import FuseConfig
from pipeline.errors import PromptmeshError
from pipeline.workdir import WorkDir

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "depth", "fuse", "mesh", "eval")
STAGE_DIRS = {"ingest": "capture", "depth": "depth/lidar", "fuse": "fuse", "mesh": "mesh", "eval": "eval"}
TINY_TOML = """
[fuse]
voxel_size_m = 0.04
[mesh]
min_component_triangles = 20
[eval]
sample_spacing_m = 0.04
downsample_m = 0.05
"""


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> dict[str, Path]:
    from make_synthetic_capture import make_capture

    root = tmp_path_factory.mktemp("reliability")
    paths = make_capture(root, scene="easy", n_frames=12, width=160, height=120, layouts=("stray",),
                         gt_depth_size=(40, 30))
    (root / "tiny.toml").write_text(TINY_TOML)
    return {"capture": paths["stray"], "gt_mesh": paths["gt_mesh"], "config": root / "tiny.toml"}


def run_cmd(capture: dict[str, Path], workdir: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "run", str(capture["capture"]), "-o", str(workdir), "--config",
            str(capture["config"]), "--depth-model", "lidar", "--gt-mesh", str(capture["gt_mesh"])]


def start(capture: dict[str, Path], workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(run_cmd(capture, workdir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def wait_for_stage(proc: subprocess.Popen, stage: str) -> bool:
    """Read the run's log until `stage` starts working (not 'up to date'); False if the run ended first."""
    working = re.compile(rf"\] {stage}: (?!up to date)")
    return any(working.search(line) for line in proc.stderr)


def wait_until_working_on(proc: subprocess.Popen, workdir: Path, stage: str) -> bool:
    """Poll until the run holds the lock and every stage before `stage` is done; False if it ended first."""
    lock = workdir / ".lock"
    before = [workdir / STAGE_DIRS[s] / "manifest.json" for s in STAGES[:STAGES.index(stage)]]
    while proc.poll() is None:
        try:
            locked = f"pid {proc.pid} " in lock.read_text()
        except OSError:
            locked = False
        if locked and all(m.exists() for m in before):
            return True
        time.sleep(0.001)
    return False


def interrupted_stage(workdir: Path) -> str:
    """The first stage without a manifest: where a killed run stopped."""
    return next((s for s in STAGES if not (workdir / STAGE_DIRS[s] / "manifest.json").exists()), "none")


def snapshot(workdir: Path) -> dict[str, object]:
    """Everything a run leaves, comparable between work directories: file bytes (sha256), the arrays of npz
    files (their zip headers hold write times), frames.parquet as a table, manifests by fingerprint and
    outputs (their summaries hold timings), timings.json left out."""
    out: dict[str, object] = {}
    for path in sorted(p for p in workdir.rglob("*") if p.is_file()):
        rel = path.relative_to(workdir).as_posix()
        if path.name == "timings.json":
            continue
        if path.name == "manifest.json":
            m = json.loads(path.read_text())
            out[rel] = (m["fingerprint"], m["outputs"])
        elif path.suffix == ".npz":
            with np.load(path) as z:
                out[rel] = {k: hashlib.sha256(z[k].tobytes()).hexdigest() for k in sorted(z.files)}
        elif path.suffix == ".parquet":
            out[rel] = pq.read_table(path).to_pydict()
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def reference(capture, tmp_path_factory) -> tuple[dict[str, object], dict[str, float]]:
    """(snapshot, seconds per stage) of an uninterrupted run."""
    workdir = tmp_path_factory.mktemp("reference") / "w"
    done = subprocess.run(run_cmd(capture, workdir), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return snapshot(workdir), json.loads(WorkDir(workdir).timings_json.read_text())["seconds"]


# --------------------------------------------------------------------------- kill and resume
def test_killed_anywhere_then_rerun_equals_an_uninterrupted_run(capture, reference, tmp_path):
    expected, stage_seconds = reference
    rng = np.random.default_rng(6)
    workdir = tmp_path / "w"
    interrupted = []
    for stage in STAGES:
        for _ in range(2):
            if stage == "mesh":  # it starts before fusion's manifest is written (fusion saves while the mesh
                proc = start(capture, workdir)  # stage runs): its start is read from the log
                working = wait_for_stage(proc, stage)
            else:
                proc = subprocess.Popen(run_cmd(capture, workdir), cwd=REPO, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                working = wait_until_working_on(proc, workdir, stage)
            if working:
                # a random point in the first half of the stage (as long as it took in the uninterrupted run)
                time.sleep(rng.uniform(0, stage_seconds[stage] / 2))
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=300)
            assert proc.returncode in (0, -signal.SIGKILL)
            if proc.returncode == -signal.SIGKILL:
                interrupted.append(stage)
                # nothing from the killed stage on is vouched for by a manifest
                assert STAGES.index(interrupted_stage(workdir)) <= STAGES.index(stage), (stage, interrupted_stage(workdir))
                lock = workdir / ".lock"
                assert lock.exists() and f"pid {proc.pid} " in lock.read_text()  # left behind by the dead run
    assert set(interrupted) == set(STAGES), interrupted
    done = subprocess.run(run_cmd(capture, workdir), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr  # the stale lock was taken over
    assert snapshot(workdir) == expected
    again = subprocess.run(run_cmd(capture, workdir), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stderr.count("up to date") == len(STAGES), again.stderr


# --------------------------------------------------------------------------- the lock
def test_second_concurrent_run_is_refused_with_one_line(capture, tmp_path):
    workdir = tmp_path / "w"
    first = start(capture, workdir)
    try:
        assert wait_for_stage(first, "ingest")  # the first run holds the lock now...
        first.send_signal(signal.SIGSTOP)  # ...and keeps it while the second one tries
        second = subprocess.run(run_cmd(capture, workdir), cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1
    [line] = second.stderr.strip().splitlines()
    assert line.startswith(f"promptmesh: error: {workdir}: another promptmesh process (host {socket.gethostname()} "
                           f"pid {first.pid} since ")
    assert line.endswith(") is using this work directory; wait for it to finish or use another -o WORKDIR")
    first.communicate(timeout=300)
    assert first.returncode == 0 and WorkDir(workdir).eval_json.exists()
    assert not (workdir / ".lock").exists()


def test_taking_the_lock_sweeps_temporaries_of_killed_writers(tmp_path):
    left = [WorkDir(tmp_path).fuse / ".tsdf.4242.tmp.npz", WorkDir(tmp_path).depth("lidar") / ".000003.png.k2j4x9_a.tmp"]
    kept = [WorkDir(tmp_path).depth("lidar") / ".fingerprint.json", tmp_path / "notes.tmp.txt", tmp_path / "a.tmp",
            tmp_path / ".draft.tmp"]
    for p in left + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    with WorkdirLock(tmp_path):
        assert [p.exists() for p in left] == [False, False] and all(p.exists() for p in kept)
        with pytest.raises(PromptmeshError, match="another promptmesh process"):
            WorkdirLock(tmp_path).acquire()  # the same process, a second holder: refused as well
    assert remove_temporaries(tmp_path) == 0


# --------------------------------------------------------------------------- determinism
def _square_mesh() -> mesh.MeshArrays:
    """Two triangles of a unit square (z = 0, normals +z), plus a duplicate of vertex 2 used by a third
    triangle that is degenerate once the duplicate is merged."""
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 1, 0]], float)
    t = np.array([[0, 1, 2], [0, 2, 3], [2, 4, 1]])
    c = np.array([[10, 0, 0], [20, 0, 0], [30, 0, 0], [40, 0, 0], [30, 0, 0]], np.uint8)
    return mesh.MeshArrays(v, t, c)


def test_canonical_order_is_independent_of_the_input_order():
    m = _square_mesh()
    canon = mesh.canonical_order(m)
    # vertices sorted by (x, y, z), the duplicate merged; triangles start at their smallest index, winding kept
    np.testing.assert_array_equal(canon.vertices, [[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(canon.colors[:, 0], [10, 40, 20, 30])
    np.testing.assert_array_equal(canon.triangles, [[0, 2, 3], [0, 3, 1]])
    rng = np.random.default_rng(0)
    for _ in range(5):
        perm = rng.permutation(len(m.vertices))
        new_index = np.argsort(perm)
        tri = new_index[m.triangles][rng.permutation(len(m.triangles))]
        tri = np.roll(tri, rng.integers(3), axis=1)  # same winding, another first vertex
        shuffled = mesh.canonical_order(mesh.MeshArrays(m.vertices[perm], tri, m.colors[perm]))
        for a, b in zip((shuffled.vertices, shuffled.triangles, shuffled.colors),
                        (canon.vertices, canon.triangles, canon.colors)):
            np.testing.assert_array_equal(a, b)


def _fused_grid(cfg: FuseConfig):
    """A small grid from two views of a tilted plane, integrated by the stage's own per-frame function."""
    import open3d as o3d

    h, w = 60, 80
    K = np.array([[60.0, 0, 39.5], [0, 60.0, 29.5], [0, 0, 1]])
    v, u = np.mgrid[0:h, 0:w]
    depth_mm = (1500 + 4 * u + 2 * v).astype(np.uint16)
    rgb = np.stack([u * 3, v * 4, np.full_like(u, 90)], -1).astype(np.uint8)
    grid = fuse.new_grid(cfg, 4096, o3d.core.Device("CPU:0"))
    for dx in (0.0, 0.03):
        camera_to_world = np.eye(4)
        camera_to_world[0, 3] = dx
        frame = fuse.PreparedFrame(0, depth_mm, rgb, K, K, int(depth_mm.size))
        assert fuse.integrate_frame(grid, frame, np.linalg.inv(camera_to_world), cfg, o3d.core.Device("CPU:0"))
    return grid


def test_saved_volume_reloads_the_same_geometry(tmp_path):
    cfg = FuseConfig(voxel_size_m=0.02)
    grid = _fused_grid(cfg)
    fuse.save_volume(grid, cfg, WorkDir(tmp_path).tsdf)
    with np.load(WorkDir(tmp_path).tsdf) as z:
        keys = z["block_keys"]
        assert z["tsdf"].dtype == np.float32 and z["weight"].dtype == np.uint16 and z["color"].dtype == np.uint8
        assert set(np.unique(z["weight"])) <= {0, 1, 2}
    assert keys.tolist() == sorted(keys.tolist())
    reloaded = fuse.load_grid(tmp_path)
    before, after = mesh.extract(grid, 1), mesh.extract(reloaded, 1)
    assert len(before.triangles) > 500
    np.testing.assert_array_equal(after.vertices, before.vertices)  # distances are saved exactly
    np.testing.assert_array_equal(after.triangles, before.triangles)
    assert np.abs(after.colors.astype(int) - before.colors).max() <= 1  # colours rounded to a level
    again = mesh.extract(fuse.load_grid(tmp_path), 1)
    np.testing.assert_array_equal(again.colors, after.colors)


def test_unreadable_volume_names_the_file_and_the_fix(tmp_path):
    path = WorkDir(tmp_path).tsdf
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(PromptmeshError, match=r"tsdf.npz: unreadable TSDF volume .*promptmesh fuse WORKDIR --force"):
        fuse.load_grid(tmp_path)


# --------------------------------------------------------------------------- bounded memory
def test_block_estimate_does_not_depend_on_when_keys_are_reduced(capture, tmp_path, monkeypatch):
    from pipeline import ingest
    from pipeline.config import IngestConfig

    ingest.run(IngestConfig(), capture["capture"], tmp_path)
    table = CaptureTable.load(tmp_path)
    cfg = FuseConfig(voxel_size_m=0.04)
    once = fuse.estimate_block_count(table, cfg)
    monkeypatch.setattr(fuse, "ESTIMATE_FLUSH_KEYS", 100)  # reduce to distinct keys after almost every frame
    assert fuse.estimate_block_count(table, cfg) == once
