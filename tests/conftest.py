"""Shared test setup.

- tools/ is not a package, so its modules (capture_writers, ...) are imported by path.
- Test data that is not generated lives in tests/data/ (see tests/data/README.md): the PromptDA parity material
  and two real captures. Nothing outside the repository is read.
- The "pipeline" logger is restored after every test: an in-process CLI call (click's CliRunner) configures
  it (own handler, no propagation), which would hide later tests' log records from caplog.
- The Hugging Face cache is an empty folder of this test session (set before anything imports huggingface_hub,
  and inherited by the CLI subprocesses; removed when the session ends), so a machine with PromptDA weights in its own cache gets the same
  results as one without: `auto` picks guided, and "no weights" errors are what the tests expect.
"""
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
PROMPTDA_DATA = DATA / "promptda"
"""Goldens of the official PromptDA code, key manifests, the deterministic weight fill and its checker."""
SAMPLES = DATA / "samples"
"""Real captures: samples/3dscannerapp_corridor (a LiDAR iPhone), samples/promptda_example (PromptDA's own)."""

sys.path.insert(0, str(TESTS.parent / "tools"))

_HF_HOME = Path(tempfile.mkdtemp(prefix="promptmesh-tests-hf-"))
for _name, _value in {"HF_HOME": _HF_HOME, "HF_HUB_CACHE": _HF_HOME / "hub", "HUGGINGFACE_HUB_CACHE": _HF_HOME / "hub",
                      "HF_HUB_OFFLINE": "1"}.items():
    os.environ[_name] = str(_value)
if "huggingface_hub" in sys.modules:  # imported before this file (a plugin): point its constants there too
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HOME = str(_HF_HOME)
    huggingface_hub.constants.HF_HUB_CACHE = str(_HF_HOME / "hub")


def pytest_unconfigure(config):
    """The session's empty Hugging Face home goes with it (it is made at import, before any plugin)."""
    shutil.rmtree(_HF_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def restore_pipeline_logger():
    """The CLI configures the `pipeline` logger (its own handler, no propagation), which would hide log lines
    from caplog in the tests after a CLI test: put it back after each test."""
    logger = logging.getLogger("pipeline")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    logger.handlers[:] = handlers
    logger.propagate, logger.level = propagate, level
