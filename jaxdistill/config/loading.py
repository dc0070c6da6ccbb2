"""Reading a run config: the dataclass defaults, then a YAML file, then dotted `key=value` overrides
(values parsed as YAML), merged as trees and decoded with draccus; keys and types are checked against
the schema first, so every mistake is a `RunConfigError` that names the key and what would be valid.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import draccus
import yaml

from jaxdistill.config.schema import JOBS, RunConfigError, check_choice
from jaxdistill.evaluate.loglik import EvaluationError
from jaxdistill.losses import LossInputError
from jaxdistill.models import ConfigError
from jaxdistill.pruning import PruningError
from jaxdistill.train import TrainingError


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1) plus YAML 1.2's floats: `1e-4` and `1E5` are numbers, not the
    strings YAML 1.1 makes of exponents without a dot."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"))


def load_yaml(text: str) -> Any:
    """YAML text -> Python values (safe: plain data only), numbers as YAML 1.2 reads them. Every
    failure is a `yaml.YAMLError` (PyYAML's constructors raise ValueError, KeyError, ... for a bad
    tagged scalar such as `!!int x`; deep nesting raises RecursionError)."""
    try:
        return yaml.load(text, Loader=_Yaml12Loader)
    except yaml.YAMLError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as err:
        raise yaml.YAMLError(f"{type(err).__name__}: {err}") from err


def packaged_config(name: str) -> Path:
    """A YAML shipped in the package (`jaxdistill/configs/NAME`)."""
    return Path(__file__).resolve().parents[1] / "configs" / name


def parse_value(raw: str) -> Any:
    """An override's value: YAML 1.2 (numbers, booleans, null, [lists], {mappings}); text that YAML
    would read as a block mapping (`Topic: {text}`) or cannot read at all stays the literal string, so
    values with `: ` need no quoting. A value opening a flow list or mapping must be valid YAML."""
    if not raw:
        return ""
    flow = raw.lstrip().startswith(("[", "{"))
    try:
        value = load_yaml(raw)
    except yaml.YAMLError as err:
        if flow:
            raise RunConfigError(f"value {raw!r} is not valid YAML ({str(err).splitlines()[0]}); quote it to "
                                 "pass it as text, e.g. key='{...}'") from err
        return raw
    return raw if isinstance(value, dict) and not flow else value


def parse_override(text: str) -> dict[str, Any]:
    """'a.b=3' -> {'a': {'b': 3}}; the value is parsed by `parse_value`."""
    if "=" not in text:
        raise RunConfigError(f"override {text!r} is not key=value (e.g. train.steps=10)")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise RunConfigError(f"override {text!r}: empty key")
    value: Any = parse_value(raw)
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def merge(base: Any, update: Any) -> Any:
    """`update` merged into `base`, dicts recursively (a non-dict replaces what was there)."""
    if not isinstance(base, dict) or not isinstance(update, dict):
        return update
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(base.get(key), value)
    return out


def _check_keys(cls, tree: dict, where: str = "") -> None:
    """Every key names a field of the dataclass (recursively), else the valid keys are listed."""
    hints = typing.get_type_hints(cls)
    for key, value in tree.items():
        if not isinstance(key, str):
            raise RunConfigError(f"config key {key!r} under {where or 'the top level'!r} is not text: keys are names "
                                 f"such as {', '.join(sorted(f.name for f in dataclasses.fields(cls))[:4])}")
        if key not in hints:
            raise RunConfigError(f"unknown config key {where + key!r}; valid keys here: "
                                 f"{', '.join(sorted(f.name for f in dataclasses.fields(cls)))}")
        sub = next((t for t in (hints[key], *typing.get_args(hints[key])) if dataclasses.is_dataclass(t)), None)
        if sub is not None and isinstance(value, dict):
            _check_keys(sub, value, f"{where}{key}.")
        elif sub is not None and (value is not None or type(None) not in typing.get_args(hints[key])):
            raise RunConfigError(f"config key {where + key!r} is a section; set its keys "
                                 f"({', '.join(f.name for f in dataclasses.fields(sub))}) instead of {value!r}")
        elif sub is None and not _has_type(value, hints[key]):
            raise RunConfigError(f"config key {where + key!r} = {value!r}: expected {_type_name(hints[key])}")


def _has_type(value, hint) -> bool:
    """Whether a YAML value fits a field type (an int may stand for a float, a bool for nothing else)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return len(value) == len(items) and all(_has_type(v, a) for v, a in zip(value, items))
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "").replace("NoneType", "null").replace("None", "null")


