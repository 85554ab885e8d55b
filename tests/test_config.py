"""TOML configs -> typed dataclasses; unknown keys and bad values are clear errors."""
from pathlib import Path

import pytest

from pipeline.config import FuseConfig, PipelineConfig, load_config, override
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


# ----------------------------------------------------------------------------- generated options
def test_every_setting_is_an_option_toml_key_and_readme_row():
    import dataclasses
    import tomllib
    from pathlib import Path

    from click.testing import CliRunner

    from pipeline.cli import cli
    from pipeline.options import option_specs, settings_table

    repo = Path(__file__).resolve().parents[1]
    assert load_config(repo / "configs" / "default.toml") == PipelineConfig()  # the file holds the defaults ...
    toml = tomllib.loads((repo / "configs" / "default.toml").read_text())
    for section in dataclasses.fields(PipelineConfig):  # ... and lists every key
        assert set(toml[section.name]) == {f.name for f in dataclasses.fields(getattr(PipelineConfig(), section.name))}
    assert f"\n{settings_table()}\n" in (repo / "README.md").read_text(), "run python3 tools/update_settings_docs.py"
    help_text = CliRunner().invoke(cli, ["run", "--help"], terminal_width=200).output
    for _, names, _, _ in option_specs(("ingest", "depth", "fuse", "mesh", "eval")):
        assert names[0].split("/")[0] in help_text
    assert help_text.count("--device") == 1 and "--sdf-trunc-voxels FLOAT" in help_text


def test_generated_options_set_their_fields():
    from pipeline.options import build_config, option_specs

    specs = {names[0]: dest for dest, names, _, _ in option_specs(("depth", "fuse", "mesh"))}
    assert specs["--device"] == "cfg__depth_fuse__device"  # one option, both sections
    cfg = build_config(None, {specs["--device"]: "cpu", specs["--sdf-trunc-voxels"]: 3.0, specs["--format"]: ("glb",),
                              specs["--refine-poses/--no-refine-poses"]: False, specs["--voxel-size"]: None})
    assert (cfg.depth.device, cfg.fuse.device, cfg.fuse.sdf_trunc_voxels, cfg.mesh.formats) == ("cpu", "cpu", 3.0, ("glb",))
    assert cfg.fuse.refine_poses is False and cfg.fuse.voxel_size_m == FuseConfig().voxel_size_m  # None = not given
    both = {names[0] for _, names, _, _ in option_specs(("mesh", "export"))}
    assert {"--mesh-target-triangles", "--export-target-triangles"} <= both  # same name in two sections: qualified
    with pytest.raises(PromptmeshError, match="voxel_size_m"):
        build_config(None, {specs["--voxel-size"]: 2.0})  # ranges are the config's checks


def test_readme_lists_every_registered_depth_model():
    from pathlib import Path

    from pipeline.depth_models import DEPTH_MODELS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert all(f"| `{name}` |" in readme for name in DEPTH_MODELS)
    assert all(spec.weights_repo in readme for spec in DEPTH_MODELS.values())
