#!/usr/bin/env python
"""What each overlap of `promptmesh run` buys (docs/benchmarks.md, "Overlap").

Within stages, threads (`streams.prefetch`) overlap work with the stage's main loop: ingest encodes and writes
frames on two threads while the next frame decodes (`ingest-write`); the classical depth models run whole
frames on two threads (`depth`); fusion reads and decodes frames on two threads while Open3D integrates
(`fuse-read`). Between stages, `runner.OVERLAPS` names work done on a thread beside another stage. This script
runs `runner.run` (fresh work directory, with the capture's GT mesh, so eval runs too) with everything on (the
default) and with each overlap off in turn (a prefetch run inline in its consumer's thread: no thread; a
runner overlap not started), each in its own Python process (imports are part of the cost), the variants in a
rotated order per repeat. It reports medians of the stage times, the wall time against the default in the same
repeat, and whether mesh.ply, eval.json, tsdf.npz and poses.parquet are byte-identical across variants (they
must be).

Examples:
    python tools/bench_overlap.py --repeats 3 --write
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_common import (BENCHMARKS_MD, DEFAULT_CACHE, load_average, machine_line, median,  # noqa: E402
                          setup_logging, synthetic_capture, write_table)

log = logging.getLogger("bench")

OUTPUTS = ("mesh.ply", "eval.json", "fuse/tsdf.npz", "fuse/poses.parquet")


PREFETCHES = {"ingest-write": "ingest: encode + write beside decoding", "depth": "depth: two frames at once",
              "fuse-read": "fuse: read + decode beside integration"}
"""`streams.prefetch` names -> what they overlap."""
DEFAULT = "everything on (the default)"


def variants() -> dict[str, list[str]]:
    """Variant name -> the overlaps it turns off (prefetch names or runner.OVERLAPS)."""
    from pipeline.runner import OVERLAPS

    return {DEFAULT: [], **{f"without `{name}` ({what})": [name] for name, what in PREFETCHES.items()},
            **{f"without `{name}`": [name] for name in OVERLAPS}}


def _inline_prefetches(names: set[str]) -> None:
    """Make `streams.prefetch` calls named in `names` compute in the consumer's thread (no thread)."""
    import pipeline.depth
    import pipeline.fuse
    import pipeline.ingest
    from pipeline import streams

    def prefetch(fn, items, max_waiting=4, workers=2, name="prefetch"):
        if name in names:
            return (fn(item) for item in items)
        return streams.prefetch(fn, items, max_waiting, workers, name)

    for module in (pipeline.depth, pipeline.fuse, pipeline.ingest):
        module.prefetch = prefetch


def one_run(capture: Path, work: Path, off: list[str], model: str) -> dict:
    """`runner.run` in this process (what `--one` runs in a subprocess) with the overlaps `off` turned off:
    wall and CPU time, stage times, output hashes."""
    import dataclasses
    import shutil

    from pipeline import runner

    _inline_prefetches(set(off) & set(PREFETCHES))
    overlaps = tuple(o for o in runner.OVERLAPS if o not in off)
    from pipeline.artifacts import Manifest
    from pipeline.config import PipelineConfig

    shutil.rmtree(work, ignore_errors=True)
    cfg = PipelineConfig()
    cfg = dataclasses.replace(cfg, depth=dataclasses.replace(cfg.depth, model=model))
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = runner.run(cfg, capture, work, gt_mesh=capture / "gt_mesh.ply", overlaps=overlaps)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    fused = Manifest.read(result.workdir.fuse).summary
    return {"wall_s": wall, "cpu_s": cpu, "stages_s": result.timings_s, "refine_s": fused["seconds_refine"],
            "save_s": fused["seconds_save"],
            "hashes": {name: hashlib.sha256((work / name).read_bytes()).hexdigest() for name in OUTPUTS}}


