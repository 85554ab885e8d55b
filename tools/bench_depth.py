#!/usr/bin/env python
"""Depth-model speed and memory: frames/s and peak memory per model and output size.

    python tools/bench_depth.py                          # lidar, guided, promptda-vits/-vitl at 756x1008,
                                                         # 1440x1920 and 2160x3840 (H x W) into docs/benchmarks.md
    python tools/bench_depth.py --models lidar,promptda-vits --sizes 756x1008 --repeats 5 --device cuda
    python tools/bench_depth.py --save-frame F.npz   # then --frame F.npz where Open3D is missing (tools/device_bench.sh)

Input: one frame of the hard synthetic room (`make_synthetic_capture.make_capture`, 640x480, LiDAR 256x192),
its RGB resized to each size (H x W) and its LiDAR depth (nearest) to 256 px wide at the same aspect. A row
times `predict()` of one frame to depth at that size, as the depth stage calls it (pre-processing, model,
resize to the output): the median over --repeats runs after one warm-up run. PromptDA's network input is the
size floored to multiples of 14 (`promptda_io.network_size`), with fp16 autocast on CUDA and fp32 on the CPU;
`lidar` and `guided` are NumPy/OpenCV and always run on the CPU.

PromptDA runs with the deterministic weights of tests/data/promptda/fill.py (there is no need for a real
checkpoint): the same dense operations run whatever the weight values, so its speed and memory are those
of the official checkpoints of the same variant.

Each (model, size) runs in a subprocess of its own, so peak memory does not mix between rows. Peak memory
is measured over the warm-up and timed runs: on the CPU the process's resident-set high-water mark (VmHWM,
/proc/self/status, reset after the model is loaded; it includes Python, the libraries, the weights and the
frame), on CUDA `torch.cuda.max_memory_allocated` (weights included).

Time budget (--max-seconds per row): when the warm-up run leaves no time for a timed run, the row reports
that single cold run; a PromptDA size is skipped when the previous size's time scaled by the pixel count (a
lower bound: attention grows with the square) already exceeds the budget; a row still running after the
budget plus a loading allowance is killed and reported as such.

The table is printed and written to --out under "## Depth models", in one "### <device>: <machine>" block
per device and machine (other blocks and the rest of the file are kept).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from pipeline.artifacts import atomic_write_text
from pipeline.depth_models import DEPTH_MODELS
from pipeline.errors import PromptmeshError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
FILL_DIR = REPO / "tests" / "data" / "promptda"
"""The PromptDA reference material: fill.py (deterministic weights) and keys_<variant>.json."""
DOC = REPO / "docs" / "benchmarks.md"
SECTION = "## Depth models"
MODELS = ("lidar", "guided", "promptda-vits", "promptda-vitl")
SIZES_HW = ((756, 1008), (1440, 1920), (2160, 3840))
LIDAR_WIDTH_PX = 256
"""Width of the LiDAR depth given to the models (ARKit sceneDepth is 256x192 for 4:3)."""
CAPTURE_WH = (640, 480)
LOAD_ALLOWANCE_S = 180.0
"""Extra seconds a row's subprocess gets over --max-seconds for imports, weights and the frame."""
GPU_BUDGET_MIB = 16 * 1024
"""The GPU memory PromptDA ViT-L at ~4K must fit in (issue 4)."""


@dataclass
class BenchFrame:
    """One frame: (H, W, 3) uint8 RGB, (h, w) float32 LiDAR metres (0 = no return), (h, w) uint8 ARKit
    confidence or None, (H, W) float32 GT z-depth metres (0 = none) or None."""

    rgb: np.ndarray
    lidar_depth_m: np.ndarray
    confidence: Optional[np.ndarray] = None
    gt_depth_m: Optional[np.ndarray] = None


# --------------------------------------------------------------------------- inputs


