"""PromptDA: parity with the official model, strict checkpoint loading, predictor behaviour.

Reference material (goldens of the official code, key manifests, the deterministic weight fill and the
official checker) lives in tests/data/promptda (provenance: tests/data/README.md).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.depth.promptda import build_model
from pipeline.depth.promptda_io import (
    PromptDAPredictor,
    fill_prompt_holes,
    load_promptda,
    network_size,
    weights_available,
    weights_sha256,
)
from pipeline.errors import PromptmeshError

from conftest import PROMPTDA_DATA as REFERENCE, SAMPLES

REPO = Path(__file__).resolve().parents[1]
SAMPLE = SAMPLES / "promptda_example"


def _fill_module():
    spec = importlib.util.spec_from_file_location("promptda_fill", REFERENCE / "fill.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def filled_state(variant: str, seed: int = 0, mode: str = "fanin") -> dict:
    """The deterministic goldens' weights as a torch state_dict."""
    entries = json.loads((REFERENCE / f"keys_{variant}.json").read_text())
    return {k: torch.from_numpy(v) for k, v in _fill_module().fill_state_dict(entries, seed, mode).items()}


@pytest.fixture(scope="module")
def vits_state():
    return filled_state("vits")


@pytest.fixture(scope="module")
def vits(vits_state):
    model = build_model("vits")
    model.load_state_dict(vits_state, strict=True)
    return model.eval()


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """Point huggingface_hub at an empty cache so real downloaded weights do not interfere."""
    import huggingface_hub.constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def save_official_ckpt(state: dict, path: Path, prefix: str = "promptda.") -> Path:
    """Write state in the official layout: {"state_dict": {9-character prefix + key: tensor}}."""
    torch.save({"state_dict": {prefix + k: v for k, v in state.items()}}, path)
    return path


# --------------------------------------------------------------------------- parity


