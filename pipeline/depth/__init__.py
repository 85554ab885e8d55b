"""Stage 2, depth: every ingested frame -> WORKDIR/depth/<model>/<stem>.png (docs/workdir.md).

Output: uint16 millimetres, 0 = invalid, named with the stem of the frame's RGB file, size
`geometry.output_size(W, H, long_side_px)` (same aspect as RGB, so intrinsics scale by W'/W, H'/H).

Models are registered by name in `pipeline.depth_models` (what each needs and does; `build` makes one):
`lidar` and `guided` (classical.py, no weights) and the PromptDA checkpoints (promptda_io.py). Every model offers

    predict(rgb (H,W,3) uint8, lidar_depth_m (h,w) float32, confidence (h,w) uint8 | None, out_hw (H',W'))
        -> (H',W') float32 metres, 0 = invalid

plus `predict_batch` over lists of frames, `batch_size` and `settings` (what changes its output).
`auto` picks promptda-vits when its weights are available offline, else guided (`resolve_model_name`).
The manifest declares for fusion (`handoff`) whether to mask low-confidence pixels (`fuse_confidence_mask`: the
model passes the LiDAR through).

Caching and resuming: the stage is up to date when its manifest (written last) matches the fingerprint of
model, settings (weights hash for PromptDA), output size and the ingest manifest. Before the first frame the
fingerprint is written to depth/<model>/.fingerprint.json; each PNG is written atomically, so after an
interruption a rerun with the same fingerprint keeps the frames already written and computes the rest, and
a run with another fingerprint clears the folder first.

Speed: the classical models (`frames_in_parallel`) run whole frames (read, predict, write) on two threads,
one frame each; for PromptDA the main thread predicts batches while two threads read frames ahead and two
encode and write the PNGs behind (`streams.prefetch`; memory stays bounded either way). Models that ignore
RGB (registry `uses_rgb` False: `lidar`) are not handed it, so the JPEGs are not decoded. With hand_to_fuse
(`promptmesh run`) the maps written are also kept in memory, up to HAND_TO_FUSE_BYTES, for the fuse stage that
follows (`take_maps`), which then does not decode them again.
"""
from __future__ import annotations

import importlib
import json
import logging
import threading
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Protocol, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from .. import ahead
from ..artifacts import (Manifest, atomic_write_json, fingerprint, is_current, start_or_resume, upstream_fingerprint,
                         write_png_atomic)
from ..capture import CaptureTable
from ..config import DepthConfig
from ..depth_models import AUTO, AUTO_FALLBACK, AUTO_PREFERRED, DEPTH_MODELS, DepthModelSpec
from ..errors import PromptmeshError
from ..geometry import output_size
from ..images import depth_m_to_mm, read_depth_m, read_image
from ..streams import prefetch
from ..workdir import WorkDir, WorkDirLike
from .classical import coverage

log = logging.getLogger(__name__)

STAGE = "depth"
HANDOFF = ("model", "fuse_confidence_mask")
"""What the manifest declares for fusion: the model, and whether to mask low-confidence pixels (the model passes
the LiDAR through) or take the maps whole (it repaired them)."""
WEIGHTS_HASH_CACHE = ".weights_sha256.json"
"""In WORKDIR/depth/: sha256 of weights files keyed by path, size and mtime (hashing 1 GB takes seconds)."""
PREFETCH_FRAMES = 4
"""Frames read ahead of the model, and depth maps waiting to be written, at most (bounds memory)."""
FRAME_WORKERS = 2
"""Threads predicting whole frames for models with `frames_in_parallel`; each holds one frame's working
arrays. Two keep both cores of the reference machine (2 cores) busy (docs/benchmarks.md measures the gain)."""
HAND_TO_FUSE_BYTES = 256 << 20
"""Depth maps kept in memory for the fuse stage with hand_to_fuse, at most (170 maps at 1008x756); fusion reads
the others from their PNGs."""