def hard_frames(out_dir: Path, n_frames: int, width: int = CAPTURE_WH[0], height: int = CAPTURE_WH[1],
                seed: int = 0) -> list[BenchFrame]:
    """Render the hard synthetic room as a Stray capture in out_dir and read it back with the Stray reader
    (HEVC RGB, millimetre LiDAR, as the pipeline sees them), GT depth at the RGB size."""
    from make_synthetic_capture import make_capture

    from pipeline.readers import open_capture

    paths = make_capture(out_dir, scene="hard", n_frames=n_frames, width=width, height=height,
                         layouts=("stray",), seed=seed)
    source = open_capture(paths["stray"])
    frames = []
    for f in source.frames():
        gt = source.gt_depth(f.frame_index) if source.gt_depth is not None else None
        conf = f.load_confidence() if f.load_confidence is not None else None
        frames.append(BenchFrame(f.load_rgb(), f.load_depth_m(), conf, gt))
    return frames


def save_frame(frame: BenchFrame, path: Path) -> Path:
    """Write a frame's RGB, LiDAR depth and confidence (not its GT) as an npz that `load_frame` reads."""
    arrays = {"rgb": frame.rgb, "lidar_depth_m": frame.lidar_depth_m}
    if frame.confidence is not None:
        arrays["confidence"] = frame.confidence
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return Path(path)


def load_frame(path: Path) -> BenchFrame:
    """The frame `save_frame` wrote."""
    with np.load(path) as z:
        return BenchFrame(z["rgb"], z["lidar_depth_m"], z["confidence"] if "confidence" in z else None)


def frame_at_size(frame: BenchFrame, out_hw: tuple[int, int]) -> BenchFrame:
    """RGB resized to out_hw (H, W); LiDAR depth and confidence (nearest) to LIDAR_WIDTH_PX wide, same aspect."""
    H, W = out_hw
    lidar_wh = (LIDAR_WIDTH_PX, max(1, round(LIDAR_WIDTH_PX * H / W)))
    shrink = H < frame.rgb.shape[0]
    rgb = cv2.resize(frame.rgb, (W, H), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    lidar = cv2.resize(frame.lidar_depth_m, lidar_wh, interpolation=cv2.INTER_NEAREST)
    conf = None if frame.confidence is None else cv2.resize(frame.confidence, lidar_wh,
                                                             interpolation=cv2.INTER_NEAREST)
    return BenchFrame(rgb, lidar, conf)


def filled_promptda(name: str, fill_dir: Path = FILL_DIR, seed: int = 0):
    """PromptDA `name` ("promptda-vits", "promptda-vitl", ...) with fill.py's deterministic weights, eval mode.

    The weights are untrained: outputs keep the model's structure (range, shapes, cost), not its accuracy.
    """
    import torch

    from pipeline.depth.promptda import build_model
    from pipeline.depth.promptda_io import model_spec

    _, variant, _ = model_spec(name)
    fill_py, keys = Path(fill_dir) / "fill.py", Path(fill_dir) / f"keys_{variant}.json"
    if not fill_py.is_file() or not keys.is_file():
        raise PromptmeshError(f"{fill_dir}: no fill.py or keys_{variant}.json; pass --fill-dir pointing at "
                              "tests/data/promptda")
    spec = importlib.util.spec_from_file_location("promptda_fill", fill_py)
    fill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fill)
    state = fill.fill_state_dict(json.loads(keys.read_text()), seed)
    model = build_model(variant)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return model.eval()


# --------------------------------------------------------------------------- one row, in this process


def _peak_rss_reset() -> None:
    """Reset this process's resident-set high-water mark (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _proc_status_mib(field: str) -> float:
    """VmHWM / VmRSS of this process from /proc/self/status, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise OSError(f"/proc/self/status has no {field}")