def test_parity_goldens_a_to_d():
    """The official checker passes on goldens a-d (rel tol 1e-4 of the output range)."""
    proc = subprocess.run([sys.executable, str(REFERENCE / "check_parity.py"), "pipeline.depth.promptda:build_model"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4/4 passed" in proc.stdout, proc.stdout


def test_parity_intermediates_case_e(vits):
    """Position embedding, encoder taps, fusion outputs and sigmoid match the official intermediates."""
    z = np.load(REFERENCE / "golden_e_vits_intermediates.npz")
    image, prompt = torch.from_numpy(z["image"]), torch.from_numpy(z["prompt"])
    ph, pw = image.shape[-2] // 14, image.shape[-1] // 14
    got = {}
    scratch = vits.depth_head.scratch
    hooks = [getattr(scratch, f"refinenet{k}").register_forward_hook(
        lambda m, i, o, k=k: got.__setitem__(f"refinenet{k}_out", o)) for k in (4, 3, 2)]
    hooks.append(scratch.output_conv2[2].register_forward_hook(lambda m, i, o: got.__setitem__("logits_pre_sigmoid", o)))
    hooks.append(scratch.output_conv2[3].register_forward_hook(lambda m, i, o: got.__setitem__("sigmoid_out", o)))
    with torch.inference_mode():
        got["pos_embed_interp"] = vits.pretrained.interpolate_pos_embed(ph, pw, torch.float32)
        taps = vits.pretrained((image - vits._mean) / vits._std, vits.taps)
        got.update({f"tap{i}_tokens": t for i, t in enumerate(taps)})
        got["depth"] = vits(image, prompt)
    for h in hooks:
        h.remove()
    for key, out in got.items():
        ref = z[key]
        err = np.abs(out.numpy().astype(np.float64) - ref).max()
        assert err <= 1e-4 * (ref.max() - ref.min()), f"{key}: max abs error {err:.3e}, range {ref.max() - ref.min():.3e}"


# --------------------------------------------------------------------------- architecture and loading


def test_vitb_state_dict_matches_manifest():
    """vitb has no official checkpoint, but its keys, order and shapes follow the manifest."""
    entries = json.loads((REFERENCE / "keys_vitb.json").read_text())
    model = build_model("vitb")
    assert [[k, list(v.shape), "float32"] for k, v in model.state_dict().items()] == entries
    assert sum(p.numel() for p in model.parameters()) == 98_656_577


def test_checkpoint_round_trip(vits, vits_state, tmp_path):
    """An official-layout checkpoint loads strictly (file or folder) and reproduces the model."""
    ckpt = save_official_ckpt(vits_state, tmp_path / "model.ckpt")
    z = np.load(REFERENCE / "golden_a_vits.npz")
    image, prompt = torch.from_numpy(z["image"]), torch.from_numpy(z["prompt"])
    with torch.inference_mode():
        expected = vits(image, prompt)
        for weights in (ckpt, str(tmp_path)):
            loaded = load_promptda("promptda-vits", weights=weights, device="cpu")
            assert not loaded.training
            assert torch.equal(loaded(image, prompt), expected)
    assert weights_available("promptda-vits", tmp_path) == ckpt
    assert weights_sha256(ckpt) == hashlib.sha256(ckpt.read_bytes()).hexdigest()


@pytest.mark.parametrize("change, message", [("drop", "1 missing keys"), ("extra", "1 unexpected"),
                                             ("prefix", "inconsistent key prefixes"), ("variant", "another variant")])
def test_checkpoint_mismatch_is_a_clear_error(vits_state, tmp_path, change, message):
    state = dict(vits_state)
    if change == "drop":
        state.pop("depth_head.scratch.output_conv1.bias")
    elif change == "extra":
        state["pretrained.blocks.12.ls1.gamma"] = torch.ones(384)
    ckpt = save_official_ckpt(state, tmp_path / "model.ckpt")
    if change == "prefix":
        raw = torch.load(ckpt, weights_only=True)
        raw["state_dict"]["model_ab." + "_std"] = raw["state_dict"].pop("promptda._std")
        torch.save(raw, ckpt)
    with pytest.raises(PromptmeshError, match=message) as info:
        load_promptda("promptda-vitl" if change == "variant" else "promptda-vits", weights=ckpt, device="cpu")
    assert str(ckpt) in str(info.value)


def test_weights_from_hf_cache(vits_state, empty_hf_cache):
    """A repo id (default or given) resolves offline through the Hugging Face cache layout."""
    repo_dir = empty_hf_cache / "models--depth-anything--prompt-depth-anything-vits"
    snapshot = repo_dir / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)
    ckpt = save_official_ckpt(vits_state, snapshot / "model.ckpt")
    assert weights_available("promptda-vits", None) == ckpt
    assert weights_available("vits", "depth-anything/prompt-depth-anything-vits") == ckpt
    assert weights_available("promptda-vitl", None) is None
    load_promptda("promptda-vits", device="cpu")


@pytest.mark.parametrize("name, weights", [("promptda-vits", None), ("promptda-vits-transparent", ""),
                                           ("promptda-vitl", "depth-anything/prompt-depth-anything-vitl"),
                                           ("promptda-vits", "no/such/model.ckpt")])
def test_missing_weights_say_how_to_download(name, weights, empty_hf_cache):
    assert weights_available(name, weights) is None
    with pytest.raises(PromptmeshError) as info:
        load_promptda(name, weights=weights, device="cpu")
    msg = str(info.value)
    assert "download" in msg and "model.ckpt" in msg and "--weights" in msg, msg
    if weights is None:
        assert f"hf download depth-anything/prompt-depth-anything-{name[len('promptda-'):]} model.ckpt" in msg


def test_unknown_model_names_the_registered_ones():
    for name in ("promptda-vitx", "vitb"):  # vitb: an architecture (build_model) without official checkpoint
        with pytest.raises(PromptmeshError, match="unknown PromptDA model .*promptda-vits, promptda-vits-transparent, "
                                                  "promptda-vitl"):
            load_promptda(name)


# --------------------------------------------------------------------------- predictor


def smooth_depth(h: int, w: int, lo: float, hi: float, seed: int = 0) -> np.ndarray:
    """(h, w) float32 smooth random depth spanning exactly [lo, hi] metres."""
    coarse = np.random.default_rng(seed).random((4, 5)).astype(np.float32)
    d = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return (lo + (d - d.min()) / (d.max() - d.min()) * (hi - lo)).astype(np.float32)


def random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)


