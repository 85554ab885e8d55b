"""Headless Chromium on a `promptmesh view` page: a screenshot, or the DOM after the page's scripts ran.

    python3 tools/view_screenshot.py WORKDIR docs/viewer.png [--query 'pick=0.4,0.5;0.6,0.5']

serves WORKDIR/view/ on 127.0.0.1 (a free port) and has Chromium render it with software WebGL (SwiftShader
through ANGLE), as the viewer's tests do. Needs Debian's `chromium` (tools/setup.sh installs it).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.view import server  # noqa: E402

SOFTWARE_WEBGL = ["--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


def chromium_binary() -> Optional[str]:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def serving(folder: Path) -> Iterator[str]:
    """The base URL of `folder` served on 127.0.0.1 (a free port) while the block runs."""
    httpd = server(folder, 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def chromium(url: str, *, screenshot: Optional[Path] = None, window_wh: tuple[int, int] = (1280, 800),
             budget_ms: int = 30000, timeout_s: float = 120) -> str:
    """Load `url` in headless Chromium, let its scripts run for up to `budget_ms` of virtual time, and return
    the DOM (or write a PNG screenshot to `screenshot` and return '')."""
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("chromium not found; install it (apt-get install chromium, see tools/setup.sh)")
    with tempfile.TemporaryDirectory(prefix="promptmesh-chromium-") as profile:
        args = [binary, "--headless", "--no-sandbox", *SOFTWARE_WEBGL, f"--user-data-dir={profile}",
                "--no-first-run", "--hide-scrollbars", f"--window-size={window_wh[0]},{window_wh[1]}",
                f"--virtual-time-budget={budget_ms}"]
        args += [f"--screenshot={screenshot}"] if screenshot is not None else ["--dump-dom"]
        done = subprocess.run(args + [url], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path, help="a work directory where `promptmesh view` has run")
    ap.add_argument("png", type=Path, help="where to write the screenshot")
    ap.add_argument("--query", default="", help="URL query for the page, e.g. 'pick=0.4,0.5;0.6,0.5'")
    ap.add_argument("--size", default="1280x800", help="window size WxH, pixels")
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    with serving(a.workdir / "view") as base:
        chromium(base + "index.html" + (f"?{a.query}" if a.query else ""), screenshot=a.png.resolve(),
                 window_wh=(w, h))
    print(a.png)


if __name__ == "__main__":
    main()
