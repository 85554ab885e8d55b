#!/usr/bin/env python
"""PromptDA prompt holes: what LiDAR pixels without a return (0) do to the output, with and without filling.

    python tools/bench_prompt_holes.py                    # 6 frames of the hard synthetic room -> docs/benchmarks.md
    python tools/bench_prompt_holes.py --frames 3 --out -  # print only

The official model normalises the prompt by its min and max over all pixels, zeros included, and maps its
sigmoid output back onto that range, so its output lies in [min(prompt), max(prompt)] (tests/data/promptda/SPEC.md
§1, §6). A LiDAR map with holes (0 = no return: glass, dark surfaces, far range) therefore lets the output go
down to 0 m; `promptda_io.fill_prompt_holes` (nearest valid pixel, on by default in promptmesh) keeps it in
the range the LiDAR measured.

On the hard synthetic capture (`make_synthetic_capture.make_capture`, 640x480, read back with the Stray
reader) PromptDA ViT-S runs with the deterministic, untrained weights of tests/data/promptda/fill.py, once with
the raw prompt and once with the filled one, at the pipeline's default network size (long side 1008) with
output at the RGB size. Per frame: share of zero LiDAR pixels, prompt min/max, output range, share of output
pixels below the smallest valid LiDAR depth (depths the LiDAR rules out), and L1 against the GT depth.

Untrained weights make the depth values inside the range meaningless (so L1 says nothing about PromptDA's
accuracy); the range effect is structural and holds for any weights.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from bench_depth import DOC, FILL_DIR, BenchFrame, filled_promptda, hard_frames, machine, update_doc
from pipeline.errors import PromptmeshError

log = logging.getLogger(__name__)

SECTION = "## PromptDA prompt holes"


def measure_prompt_holes(model, frames: Sequence[BenchFrame], long_side_px: int = 1008,
                         device: str = "cpu") -> list[dict]:
    """Run PromptDA `model` on each frame with the raw and the hole-filled LiDAR prompt -> one dict per frame:

    zero_share (share of LiDAR pixels without a return), valid_min_m / valid_max_m (valid LiDAR range),
    prompt_raw_m / prompt_filled_m / out_raw_m / out_filled_m ((min, max) metres), below_raw / below_filled
    (share of output pixels below valid_min_m), l1_raw_m / l1_filled_m (mean |output - GT| over GT pixels > 0,
    None without GT). Output is at the frame's GT size (else its RGB size).
    """
    from pipeline.depth.promptda_io import PromptDAPredictor, fill_prompt_holes

    raw = PromptDAPredictor(model, device, long_side_px, fill_holes=False)
    filled = PromptDAPredictor(model, device, long_side_px, fill_holes=True)
    rows = []
    for i, f in enumerate(frames):
        lidar = np.nan_to_num(np.asarray(f.lidar_depth_m, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        valid = lidar > 0
        if not valid.any():
            raise PromptmeshError(f"frame {i}: LiDAR depth has no valid pixel; nothing to prompt with")
        prompt_filled = fill_prompt_holes(lidar)
        out_hw = f.gt_depth_m.shape if f.gt_depth_m is not None else f.rgb.shape[:2]
        out_raw, out_filled = raw.predict(f.rgb, lidar, out_hw), filled.predict(f.rgb, lidar, out_hw)
        valid_min = float(lidar[valid].min())
        row = {"frame": i, "zero_share": float(1.0 - valid.mean()), "valid_min_m": valid_min,
               "valid_max_m": float(lidar[valid].max()),
               "prompt_raw_m": (float(lidar.min()), float(lidar.max())),
               "prompt_filled_m": (float(prompt_filled.min()), float(prompt_filled.max())),
               "out_raw_m": (float(out_raw.min()), float(out_raw.max())),
               "out_filled_m": (float(out_filled.min()), float(out_filled.max())),
               "below_raw": float((out_raw < valid_min).mean()), "below_filled": float((out_filled < valid_min).mean()),
               "l1_raw_m": None, "l1_filled_m": None}
        if f.gt_depth_m is not None and (f.gt_depth_m > 0).any():
            gt_valid = f.gt_depth_m > 0
            row["l1_raw_m"] = float(np.abs(out_raw - f.gt_depth_m)[gt_valid].mean())
            row["l1_filled_m"] = float(np.abs(out_filled - f.gt_depth_m)[gt_valid].mean())
        log.info("frame %d: %.1f%% holes, output below the LiDAR minimum: raw %.1f%%, filled %.1f%%", i,
                 100 * row["zero_share"], 100 * row["below_raw"], 100 * row["below_filled"])
        rows.append(row)
    return rows


def _range(lo_hi: Sequence[float]) -> str:
    return f"{lo_hi[0]:.2f}–{lo_hi[1]:.2f}"


def _pct(share: float) -> str:
    return f"{100 * share:.1f} %"


def _metres(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def holes_table(rows: Sequence[dict]) -> str:
    """Rows of `measure_prompt_holes` -> a Markdown table, one line per frame plus the mean."""
    header = ["frame", "LiDAR zeros", "prompt m, raw", "prompt m, filled", "output m, raw", "output m, filled",
              "output < LiDAR min, raw", "output < LiDAR min, filled", "L1 vs GT m, raw", "L1 vs GT m, filled"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [str(r["frame"]), _pct(r["zero_share"]), _range(r["prompt_raw_m"]), _range(r["prompt_filled_m"]),
                 _range(r["out_raw_m"]), _range(r["out_filled_m"]), _pct(r["below_raw"]), _pct(r["below_filled"]),
                 _metres(r["l1_raw_m"]), _metres(r["l1_filled_m"])]
        lines.append("| " + " | ".join(cells) + " |")
    l1 = {k: [r[k] for r in rows if r[k] is not None] for k in ("l1_raw_m", "l1_filled_m")}
    mean = ["**mean**", _pct(np.mean([r["zero_share"] for r in rows])), "", "", "", "",
            _pct(np.mean([r["below_raw"] for r in rows])), _pct(np.mean([r["below_filled"] for r in rows])),
            _metres(float(np.mean(l1["l1_raw_m"])) if l1["l1_raw_m"] else None),
            _metres(float(np.mean(l1["l1_filled_m"])) if l1["l1_filled_m"] else None)]
    lines.append("| " + " | ".join(mean) + " |")
    return "\n".join(lines)


def holes_section(rows: Sequence[dict], info: dict, long_side_px: int) -> str:
    """Body of the "## PromptDA prompt holes" section: setup, table, what it shows."""
    with_holes = [r for r in rows if r["zero_share"] > 0]
    below_raw = np.mean([r["below_raw"] for r in rows])
    worst = max(rows, key=lambda r: r["below_raw"])
    below_filled = max(r["below_filled"] for r in rows)
    filled_text = ("no output pixel leaves it (0 % in every frame)" if below_filled == 0 else
                   f"at most {_pct(below_filled)} of the output pixels fall below it (interpolation rounding)")
    return (
        "LiDAR pixels without a return are 0. The official model normalises the prompt by its min/max over all "
        "pixels, zeros included, and maps its sigmoid output back onto that range, so the output always lies in "
        "[min(prompt), max(prompt)] (tests/data/promptda/SPEC.md §1, §6): one hole makes the minimum 0 m and lets the "
        "output go down to 0 m, below anything the LiDAR measured. promptmesh fills holes from the nearest valid "
        "pixel first (`promptda_io.fill_prompt_holes`, `fill_prompt_holes = true` by default).\n\n"
        f"Measured with `python tools/bench_prompt_holes.py` ({info['date']}, torch {info['torch']}, "
        f"{info['cpu']}): {len(rows)} frames of the hard synthetic room (640x480, LiDAR 256x192 with no return on "
        "the glass pane, dark surfaces and beyond ~5 m), PromptDA ViT-S at network long side "
        f"{long_side_px} px, output at 640x480, with the raw and with the filled prompt. **The weights are the "
        "deterministic, untrained ones of `tests/data/promptda/fill.py`** (no real checkpoint exists here): depth "
        "values inside the range are meaningless, and the L1 columns only show how far the stretched range moves "
        "an arbitrary output, not PromptDA's accuracy. The range columns are structural and hold for any "
        "weights.\n\n"
        + holes_table(rows) + "\n\n"
        f"With holes ({len(with_holes)} of {len(rows)} frames) the raw prompt's minimum is 0 m, and on average "
        f"{_pct(below_raw)} of the output pixels (up to {_pct(worst['below_raw'])}, frame {worst['frame']}) fall "
        "below the smallest depth the LiDAR measured: depths the sensor rules out. How many is a property of "
        "these untrained weights (where their sigmoid outputs fall); that it can happen at all is not. "
        f"With filling the prompt keeps the LiDAR's range and {filled_text}. With trained weights the range "
        "argument is the same, and a hole additionally reads to the network as the nearest point of the scene "
        "(normalised prompt 0) while the valid depths are squeezed into the top of the normalised range; that "
        "part cannot be measured without the checkpoints."
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Example: python tools/bench_prompt_holes.py --frames 3 --out -")
    ap.add_argument("--frames", type=int, default=6, help="frames of the hard synthetic room (default 6)")
    ap.add_argument("--long-side", type=int, default=1008, help="PromptDA network long side, pixels (default 1008)")
    ap.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--fill-dir", type=Path, default=FILL_DIR, help="folder with fill.py and keys_vits.json")
    ap.add_argument("--out", type=Path, default=DOC, help="Markdown file to update (default docs/benchmarks.md); "
                    "'-' prints only")
    args = ap.parse_args(argv)
    if args.frames < 1:
        ap.error("--frames must be at least 1")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(levelname)s] %(message)s", datefmt="%H:%M:%S")
    try:
        model = filled_promptda("promptda-vits", args.fill_dir)
        with tempfile.TemporaryDirectory(prefix="bench_holes_") as tmp:
            frames = hard_frames(Path(tmp), args.frames)
        rows = measure_prompt_holes(model, frames, args.long_side, args.device)
    except PromptmeshError as e:
        log.error("%s", e)
        return 1
    body = holes_section(rows, machine(), args.long_side)
    print(f"{SECTION}\n\n{body}")  # the table is this tool's output
    if str(args.out) != "-":
        log.info("updated %s", update_doc(args.out, SECTION, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
