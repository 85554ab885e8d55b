"""`promptmesh view`: WORKDIR/view/index.html, an offline page with the mesh, a measuring tool and the scores.

Everything the page loads lies beside it (docs/workdir.md): `mesh.glb`, `viewer.js`, the vendored three.js
(`three/`, pinned, see pipeline/viewer_assets/three/VERSION) and the compare report's figures (`figures/`).
Browsers refuse `fetch` from file:// URLs, so `serve` hands the folder out on 127.0.0.1.

The mesh is the AR export's textured GLB (WORKDIR/export/ar/mesh.glb) when it exists and is not older than
mesh.ply, else mesh.ply decimated to `ViewConfig.target_triangles` and written as GLB with vertex colours
(kept across reruns while mesh.ply and the setting stay the same). Either way it is in the capture's world
frame, metres, Y up (ARKit worlds are y up, like glTF), so the measuring tool reads metres directly. The page
shows it unlit (colours as captured: glTF's default metallic material renders black without an environment
map) and opens at the pose of the capture's middle frame (after pose refinement), looking where the phone
looked.

Scores (eval.json, compare.json), capture facts (ingest and fuse manifests) and the view's start pose are
written into the HTML by this module; viewer.js only draws and measures.
"""
from __future__ import annotations

import html
import http.server
import json
import logging
import string
import time
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np

from .artifacts import (Manifest, atomic_write_bytes, atomic_write_text, fingerprint, invalidate, is_current,
                        remove_tree, source_fingerprint)
from .capture import CaptureTable
from .compare import TABLE_COLUMNS
from .config import ViewConfig
from .errors import PromptmeshError
from .export.gltf import write_glb
from .export.simplify import decimate_in_passes, surface_distance_m
from .fuse import fused_voxel_line, voxel_line
from .mesh import read_ply
from .poses import fused_camera_to_world
from .workdir import WorkDir

log = logging.getLogger(__name__)

STAGE = "view"
ASSETS = Path(__file__).parent / "viewer_assets"
"""index.html (template), viewer.js and three/ (vendored three.js)."""
MESH_NAME = "mesh.glb"
MESH_VERSION = 2
"""Bumped when the page's mesh or the facts recorded about it change for the same mesh and settings."""
SCORE_COLUMNS = [({"Prec": "Precision"}.get(h, h), key, scale, fmt)
                 for h, section, key, scale, fmt in TABLE_COLUMNS if section == "culled"]
"""(header, key, scale, format) of eval.json's culled / unculled sections, as the compare report shows them."""
DEPTH_COLUMNS = [(h, key, scale, fmt) for h, section, key, scale, fmt in TABLE_COLUMNS if section == "depth"]


def ar_mesh(wd: WorkDir) -> Path:
    """The AR export's textured GLB (it may not exist)."""
    return wd.export("ar") / "mesh.glb"


def _source_mesh(wd: WorkDir) -> Path:
    """The AR export's GLB when it is at least as new as mesh.ply (an older one shows a mesh since replaced),
    else mesh.ply."""
    ar, ply = ar_mesh(wd), wd.mesh("ply")
    if ar.is_file() and (not ply.is_file() or ar.stat().st_mtime_ns >= ply.stat().st_mtime_ns):
        return ar
    if ar.is_file():
        log.warning("view: %s is older than %s; showing mesh.ply (rerun `promptmesh export %s --preset ar` for the "
                    "textured mesh)", ar, ply, wd.root)
    return ply


