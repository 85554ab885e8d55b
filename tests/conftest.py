"""Shared test setup: tools/ is not a package, so its modules (capture_writers, ...) are imported by path."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
