"""Work-directory artifacts: atomic writes, stage manifests ("is it up to date?") and the workdir lock.

Every artifact is written to a temporary name in the same folder and renamed into place, so an
interrupted run never leaves a truncated file that a later run would trust. A stage records
completion by writing its manifest *last*: the manifest holds a fingerprint (sha256 of the stage
name, schema version, settings and the upstream manifests' fingerprints). A stage is current iff
its manifest exists, the fingerprint matches and every listed output exists.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from .errors import PromptmeshError
from .workdir import WorkDir, WorkDirLike

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_UMASK = os.umask(0)
os.umask(_UMASK)
SCHEMA_VERSION = 1


# --------------------------------------------------------------------------- atomic writes
def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give artifacts normal file permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quiet(Path(tmp))
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


class atomic_output:
    """Context manager yielding a temporary path beside `path`; renamed to `path` on success.

    For writers that insist on a file name (Open3D, pyarrow, trimesh). The temporary name keeps
    the real suffix so that format detection by extension still works.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp{self.path.suffix}")

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self.tmp.exists():
                raise RuntimeError(f"writer produced no file at {self.tmp}")
            os.replace(self.tmp, self.path)
        else:
            _unlink_quiet(self.tmp)


def write_png_atomic(path: Path, image: np.ndarray) -> Path:
    """Encode `image` (uint8 or uint16, (H,W) or (H,W,3) BGR) as PNG and write it atomically.

    (H,W) uint16 images (depth maps, millimetres) go through `images.encode_depth_png` (libdeflate: faster,
    smaller); the rest through OpenCV."""
    import cv2

    from .images import encode_depth_png

    if image.ndim == 2 and image.dtype == np.uint16:
        return atomic_write_bytes(path, encode_depth_png(image))
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    return atomic_write_bytes(path, buf.tobytes())


def remove_tree(path: Path) -> None:
    if Path(path).exists():
        shutil.rmtree(path)