def benchmark(capture: Path, work: Path, repeats: int, model: str) -> dict[str, list[dict]]:
    names = list(variants())
    results: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            cmd = [sys.executable, __file__, "--one", str(capture), str(work / "wd"), ",".join(variants()[name]),
                   model]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            result["process_s"] = time.perf_counter() - t0
            results[name].append(result)
            log.info("repeat %d, %s: %.1f s (stages %s)", r + 1, name, result["wall_s"], result["stages_s"])
    return results


def table(results: dict[str, list[dict]], model: str, frames: int, repeats: int, load_before: float,
          load_after: float) -> str:
    stages = ("ingest", "depth", "fuse", "mesh", "eval")
    base = results[DEFAULT]
    reference = base[0]["hashes"]
    rows = ["| overlaps | " + " | ".join(stages) + " | pose refinement | volume save | run wall | cores busy | vs default "
            "(each repeat) | outputs |", "|---|" + "---:|" * (len(stages) + 5) + "---|"]
    for name, runs in results.items():
        ratios = [r["wall_s"] / b["wall_s"] for r, b in zip(runs, base)]
        same = all(r["hashes"] == reference for r in runs)
        cells = [f"{median([r['stages_s'][s] for r in runs]):.2f} s" for s in stages]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {median([r['refine_s'] for r in runs]):.2f} s | "
                    f"{median([r['save_s'] for r in runs]):.2f} s | {median([r['wall_s'] for r in runs]):.2f} s | "
                    f"{median([r['cpu_s'] / r['wall_s'] for r in runs]):.2f} | "
                    f"**{median(ratios):.3f}** ({', '.join(f'{x:.2f}' for x in ratios)}) | "
                    f"{'identical' if same else 'DIFFER'} |")
    return "\n".join(rows) + (
        f"\n\n`runner.run` with `--depth-model {model}` and the capture's GT mesh (eval runs) on the {frames}-frame "
        f"synthetic capture of \"End to end\" (hard room, 1920x1440 HEVC video at 30 fps, 256x192 LiDAR), a fresh "
        f"work directory and a fresh Python process per run, median of {repeats} repeats (variants in a rotated "
        "order). Stage times from the run; pose refinement and volume save from the fuse manifest (with "
        "`refine_poses` refinement runs beside depth, with `live_grid` the save runs beside the mesh stage, whose "
        "time includes waiting for it). `vs default` = run wall time / the default run's in the same repeat (above 1: the overlap turned off "
        "buys that much). `outputs`: mesh.ply, eval.json, tsdf.npz and poses.parquet byte-identical to the "
        "default run's. "
        f"`cores busy` = the process's CPU time (user + system, all threads) / its run wall time. "
        f"Machine: {machine_line()}; 1-minute load average {load_before} before, {load_after} after.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder for the capture and work directories")
    ap.add_argument("--frames", type=int, default=200, help="frames of the rendered capture")
    ap.add_argument("--depth-model", default="lidar")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help=f"write the table into {BENCHMARKS_MD} ('Overlap')")
    ap.add_argument("--one", nargs=4, metavar=("CAPTURE", "WORKDIR", "OFF", "MODEL"),
                    help="one run in this process (what the benchmark runs in a subprocess); prints JSON")
    args = ap.parse_args(argv)
    if args.one:
        capture, work, off, model = args.one
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(one_run(Path(capture), Path(work), [o for o in off.split(",") if o], model)))
        return 0
    setup_logging()
    name = f"room{args.frames}_1920x1440"
    capture = synthetic_capture(args.cache / name, args.frames, 1920, 1440)
    work = args.cache / "overlap" / f"{name}_{args.depth_model}"
    work.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    results = benchmark(capture, work, args.repeats, args.depth_model)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results, args.depth_model, args.frames, args.repeats, load_before, load_average())
    print(text)
    if args.write:
        write_table(BENCHMARKS_MD, "Overlap", f"bench_overlap.py {args.depth_model}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