class DepthModel(Protocol):
    name: str
    settings: dict
    """Everything that changes the output (JSON-able); part of the stage fingerprint."""
    batch_size: int
    """Frames per `predict_batch` call."""

    def predict(self, rgb: np.ndarray, lidar_depth_m: np.ndarray, confidence: Optional[np.ndarray],
                out_hw: tuple[int, int]) -> np.ndarray:
        """(H,W,3) uint8 RGB (None if the registry says not `uses_rgb`), (h,w) float32 metres (0 = none), (h,w) uint8 0/1/2 or
        None -> (H',W') float32 metres, 0 = invalid."""

    def predict_batch(self, rgbs: Sequence[np.ndarray], lidar_depths_m: Sequence[np.ndarray],
                      confidences: Sequence[Optional[np.ndarray]], out_hw: tuple[int, int]) -> list[np.ndarray]:
        """`predict` over frames of the same size."""

    frames_in_parallel: bool
    """True if `predict` is thread-safe and single-threaded (numpy/OpenCV on one frame): the stage then runs
    whole frames (read, predict, write) on FRAME_WORKERS threads. False (PromptDA: torch already uses every
    core): the main thread predicts batches."""


class PromptDADepth:
    """A PromptDA checkpoint as a DepthModel. Weights are located (and hashed) at construction, loaded on
    the first prediction, so an up-to-date stage never loads them."""

    frames_in_parallel = False

    def __init__(self, name: str, cfg: DepthConfig, hash_cache: Path):
        from . import promptda_io

        self.name = name
        self.cfg = cfg
        self.weights_path = promptda_io.resolve_weights(name, cfg.weights or None)  # PromptmeshError: how to get
        self.device = promptda_io.resolve_device(cfg.device)
        self.batch_size = cfg.batch_size
        self.settings = {"weights_sha256": cached_weights_sha256(self.weights_path, hash_cache),
                         "precision": cfg.precision, "device_type": self.device.type,
                         "fill_prompt_holes": cfg.fill_prompt_holes}
        self._predictor = None

    @classmethod
    def build(cls, spec: DepthModelSpec, cfg: DepthConfig, depth_root: Path) -> "PromptDADepth":
        """The registry's constructor (pipeline.depth_models)."""
        return cls(spec.name, cfg, depth_root / WEIGHTS_HASH_CACHE)

    def predict(self, rgb, lidar_depth_m, confidence, out_hw):
        return self.predict_batch([rgb], [lidar_depth_m], [confidence], out_hw)[0]

    def predict_batch(self, rgbs, lidar_depths_m, confidences, out_hw):
        if self._predictor is None:
            from . import promptda_io

            model = promptda_io.load_promptda(self.name, self.weights_path, self.device)
            self._predictor = promptda_io.PromptDAPredictor(model, self.device, self.cfg.long_side_px,
                                                            self.cfg.precision, self.cfg.fill_prompt_holes)
        return list(self._predictor.predict_batch(rgbs, lidar_depths_m, out_hw))


def build(name: str, cfg: DepthConfig, depth_root: Path) -> DepthModel:
    """The registered model `name` (pipeline.depth_models), cheaply: nothing heavy is loaded yet."""
    spec = DEPTH_MODELS[name]
    module, cls = spec.builder.split(":")
    return getattr(importlib.import_module(module), cls).build(spec, cfg, Path(depth_root))


def missing_weights(cfg: DepthConfig) -> Optional[str]:
    """Why cfg.model cannot run here (its weights are needed and not available offline: the message says how to
    get them), or None. compare and benchmark skip such a model (`runner.run_models`)."""
    if not DEPTH_MODELS[cfg.model].needs_weights:
        return None
    from . import promptda_io

    try:
        promptda_io.resolve_weights(cfg.model, cfg.weights or None)
    except PromptmeshError as e:
        return str(e)
    return None


def take_maps(stage_dir: Path, stamp: str) -> dict[str, np.ndarray]:
    """The maps a `run` with hand_to_fuse kept for this depth folder, by frame stem ({} if none), when its
    manifest's fingerprint is `stamp`; handed over once (the entry is gone after)."""
    return ahead.take(("depth.maps", Path(stage_dir)), stamp) or {}


def produced_model(workdir: WorkDirLike) -> str:
    """The model whose depth maps the depth stage finished last in this work directory (what `promptmesh fuse`
    fuses when no model is named), or a PromptmeshError saying to run the depth stage."""
    wd = WorkDir(workdir)
    finished = [(Manifest.path_in(d).stat().st_mtime_ns, d.name) for d in sorted(wd.depth_root.glob("*"))
                if d.name in DEPTH_MODELS and Manifest.read(d) is not None]
    if not finished:
        raise PromptmeshError(f"{wd.depth_root}: no finished depth maps; run `promptmesh depth {wd.root}` first")
    name = max(finished)[1]
    log.info("depth model auto: %s (the depth maps the depth stage wrote last)", name)
    return name


