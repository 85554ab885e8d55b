"""Atomic writes, stage manifests and the work-directory lock (pipeline/artifacts.py)."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.artifacts import (Manifest, WorkdirLock, atomic_output, atomic_write_json, fingerprint, is_current,
                                upstream_fingerprint)
from pipeline.config import FuseConfig
from pipeline.errors import PromptmeshError


def test_atomic_write_leaves_no_temp_and_replaces(tmp_path):
    p = tmp_path / "a" / "x.json"
    atomic_write_json(p, {"v": 1})
    atomic_write_json(p, {"v": np.float32(2.5)})
    assert json.loads(p.read_text()) == {"v": 2.5}
    assert sorted(os.listdir(p.parent)) == ["x.json"]


def test_atomic_output_failure_keeps_old_file(tmp_path):
    p = tmp_path / "mesh.ply"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(p) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("crash while writing")
    assert p.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["mesh.ply"]


def test_fingerprint_changes_with_settings_and_upstream():
    a = fingerprint("fuse", FuseConfig(), ["up1"])
    assert a == fingerprint("fuse", FuseConfig(), ["up1"])
    assert a != fingerprint("fuse", FuseConfig(voxel_size_m=0.02), ["up1"])
    assert a != fingerprint("fuse", FuseConfig(), ["up2"])
    assert a != fingerprint("mesh", FuseConfig(), ["up1"])


def test_manifest_current_only_with_matching_fingerprint_and_outputs(tmp_path):
    (tmp_path / "out.bin").write_bytes(b"x")
    Manifest("s", "abc", ["out.bin"], {}).write(tmp_path)
    assert is_current(tmp_path, "abc") is not None
    assert is_current(tmp_path, "abd") is None
    (tmp_path / "out.bin").unlink()
    assert is_current(tmp_path, "abc") is None
    (tmp_path / "manifest.json").write_text("{corrupt")
    assert is_current(tmp_path, "abc") is None
    with pytest.raises(PromptmeshError, match="run `promptmesh ingest` first"):
        upstream_fingerprint(tmp_path / "missing", "ingest")


def test_lock_refuses_second_holder_and_releases(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pipeline.artifacts import WorkdirLock; "
        f"l = WorkdirLock(r'{tmp_path}').acquire(); print('held', flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PromptmeshError, match="another promptmesh process"):
            WorkdirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its stale lock is taken over
    with WorkdirLock(tmp_path) as lock:
        assert lock.held and (tmp_path / ".lock").exists()
    assert not (tmp_path / ".lock").exists()


def test_stale_lock_from_dead_pid_is_taken_over(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a pid that no longer runs
    (tmp_path / ".lock").write_text(f"{socket.gethostname()} {p.pid} {time.time():.0f}")
    with WorkdirLock(tmp_path) as lock:
        assert lock.held
        assert f"pid {os.getpid()}" in (tmp_path / ".lock").read_text()  # ours now, not the dead process's
    assert not (tmp_path / ".lock").exists()