def run(cfg: ViewConfig, workdir: Path, force: bool = False) -> Path:
    """Write WORKDIR/view/ (index.html and everything it loads); returns the path of index.html."""
    wd = WorkDir(workdir)
    out = wd.view
    source = _source_mesh(wd)
    if not source.is_file():
        raise PromptmeshError(f"{wd.mesh('ply')}: no mesh to show; run `promptmesh run CAPTURE -o {wd.root}` (or "
                              "`promptmesh mesh WORKDIR`) first")
    mesh_stamp = fingerprint(f"{STAGE}-mesh", {"cfg": cfg, "source": str(source.relative_to(wd.root)),
                                               "version": MESH_VERSION},
                             [source_fingerprint(source)])
    inputs = [wd.eval_json, wd.compare_json, wd.frames_parquet, wd.poses_parquet, Manifest.path_in(wd.capture),
              Manifest.path_in(wd.fuse), Manifest.path_in(wd.export("ar")), ASSETS]
    stamp = fingerprint(STAGE, {}, [mesh_stamp] + [source_fingerprint(p) if p.exists() else f"{p.name}: absent"
                                                   for p in inputs])
    index = out / "index.html"
    if not force and is_current(out, stamp):
        log.info("view: up to date (%s)", index)
        return index

    t0 = time.perf_counter()
    previous = Manifest.read(out)
    invalidate(out)
    _copy_tree(ASSETS / "three", out / "three")
    atomic_write_bytes(out / "viewer.js", (ASSETS / "viewer.js").read_bytes())
    if (not force and previous is not None and previous.settings.get("mesh_fingerprint") == mesh_stamp
            and (out / MESH_NAME).is_file()):  # only the scores or facts changed: keep the (decimated) mesh
        mesh_facts = [tuple(fact) for fact in previous.summary["mesh_facts"]]
    else:
        mesh_facts = _write_mesh(source, out / MESH_NAME, cfg, from_ar=source != wd.mesh("ply"))
    remove_tree(out / "figures")  # a previous report's figures
    figures = _copy_figures(wd, out / "figures")
    start = _start_view(wd, _mesh_offset_m(wd, source))
    page = string.Template((ASSETS / "index.html").read_text()).substitute(
        title=html.escape(f"promptmesh: {wd.root.resolve().name}"),
        data=json.dumps({"mesh": MESH_NAME, "start": start}).replace("</", "<\\/"),
        capture=_facts_table(_capture_facts(wd) + mesh_facts),
        scores=_scores_html(wd),
        compare=_compare_html(wd, figures),
    )
    atomic_write_text(index, page)
    outputs = ["index.html", "viewer.js", MESH_NAME, "three/three.module.js"] + [f"figures/{p.name}" for p in figures]
    Manifest(STAGE, stamp, outputs=outputs,
             settings={"cfg": cfg, "source": str(source), "mesh_fingerprint": mesh_stamp},
             summary={"seconds": round(time.perf_counter() - t0, 3), "figures": len(figures),
                      "mesh_facts": mesh_facts}).write(out)
    log.info("view: %s -> %s", ", ".join(f"{k} {v}" for k, v in mesh_facts), index)
    return index


def _copy_tree(src: Path, dst: Path) -> None:
    for p in sorted(src.rglob("*")):
        if p.is_file():
            atomic_write_bytes(dst / p.relative_to(src), p.read_bytes())


def _write_mesh(source: Path, dst: Path, cfg: ViewConfig, from_ar: bool) -> list[tuple[str, str]]:
    """The page's mesh.glb; returns (label, value) facts about it, with how far its surface lies from mesh.ply's
    (what a measurement on the page can be off by)."""
    if from_ar:
        atomic_write_bytes(dst, source.read_bytes())
        ar = Manifest.read(source.parent)
        summary = ar.summary if ar is not None else {}
        facts = [("mesh", "AR export (textured), export/ar/mesh.glb")]
        if "triangles" in summary and "triangles_full" in summary:
            facts.append(("triangles", f"{summary['triangles']:,} of {summary['triangles_full']:,}"))
        if "distance_to_full_mean_m" in summary:
            facts.append(_distance_fact(summary["distance_to_full_mean_m"], summary["distance_to_full_p95_m"]))
        return facts
    full = read_ply(source)
    shown = decimate_in_passes(full, cfg.target_triangles)
    write_glb(dst, shown.vertices, shown.triangles, colors_rgb8=shown.colors)
    if len(shown.triangles) == len(full.triangles):
        return [("mesh", "mesh.ply"), ("triangles", f"{len(full.triangles):,}")]
    return [("mesh", "mesh.ply, decimated"), ("triangles", f"{len(shown.triangles):,} of {len(full.triangles):,}"),
            _distance_fact(*surface_distance_m(full, shown))]


def _distance_fact(mean_m: float, p95_m: float) -> tuple[str, str]:
    return "off mesh.ply by", f"{mean_m * 1000:.1f} mm mean, {p95_m * 1000:.1f} mm p95"


def _start_view(wd: WorkDir, offset_m: np.ndarray) -> Optional[dict]:
    """Where the page opens: the middle frame's camera (fused pose, moved by `offset_m` like the mesh) with its
    vertical field of view, as eye position and forward vector in the mesh's frame (the page keeps +y up);
    None without a capture (the page then fits the whole mesh)."""
    if not wd.frames_parquet.exists():
        return None
    table = CaptureTable.load(wd)
    i = len(table) // 2
    camera_to_world = fused_camera_to_world(wd, table)[i]
    R = camera_to_world[:3, :3]  # OpenCV camera axes: x right, y down, z forward
    vfov_deg = float(np.degrees(2 * np.arctan2(table.height[i] / 2, table.K_rgb[i, 1, 1])))
    return {"eye": (camera_to_world[:3, 3] + offset_m).tolist(), "forward": R[:, 2].tolist(),
            "vfov_deg": round(vfov_deg, 3), "frame": table.stem(i)}


def _mesh_offset_m(wd: WorkDir, source: Path) -> np.ndarray:
    """(3,) translation of the page's mesh from the capture's world: the AR export's recentring, else 0."""
    if source != ar_mesh(wd):
        return np.zeros(3)
    manifest = Manifest.read(source.parent)
    return np.asarray((manifest.summary if manifest else {}).get("recenter_offset_m", [0.0, 0.0, 0.0]), np.float64)