def resolve_model_name(cfg: DepthConfig) -> str:
    """cfg.model, with "auto" -> AUTO_PREFERRED when its weights are available offline, else AUTO_FALLBACK."""
    if cfg.model != AUTO:
        return cfg.model
    from . import promptda_io

    path = promptda_io.weights_available(AUTO_PREFERRED, cfg.weights or None)
    if path is not None:
        log.info("depth model auto: %s (weights %s)", AUTO_PREFERRED, path)
        return AUTO_PREFERRED
    where = cfg.weights or f"{DEPTH_MODELS[AUTO_PREFERRED].weights_repo} in the local Hugging Face cache"
    log.info("depth model auto: no PromptDA weights found at %s; using %s", where, AUTO_FALLBACK)
    return AUTO_FALLBACK


def cached_weights_sha256(path: Path, cache_file: Path) -> str:
    """sha256 of a weights file (promptda_io.weights_sha256), remembered in `cache_file` (JSON) by absolute
    path, size and mtime, so a 1 GB checkpoint is hashed once, not on every run."""
    from .promptda_io import weights_sha256

    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    try:
        cache = json.loads(Path(cache_file).read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        log.info("depth: hashing weights %s", path)
        cache[key] = weights_sha256(path)
        atomic_write_json(cache_file, cache)
    return cache[key]


@dataclass
class _Frame:
    stem: str
    rgb: Optional[np.ndarray]
    """(H, W, 3) uint8 RGB; None for models that do not use it."""
    lidar_depth_m: np.ndarray
    confidence: Optional[np.ndarray]


def _load_frame(table: CaptureTable, i: int, with_rgb: bool) -> _Frame:
    rgb = None
    if with_rgb:
        rgb_path = table.root / table.rgb_path[i]
        bgr = read_image(rgb_path, cv2.IMREAD_COLOR, "RGB frame", "rerun `promptmesh ingest --force`")
        W, H = int(table.width[i]), int(table.height[i])
        if bgr.shape[:2] != (H, W):
            raise PromptmeshError(f"{rgb_path}: image is {bgr.shape[1]}x{bgr.shape[0]}, frames.parquet says {W}x{H}; "
                                  "rerun `promptmesh ingest --force`")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)
    lidar_path = table.root / table.lidar_path[i]
    depth_m = read_depth_m(lidar_path, "rerun `promptmesh ingest --force`")
    confidence = None
    if table.confidence_path[i]:
        conf_path = table.root / table.confidence_path[i]
        confidence = read_image(conf_path, cv2.IMREAD_UNCHANGED, "confidence map", "rerun `promptmesh ingest --force`")
        if confidence.shape != depth_m.shape:
            raise PromptmeshError(f"{conf_path}: confidence map is {confidence.shape[::-1]}, not the LiDAR size "
                                  f"{depth_m.shape[::-1]}; rerun `promptmesh ingest --force`")
    return _Frame(table.stem(i), rgb, depth_m, confidence)


def _predict(model: DepthModel, frames: Iterator[_Frame], out_hw: tuple[int, int]) -> Iterator[tuple[str, np.ndarray]]:
    """(stem, (H', W') float32 metres) per frame, predicted `model.batch_size` frames at a time."""
    for batch in _batches(frames, model.batch_size):
        depths = model.predict_batch([f.rgb for f in batch], [f.lidar_depth_m for f in batch],
                                     [f.confidence for f in batch], out_hw)
        for frame, depth_m in zip(batch, depths):
            yield frame.stem, _checked_shape(model, depth_m, out_hw)


