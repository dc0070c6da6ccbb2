"""Run configuration files: YAML documents with dotted `key=value` overrides from the command line.

The embedded default (`jaxdistill/configs/demo.yaml`) is the schema: an override or a file may only
set keys the default has, so a typo fails with the list of valid keys instead of being ignored.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class RunConfigError(ValueError):
    """A config file or override that names an unknown key or has a malformed value."""


def embedded_config(name: str = "demo.yaml") -> dict[str, Any]:
    return yaml.safe_load(resources.files("jaxdistill").joinpath("configs", name).read_text())


def _merge(base: dict, update: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in base:
            raise RunConfigError(
                f"unknown config key {where + key!r}; valid keys here: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise RunConfigError(f"config key {where + key!r} is a section; set its keys "
                                     f"({', '.join(sorted(base[key]))}) instead of {value!r}")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            _check_type(where + key, base[key], value)
            out[key] = value
    return out


def _check_type(key: str, default: Any, value: Any) -> None:
    """A value must have its default's type (an int may stand for a float; null defaults are free)."""
    if default is None or value is None and not isinstance(default, (dict, list)):
        return
    expected = (int, float) if isinstance(default, float) else type(default)
    if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
        raise RunConfigError(f"config key {key!r} = {value!r}: expected a {type(default).__name__} "
                             f"like the default {default!r}")


def parse_override(text: str) -> dict[str, Any]:
    """'a.b=3' -> {'a': {'b': 3}}; the value is parsed as YAML (numbers, booleans, null, lists)."""
    if "=" not in text:
        raise RunConfigError(f"override {text!r} is not key=value (e.g. train.steps=10)")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise RunConfigError(f"override {text!r}: empty key")
    value: Any = yaml.safe_load(raw) if raw else ""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_run_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                    default: str = "demo.yaml") -> dict[str, Any]:
    """The embedded default `default`, updated by the YAML file at `path` (if any), then by the overrides."""
    config = embedded_config(default)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RunConfigError(f"config file {str(path)!r} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise RunConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        config = _merge(config, loaded)
    for text in overrides:
        config = _merge(config, parse_override(text))
    return config