def _capture_facts(wd: WorkDir) -> list[tuple[str, str]]:
    facts = []
    ingest = Manifest.read(wd.capture)
    if ingest is not None:
        s = ingest.summary
        facts.append(("format", str(s.get("format", "?"))))
        facts.append(("frames kept", f"{s.get('kept', '?')} of {s.get('listed', '?')}"))
    if wd.frames_parquet.exists():
        w, h = CaptureTable.load(wd).rgb_size
        facts.append(("RGB", f"{w}×{h}"))
    fuse = Manifest.read(wd.fuse)
    if fuse is not None:
        facts.append(("depth model", str(fuse.settings.get("depth_model", "?"))))
        # the voxel fused with; older manifests have only the settings' (0 there means automatic)
        given_m = fuse.settings.get("cfg", {}).get("voxel_size_m")
        voxel = fused_voxel_line(fuse.summary) or (voxel_line(given_m, None) if given_m else None)
        if voxel is not None:
            facts.append(("TSDF voxel", voxel))
    return facts


def _facts_table(facts: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    return f'<table class="facts">{rows}</table>'


def _cell(section: dict, key: str, scale: float, fmt: str) -> str:
    value = section.get(key)
    return fmt.format(value * scale) if isinstance(value, (int, float)) else "–"


def _read_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise PromptmeshError(f"{path}: not valid JSON; rerun the command that writes it") from None


def _scores_html(wd: WorkDir) -> str:
    """eval.json as two tables (mesh scores culled / unculled, and depth metrics when present)."""
    scores = _read_json(wd.eval_json)
    if scores is None:
        return '<p class="none">No evaluation yet: <code>promptmesh eval WORKDIR --gt-mesh MESH</code>.</p>'
    head = "".join(f"<th>{h}</th>" for h, *_ in SCORE_COLUMNS)
    rows = "".join(f'<tr id="scores-{part}"><th>{part}</th>'
                   + "".join(f"<td>{_cell(scores.get(part, {}), *c[1:])}</td>" for c in SCORE_COLUMNS) + "</tr>"
                   for part in ("culled", "unculled") if part in scores)
    out = (f'<table class="scores"><tr><th></th>{head}</tr>{rows}</table>'
           f'<p class="note">threshold {scores.get("threshold_m", 0) * 100:g} cm, both meshes downsampled at '
           f'{scores.get("downsample_m", 0) * 100:g} cm; culled = ground truth some camera saw.</p>')
    depth_cols = [c for c in DEPTH_COLUMNS if c[1] in scores.get("depth", {})]
    if depth_cols:
        out += ('<table class="scores"><tr>' + "".join(f"<th>{h}</th>" for h, *_ in depth_cols) + "</tr><tr>"
                + "".join(f"<td>{_cell(scores['depth'], *c[1:])}</td>" for c in depth_cols) + "</tr></table>")
    return out


def _copy_figures(wd: WorkDir, dst: Path) -> list[Path]:
    report = _read_json(wd.compare_json) or {}
    copied = []
    for rel in report.get("figures", []):
        src = wd.root / rel
        if src.is_file():
            copied.append(atomic_write_bytes(dst / src.name, src.read_bytes()))
    return copied


def _compare_html(wd: WorkDir, figures: list[Path]) -> str:
    """compare.json's table (the columns of compare.md) and its figures; '' without a compare report."""
    report = _read_json(wd.compare_json)
    if report is None:
        return ""
    models = report.get("models", {})
    cols = [c for c in TABLE_COLUMNS if any(c[2] in r.get(c[1], {}) for r in models.values())]
    rows = "".join(f"<tr><th>{html.escape(m)}</th>"
                   + "".join(f"<td>{_cell(r.get(sec, {}), key, scale, fmt)}</td>" for _, sec, key, scale, fmt in cols)
                   + "</tr>" for m, r in models.items())
    skipped = "".join(f"<li><code>{html.escape(m)}</code>: {html.escape(why)}</li>"
                      for m, why in report.get("skipped", {}).items())
    imgs = "".join(f'<a href="figures/{html.escape(p.name)}"><img src="figures/{html.escape(p.name)}" '
                   f'alt="{html.escape(p.stem)}"></a>' for p in figures)
    return ('<h2>Depth models compared</h2><table class="scores"><tr><th>model</th>'
            + "".join(f"<th>{c[0]}</th>" for c in cols) + f"</tr>{rows}</table>"
            + (f"<p>Skipped:</p><ul>{skipped}</ul>" if skipped else "") + f'<div class="figures">{imgs}</div>')


# ----------------------------------------------------------------------------- serving
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".glb": "model/gltf-binary"}

    def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        log.debug("view: %s", format % args)


def server(folder: Path, port: int) -> http.server.ThreadingHTTPServer:
    """An HTTP server for `folder` on 127.0.0.1:`port` (0 = any free port); call serve_forever() on it."""
    try:
        return http.server.ThreadingHTTPServer(("127.0.0.1", port), partial(_QuietHandler, directory=str(folder)))
    except OSError as e:
        why = e.strerror or str(e)
        raise PromptmeshError(f"127.0.0.1:{port}: cannot serve there ({why}); pass another --serve PORT") from None
