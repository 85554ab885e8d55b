"""Command-line options generated from the config dataclasses (pipeline/config.py).

Every field of a stage's config becomes an option of the commands that run that stage: its type, its
docstring (with the unit) and its default come from the dataclass, so a new setting is written once and
appears in `--help`, in TOML and (via `settings_table`) in the README. The one table here, `FLAGS`, names the
options whose name is not `--<field with dashes>` (kept for the public command line); `SHARED` fields are
one option that sets the field in every section of the command that has it (`--device`). Booleans are
`--name/--no-name`. An option that is not given leaves the TOML (or default) value alone.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import typing
from typing import Any, Callable, Iterable, Literal, Optional

import click

from .config import PipelineConfig, load_config, override
from .depth_models import MODEL_CHOICES, choices_help

FLAGS: dict[tuple[str, str], str] = {
    ("depth", "model"): "--depth-model",
    ("depth", "long_side_px"): "--depth-resolution",
    ("fuse", "voxel_size_m"): "--voxel-size",
    ("mesh", "formats"): "--format",
    ("export", "texture_size_px"): "--texture-size",
    ("eval", "table2_keep_largest_clusters"): "--keep-largest-clusters",
}
"""(section, field) -> option name, where it is not `--<field with dashes>`."""
SHARED = ("device",)
"""Fields set by one option in every section of a command that has them."""
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("depth", "model"): MODEL_CHOICES,
    ("mesh", "formats"): ("ply", "obj", "glb"),
}
"""Choices of string fields that a type cannot express."""
HELP: dict[tuple[str, str], Callable[[], str]] = {("depth", "model"): choices_help}
"""Help texts computed from other tables (the depth-model registry)."""
PREFIX = "cfg__"


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field: the docstring under it} of a dataclass, read from its source (one line, whitespace collapsed)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def section_class(section: str) -> type:
    """The config dataclass of a section ([ingest] -> IngestConfig)."""
    return typing.get_type_hints(PipelineConfig)[section]


def _flag(section: str, name: str) -> str:
    return FLAGS.get((section, name), "--" + name.replace("_", "-"))


def _toml(value: Any) -> str:
    """A default as it is written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return f'"{value}"' if isinstance(value, str) else str(value)


def _click_type(section: str, name: str, typ: Any) -> dict:
    if (section, name) in CHOICES:
        return {"type": click.Choice(CHOICES[section, name])}
    origin = typing.get_origin(typ)
    if origin is Literal:
        return {"type": click.Choice([str(a) for a in typing.get_args(typ)])}
    if origin is tuple:
        return {"type": str, "multiple": True}
    return {"type": {int: click.INT, float: click.FLOAT, str: click.STRING}[typ]}


def option_specs(sections: Iterable[str], exclude: Iterable[str] = (),
                 only: Optional[Iterable[str]] = None) -> list[tuple[str, list[str], str, dict]]:
    """(dest, option names, help, click keyword arguments) for every field of `sections` but `exclude`
    ("section.field" or a field name), or only the fields `only` ("section.field")."""
    sections, exclude = list(sections), set(exclude)
    only = None if only is None else set(only)
    fields: dict[str, list[str]] = {}  # field name -> sections of this command that have it
    for section in sections:
        for f in dataclasses.fields(section_class(section)):
            fields.setdefault(f.name, []).append(section)
    specs = []
    for section in sections:
        cls = section_class(section)
        hints, docs, defaults = typing.get_type_hints(cls), field_docs(cls), cls()
        for f in dataclasses.fields(cls):
            if f"{section}.{f.name}" in exclude or f.name in exclude or (only is not None and
                                                                          f"{section}.{f.name}" not in only):
                continue
            owners = fields[f.name]
            if f.name in SHARED:
                if section != owners[0]:
                    continue  # one option for all of them
                dest, flag = PREFIX + "_".join(owners) + "__" + f.name, _flag(section, f.name)  # sections have no "_"
            else:
                dest = f"{PREFIX}{section}__{f.name}"
                flag = _flag(section, f.name)
                if len(owners) > 1:  # the same name in two sections of this command: say which
                    flag = f"--{section}-" + flag[2:]
            default = getattr(defaults, f.name)
            text = HELP[section, f.name]() if (section, f.name) in HELP else docs.get(f.name, "")
            where = "/".join(owners) if f.name in SHARED else section
            help_text = f"{text} [{where}] {f.name} [default: {_toml(default)}]"
            if hints[f.name] is bool:
                names, kwargs = [f"{flag}/--no-{flag[2:]}"], {"default": None}
            else:
                names, kwargs = [flag], {"default": None, **_click_type(section, f.name, hints[f.name])}
            specs.append((dest, names, help_text, kwargs))
    return specs


def config_options(*sections: str, exclude: Iterable[str] = (), only: Optional[Iterable[str]] = None):
    """Decorator: the generated options of `sections` (values arrive as `cfg__<section>__<field>` keywords)."""
    def decorate(fn):
        for dest, names, help_text, kwargs in reversed(option_specs(sections, exclude, only)):
            fn = click.option(*names, dest, help=help_text, **kwargs)(fn)
        return fn
    return decorate


def build_config(config_path: Optional[Any], values: dict,
                 preset: Optional[Callable[[PipelineConfig], PipelineConfig]] = None) -> PipelineConfig:
    """The TOML file's config (or the defaults), then `preset` (e.g. a benchmark protocol), then every generated
    option that was given. `values`: the command's keyword arguments; those not starting with PREFIX are ignored."""
    cfg = load_config(config_path)
    if preset is not None:
        cfg = preset(cfg)
    for dest, value in values.items():
        if not dest.startswith(PREFIX) or value is None or value == ():
            continue
        sections, name = dest[len(PREFIX):].split("__")
        for section in sections.split("_"):
            cfg = override(cfg, section, **{name: tuple(value) if isinstance(value, tuple) else value})
    return cfg


def settings_table() -> str:
    """Every setting as a markdown table (section, key, option, default, meaning): the README's list."""
    lines = ["| TOML | option | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(PipelineConfig):
        cls = section_class(f.name)
        docs, defaults = field_docs(cls), cls()
        for g in dataclasses.fields(cls):
            text = HELP[f.name, g.name]() if (f.name, g.name) in HELP else docs.get(g.name, "")
            flag = _flag(f.name, g.name)
            lines.append(f"| `[{f.name}] {g.name}` | `{flag}` | `{_toml(getattr(defaults, g.name))}` | "
                         f"{text.replace('|', '/')} |")
    return "\n".join(lines)