def _unlink_quiet(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- fingerprints
def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths, numpy scalars/arrays -> plain JSON types (for manifests and reports)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def fingerprint(stage: str, settings: Any, upstream: Iterable[str] = ()) -> str:
    """sha256 over the stage name, schema version, settings (sorted JSON) and upstream fingerprints."""
    payload = {
        "stage": stage,
        "schema": SCHEMA_VERSION,
        "settings": to_jsonable(settings),
        "upstream": list(upstream),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def source_fingerprint(path: Path) -> str:
    """Cheap fingerprint of a capture on disk: relative names, sizes and mtimes of its files."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        rel = p.name if p == path else str(p.relative_to(path))
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- manifests
@dataclasses.dataclass
class Manifest:
    """What a finished stage wrote, stored as `<stage dir>/manifest.json`, written last."""

    stage: str
    fingerprint: str
    outputs: list[str]
    """Output paths relative to the manifest's folder."""
    settings: dict
    summary: dict = dataclasses.field(default_factory=dict)
    """Counts and timings worth reporting (frames written, skipped, seconds)."""
    handoff: dict = dataclasses.field(default_factory=dict)
    """What this stage tells the next one (e.g. depth: `fuse_confidence_mask`; fuse: `depth_model`), declared
    here rather than left for downstream to infer from `settings`; the stage taking it logs where it applies it."""

    @staticmethod
    def path_in(stage_dir: Path) -> Path:
        return Path(stage_dir) / MANIFEST_NAME

    def write(self, stage_dir: Path) -> Path:
        return atomic_write_json(self.path_in(stage_dir), dataclasses.asdict(self))

    @classmethod
    def read(cls, stage_dir: Path) -> "Manifest | None":
        p = cls.path_in(stage_dir)
        if not p.exists():
            return None
        try:
            d = json.loads(p.read_text())
            return cls(**d)
        except (ValueError, TypeError):
            return None  # unreadable manifest = stage not done


def is_current(stage_dir: Path, expected_fingerprint: str, handoff: tuple[str, ...] = ()) -> Manifest | None:
    """The stage's manifest if it matches `expected_fingerprint`, all its outputs exist and it declares the
    `handoff` keys (a manifest written before a stage declared them is redone)."""
    m = Manifest.read(stage_dir)
    if m is None or m.fingerprint != expected_fingerprint or not set(handoff) <= set(m.handoff):
        return None
    if not all((Path(stage_dir) / o).exists() for o in m.outputs):
        return None
    return m


def upstream_fingerprint(stage_dir: Path, what: str) -> str:
    """Fingerprint of a finished upstream stage, or a PromptmeshError saying what to run first."""
    m = Manifest.read(stage_dir)
    if m is None:
        raise PromptmeshError(f"{stage_dir}: {what} has not finished here; run `promptmesh {what}` first")
    return m.fingerprint


def invalidate(stage_dir: Path) -> None:
    """Drop a stage's manifest so that it (and, by fingerprint, everything after it) reruns."""
    _unlink_quiet(Manifest.path_in(stage_dir))


RESUME_MARKER = ".fingerprint.json"
"""Written into a stage folder before its first per-frame output: the fingerprint those outputs are made with."""


def start_or_resume(stage_dir: Path, stamp: str, settings: Any, force: bool) -> bool:
    """For stages that write one file (or set) per frame: True if `stage_dir` holds outputs of an interrupted
    run with the same fingerprint `stamp` (keep them, compute the rest); otherwise (another fingerprint,
    nothing there, or `force`) empty the folder, record `stamp` in its RESUME_MARKER and return False.

    Per-frame outputs must be written atomically, so that an existing file is a complete one."""
    marker = Path(stage_dir) / RESUME_MARKER
    try:
        previous = json.loads(marker.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous == stamp and not force:
        return True
    remove_tree(stage_dir)
    atomic_write_json(marker, {"fingerprint": stamp, "settings": settings})
    return False


# --------------------------------------------------------------------------- workdir lock
TEMPORARY_NAME = re.compile(r"^\..+\.([a-z0-9_]{8}|\d+)\.tmp(\.[A-Za-z0-9]+)?$")
"""Names of the temporaries of atomic_write_bytes (.NAME.XXXXXXXX.tmp, mkstemp's 8 random characters) and
atomic_output (.STEM.PID.tmp.EXT)."""


def remove_temporaries(folder: Path) -> int:
    """Delete the temporary files that killed writers left anywhere under `folder`; returns how many.

    Only safe while holding the folder's WorkdirLock (no one else can be writing there)."""
    n = 0
    for root, _, files in os.walk(folder):
        for name in files:
            if TEMPORARY_NAME.match(name):
                _unlink_quiet(Path(root) / name)
                n += 1
    return n


class WorkdirLock:
    """Exclusive lock on a work directory: an advisory `flock` on `WORKDIR/.lock` (which holds host, pid and
    start time for the error message).

    A second process gets a PromptmeshError naming the holder. The kernel drops the lock when its holder
    exits in any way (SIGKILL included), so a lock file left by a dead process is simply taken over. Once
    taken, temporaries left by killed writers in the work directory are deleted (`remove_temporaries`).
    """

    def __init__(self, workdir: "WorkDirLike"):
        self.path = WorkDir(workdir).lock
        self.fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> "WorkdirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 200).decode(errors="replace").strip() or "starting"
                os.close(fd)
                raise PromptmeshError(
                    f"{self.path.parent}: another promptmesh process ({owner}) is using this work directory; "
                    "wait for it to finish or use another -o WORKDIR") from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)  # the holder released (and removed) the file between our open and flock: retry
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode())
        self.fd = fd
        n = remove_temporaries(self.path.parent)
        if n:
            log.info("removed %d temporary files left by an interrupted run in %s", n, self.path.parent)
        return self

    def release(self) -> None:
        if self.fd is not None:
            _unlink_quiet(self.path)  # before unlocking, so that a waiting process retries on a fresh file
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
