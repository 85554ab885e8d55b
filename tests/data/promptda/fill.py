"""Deterministic, numpy-only weight fills for the PromptDA state_dict.

Every tensor is produced from (seed, key name, shape) alone, so any
implementation that exposes the same state_dict keys and shapes can be
loaded with exactly the same numbers as the reference goldens, without
real checkpoints and without torch's RNG.

    entries = json.load(open("tests/data/promptda/keys_vits.json"))
    sd = fill_state_dict(entries, seed=0, scale_mode="fanin")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)

Per-key generator: numpy.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])
(PCG64 via SeedSequence), then one standard_normal draw of the full shape in
float64, scaled/offset by the rules below and finally cast to float32.

Rules (first match wins; "N" is that standard-normal draw):
  _mean                       -> [0.485, 0.456, 0.406] exactly (no draw)
  _std                        -> [0.229, 0.224, 0.225] exactly (no draw)
  LayerNorm weight (a key ending "norm.weight", "norm1.weight", "norm2.weight")
                              -> 1 + ln_w * N
  LayerNorm bias   (same names, ".bias")
                              -> ln_b * N
  *.ls1.gamma / *.ls2.gamma   -> ls_mean + ls_std * N          (LayerScale)
  pretrained.pos_embed        -> pos_std * N
  pretrained.cls_token, pretrained.mask_token
                              -> tok_std * N
  any other key ending ".bias" -> bias_std * N
  any other tensor with ndim >= 2 (conv / linear / transposed-conv weight):
      mode "weak", key starts with "pretrained." (ViT encoder)
                              -> w_std * N                 (w_std = 0.02)
      otherwise               -> g / sqrt(fan_in) * N
                                 g = gain * prompt_gain for keys containing
                                 ".resConfUnit_depth." (the prompt branch),
                                 g = gain for everything else
  anything else               -> bias_std * N

Mode numbers (see MODES):
  fanin: gain 1.0, prompt_gain 1.3, bias 0.05, LN weight 1+0.1N, LN bias 0.05N,
         LayerScale 0.5+0.1N, pos_embed 0.5N, cls/mask token 0.5N.
  weak:  DINOv2-like small encoder (linear/conv weights 0.02N, LayerScale
         0.1+0.02N, pos_embed/tokens 0.02N, LN 1+0.02N / 0.01N, biases 0.01N),
         so attention is nearly uniform and encoder features are smooth; the DPT
         head still uses gain 1.0 / prompt_gain 1.3 fan-in scaling so the signal
         reaches the sigmoid without vanishing.

fan_in: for ordinary Conv2d / Linear weights, shape[1] * prod(shape[2:]).
For the two transposed convolutions of the DPT head
("depth_head.resize_layers.0.weight", "depth_head.resize_layers.1.weight";
torch stores them as (in, out, k, k) and they have stride == kernel, so each
output pixel sees exactly in_channels inputs) fan_in = shape[0].

No tensor is zero: in particular the zero-initialised last conv of each
prompt-depth unit (refinenetN.resConfUnit_depth.4) is filled like any other
conv so that the prompt really influences the output.
"""
from __future__ import annotations

import math
import zlib
from typing import Dict, Iterable, Sequence

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Hyper-parameters of each mode.  Changing any number here changes every
# golden, so treat them as frozen.
MODES = {
    "fanin": dict(gain=1.0, w_std=None, bias_std=0.05, ln_w=0.1, ln_b=0.05,
                  ls_mean=0.5, ls_std=0.1, pos_std=0.5, tok_std=0.5,
                  prompt_gain=1.3),
    "weak": dict(gain=1.0, w_std=0.02, bias_std=0.01, ln_w=0.02, ln_b=0.01,
                 ls_mean=0.1, ls_std=0.02, pos_std=0.02, tok_std=0.02,
                 prompt_gain=1.3),
}

_TRANSPOSED = ("depth_head.resize_layers.0.weight",
               "depth_head.resize_layers.1.weight")
_LN_SUFFIXES = ("norm.weight", "norm1.weight", "norm2.weight",
                "norm.bias", "norm1.bias", "norm2.bias")


def key_rng(seed: int, key: str) -> np.random.Generator:
    """The generator used for one key."""
    return np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8"))])


def fan_in(key: str, shape: Sequence[int]) -> int:
    if key in _TRANSPOSED:
        return int(shape[0])
    return int(shape[1]) * int(np.prod(shape[2:], dtype=np.int64))


def fill_tensor(key: str, shape: Sequence[int], seed: int, scale_mode: str) -> np.ndarray:
    if scale_mode not in MODES:
        raise ValueError(f"unknown scale_mode {scale_mode!r}; use one of {sorted(MODES)}")
    p = MODES[scale_mode]
    shape = tuple(int(s) for s in shape)
    if key == "_mean" or key.endswith("._mean"):
        return np.asarray(IMAGENET_MEAN, np.float32).reshape(shape)
    if key == "_std" or key.endswith("._std"):
        return np.asarray(IMAGENET_STD, np.float32).reshape(shape)
    n = key_rng(seed, key).standard_normal(shape)  # float64
    base = key.rsplit(".", 1)[-1]
    if key.endswith(_LN_SUFFIXES):
        out = 1.0 + p["ln_w"] * n if base == "weight" else p["ln_b"] * n
    elif key.endswith((".ls1.gamma", ".ls2.gamma")):
        out = p["ls_mean"] + p["ls_std"] * n
    elif key.endswith("pos_embed"):
        out = p["pos_std"] * n
    elif key.endswith(("cls_token", "mask_token")):
        out = p["tok_std"] * n
    elif base == "bias":
        out = p["bias_std"] * n
    elif len(shape) >= 2:
        if p["w_std"] is not None and key.startswith("pretrained."):
            out = p["w_std"] * n
        else:
            g = p["gain"] * (p["prompt_gain"] if ".resConfUnit_depth." in key else 1.0)
            out = (g / math.sqrt(fan_in(key, shape))) * n
    else:
        out = p["bias_std"] * n
    return np.ascontiguousarray(out, dtype=np.float32)


def fill_state_dict(manifest_entries: Iterable[Sequence], seed: int,
                    scale_mode: str = "fanin") -> Dict[str, np.ndarray]:
    """manifest_entries: iterable of [key, shape, dtype] (as in keys_<variant>.json).

    Returns an insertion-ordered dict key -> float32 numpy array.
    """
    out: Dict[str, np.ndarray] = {}
    for entry in manifest_entries:
        key, shape, dtype = entry[0], entry[1], entry[2]
        if "float" not in str(dtype):
            raise ValueError(f"{key}: only floating tensors expected, got {dtype}")
        out[key] = fill_tensor(key, shape, seed, scale_mode)
    return out


def checksum(state: Dict[str, np.ndarray]) -> float:
    """Order-independent fingerprint of a filled state (sum of |x| in float64)."""
    return float(sum(np.abs(v.astype(np.float64)).sum() for v in state.values()))
