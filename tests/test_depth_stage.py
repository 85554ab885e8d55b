"""The depth stage (pipeline/depth/__init__.py): outputs, caching, resuming, model choice."""
import hashlib
import logging

import cv2
import numpy as np
import pytest

from pipeline import depth
from pipeline.artifacts import Manifest
from pipeline.capture import FrameRow, write_frames_table
from pipeline.config import DepthConfig
from pipeline.depth.classical import GuidedUpsampler
from pipeline.depth_models import DEPTH_MODELS
from pipeline.errors import PromptmeshError
from pipeline.geometry import output_size
from pipeline.images import depth_m_to_mm
from pipeline.workdir import WorkDir

RGB_WH = (64, 48)
LIDAR_WH = (16, 12)
N_FRAMES = 4


def make_workdir(root, ingest_fingerprint="ingest-v1"):
    """A hand-made ingested capture: 4 frames (indices 0, 5, 10, 15) of a box in front of a wall."""
    cap = WorkDir(root).capture
    rng = np.random.default_rng(0)
    rows = []
    for k in range(N_FRAMES):
        idx = 5 * k
        stem = f"{idx:06d}"
        rgb = np.full((RGB_WH[1], RGB_WH[0], 3), 180, np.uint8)
        x0 = 10 + 6 * k
        rgb[10:30, x0:x0 + 20] = (30, 60, 200)
        depth_mm = np.full(LIDAR_WH[::-1], 2500, np.uint16)
        depth_mm[3:8, x0 // 4:(x0 + 20) // 4] = 1000 + 10 * k
        depth_mm[0, 0] = 0
        (cap / "rgb").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(cap / "rgb" / f"{stem}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        (cap / "lidar").mkdir(exist_ok=True)
        cv2.imwrite(str(cap / "lidar" / f"{stem}.png"), depth_mm)
        (cap / "confidence").mkdir(exist_ok=True)
        cv2.imwrite(str(cap / "confidence" / f"{stem}.png"), rng.integers(0, 3, LIDAR_WH[::-1]).astype(np.uint8))
        rows.append(FrameRow(idx, 0.1 * idx, f"rgb/{stem}.jpg", f"lidar/{stem}.png", f"confidence/{stem}.png",
                             *RGB_WH, *LIDAR_WH, 50.0, 50.0, 32.0, 24.0, np.eye(4).ravel().tolist()))
    write_frames_table(cap / "frames.parquet", rows)
    Manifest("ingest", ingest_fingerprint, outputs=["frames.parquet"], settings={}).write(cap)
    return root


def pngs(folder):
    return sorted(p.name for p in folder.glob("*.png"))


def read_all(folder):
    return {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("*.png"))}


@pytest.fixture
def count_predictions(monkeypatch):
    """Counts GuidedUpsampler.predict calls; set `fail_after` to raise after that many (an interruption)."""
    state = {"calls": 0, "fail_after": None}
    original = GuidedUpsampler.predict

    def predict(self, *args):
        if state["fail_after"] is not None and state["calls"] >= state["fail_after"]:
            raise KeyboardInterrupt
        state["calls"] += 1
        return original(self, *args)

    monkeypatch.setattr(GuidedUpsampler, "predict", predict)
    return state


@pytest.mark.parametrize("model", ["lidar", "guided"])
def test_outputs_names_sizes_and_millimetres(tmp_path, model):
    wd = make_workdir(tmp_path)
    out = depth.run(DepthConfig(model=model, long_side_px=32), wd)
    assert out == WorkDir(wd).depth(model)
    assert pngs(out) == [f"{5 * k:06d}.png" for k in range(N_FRAMES)]
    w, h = output_size(*RGB_WH, 32)
    assert (w, h) == (32, 24)
    tolerance_mm = {"lidar": 0, "guided": 25}[model]  # guided re-estimates low-confidence samples (< 1 %)
    for k, (name, mm) in enumerate(read_all(out).items()):
        assert mm.dtype == np.uint16 and mm.shape == (h, w)
        # the wall is flat at 2.5 m: below the box, lidar returns it to the millimetre
        assert np.abs(mm[20:, :].astype(int) - 2500).max() <= tolerance_mm
        assert abs(int(mm[8, (10 + 6 * k) // 2 + 5]) - (1000 + 10 * k)) <= tolerance_mm // 2  # box centre
    manifest = Manifest.read(out)
    assert manifest.settings["model"] == model and manifest.summary["computed"] == N_FRAMES


@pytest.mark.parametrize("model", ["lidar", "guided"])
def test_frames_predicted_on_threads_equal_one_at_a_time(tmp_path, model):
    """The stage runs classical models on worker threads (and lidar without RGB): same maps as calling the
    model frame by frame on decoded frames."""
    wd = make_workdir(tmp_path)
    out = depth.run(DepthConfig(model=model, long_side_px=40), wd)
    predictor = depth.build(model, DepthConfig(), WorkDir(wd).depth_root)
    assert predictor.frames_in_parallel and DEPTH_MODELS[model].uses_rgb == (model == "guided")
    for k in range(N_FRAMES):
        stem = f"{5 * k:06d}"
        rgb = cv2.cvtColor(cv2.imread(str(WorkDir(wd).capture / "rgb" / f"{stem}.jpg")), cv2.COLOR_BGR2RGB)
        lidar_m = cv2.imread(str(WorkDir(wd).capture / "lidar" / f"{stem}.png"), cv2.IMREAD_UNCHANGED) / 1000.0
        confidence = cv2.imread(str(WorkDir(wd).capture / "confidence" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        expected = depth_m_to_mm(predictor.predict(rgb, lidar_m.astype(np.float32), confidence, (30, 40)))
        np.testing.assert_array_equal(cv2.imread(str(out / f"{stem}.png"), cv2.IMREAD_UNCHANGED), expected)


def test_full_resolution_keeps_rgb_size(tmp_path):
    wd = make_workdir(tmp_path)
    out = depth.run(DepthConfig(model="lidar", long_side_px=1008), wd)  # never upscaled past the RGB
    maps = read_all(out)
    assert len(maps) == N_FRAMES and {mm.shape for mm in maps.values()} == {RGB_WH[::-1]}


def test_maps_handed_to_fuse_are_the_pngs_within_the_memory_budget(tmp_path, monkeypatch):
    wd = WorkDir(make_workdir(tmp_path))
    out_w, out_h = output_size(*RGB_WH, DepthConfig().long_side_px)
    monkeypatch.setattr(depth, "HAND_TO_FUSE_BYTES", int(2.5 * out_w * out_h * 2))  # room for two maps
    folder = depth.run(DepthConfig(model="lidar"), wd, hand_to_fuse=True)
    stamp = Manifest.read(folder).fingerprint
    assert depth.take_maps(folder, "another fingerprint") == {}  # other inputs: not used, and gone
    depth.run(DepthConfig(model="lidar"), wd, force=True, hand_to_fuse=True)
    handed = depth.take_maps(folder, stamp)
    on_disk = read_all(folder)
    assert len(handed) == 2 and all(m.dtype == np.uint16 and np.array_equal(m, on_disk[f"{stem}.png"])
                                    for stem, m in handed.items())
    assert depth.take_maps(folder, stamp) == {}  # handed over once
    depth.run(DepthConfig(model="lidar"), wd, force=True)  # without hand_to_fuse nothing is kept
    assert depth.take_maps(folder, stamp) == {}


def test_second_run_does_nothing_and_changed_setting_reruns(tmp_path, count_predictions, caplog):
    wd = make_workdir(tmp_path)
    cfg = DepthConfig(model="guided", long_side_px=32)
    depth.run(cfg, wd)
    assert count_predictions["calls"] == N_FRAMES
    with caplog.at_level(logging.INFO, logger="pipeline"):
        depth.run(cfg, wd)
    assert count_predictions["calls"] == N_FRAMES
    assert "depth: up to date" in caplog.text
    out = depth.run(DepthConfig(model="guided", long_side_px=48), wd)
    assert count_predictions["calls"] == 2 * N_FRAMES
    maps = read_all(out)
    assert len(maps) == N_FRAMES and {mm.shape for mm in maps.values()} == {(36, 48)}
    assert pngs(out) == [f"{5 * k:06d}.png" for k in range(N_FRAMES)]  # one map per frame, named by its stem
    # a changed upstream (re-ingested capture) reruns too
    Manifest("ingest", "ingest-v2", outputs=["frames.parquet"], settings={}).write(WorkDir(wd).capture)
    depth.run(DepthConfig(model="guided", long_side_px=48), wd)
    assert count_predictions["calls"] == 3 * N_FRAMES


def test_deleted_frame_is_recomputed_alone(tmp_path, count_predictions):
    wd = make_workdir(tmp_path)
    cfg = DepthConfig(model="guided", long_side_px=32)
    out = depth.run(cfg, wd)
    before = read_all(out)
    (out / "000010.png").unlink()
    (out / "manifest.json").unlink()
    depth.run(cfg, wd)
    assert count_predictions["calls"] == N_FRAMES + 1
    assert Manifest.read(out).summary["computed"] == 1
    after = read_all(out)
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)


def test_interrupted_run_resumes_and_matches_uninterrupted(tmp_path, count_predictions):
    reference = depth.run(DepthConfig(model="guided", long_side_px=32), make_workdir(tmp_path / "a"))
    wd = make_workdir(tmp_path / "b")
    cfg = DepthConfig(model="guided", long_side_px=32)
    count_predictions.update(calls=0, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        depth.run(cfg, wd)
    out = WorkDir(wd).depth("guided")
    # two predictions succeeded: which two frames depends on how the two worker threads were scheduled
    assert len(pngs(out)) == 2 and set(pngs(out)) <= {f"{5 * k:06d}.png" for k in range(N_FRAMES)}
    assert Manifest.read(out) is None and not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    count_predictions.update(calls=0, fail_after=None)
    depth.run(cfg, wd)
    assert count_predictions["calls"] == N_FRAMES - 2
    expected, got = read_all(reference), read_all(out)
    assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in expected)


def test_interrupted_run_with_other_settings_starts_over(tmp_path, count_predictions):
    wd = make_workdir(tmp_path)
    count_predictions["fail_after"] = 2
    with pytest.raises(KeyboardInterrupt):
        depth.run(DepthConfig(model="guided", long_side_px=32), wd)
    count_predictions.update(calls=0, fail_after=None)
    out = depth.run(DepthConfig(model="guided", long_side_px=48), wd)
    assert count_predictions["calls"] == N_FRAMES
    assert all(mm.shape == (36, 48) for mm in read_all(out).values())


def test_auto_without_weights_picks_guided_and_says_so(tmp_path, monkeypatch, caplog):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert depth.resolve_model_name(DepthConfig(model="auto")) == "guided"
    assert "no PromptDA weights found" in caplog.text and "using guided" in caplog.text
    missing = tmp_path / "nowhere" / "model.ckpt"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline"):
        out = depth.run(DepthConfig(model="auto", weights=str(missing), long_side_px=32), make_workdir(tmp_path))
    assert out.name == "guided" and str(missing) in caplog.text
    assert depth.resolve_model_name(DepthConfig(model="lidar")) == "lidar"


def test_explicit_promptda_without_weights_says_how_to_get_them(tmp_path):
    wd = make_workdir(tmp_path)
    with pytest.raises(PromptmeshError, match="download"):
        depth.run(DepthConfig(model="promptda-vits", weights=str(tmp_path / "none.ckpt")), wd)
    assert not WorkDir(wd).depth("promptda-vits").exists()


def test_missing_ingest_says_what_to_run(tmp_path):
    with pytest.raises(PromptmeshError, match="promptmesh ingest"):
        depth.run(DepthConfig(model="lidar"), tmp_path)


def test_weights_hash_is_cached(tmp_path, monkeypatch):
    from pipeline.depth import promptda_io

    weights = tmp_path / "model.ckpt"
    weights.write_bytes(b"not really weights")
    cache = WorkDir(tmp_path).depth_root / ".weights_sha256.json"
    first = depth.cached_weights_sha256(weights, cache)
    assert first == hashlib.sha256(b"not really weights").hexdigest()
    monkeypatch.setattr(promptda_io, "weights_sha256", lambda p: pytest.fail("hash recomputed"))
    assert depth.cached_weights_sha256(weights, cache) == first


@pytest.fixture(scope="module")
def vits_checkpoint(tmp_path_factory):
    """An official-layout PromptDA ViT-S checkpoint with untrained weights (torch's default init)."""
    import torch

    from pipeline.depth.promptda import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.ckpt"
    torch.save({"state_dict": {"promptda." + k: v for k, v in build_model("vits").state_dict().items()}}, path)
    return path


def test_promptda_runs_in_batches_and_caches_without_loading(tmp_path, vits_checkpoint, monkeypatch, caplog):
    from pipeline.depth import promptda_io

    batches = []
    original = promptda_io.PromptDAPredictor.predict_batch

    def predict_batch(self, rgbs, lidar_depths_m, out_hw=None):
        batches.append(len(rgbs))
        return original(self, rgbs, lidar_depths_m, out_hw)

    monkeypatch.setattr(promptda_io.PromptDAPredictor, "predict_batch", predict_batch)
    wd = make_workdir(tmp_path)
    cfg = DepthConfig(model="auto", weights=str(vits_checkpoint), device="cpu", long_side_px=32, batch_size=3)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert depth.resolve_model_name(cfg) == "promptda-vits"
    assert str(vits_checkpoint) in caplog.text
    out = depth.run(cfg, wd)
    assert out.name == "promptda-vits" and batches == [3, 1]
    for k, mm in enumerate(read_all(out).values()):
        assert mm.shape == (24, 32)
        assert 1000 + 10 * k <= mm.min() and mm.max() <= 2500  # PromptDA stays inside the prompt's range
    manifest = Manifest.read(out)
    assert manifest.settings["weights_sha256"] == hashlib.sha256(vits_checkpoint.read_bytes()).hexdigest()
    monkeypatch.setattr(promptda_io, "load_promptda", lambda *a, **k: pytest.fail("weights loaded"))
    assert depth.run(cfg, wd) == out  # up to date: the cached hash matches, nothing is loaded


class ConstantDepth:
    """A depth model added the way README "Extending" says: this class plus one registry entry."""

    name = "constant"
    batch_size = 1
    frames_in_parallel = True
    settings = {"depth_m": 1.5}

    @classmethod
    def build(cls, spec, cfg, depth_root):
        return cls()

    def predict(self, rgb, lidar_depth_m, confidence, out_hw):
        assert rgb is None  # the registry says it does not use RGB: the stage does not decode the frames
        return np.full(out_hw, 1.5, np.float32)

    def predict_batch(self, rgbs, lidar_depths_m, confidences, out_hw):
        return [self.predict(*f, out_hw) for f in zip(rgbs, lidar_depths_m, confidences)]


def test_a_registered_model_runs_through_the_stage(tmp_path, monkeypatch):
    from pipeline.depth_models import DepthModelSpec

    monkeypatch.setitem(DEPTH_MODELS, "constant", DepthModelSpec("constant", "1.5 m everywhere",
                                                                 "test_depth_stage:ConstantDepth", uses_rgb=False))
    out = depth.run(DepthConfig(model="constant", long_side_px=40), make_workdir(tmp_path))
    assert out == WorkDir(tmp_path).depth("constant")
    maps = read_all(out)
    assert len(maps) == N_FRAMES and all(m.shape == (30, 40) and (m == 1500).all() for m in maps.values())
    assert Manifest.read(out).settings["fuse_confidence_mask"] is False  # passes_lidar_through defaults to False


def test_produced_model_is_the_one_the_depth_stage_wrote_last(tmp_path):
    wd = make_workdir(tmp_path)
    with pytest.raises(PromptmeshError, match="no finished depth maps; run `promptmesh depth"):
        depth.produced_model(wd)
    depth.run(DepthConfig(model="guided", long_side_px=32), wd)
    depth.run(DepthConfig(model="lidar", long_side_px=32), wd)
    assert depth.produced_model(wd) == "lidar"
    depth.run(DepthConfig(model="guided", long_side_px=40), wd)  # rewritten: now the newest
    assert depth.produced_model(wd) == "guided"
