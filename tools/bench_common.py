"""Shared pieces of the benchmark scripts (tools/bench_fuse.py, bench_run.py, bench_memory.py).

The machine is shared with other people's jobs, so every script repeats its measurements, alternates the
order of the things it compares, reports medians and records the load average around the runs.
Peak memory is the child process's own maximum resident set size (`os.wait4`), so a measurement is never
mixed up with the benchmark script's own memory.
"""
from __future__ import annotations

import logging
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "docs" / "benchmarks.md"
DEFAULT_CACHE = Path(os.environ.get("PROMPTMESH_BENCH_DIR", "/tmp/promptmesh-bench"))
"""Where synthetic captures and work directories of the benchmarks go (reused between runs)."""

log = logging.getLogger("bench")


def machine_line() -> str:
    """'<CPU model>, N cores, X GiB RAM' from /proc (Linux)."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM"


def load_average() -> str:
    """The 1-minute load average now, e.g. '2.31' (other people's jobs share this machine)."""
    return f"{os.getloadavg()[0]:.2f}"


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    """User + system CPU time of the child (all its threads): the work done, less sensitive to other load."""
    peak_rss_bytes: int
    """Maximum resident set size of the child process itself."""
    returncode: int
    stderr: str


_LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
os.write(int(sys.argv[1]), json.dumps([time.perf_counter() - t0, usage.ru_utime + usage.ru_stime, usage.ru_maxrss,
                                       os.waitstatus_to_exitcode(status)]).encode())
"""
"""Runs a command and reports its wall and CPU time and peak RSS. Measuring through this small process matters:
a child forked from the benchmark's own (large) process would report the benchmark's memory as its peak RSS,
since Linux keeps the high-water mark across exec."""


def run_measured(cmd: Sequence[str], cwd: Optional[Path] = None, env: Optional[dict] = None) -> Measured:
    """Run `cmd`, returning its wall and CPU time and its own peak RSS (os.wait4 in `_LAUNCHER`). stdout is
    discarded."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(write_fd), *cmd], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, pass_fds=(write_fd,))
    os.close(write_fd)
    stderr = proc.stderr.read()
    proc.wait()
    with os.fdopen(read_fd) as f:
        wall, cpu, maxrss_kib, returncode = json.loads(f.read() or "[0, 0, 0, -1]")
    return Measured(wall, cpu, int(maxrss_kib) * 1024, returncode, stderr)


def check(m: Measured, what: str) -> Measured:
    if m.returncode != 0:
        raise SystemExit(f"{what} failed (exit {m.returncode}):\n{m.stderr[-3000:]}")
    return m


def promptmesh_cmd(*args: str) -> list[str]:
    """The CLI as a subprocess, from this checkout."""
    return [sys.executable, "-m", "pipeline.cli", *args]


def synthetic_capture(path: Path, frames: int, width: int, height: int, scene: str = "hard", fps: float = 30.0) -> Path:
    """A Stray Scanner capture rendered by tools/make_synthetic_capture.py, made once and reused.

    GT depth is removed (real captures have none, and ingest would copy it), so the capture is what a
    phone writes: rgb.mp4 (HEVC), 256-wide LiDAR depth and confidence PNGs, poses, intrinsics.
    """
    path = Path(path)
    done = path / ".complete"
    if done.exists():
        return path
    sys.path.insert(0, str(REPO / "tools"))
    from make_synthetic_capture import make_capture

    log.info("rendering a %d-frame %dx%d synthetic capture into %s (minutes, once)", frames, width, height, path)
    if path.exists():
        shutil.rmtree(path)
    make_capture(path, scene=scene, n_frames=frames, width=width, height=height, gt_depth_size=(16, 12), flat=True,
                 fps=fps)
    shutil.rmtree(path / "gt_depth")
    done.write_text("")
    return path


def write_table(markdown_path: Path, heading: str, script: str, table: str) -> None:
    """Put `table` into the '## <heading>' section of a markdown file, between the markers
    <!-- <script> --> and <!-- /<script> -->, leaving the rest (prose, other people's sections) as it is.
    A missing section is appended, a section without markers gets them at its end."""
    markdown_path = Path(markdown_path)
    text = markdown_path.read_text() if markdown_path.exists() else "# Benchmarks\n"
    block = f"<!-- {script} -->\n{table.strip()}\n<!-- /{script} -->"
    marked = re.compile(rf"<!-- {re.escape(script)} -->\n.*?<!-- /{re.escape(script)} -->", re.S)
    section = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if marked.search(text):
        text = marked.sub(lambda _: block, text, count=1)
    elif (m := section.search(text)) is not None:
        text = text[:m.end()].rstrip() + "\n\n" + block + "\n\n" + text[m.end():].lstrip()
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n{block}\n"
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(text.rstrip() + "\n")


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(levelname)s] %(message)s", datefmt="%H:%M:%S")