def _model_runner(name: str, device: str, out_hw: tuple[int, int], fill_dir: Path
                  ) -> tuple[Callable[[BenchFrame], np.ndarray], dict]:
    """(predict(frame) -> (H', W') depth, row fields describing how it runs)."""
    from pipeline.depth.classical import GuidedUpsampler, LidarResize

    if name in ("lidar", "guided"):
        model = LidarResize() if name == "lidar" else GuidedUpsampler()
        return (lambda f: model.predict(f.rgb, f.lidar_depth_m, f.confidence, out_hw),
                {"device": "cpu", "precision": "numpy", "network_hw": None})
    from pipeline.depth.promptda_io import PromptDAPredictor, network_size

    predictor = PromptDAPredictor(filled_promptda(name, fill_dir), device, long_side_px=max(out_hw))
    precision = "fp32" if predictor.autocast_dtype is None else f"{str(predictor.autocast_dtype)[6:]} autocast"
    return (lambda f: predictor.predict(f.rgb, f.lidar_depth_m, out_hw),
            {"device": predictor.device.type, "precision": precision,
             "network_hw": list(network_size(*out_hw, max(out_hw)))})


def measure(name: str, frame: BenchFrame, out_hw: tuple[int, int], repeats: int = 3, device: str = "cpu",
            max_seconds: float = 600.0, fill_dir: Path = FILL_DIR) -> dict:
    """Time model `name` on `frame` at out_hw (H, W) in this process (see the module docstring) -> row dict:
    model, size_hw, network_hw, device, precision, runs, cold, seconds (median per frame), seconds_min,
    seconds_max, frames_per_s, peak_rss_mib, peak_cuda_mib (None on the CPU), load_1min (load average when
    the runs started), note."""
    frame = frame_at_size(frame, out_hw)
    predict, how = _model_runner(name, device, tuple(out_hw), fill_dir)
    cuda = how["device"] == "cuda"
    gc.collect()
    _peak_rss_reset()
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def timed() -> float:
        t0 = time.perf_counter()
        depth_m = predict(frame)  # numpy: a CUDA result has been copied back, i.e. synchronised
        seconds = time.perf_counter() - t0
        assert depth_m.shape == tuple(out_hw), f"{name} returned {depth_m.shape}, expected {tuple(out_hw)}"
        return seconds

    load_1min = os.getloadavg()[0]  # the machine may be shared: what else was running
    warm = timed()
    runs = min(repeats, int((max_seconds - warm) // warm)) if warm > 0 else repeats
    cold = runs < 1
    times = [warm] if cold else [timed() for _ in range(runs)]
    peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    note = ""
    if cold:
        note = f"1 cold run: a second would exceed the {max_seconds:.0f} s budget"
    if peak_cuda is not None and peak_cuda > GPU_BUDGET_MIB:
        note = "; ".join(filter(None, [note, "over 16 GiB"]))
    median = float(np.median(times))
    return {"model": name, "size_hw": list(out_hw), **how, "runs": len(times), "cold": cold,
            "seconds": median, "seconds_min": float(min(times)), "seconds_max": float(max(times)),
            "frames_per_s": 1.0 / median, "peak_rss_mib": _proc_status_mib("VmHWM"), "peak_cuda_mib": peak_cuda,
            "load_1min": load_1min, "note": note}


# --------------------------------------------------------------------------- rows in subprocesses


def _skipped_row(name: str, out_hw: Sequence[int], note: str) -> dict:
    return {"model": name, "size_hw": list(out_hw), "network_hw": None, "device": "-", "precision": "-",
            "runs": 0, "cold": False, "seconds": None, "seconds_min": None, "seconds_max": None,
            "frames_per_s": None, "peak_rss_mib": None, "peak_cuda_mib": None, "load_1min": None, "note": note}


def _measure_in_subprocess(name: str, out_hw: Sequence[int], frame_file: Path, repeats: int, device: str,
                           max_seconds: float, fill_dir: Path) -> dict:
    job = {"model": name, "size_hw": list(out_hw), "frame_file": str(frame_file), "repeats": repeats,
           "device": device, "max_seconds": max_seconds, "fill_dir": str(fill_dir)}
    result = frame_file.with_name(f"{name}_{out_hw[0]}x{out_hw[1]}.json")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job), str(result)]
    timeout = max_seconds + LOAD_ALLOWANCE_S
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s at %dx%d: killed after %.0f s", name, *out_hw, timeout)
        return _skipped_row(name, out_hw, f"killed: no result within {timeout:.0f} s")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        log.warning("%s at %dx%d failed (exit %d): %s", name, *out_hw, proc.returncode, proc.stderr[-2000:])
        return _skipped_row(name, out_hw, f"failed (exit {proc.returncode}): {last[:120]}")
    return json.loads(result.read_text())