def job_of(file: dict, overrides=()) -> str:
    """The job a command line asks for: the last job=... override, else the config file's, else distill."""
    job = file.get("job", "distill")
    for text in overrides:
        if text.startswith("job="):
            job = parse_value(text.split("=", 1)[1])
    if not isinstance(job, str):
        raise RunConfigError(f"job={job!r}; valid: {', '.join(JOBS)}")
    return job


def _read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RunConfigError(f"config file {str(path)!r} does not exist")
    try:
        loaded = load_yaml(path.read_text()) or {}
    except UnicodeDecodeError as err:
        raise RunConfigError(f"{path}: not UTF-8 text (byte offset {err.start}); save it as UTF-8") from err
    except yaml.YAMLError as err:
        raise RunConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(loaded, dict):
        raise RunConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
    return loaded


def _reason(err: BaseException) -> str:
    """The message of the validation error a decoding failure wraps (draccus wraps `__post_init__`
    errors in a generic ParsingError), or draccus' own message for a bad type or shape."""
    while isinstance(err, draccus.utils.ParsingError) and err.__cause__ is not None:
        err = err.__cause__
    ours = (RunConfigError, LossInputError, PruningError, TrainingError, ConfigError, EvaluationError)
    return str(err) if isinstance(err, ours) else f"bad config value: {err}"


def load_config(path: str | Path | None = None, overrides=(), *, check_paths: bool = True):
    """The typed config of the job a file + overrides describe (`RunConfig` unless job=model-smoke).

    Order: the dataclass defaults, then the file, then each override. Dotted overrides merge into
    free-form mappings (`teacher.model.hidden_size=32`); a file that sets such a mapping replaces it
    (a model the file describes never inherits the default model's other fields)."""
    file = _read_yaml(path) if path is not None else {}
    job = job_of(file, overrides)
    check_choice("job", job, JOBS)
    cls = JOBS[job]
    tree = draccus.encode(cls())
    _check_keys(cls, file)
    tree = merge(_without_mappings(cls, tree, file), file)
    for update in map(parse_override, overrides):
        _check_keys(cls, update)
        tree = merge(tree, update)
    try:
        config = draccus.decode(cls, tree)
    except (draccus.utils.DecodingError, draccus.utils.ParsingError, RunConfigError, LossInputError, PruningError,
            TrainingError, EvaluationError) as err:
        raise RunConfigError(_reason(err)) from err
    if check_paths:
        config.check_paths()
    return config


def _without_mappings(cls, tree: dict, update: dict) -> dict:
    """`tree` with the free-form mapping fields that `update` sets emptied (so they are replaced)."""
    out = dict(tree)
    hints = typing.get_type_hints(cls)
    for key, value in update.items():
        sub = next((t for t in (hints[key], *typing.get_args(hints[key])) if dataclasses.is_dataclass(t)), None)
        if sub is not None and isinstance(value, dict) and isinstance(tree.get(key), dict):
            out[key] = _without_mappings(sub, tree[key], value)
        elif typing.get_origin(hints[key]) is dict:
            out[key] = {}
    return out


def to_dict(config) -> dict[str, Any]:
    """A config as plain YAML/JSON-able data (what `config show` prints, what checkpoints record)."""
    return draccus.encode(config)


def dump(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
