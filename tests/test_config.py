"""TOML configs -> typed dataclasses; unknown keys and bad values are clear errors."""
from pathlib import Path

import pytest

from pipeline.config import PipelineConfig, load_config, override
from pipeline.errors import PromptmeshError

REPO = Path(__file__).resolve().parents[1]


def test_default_toml_equals_dataclass_defaults():
    assert load_config(REPO / "configs" / "default.toml") == PipelineConfig()


def test_values_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[fuse]\nvoxel_size_m = 0.02\n[mesh]\nformats = ["ply", "glb"]\n[depth]\nlong_side_px = 3840\n')
    cfg = load_config(p)
    assert cfg.fuse.voxel_size_m == 0.02 and cfg.mesh.formats == ("ply", "glb") and cfg.depth.long_side_px == 3840
    cfg2 = override(cfg, "fuse", voxel_size_m=0.04, depth_max_m=None)
    assert cfg2.fuse.voxel_size_m == 0.04 and cfg2.fuse.depth_max_m == cfg.fuse.depth_max_m
    assert cfg.fuse.voxel_size_m == 0.02  # frozen: the original is untouched


@pytest.mark.parametrize("text, needle", [
    ("[fuse]\nvoxel_size = 0.02\n", "unknown key 'voxel_size'"),
    ("[fusion]\nvoxel_size_m = 0.02\n", "unknown section [fusion]"),
    ("[fuse]\nvoxel_size_m = 'big'\n", "expected float"),
    ("[depth]\nmodel = 'magic'\n", "depth.model must be one of"),
    ("[fuse]\nvoxel_size_m = -1.0\n", "voxel_size_m"),
    ("[depth]\ndevice = 'tpu'\n", "expected one of"),
    ("[fuse\n", "invalid TOML"),
])
def test_bad_config_names_file_and_key(tmp_path, text, needle):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(PromptmeshError) as e:
        load_config(p)
    assert needle in str(e.value) and "bad.toml" in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(PromptmeshError, match="not found"):
        load_config(tmp_path / "nope.toml")