def _worker(job_json: str, result_path: str) -> int:
    job = json.loads(job_json)
    frame = load_frame(Path(job["frame_file"]))
    row = measure(job["model"], frame, tuple(job["size_hw"]), job["repeats"], job["device"], job["max_seconds"],
                  Path(job["fill_dir"]))
    atomic_write_text(Path(result_path), json.dumps(row))
    return 0


def bench(models: Sequence[str] = MODELS, sizes_hw: Sequence[tuple[int, int]] = SIZES_HW, repeats: int = 3,
          device: str = "cpu", max_seconds: float = 600.0, frame: Optional[BenchFrame] = None,
          fill_dir: Path = FILL_DIR) -> list[dict]:
    """Rows of `measure` for every model and size (sizes in increasing pixel count), each in a subprocess.

    frame: the input (default: frame 0 of a 1-frame hard synthetic capture, rendered here).
    """
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_depth_") as tmp:
        tmp = Path(tmp)
        if frame is None:
            frame = hard_frames(tmp / "capture", n_frames=1)[0]
        frame_file = save_frame(frame, tmp / "frame.npz")
        for name in models:
            previous: Optional[dict] = None
            for out_hw in sorted(sizes_hw, key=lambda hw: hw[0] * hw[1]):
                note = _skip_reason(name, out_hw, previous, max_seconds)
                if note:
                    log.info("%s at %dx%d: %s", name, *out_hw, note)
                    rows.append(_skipped_row(name, out_hw, note))
                    continue
                log.info("%s at %dx%d ...", name, *out_hw)
                rows.append(_measure_in_subprocess(name, out_hw, frame_file, repeats, device, max_seconds,
                                                   fill_dir))
                previous = rows[-1]
                log.info("%s at %dx%d: %s", name, *out_hw, _fmt(previous["seconds"], " s/frame") or previous["note"])
    return rows


def _skip_reason(name: str, out_hw: Sequence[int], previous: Optional[dict], max_seconds: float) -> str:
    """Why a PromptDA size need not be run, given the row of the model's previous (smaller) size; "" = run it."""
    if previous is None or not DEPTH_MODELS[name].needs_weights:
        return ""
    if previous["seconds"] is None:
        return f"skipped: {previous['size_hw'][0]}x{previous['size_hw'][1]} gave no time"
    pixels = lambda hw: hw[0] * hw[1]  # noqa: E731
    lower_bound = previous["seconds"] * pixels(out_hw) / pixels(previous["size_hw"])
    if lower_bound > max_seconds:
        return (f"skipped: >= ~{lower_bound:.0f} s/frame (pixel-count scaling of "
                f"{previous['size_hw'][0]}x{previous['size_hw'][1]}) exceeds the {max_seconds:.0f} s budget")
    return ""


# --------------------------------------------------------------------------- reporting


def _fmt(value: Optional[float], unit: str = "", digits: int = 3) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}g}{unit}" if abs(value) < 10 ** digits else f"{value:.0f}{unit}"