def test_network_size():
    assert network_size(1440, 1920, 1008) == (756, 1008)  # the official example
    assert network_size(1920, 1440, 1008) == (1008, 756)  # portrait
    assert network_size(100, 130, 140) == (98, 140)  # upscaling, floored to multiples of 14


def test_fill_prompt_holes_uses_nearest_valid_value():
    depth = np.array([[0, 0, 2.0, 0], [1.0, 0, 0, np.nan], [0, 0, 0, 3.0]], np.float32)
    filled = fill_prompt_holes(depth)
    assert filled.dtype == np.float32 and filled.shape == depth.shape
    np.testing.assert_array_equal(filled, [[1, 2, 2, 2], [1, 1, 2, 3], [1, 1, 3, 3]])
    with pytest.raises(PromptmeshError, match="no valid pixel"):
        fill_prompt_holes(np.zeros((4, 4), np.float32))


def test_predictor_sizes_and_range(vits):
    predictor = PromptDAPredictor(vits, "cpu", long_side_px=140)
    rgb, lidar = random_rgb(100, 130), smooth_depth(24, 32, 0.8, 2.5)
    depth = predictor.predict(rgb, lidar)
    assert depth.shape == (100, 130) and depth.dtype == np.float32
    assert 0.8 <= depth.min() and depth.max() <= 2.5
    assert predictor.predict(rgb, lidar, out_hw=(50, 65)).shape == (50, 65)
    batch = predictor.predict_batch([rgb, random_rgb(100, 130, seed=1)], [lidar, lidar * 2], out_hw=(98, 140))
    assert batch.shape == (2, 98, 140)
    np.testing.assert_allclose(batch[0], predictor.predict(rgb, lidar, out_hw=(98, 140)), atol=1e-5)
    flat = predictor.predict(rgb, np.full((24, 32), 1.7, np.float32))
    np.testing.assert_array_equal(flat, np.float32(1.7))
    bf16 = PromptDAPredictor(vits, "cpu", long_side_px=140, precision="bf16").predict(rgb, lidar)
    assert 0.8 <= bf16.min() and bf16.max() <= 2.5
    assert np.abs(bf16 - depth).max() < 0.05 * (2.5 - 0.8)


def test_hole_filling_keeps_output_in_the_measured_range(vits):
    """Zeros (no LiDAR return) would become the prompt minimum and stretch the output towards 0 m."""
    lidar = smooth_depth(24, 32, 1.0, 3.0)
    lidar[np.random.default_rng(1).random(lidar.shape) < 0.2] = 0.0
    lidar[:6, :8] = 0.0
    rgb = random_rgb(98, 126)
    raw = PromptDAPredictor(vits, "cpu", long_side_px=126, fill_holes=False)
    filled = PromptDAPredictor(vits, "cpu", long_side_px=126, fill_holes=True)
    assert raw._preprocess_prompt(lidar).min() == 0.0
    assert filled._preprocess_prompt(lidar).min() == lidar[lidar > 0].min()
    out_raw, out_filled = raw.predict(rgb, lidar), filled.predict(rgb, lidar)
    valid_min, valid_max = lidar[lidar > 0].min(), lidar.max()
    assert out_raw.min() < 0.8 * valid_min  # stretched below anything the LiDAR measured
    assert valid_min <= out_filled.min() and out_filled.max() <= valid_max


def test_rgb_preprocessing_matches_official_loader():
    """Our resize of the 1920x1440 example equals the official load_image input of golden d."""
    rgb = cv2.cvtColor(cv2.imread(str(SAMPLE / "image.jpg")), cv2.COLOR_BGR2RGB)
    image = PromptDAPredictor(build_model("vits"), "cpu")._preprocess_rgb(rgb)
    ref = np.load(REFERENCE / "golden_d_vits_example.npz")["image"][0].transpose(1, 2, 0)
    assert image.shape == ref.shape == (756, 1008, 3)
    np.testing.assert_allclose(image, ref, atol=1e-6)