def _checked_shape(model: DepthModel, depth_m: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    assert depth_m.shape == out_hw, f"{model.name} returned {depth_m.shape}, expected {out_hw}"
    return depth_m


def _batches(frames: Iterator[_Frame], size: int) -> Iterator[list[_Frame]]:
    batch: list[_Frame] = []
    for f in frames:
        batch.append(f)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run(cfg: DepthConfig, workdir: WorkDirLike, force: bool = False, hand_to_fuse: bool = False) -> Path:
    """Estimate depth for every frame of WORKDIR/capture into WORKDIR/depth/<model>/; returns that folder.

    hand_to_fuse: also keep the maps written (uint16 millimetres, as in their PNGs) in memory, up to
    HAND_TO_FUSE_BYTES, for the fuse stage that must follow in this process (`take_maps`)."""
    wd = WorkDir(workdir)
    name = resolve_model_name(cfg)
    upstream = upstream_fingerprint(wd.capture, "ingest")
    stage_dir = wd.depth(name)
    spec = DEPTH_MODELS[name]
    model = build(name, cfg, wd.depth_root)
    settings = {"model": name, "long_side_px": cfg.long_side_px, **model.settings,
                "fuse_confidence_mask": spec.passes_lidar_through}
    stamp = fingerprint(STAGE, settings, [upstream])
    done = is_current(stage_dir, stamp, HANDOFF)
    if done and not force:
        log.info("depth: up to date (%s, %d frames)", stage_dir, len(done.outputs))
        return stage_dir

    table = CaptureTable.load(wd)
    W, H = table.rgb_size
    out_w, out_h = output_size(W, H, cfg.long_side_px)
    resumed = start_or_resume(stage_dir, stamp, settings, force)
    outputs = [f"{table.stem(i)}.png" for i in range(len(table))]
    todo = [i for i, o in enumerate(outputs) if not (resumed and (stage_dir / o).exists())]
    log.info("depth: model %s, %d frames (%d already done), RGB %dx%d -> depth %dx%d", name, len(table),
             len(table) - len(todo), W, H, out_w, out_h)
    t0 = time.perf_counter()
    coverages = []
    bar = tqdm(total=len(table), initial=len(table) - len(todo), desc=f"depth {name}", unit="frame",
               disable=None, leave=False)

    def load(i: int) -> _Frame:
        return _load_frame(table, i, spec.uses_rgb)

    handed: dict[str, np.ndarray] = {}
    handed_lock = threading.Lock()
    room_bytes = HAND_TO_FUSE_BYTES if hand_to_fuse else 0

    def write(item: tuple[str, np.ndarray]) -> tuple[str, float]:
        nonlocal room_bytes
        stem, depth_m = item
        depth_mm = depth_m_to_mm(depth_m)
        write_png_atomic(stage_dir / f"{stem}.png", depth_mm)
        with handed_lock:
            if depth_mm.nbytes <= room_bytes:
                handed[stem] = depth_mm
                room_bytes -= depth_mm.nbytes
        return stem, coverage(depth_m)

    def whole_frame(i: int) -> tuple[str, float]:
        frame = load(i)
        depth_m = model.predict(frame.rgb, frame.lidar_depth_m, frame.confidence, (out_h, out_w))
        return write((frame.stem, _checked_shape(model, depth_m, (out_h, out_w))))

    with bar, ExitStack() as stack:
        if model.frames_in_parallel:  # each worker thread reads, predicts and writes whole frames
            written = stack.enter_context(closing(prefetch(whole_frame, todo, PREFETCH_FRAMES, FRAME_WORKERS,
                                                           name="depth")))
        else:  # the main thread predicts batches; threads read ahead and write behind
            frames = stack.enter_context(closing(prefetch(load, todo, PREFETCH_FRAMES, name="depth-read")))
            written = stack.enter_context(closing(prefetch(write, _predict(model, frames, (out_h, out_w)),
                                                           PREFETCH_FRAMES, name="depth-write")))
        for stem, frame_coverage in written:
            coverages.append(frame_coverage)
            log.debug("depth: %s coverage %.3f", stem, frame_coverage)
            bar.update(1)
    seconds = time.perf_counter() - t0
    summary = {"frames": len(table), "computed": len(todo), "reused": len(table) - len(todo),
               "size_wh": [out_w, out_h], "seconds": round(seconds, 3),
               "frames_per_s": round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
               "coverage_mean_computed": round(float(np.mean(coverages)), 4) if coverages else None}
    Manifest(STAGE, stamp, outputs=outputs, settings=settings, summary=summary,
             handoff={"model": name, "fuse_confidence_mask": spec.passes_lidar_through}).write(stage_dir)
    if handed:
        ahead.put(("depth.maps", stage_dir), stamp, handed)
    log.info("depth: %s wrote %d frames (%d reused) at %dx%d in %.1f s (%.2f frames/s), mean coverage %s -> %s",
             name, len(todo), summary["reused"], out_w, out_h, seconds, summary["frames_per_s"] or 0.0,
             summary["coverage_mean_computed"], stage_dir)
    return stage_dir
