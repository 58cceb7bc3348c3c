"""Presets and parameters of a notebook, validated.

Why: a notebook is run by papermill with a preset name and a few overrides; a typo in either must stop the
run at once with a message listing what is valid, not train for ten minutes with a silently ignored
parameter. `configs/<notebook>/default.yaml` declares the parameters (its keys and value types are the
schema); `smoke.yaml` and `paper.yaml` override some of them.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

PRESETS = ("smoke", "default", "paper")
RUNTIME_KEYS = ("preset", "data_root", "device", "out_dir")


class ConfigError(ValueError):
    """An unknown preset, an unknown parameter, or a value of the wrong type."""


def repo_root() -> Path:
    """The repository root (the folder holding lib/, configs/, notebooks/)."""
    return Path(__file__).resolve().parents[2]


def configs_dir() -> Path:
    return repo_root() / "configs"


def scratch_dir(preset: str) -> Path:
    """Where a run that is not the committed reproduction writes (git-ignored): a notebook run from JupyterLab
    at its own parameters, or `./run_all.sh` at another preset or with overrides and no --out."""
    return repo_root() / "scratch" / preset


def display_path(path) -> str:
    """`path` relative to the repository root when inside it (what notebooks print and provenance records:
    no machine paths in committed files), else absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(repo_root().resolve()).as_posix() or "."
    except ValueError:
        return str(path)


def resolve_out_dir(out_dir, preset: str) -> Path:
    """The folder that receives results/ and figures/: `out_dir` (relative paths are taken from the repository
    root, since papermill runs a notebook from notebooks/), or the preset's scratch folder when None."""
    if out_dir is None or out_dir == "":
        return scratch_dir(preset)
    path = Path(out_dir)
    return path if path.is_absolute() else repo_root() / path


class Params(dict):
    """A validated parameter dict with attribute access (`p.steps` as well as `p["steps"]`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(f"no parameter '{name}' (known: {', '.join(sorted(self))})") from None
        return Params(value) if isinstance(value, dict) and not isinstance(value, Params) else value

    def to_dict(self) -> dict:
        return copy.deepcopy(dict(self))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of parameter: value at the top level")
    return data


def _type_ok(declared: Any, value: Any) -> bool:
    if declared is None or value is None:
        return True  # declared null = optional of any type; null accepted as "not set"
    if isinstance(declared, bool) or isinstance(value, bool):
        return isinstance(declared, bool) and isinstance(value, bool)
    if isinstance(declared, float):
        return isinstance(value, (int, float))
    if isinstance(declared, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(declared))


def _merge(schema: dict, base: dict, update: dict, source: str, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        where = f"{path}{key}"
        if key not in schema:
            valid = ", ".join(sorted(schema))
            raise ConfigError(f"{source}: unknown parameter '{where}'. Valid parameters{' of ' + path[:-1] if path else ''}: {valid}")
        declared = schema[key]
        if isinstance(declared, dict) and isinstance(value, dict):
            out[key] = _merge(declared, out.get(key) or {}, value, source, where + ".")
            continue
        if not _type_ok(declared, value):
            raise ConfigError(
                f"{source}: parameter '{where}' must be {type(declared).__name__} (default {declared!r}), "
                f"got {type(value).__name__} {value!r}")
        out[key] = value
    return out


def available_notebooks() -> list[str]:
    return sorted(p.name for p in configs_dir().iterdir() if (p / "default.yaml").is_file())


def load_params(notebook: str, preset: str = "smoke", overrides: dict | None = None, data_root=None,
                device: str = "cpu", out_dir=None) -> Params:
    """Merge configs/<notebook>/default.yaml <- <preset>.yaml <- overrides, validate, add runtime fields."""
    folder = configs_dir() / notebook
    if not (folder / "default.yaml").is_file():
        raise ConfigError(f"no presets for notebook '{notebook}' (looked for {folder}/default.yaml). "
                          f"Notebooks with presets: {', '.join(available_notebooks())}")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'. Valid presets: {', '.join(PRESETS)}")
    schema = _read_yaml(folder / "default.yaml")
    clash = set(schema) & set(RUNTIME_KEYS)
    if clash:
        raise ConfigError(f"{folder}/default.yaml: {sorted(clash)} are runtime fields set by the runner")
    params = copy.deepcopy(schema)
    if preset != "default":
        preset_file = folder / f"{preset}.yaml"
        if not preset_file.is_file():
            raise ConfigError(f"preset '{preset}' has no file {preset_file}")
        params = _merge(schema, params, _read_yaml(preset_file), str(preset_file))
    if overrides:
        if not isinstance(overrides, dict):
            raise ConfigError(f"overrides must be a mapping of parameter: value, got {type(overrides).__name__}")
        params = _merge(schema, params, overrides, "overrides")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ConfigError(f"unknown device '{device}'. Valid devices: cpu, cuda, cuda:N")
    if data_root is not None and not Path(data_root).is_dir():
        raise ConfigError(f"data_root '{data_root}' is not a folder")
    params.update(preset=preset, data_root=str(data_root) if data_root else None, device=device,
                  out_dir=display_path(resolve_out_dir(out_dir, preset)))
    return Params(params)
