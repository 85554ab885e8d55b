#!/usr/bin/env python3
"""Check a PromptDA re-implementation against the reference goldens.

usage:
    python tests/data/promptda/check_parity.py pipeline.depth.promptda:build_model
    python tests/data/promptda/check_parity.py pkg.mod:factory --goldens OTHER_GOLDENS_DIR

FACTORY is "module.path:callable"; callable(variant) with variant in
{"vits", "vitb", "vitl"} must return a torch.nn.Module whose state_dict keys
and shapes equal tests/data/promptda/keys_<variant>.json and whose
forward(image, prompt) maps image (B,3,H,W) RGB in [0,1] float32 and prompt
(B,1,h,w) metric depth in metres to depth (B,1,H,W) in metres.

For every golden_*.npz in --goldens the script fills the weights with
fill.py (seed and mode stored in the golden), loads them with strict=True,
runs forward in float32 / eval / no_grad and compares with the stored depth.
A case passes when max|out - golden| <= rel_tol * (golden.max() - golden.min()).
Exit status: 0 all pass, 1 any failure or error, 2 bad usage / no goldens.
The current working directory is put on sys.path so that repo-relative
packages import when the script runs from the repository root.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import sys
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fill import fill_state_dict, checksum  # noqa: E402

DEFAULT_REL_TOL = 1e-4


def load_factory(spec: str):
    if ":" not in spec:
        raise SystemExit(f"factory must look like 'package.module:callable', got {spec!r}")
    mod_name, fn_name = spec.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    mod = importlib.import_module(mod_name)
    fn = mod
    for part in fn_name.split("."):
        fn = getattr(fn, part)
    return fn


def s(z, k):
    return str(z[k][()]) if k in z.files else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("factory", nargs="?", help="module:callable, e.g. pipeline.depth.promptda:build_model")
    ap.add_argument("--factory", dest="factory_opt", default=None, help="same as the positional argument")
    ap.add_argument("--goldens", default=HERE, help="folder with golden_*.npz (default: this folder)")
    ap.add_argument("--keys-dir", default=HERE, help="folder with keys_<variant>.json (default: this folder)")
    ap.add_argument("--rel-tol", type=float, default=DEFAULT_REL_TOL,
                    help=f"max abs error allowed, as a fraction of the golden's output range (default {DEFAULT_REL_TOL})")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default=None, help="comma-separated substrings of golden file names to run")
    ap.add_argument("--include-intermediates", action="store_true",
                    help="also run golden_e_* (same depth as case a; skipped by default)")
    args = ap.parse_args(argv)
    args.factory = args.factory or args.factory_opt
    if not args.factory:
        ap.error("give the model factory, e.g. pipeline.depth.promptda:build_model")

    import torch
    factory = load_factory(args.factory)
    files = sorted(glob.glob(os.path.join(args.goldens, "golden_*.npz")))
    if not args.include_intermediates:
        files = [f for f in files if not os.path.basename(f).startswith("golden_e_")]
    if args.only:
        keys = args.only.split(",")
        files = [f for f in files if any(k in os.path.basename(f) for k in keys)]
    if not files:
        print(f"no golden_*.npz found in {args.goldens}")
        return 2

    failures = 0
    rows = []
    for path in files:
        name = os.path.basename(path)
        try:
            z = np.load(path, allow_pickle=False)
            variant, mode, seed = s(z, "variant"), s(z, "fill_mode"), int(z["seed"])
            entries = json.load(open(os.path.join(args.keys_dir, f"keys_{variant}.json")))
            sd = fill_state_dict(entries, seed, mode)
            cs, ref_cs = checksum(sd), float(z["fill_checksum"])
            if abs(cs - ref_cs) > 1e-9 * max(1.0, abs(ref_cs)):
                raise RuntimeError(f"fill.py produced different weights than when the golden was made "
                                   f"(checksum {cs!r} vs {ref_cs!r}); numpy RNG stream changed?")
            model = factory(variant)
            model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
            model = model.to(args.device).float().eval()
            image = torch.from_numpy(z["image"]).to(args.device)
            prompt = torch.from_numpy(z["prompt"]).to(args.device)
            with torch.no_grad():
                out = model(image, prompt)
            out = out.detach().float().cpu().numpy()
            ref = z["depth"]
            if out.shape != ref.shape:
                raise RuntimeError(f"output shape {out.shape} != golden {ref.shape}")
            err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
            rng = float(ref.max() - ref.min())
            tol = args.rel_tol * rng
            ok = bool(np.isfinite(out).all() and err.max() <= tol)
            failures += (not ok)
            rows.append((name, variant, mode, f"{tuple(ref.shape)}", f"{err.max():.3e}",
                         f"{err.mean():.3e}", f"{err.max() / rng:.3e}", f"{tol:.3e}", "PASS" if ok else "FAIL"))
        except Exception as e:  # report and continue with the next case
            failures += 1
            traceback.print_exc()
            rows.append((name, "?", "?", "?", "-", "-", "-", "-", f"ERROR: {type(e).__name__}: {e}"[:200]))
    hdr = ("golden", "variant", "fill", "shape", "max_abs", "mean_abs", "max_rel_range", "tol_abs", "result")
    w = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(len(hdr))]
    for r in [hdr] + rows:
        print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)))
    print(f"{len(rows) - failures}/{len(rows)} passed (rel_tol {args.rel_tol:g})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
