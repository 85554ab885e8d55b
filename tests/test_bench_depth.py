"""tools/bench_depth.py and tools/bench_prompt_holes.py on tiny hand-made frames (no rendering)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench_depth import (BenchFrame, _skip_reason, bench, filled_promptda, load_frame, markdown_table, measure,
                         save_frame, update_doc)
from bench_prompt_holes import holes_table, measure_prompt_holes



def tiny_frame(holes: bool = True) -> BenchFrame:
    """96x128 RGB gradient, 24x32 LiDAR 1.0..3.0 m (a ramp), with 10 holes when `holes`, GT = 2 m everywhere."""
    y, x = np.mgrid[0:96, 0:128]
    rgb = np.stack([x * 2, y * 2, (x + y) % 256], -1).astype(np.uint8)
    lidar = np.linspace(1.0, 3.0, 24 * 32, dtype=np.float32).reshape(24, 32)
    if holes:
        lidar[0, :10] = 0.0  # removes the 10 nearest samples: the valid minimum becomes lidar[0, 10]
    return BenchFrame(rgb, lidar, np.full((24, 32), 2, np.uint8), np.full((96, 128), 2.0, np.float32))


@pytest.fixture(scope="module")
def vits():
    return filled_promptda("promptda-vits")


def test_bench_rows_and_table_for_each_model():
    rows = bench(["lidar", "guided", "promptda-vits"], [(140, 182)], repeats=1, frame=tiny_frame())
    assert [r["model"] for r in rows] == ["lidar", "guided", "promptda-vits"]
    for r in rows:
        assert r["size_hw"] == [140, 182] and r["runs"] == 1 and not r["cold"] and r["note"] == ""
        assert math.isfinite(r["seconds"]) and r["seconds"] > 0
        assert r["frames_per_s"] == pytest.approx(1.0 / r["seconds"])
        assert r["seconds_min"] == r["seconds"] == r["seconds_max"]  # one run
        assert math.isfinite(r["peak_rss_mib"]) and 20 < r["peak_rss_mib"] < 8192
        assert r["peak_cuda_mib"] is None and r["load_1min"] >= 0
    assert [r["network_hw"] for r in rows] == [None, None, [140, 182]]  # 140 = 10 x 14, 182 = 13 x 14
    assert [(r["device"], r["precision"]) for r in rows] == [("cpu", "numpy"), ("cpu", "numpy"), ("cpu", "fp32")]
    assert rows[2]["peak_rss_mib"] > rows[0]["peak_rss_mib"] + 50  # torch and 25 M weights

    lines = markdown_table(rows).splitlines()
    assert lines[0] == ("| model | size (HxW) | network input | device | precision | runs | median s/frame | "
                        "frames/s | peak RSS MiB | load | note |")
    assert lines[1] == "|" + "---|" * 11 and len(lines) == 5
    cells = [line.split(" | ") for line in lines[2:]]
    assert all(len(c) == 11 for c in cells)
    assert [c[0] for c in cells] == ["| `lidar`", "| `guided`", "| `promptda-vits`"]
    assert [c[2] for c in cells] == ["-", "-", "140x182"]
    assert all(float(c[7]) > 0 for c in cells)


def test_a_run_over_budget_reports_one_cold_run():
    row = measure("lidar", tiny_frame(), (48, 64), repeats=3, max_seconds=1e-9)
    assert row["runs"] == 1 and row["cold"] and "budget" in row["note"]
    assert "1 (cold)" in markdown_table([row]).splitlines()[2]


def test_larger_promptda_sizes_are_skipped_by_pixel_count_scaling():
    previous = {"size_hw": [100, 100], "seconds": 100.0}
    assert "400 s/frame" in _skip_reason("promptda-vitl", (200, 200), previous, max_seconds=300)
    assert _skip_reason("promptda-vitl", (200, 200), previous, max_seconds=500) == ""
    assert _skip_reason("guided", (200, 200), previous, max_seconds=1) == ""  # only PromptDA is extrapolated
    assert "gave no time" in _skip_reason("promptda-vits", (200, 200), {"size_hw": [100, 100], "seconds": None}, 9)


def test_update_doc_replaces_only_its_own_section_and_block(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Fusion\n\nfusion text\n\n## Depth models\n\nold intro\n\n### cuda: H100\n\n"
                   "gpu table\n\n### cpu: X\n\nold cpu\n\n## Memory\n\nmemory text\n")
    update_doc(doc, "## Depth models", "new intro", "### cpu: X", "new cpu")
    assert doc.read_text() == ("# Benchmarks\n\n## Fusion\n\nfusion text\n\n## Depth models\n\nnew intro\n\n"
                               "### cuda: H100\n\ngpu table\n\n### cpu: X\n\nnew cpu\n\n## Memory\n\nmemory text\n")
    update_doc(doc, "## Depth models", "new intro", "### cpu: Y", "y table")
    assert "### cpu: X\n\nnew cpu\n\n### cpu: Y\n\ny table\n\n## Memory" in doc.read_text()
    update_doc(doc, "## PromptDA prompt holes", "holes")
    assert doc.read_text().endswith("## Memory\n\nmemory text\n\n## PromptDA prompt holes\n\nholes\n")
    fresh = update_doc(tmp_path / "new.md", "## PromptDA prompt holes", "holes")
    assert fresh.read_text() == "# Benchmarks\n\n## PromptDA prompt holes\n\nholes\n"


def test_prompt_holes_stretch_the_raw_range_and_filling_keeps_it(vits):
    with_holes, without = tiny_frame(holes=True), tiny_frame(holes=False)
    without.gt_depth_m = np.zeros((96, 128), np.float32)  # L1 counts GT pixels > 0 only: here one, at 1000 m
    without.gt_depth_m[50, 60] = 1000.0
    rows = measure_prompt_holes(vits, [with_holes, without], long_side_px=126)
    r = rows[0]
    lidar = with_holes.lidar_depth_m
    valid_min = float(lidar[0, 10])
    assert r["zero_share"] == pytest.approx(10 / (24 * 32))
    assert r["valid_min_m"] == valid_min and r["valid_max_m"] == 3.0
    assert r["prompt_raw_m"] == (0.0, 3.0) and r["prompt_filled_m"] == (valid_min, 3.0)
    assert valid_min <= r["out_filled_m"][0] <= r["out_filled_m"][1] <= 3.0
    assert r["below_filled"] == 0.0 and r["below_raw"] > 0.0  # raw output reaches below any measured depth
    assert r["out_raw_m"][0] < valid_min
    assert 0.0 < r["l1_filled_m"] <= 1.0  # output in [valid_min, 3] m against GT 2 m

    r = rows[1]  # no holes: raw and filled prompts are the same, so are the outputs
    assert r["zero_share"] == 0.0 and r["prompt_raw_m"] == r["prompt_filled_m"] == (1.0, 3.0)
    assert r["below_raw"] == r["below_filled"] == 0.0 and r["out_raw_m"] == r["out_filled_m"]
    assert r["l1_raw_m"] == r["l1_filled_m"] and 1000.0 - 3.0 <= r["l1_raw_m"] <= 1000.0 - 1.0

    lines = holes_table(rows).splitlines()
    assert len(lines) == 2 + 2 + 1 and lines[-1].startswith("| **mean** |")
    assert lines[2].split(" | ")[2:4] == ["0.00–3.00", f"{valid_min:.2f}–3.00"]
    assert lines[-1].split(" | ")[1] == f"{100 * (10 / 768) / 2:.1f} %"


def test_saved_frame_reads_back_exactly(tmp_path):
    """--save-frame / --frame (the input carried to a machine without Open3D): RGB, LiDAR and confidence exact,
    the GT left out; a frame without confidence stays without."""
    frame = tiny_frame()
    back = load_frame(save_frame(frame, tmp_path / "sub" / "frame.npz"))
    for name in ("rgb", "lidar_depth_m", "confidence"):
        np.testing.assert_array_equal(getattr(back, name), getattr(frame, name))
        assert getattr(back, name).dtype == getattr(frame, name).dtype
    assert back.gt_depth_m is None
    bare = BenchFrame(frame.rgb, frame.lidar_depth_m)
    assert load_frame(save_frame(bare, tmp_path / "bare.npz")).confidence is None
