"""PromptDA weights and inference: find/load the official checkpoints, run frames.

    path = weights_available("promptda-vits", None)       # None when not in the local HF cache
    model = load_promptda("promptda-vits", weights=None, device="auto")
    predictor = PromptDAPredictor(model, long_side_px=1008)
    depth_m = predictor.predict(rgb_uint8, lidar_depth_m, out_hw=(1440, 1920))   # (1440, 1920) float32

Weights are never downloaded here: a `weights` argument is a local model.ckpt, a folder
holding one, or a Hugging Face repo id looked up in the local HF cache only.

Speeds per model and size: docs/benchmarks.md (Depth models).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.depth.promptda import PATCH_SIZE, PromptDA, build_model
from pipeline.depth_models import DEPTH_MODELS
from pipeline.errors import PromptmeshError

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.ckpt"
_KEY_ROOTS = ("pretrained.", "depth_head.", "_mean", "_std")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

WeightsArg = Union[str, Path, None]


# --------------------------------------------------------------------------- weights


def model_spec(name_or_variant: str) -> Tuple[str, str, str]:
    """"promptda-vits" or "vits" -> (name, variant, official repo id), from the registry (pipeline.depth_models)."""
    name = name_or_variant if name_or_variant.startswith("promptda-") else f"promptda-{name_or_variant}"
    checkpoints = {n: s for n, s in DEPTH_MODELS.items() if s.variant}
    if name not in checkpoints:
        raise PromptmeshError(f"unknown PromptDA model {name_or_variant!r}; use one of {', '.join(checkpoints)}")
    return name, checkpoints[name].variant, checkpoints[name].weights_repo


def _download_hint(repo: str) -> str:
    return (f"download them with `hf download {repo} {CHECKPOINT_FILE}` (older huggingface_hub: "
            f"`huggingface-cli download {repo} {CHECKPOINT_FILE}`), or pass --weights /path/to/{CHECKPOINT_FILE}")


def resolve_weights(name_or_variant: str, weights: WeightsArg = None) -> Path:
    """Local path of the checkpoint; raises PromptmeshError saying how to get it.

    weights: a model.ckpt file, a folder holding model.ckpt, a Hugging Face repo id looked up
    offline in the local HF cache, or None / "" for the model's official repo id.
    """
    name, _, default_repo = model_spec(name_or_variant)
    if weights is None or str(weights) == "":
        weights = default_repo
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / CHECKPOINT_FILE).is_file():
            return path / CHECKPOINT_FILE
        raise PromptmeshError(f"{path}: folder has no {CHECKPOINT_FILE}; {_download_hint(default_repo)}")
    text = str(weights)
    if _REPO_ID.match(text) and not text.startswith(".") and path.suffix not in (".ckpt", ".pt", ".pth"):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HFValidationError

        try:
            return Path(hf_hub_download(text, CHECKPOINT_FILE, local_files_only=True))
        except (EntryNotFoundError, HFValidationError) as e:
            raise PromptmeshError(f"{text}/{CHECKPOINT_FILE}: {name} weights are not in the local Hugging Face "
                                  f"cache ({type(e).__name__}); {_download_hint(text)}") from None
    raise PromptmeshError(f"{path}: {name} weights not found (no such file); {_download_hint(default_repo)}")


def weights_available(name_or_variant: str, weights: WeightsArg = None) -> Optional[Path]:
    """Checkpoint path if it exists locally (no network), else None. Cheap: no file is read."""
    try:
        return resolve_weights(name_or_variant, weights)
    except PromptmeshError:
        return None


def weights_sha256(path: Union[str, Path]) -> str:
    """Hex sha256 of a weights file, read in chunks (for stage manifests)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _strip_prefix(state_dict: Dict[str, torch.Tensor], path: Path) -> Dict[str, torch.Tensor]:
    """Drop the training-wrapper prefix (9 characters in the official files) from every key.

    The prefix is whatever precedes the first `pretrained.` / `depth_head.` / `_mean` / `_std`
    at a name boundary; it must be the same for all keys.
    """
    prefixes, out = set(), {}
    for key, value in state_dict.items():
        starts = [i for i in (key.find(root) for root in _KEY_ROOTS) if i == 0 or (i > 0 and key[i - 1] == ".")]
        if not starts:
            raise PromptmeshError(f"{path}: key {key!r} is not a PromptDA weight; is this a PromptDA checkpoint?")
        prefixes.add(key[:min(starts)])
        out[key[min(starts):]] = value
    if len(prefixes) > 1:
        raise PromptmeshError(f"{path}: inconsistent key prefixes {sorted(prefixes)}; is this a PromptDA checkpoint?")
    return out