def markdown_table(rows: Sequence[dict]) -> str:
    """Rows of `bench` -> a Markdown table (the CUDA memory column only when some row ran on CUDA)."""
    with_cuda = any(r["peak_cuda_mib"] is not None for r in rows)
    header = ["model", "size (HxW)", "network input", "device", "precision", "runs", "median s/frame",
              "frames/s", "peak RSS MiB"] + (["peak CUDA MiB"] if with_cuda else []) + ["load", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [f"`{r['model']}`", "x".join(map(str, r["size_hw"])),
                 "x".join(map(str, r["network_hw"])) if r["network_hw"] else "-", r["device"], r["precision"],
                 f"{r['runs']}{' (cold)' if r['cold'] else ''}", _fmt(r["seconds"]), _fmt(r["frames_per_s"]),
                 _fmt(r["peak_rss_mib"], digits=4)]
        if with_cuda:
            cells.append(_fmt(r["peak_cuda_mib"], digits=4))
        cells += [_fmt(r["load_1min"], digits=2), r["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> dict:
    """CPU model, cores, RAM, torch version, date, load average; GPU name and memory when CUDA is usable."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
        with open("/proc/meminfo") as f:
            ram_gib = int(next(line for line in f if line.startswith("MemTotal")).split()[1]) / 2**20
    except OSError:
        ram_gib = float("nan")
    info = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "ram_gib": ram_gib, "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "load": os.getloadavg()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return info


def _heading_level(line: str) -> int:
    """Markdown ATX heading level of a line ("## x" -> 2), 0 for other lines."""
    hashes = len(line) - len(line.lstrip("#"))
    return hashes if 0 < hashes <= 6 and line[hashes:hashes + 1] == " " else 0


def split_block(text: str, heading: str) -> tuple[str, Optional[str], str]:
    """Markdown text -> (before, body, after) around the block of the line `heading`: its body runs up to the
    next heading of the same or a higher level. body is None (and after "") when there is no such line."""
    lines = text.splitlines()
    if heading not in lines:
        return text, None, ""
    level = _heading_level(heading)
    start = lines.index(heading)
    end = start + 1
    while end < len(lines) and not 0 < _heading_level(lines[end]) <= level:
        end += 1
    return "\n".join(lines[:start]), "\n".join(lines[start + 1:end]), "\n".join(lines[end:])


def replace_block(text: str, heading: str, body: str) -> str:
    """`text` with the block of `heading` (see split_block) replaced by heading + body, or appended at the end."""
    before, old, after = split_block(text, heading)
    block = f"{heading}\n\n{body.strip()}"
    if old is None:
        before = text
    parts = [before.strip("\n"), block, after.strip("\n")]
    return "\n\n".join(p for p in parts if p) + "\n"


def update_doc(path: Path, section: str, body: str, sub_heading: Optional[str] = None,
               sub_body: str = "") -> Path:
    """Replace the "## " `section` of the Markdown file `path` (created if missing) and nothing else.

    Without sub_heading, body is the whole section. With it, body is the section's intro (the text before
    its first "### " heading), the section's "### " block `sub_heading` becomes sub_body and its other
    "### " blocks are kept. The file is re-read right before writing (others write other sections of it)
    and written atomically.
    """
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if sub_heading is not None:
        old = split_block(text, section)[1] or ""
        lines = old.splitlines()
        first_sub = next((i for i, line in enumerate(lines) if _heading_level(line) == 3), len(lines))
        subs = replace_block("\n".join(lines[first_sub:]), sub_heading, sub_body)
        body = f"{body.strip()}\n\n{subs}"
    atomic_write_text(path, replace_block(text, section, body))
    return path


def depth_section(rows: Sequence[dict], info: dict, load_end: Sequence[float], repeats: int,
                  max_seconds: float) -> tuple[str, str, str]:
    """(section intro, "### " heading, block body) of the depth-model table for docs/benchmarks.md."""
    intro = (
        "Speed and peak memory of each depth model per output size, from `python tools/bench_depth.py` "
        "(protocol in its docstring). Input: one frame of the hard synthetic room (640x480 render, LiDAR "
        "256x192), RGB resized to the size, LiDAR kept 256 px wide; a row times one frame through the "
        "model's `predict()` as the depth stage calls it (pre-processing, model, resize to the output size), "
        "median of the timed runs after one warm-up run. PromptDA runs with the deterministic weights of "
        "`tests/data/promptda/fill.py` (no real checkpoint is needed): the same dense operations run whatever the "
        "weight values, so speed and memory are those of the official checkpoint of that variant; its network "
        "input is the size floored to multiples of 14. Peak RSS is the row's own process (Python, libraries, "
        "weights, frame and the runs); peak CUDA is `torch.cuda.max_memory_allocated` (weights included); load is "
        "the 1-minute load average when the row's runs started. "
        "Rows over the time budget report one cold run, or are skipped with the reason."
    )
    device = "cuda" if "gpu" in info and any(r["device"] == "cuda" for r in rows) else "cpu"
    where = info["gpu"] if device == "cuda" else f"{info['cpu']}, {info['cores']} cores"
    heading = f"### {device}: {where}"
    load = "/".join(f"{x:.1f}" for x in info["load"])
    body = (
        f"{info['date']}: {info['cpu']}, {info['cores']} cores, {info['ram_gib']:.0f} GiB RAM"
        + (f", GPU {info['gpu']}" if "gpu" in info else "")
        + f"; torch {info['torch']}; up to {repeats} timed runs per row, budget {max_seconds:.0f} s per row. "
        f"Load average (1/5/15 min) {load} at the start and {'/'.join(f'{x:.1f}' for x in load_end)} at the "
        "end: the machine is shared with other engineers' test runs, so times are pessimistic (quoted as "
        "medians) and compare best within this table.\n\n" + markdown_table(rows)
    )
    return intro, heading, body


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 756x1008, got {text!r}") from None
    return h, w


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:  # one row, started by bench()
        return _worker(*argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Example: python tools/bench_depth.py --models lidar,guided --sizes 756x1008")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default {','.join(MODELS)})")
    ap.add_argument("--sizes", default=",".join(f"{h}x{w}" for h, w in SIZES_HW),
                    help="comma-separated output sizes HxW (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row after one warm-up (default 3)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="PromptDA device; auto = cuda when available (lidar and guided always use the CPU)")
    ap.add_argument("--max-seconds", type=float, default=600.0,
                    help="time budget per row, seconds (default %(default)s; see the module docstring)")
    ap.add_argument("--fill-dir", type=Path, default=FILL_DIR, help="folder with fill.py and keys_<variant>.json")
    ap.add_argument("--out", type=Path, default=DOC, help="Markdown file to update (default docs/benchmarks.md); "
                    "'-' prints only")
    ap.add_argument("--frame", type=Path, help="read the input frame from this npz (written by --save-frame) "
                    "instead of rendering it (rendering needs Open3D)")
    ap.add_argument("--save-frame", type=Path, help="only render the input frame and write it to this npz")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(levelname)s] %(message)s", datefmt="%H:%M:%S")
    if args.save_frame is not None:
        with tempfile.TemporaryDirectory(prefix="bench_depth_") as tmp:
            log.info("wrote %s", save_frame(hard_frames(Path(tmp) / "capture", n_frames=1)[0], args.save_frame))
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in DEPTH_MODELS]
    if unknown or args.repeats < 1:
        ap.error(f"unknown models {unknown}" if unknown else "--repeats must be at least 1")
    sizes = [_size(s) for s in args.sizes.split(",") if s.strip()]
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        info = machine()
        frame = load_frame(args.frame) if args.frame is not None else None
        rows = bench(models, sizes, args.repeats, device, args.max_seconds, frame=frame, fill_dir=args.fill_dir)
    except PromptmeshError as e:
        log.error("%s", e)
        return 1
    intro, heading, body = depth_section(rows, info, os.getloadavg(), args.repeats, args.max_seconds)
    print(f"{heading}\n\n{body}")  # the table is this tool's output
    if str(args.out) != "-":
        log.info("updated %s", update_doc(args.out, SECTION, intro, heading, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