def load_checkpoint(model: PromptDA, path: Union[str, Path]) -> PromptDA:
    """Load an official-layout checkpoint ({"state_dict": {prefix + key: tensor}}) strictly into model."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or a pickle with code in it
        raise PromptmeshError(f"{path}: cannot read checkpoint ({type(e).__name__}: {str(e)[:200]}); "
                              "re-download it") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise PromptmeshError(f"{path}: no 'state_dict' entry; expected an official PromptDA model.ckpt")
    state = _strip_prefix(ckpt["state_dict"], path)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {s}" for k, s in expected.items()
             if k in state and tuple(state[k].shape) != s]
    if missing or unexpected or wrong:
        raise PromptmeshError(
            f"{path}: does not match PromptDA-{model.variant}: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}, {len(wrong)} wrong shapes {wrong[:3]}; "
            "is it a checkpoint of another variant (vits / vitl)?")
    model.load_state_dict(state, strict=True)
    return model


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """"auto" -> cuda, then mps, then cpu; an explicit device must be available."""
    name = str(device or "auto")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PromptmeshError("--device cuda: CUDA is not available to this torch install; use --device auto or cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise PromptmeshError("--device mps: MPS is not available on this machine; use --device auto or cpu")
    return dev


def load_promptda(name_or_variant: str, weights: WeightsArg = None,
                  device: Union[str, torch.device, None] = "auto") -> PromptDA:
    """Build the model, load its checkpoint strictly (see resolve_weights), eval mode, on device."""
    name, variant, _ = model_spec(name_or_variant)
    path = resolve_weights(name, weights)
    model = load_checkpoint(build_model(variant), path)
    dev = resolve_device(device)
    log.info("PromptDA %s: weights %s, device %s", name, path, dev)
    return model.to(dev).eval()


# --------------------------------------------------------------------------- inference


def fill_prompt_holes(depth_m: np.ndarray) -> np.ndarray:
    """(h, w) depth, 0 / non-finite = no return -> (h, w) float32 with holes set to the nearest valid pixel.

    The official model normalises the prompt by its min/max over all pixels, so a single 0
    would become the prompt minimum and stretch the output range down to 0 m.
    """
    depth_m = np.asarray(depth_m, dtype=np.float32)
    valid = np.isfinite(depth_m) & (depth_m > 0)
    if valid.all():
        return depth_m
    if not valid.any():
        raise PromptmeshError("LiDAR depth has no valid pixel (all 0 or non-finite); PromptDA needs a prompt: "
                              "drop this frame or use --depth-model guided")
    # each valid pixel is its own label; every hole gets the label of its nearest valid pixel
    _, labels = cv2.distanceTransformWithLabels((~valid).astype(np.uint8), cv2.DIST_L2, 5,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    value_of_label = np.zeros(labels.max() + 1, np.float32)
    value_of_label[labels[valid]] = depth_m[valid]
    return value_of_label[labels]


def network_size(height: int, width: int, long_side_px: int) -> Tuple[int, int]:
    """RGB (H, W) -> model input (H', W'): long side ~long_side_px, both floored to multiples of 14."""
    scale = long_side_px / max(height, width)
    h, w = int(height * scale // PATCH_SIZE * PATCH_SIZE), int(width * scale // PATCH_SIZE * PATCH_SIZE)
    assert h > 0 and w > 0, f"RGB {height}x{width} with long side {long_side_px} px gives an empty input {h}x{w}"
    return h, w


def _cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class PromptDAPredictor:
    """Runs PromptDA on uint8 RGB frames with their LiDAR depth; returns metric depth at any size.

    Pre-processing follows the official script: RGB as float in [0, 1], resized (INTER_AREA
    when shrinking) so its long side is `long_side_px` with both sides floored to multiples
    of 14; the LiDAR depth is the prompt at its native resolution, holes filled first when
    `fill_holes`. precision: "auto" = fp16 autocast on CUDA, fp32 elsewhere; "bf16" is ~1.3x
    faster on recent CPUs but moves outputs by millimetres. The model is moved to device and
    channels_last (faster decoder convolutions); on CPU, torch threads are capped at the CPUs
    this process may use.
    """

    def __init__(self, model: PromptDA, device: Union[str, torch.device, None] = None,
                 long_side_px: int = 1008, precision: str = "auto", fill_holes: bool = True):
        self.device = next(model.parameters()).device if device is None else resolve_device(device)
        if precision not in ("auto", "fp32", "fp16", "bf16"):
            raise PromptmeshError(f"precision {precision!r}: use auto, fp32, fp16 or bf16")
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        self.autocast_dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.long_side_px = long_side_px
        self.fill_holes = fill_holes
        if self.device.type == "cpu" and torch.get_num_threads() > _cpu_threads():
            torch.set_num_threads(_cpu_threads())

    def predict(self, rgb: np.ndarray, lidar_depth_m: np.ndarray,
                out_hw: Optional[Tuple[int, int]] = None) -> np.ndarray:
        """rgb (H, W, 3) uint8 RGB, lidar_depth_m (h, w) metres (0 = none) -> (H', W') float32 metres.

        out_hw defaults to (H, W).
        """
        return self.predict_batch([rgb], [lidar_depth_m], out_hw)[0]

    @torch.inference_mode()
    def predict_batch(self, rgbs: Sequence[np.ndarray], lidar_depths_m: Sequence[np.ndarray],
                      out_hw: Optional[Tuple[int, int]] = None) -> np.ndarray:
        """B frames of the same size: (B, H, W, 3) uint8 + (B, h, w) metres -> (B, H', W') float32 metres."""
        assert len(rgbs) == len(lidar_depths_m) > 0, f"{len(rgbs)} RGB frames but {len(lidar_depths_m)} depth maps"
        H, W = rgbs[0].shape[:2]
        assert all(x.shape[:2] == (H, W) for x in rgbs), f"RGB frames differ in size: {[x.shape for x in rgbs]}"
        out_hw = (H, W) if out_hw is None else tuple(out_hw)
        image = torch.from_numpy(np.stack([self._preprocess_rgb(x) for x in rgbs]))  # (B, H', W', 3)
        prompt = np.stack([self._preprocess_prompt(d) for d in lidar_depths_m])[:, None]  # (B, 1, h, w)
        image = image.to(self.device).permute(0, 3, 1, 2)  # (B, 3, H', W'), already channels_last in memory
        prompt = torch.from_numpy(prompt).to(self.device)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            depth = self.model(image, prompt)  # (B, 1, H', W') float32 metres
        if depth.shape[-2:] != out_hw:
            shrink = out_hw[0] < depth.shape[-2] or out_hw[1] < depth.shape[-1]
            depth = F.interpolate(depth, size=out_hw, mode="bilinear", align_corners=False, antialias=shrink)
        lo = prompt.amin(dim=(1, 2, 3), keepdim=True)
        flat = prompt.amax(dim=(1, 2, 3), keepdim=True) - lo <= 1e-6
        if flat.any():  # the model divides by zero; the limit of its output is the constant
            log.warning("PromptDA: constant LiDAR prompt in %d frame(s); returning it as a flat depth map",
                        int(flat.sum()))
            depth = torch.where(flat, lo, depth)
        return depth[:, 0].cpu().numpy()

    def _preprocess_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H', W', 3) float32 in [0, 1] at the network size."""
        assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8, \
            f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}"
        h, w = network_size(*rgb.shape[:2], self.long_side_px)
        image = rgb.astype(np.float32) / 255.0
        if (h, w) != rgb.shape[:2]:
            shrink = h < rgb.shape[0]
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return image

    def _preprocess_prompt(self, depth_m: np.ndarray) -> np.ndarray:
        """(h, w) metres, 0 = no return -> (h, w) float32 prompt."""
        assert depth_m.ndim == 2, f"expected (h, w) LiDAR depth, got shape {depth_m.shape}"
        if self.fill_holes:
            return fill_prompt_holes(depth_m)
        return np.nan_to_num(np.asarray(depth_m, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
