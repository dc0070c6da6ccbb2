"""Property tests (hypothesis) of the inputs a user controls: config overrides and files, data files
and tables, and model completions.

The contracts fuzzed here:

- `parse_override` / `parse_value` / `load_config` accept anything and either return a value / config
  or raise `RunConfigError` (never a PyYAML, draccus or builtin exception), and a loaded config
  survives `dump` -> `load_config(file)` unchanged;
- `from_table` / `load_source` return a `ClassificationData` that is consistent (labels index
  `label_names`, one label per text, drops counted) or raise `DataError`;
- `parse_answer` returns None or a valid label index that the completion names.

The bugs this fuzzing found (PyYAML constructor errors and deep nesting escaping the parser, a bad
`job=` value, non-text or non-UTF-8 config keys and files, a huge `pruning.stages` hanging the check,
duplicate columns, int and text labels naming two classes alike, pandas' missing values read as text)
are fixed; each keeps a regression test at the end of the file.
"""

from __future__ import annotations

import io
import json
import math
import string
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, assume, event, example, given, note, settings, strategies as st

from jaxdistill.config import RunConfig, RunConfigError, SmokeConfig, dump, load_config, load_yaml, parse_override, to_dict
from jaxdistill.config.loading import parse_value
from jaxdistill.data import FORMATS, ClassificationData, DataError, load_source, parse_answer
from jaxdistill.data.sources import from_table
from jaxdistill.losses import DIVERGENCES, KL_SCHEDULES, LOSS_KINDS

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])


def _settings(n: int):
    return settings(FUZZ, max_examples=n)


# ---------------------------------------------------------------------------------------------------
# strategies: text
# ---------------------------------------------------------------------------------------------------

YAML_TOKENS = ["[", "]", "{", "}", ", ", ",", ": ", ":", "- ", "-", "? ", "a", "b c", "1", "0", "-3", "1e-4",
               "1E5", ".5e3", "3.", "1_000", "0x1F", "0o17", "1:20", ".inf", "-.inf", ".nan", "nan", "inf",
               "null", "~", "true", "False", "yes", "off", "'", "''", '"', '"\\u00e9"', "#", " #c", "&x ", "*x",
               "!!str ", "!!binary ", "!!set ", "!!omap ", "!!map ", "!!seq ", "!!null ", "!!python/object ",
               "!foo ", "|", ">", "\n", "\n  ", "  ", "\t", "%YAML 1.2\n---\n", "---", "...", "=", "==", ".",
               "é", "日本", "\u2028", "\x00", "\x85", "\ufeff", "\\", "@", "`", "<<: ", "2001-12-14"]

yaml_ish = st.lists(st.sampled_from(YAML_TOKENS), max_size=14).map("".join)
special_text = st.text(alphabet=st.sampled_from(list("=:.-[]{},#&*!|>'\"%@` \t\nabc01eé")), max_size=40)
long_text = st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=8), st.integers(50, 1500))
any_text = st.one_of(st.text(max_size=60), special_text, yaml_ish, long_text)

ident = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=10)
dotted_key = st.lists(ident, min_size=1, max_size=4).map(".".join)
bad_key = st.sampled_from(["", ".", "a.", ".a", "a..b", " ", "a b", "é"])
override_text = st.one_of(
    any_text,
    st.builds(lambda k, v: f"{k}={v}", st.one_of(dotted_key, bad_key, any_text), any_text),
)


def _same(a, b) -> bool:
    """Equality that treats NaN as equal to NaN and survives self-referential YAML values."""
    return repr(a) == repr(b)


# ---------------------------------------------------------------------------------------------------
# 1. the config parser
# ---------------------------------------------------------------------------------------------------

@_settings(400)
@given(override_text)
@example("train.steps=10")
@example("a.b=[1, {c: d}]")
@example("x=Topic: {text}")
@example("x=[unclosed")
@example("x={a: b")
@example("x=")
@example("=x")
@example("no equals sign")
def test_parse_override_gives_a_nested_dict_or_a_config_error(text):
    try:
        tree = parse_override(text)
    except RunConfigError as err:
        assert str(err)
        return
    key, raw = text.split("=", 1)
    parts = key.split(".")
    assert all(parts)
    node = tree
    for part in parts:  # one chain of single-key dicts down to the value
        assert isinstance(node, dict) and list(node) == [part]
        node = node[part]
    assert _same(node, parse_value(raw))


@_settings(400)
@given(any_text)
@example("")
@example("Topic: {text}")
@example("{a: 1}")
@example("[1, 2")
@example("1e-4")
@example("  [a]")
def test_parse_value(raw):
    flow = raw.lstrip().startswith(("[", "{"))
    try:
        value = parse_value(raw)
    except RunConfigError:
        assert flow, "only a value opening a flow list or mapping may be rejected"
        return
    if raw == "":
        assert value == ""
    if isinstance(value, dict):  # block mappings (`Topic: {text}`) stay text
        assert flow
    if not flow:  # text YAML cannot read stays the literal string
        try:
            load_yaml(raw)
        except yaml.YAMLError:
            assert value == raw


finite = st.floats(allow_nan=False, allow_infinity=False)


@_settings(300)
@given(st.one_of(finite.map(lambda x: ("e", x)), finite.map(lambda x: ("r", x)),
                 st.integers().map(lambda n: ("i", n)), any_text.map(lambda t: ("t", t))))
@example(("t", "1e-4"))
@example(("t", "-1E+5"))
def test_load_yaml_numbers_and_arbitrary_text(case):
    kind, value = case
    if kind == "e":  # exponent form, YAML 1.2 style (`1e-05`, `1.5e+20`): a float, exactly
        assert load_yaml(f"{value:e}") == float(f"{value:e}")
        assert load_yaml(repr(value)) == value
    elif kind == "r":
        assert load_yaml(repr(value)) == value
        assert load_yaml(f"[{value!r}, {value:e}]") == [value, float(f"{value:e}")]
    elif kind == "i":
        assert load_yaml(str(value)) == value
    else:
        try:
            load_yaml(value)
        except yaml.YAMLError:
            pass
    for special, check in ((".nan", math.isnan), (".inf", lambda v: v == math.inf), ("-.inf", lambda v: v == -math.inf)):
        assert check(load_yaml(special))


def _flatten(tree: dict, prefix: str = "", depth: int = 0) -> dict[str, object]:
    """{'a': {'b': 1}} -> {'a': {'b': 1}, 'a.b': 1} (stops at depth 30: YAML values may be self-referential)."""
    out = {}
    for key, value in tree.items():
        out[f"{prefix}{key}"] = value
        if isinstance(value, dict) and depth < 30:
            out.update(_flatten(value, f"{prefix}{key}.", depth + 1))
    return out


DEFAULTS = _flatten(to_dict(RunConfig()))
REAL_KEYS = sorted(DEFAULTS)
NUMERIC_KEYS = sorted(k for k, v in DEFAULTS.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("teacher.model."))
BOGUS_KEYS = ["trian.steps", "data.sources", "teacher.model.extra_field", "teacher.cache.k.x", "pruning.stages.n",
              "eval.suites.0", "job", "model.hidden_size", "batch.rows", "mesh.0", "loss", "student.lora"]

small_int = st.integers(-3, 300)
int_text = st.one_of(small_int, st.integers(-10**30, 10**30)).map(str)
float_text = st.one_of(
    st.sampled_from(["1e-4", "1E-4", "3e-05", "1.5e+20", "2.5e3", ".5", "0.", "-0.0", "nan", ".nan", ".NaN", "inf",
                     ".inf", "-.inf", "1e400", "-1e400", "1e-400", "0.1", "0.95", "1.0", "1_000.5"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(0, 1).map(lambda x: f"{x:e}"),
)
scalar_text = st.one_of(
    int_text, float_text,
    st.sampled_from(["null", "~", "", "true", "false", "yes", "No", "[]", "{}", "[1, 1, 1]", "[2, -1, 1]", "[1, 2]",
                     "[a, b]", "[q, k, v, o]", "[in_domain]", "[]", "[a, '']", "{a: 1}", "{hidden_size: 32}",
                     "label", "cot", "blended", "divergence", "forward_kl", "reverse_kl", "none", "live", "cached",
                     "topk", "sample", "lora", "full", "random", "teacher", "linear", "geometric", "cubic", "depth",
                     "mixed", "taylor", "magnitude", "non_embedding", "distill", "model-smoke", "./x.csv", "/nope",
                     "smollm2-135m-instruct", "Topic: {text}", "{text} {label}", "2001-12-14", "'quoted'", "é"]),
    st.text(max_size=20), yaml_ish,
)
job_override = st.sampled_from(["job=distill", "job=model-smoke", "job=null", "job=7", "job=[distill]",
                                "job=other", "job="])
override = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(REAL_KEYS), scalar_text),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(BOGUS_KEYS), scalar_text),
    job_override,
    override_text,
)


CHOICES = {"data.format": [*FORMATS, "text"], "teacher.targets": ["none", "live", "cached"],
           "teacher.cache.method": ["sample", "topk"], "student.init": ["teacher", "random"],
           "student.trainable": ["full", "lora"], "loss.kind": list(LOSS_KINDS),
           "loss.divergence": [*DIVERGENCES, "tvd"], "optimizer.decay": ["cosine", "linear", "constant"],
           "pruning.kind": ["linear", "geometric", "cubic"], "pruning.split": ["width", "depth", "mixed"],
           "pruning.method": ["activation", "magnitude", "taylor"], "pruning.ratio_of": ["total", "non_embedding"],
           "loss.kl_schedule": list(KL_SCHEDULES)}


def _plausible(key: str):
    """Values a user would write for `key`: mostly of the right type and near the default."""
    default = DEFAULTS[key]
    as_yaml = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
    other = st.sampled_from(["null", "[1, 2]", "{a: 1}", "x", "-1", "0", "1e-4", ".nan"])
    if isinstance(default, bool):
        typed = st.sampled_from(["true", "false"])
    elif isinstance(default, int):
        typed = st.integers(0, max(4 * default, 8)).map(str)
    elif isinstance(default, float):
        typed = st.one_of(st.floats(0, 1).map(repr), st.floats(1e-6, 1e-2).map(lambda x: f"{x:e}"))
    elif isinstance(default, str):
        typed = st.sampled_from(CHOICES.get(key, [default]))
    else:
        typed = st.just(as_yaml)
    return st.one_of(st.just(as_yaml), typed, typed, other).map(lambda v: f"{key}={v}")


plausible_override = st.sampled_from([k for k in REAL_KEYS if k != "job"]).flatmap(_plausible)


def _lookup(tree, parts):
    node = tree
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _contains(actual, wanted, depth: int = 0) -> bool:
    """`wanted` (an override's parsed value) as the decoded config encodes it."""
    if depth > 20:  # a self-referential YAML value (`&a {x: *a}`)
        return True
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(k in actual and _contains(actual[k], v, depth + 1)
                                                for k, v in wanted.items())
    if isinstance(wanted, float) and math.isnan(wanted):
        return isinstance(actual, float) and math.isnan(actual)
    if isinstance(wanted, (list, tuple)):
        return isinstance(actual, (list, tuple)) and len(actual) == len(wanted) and all(
            _contains(a, w, depth + 1) for a, w in zip(actual, wanted))
    return actual == wanted and (isinstance(actual, bool) == isinstance(wanted, bool))



def _loaded_or_refused(path, overrides):
    """The config a file + overrides give, or None when refused — and a refusal is a RunConfigError
    with a message, never another exception."""
    try:
        config = load_config(path, overrides, check_paths=False)
    except RunConfigError as err:
        event("RunConfigError")
        assert str(err)
        return None
    event(f"loaded {type(config).__name__}")
    assert isinstance(config, (RunConfig, SmokeConfig))
    return config


@_settings(400)
@given(st.one_of(st.lists(override, max_size=6), st.lists(plausible_override, max_size=5)))
@example(["train.steps=1e3"])
@example(["optimizer.learning_rate=1e-4"])
@example(["loss.temperature=.nan"])
@example(["teacher.path=null", "teacher.model.num_heads=0"])
@example(["teacher.path=null", "teacher.model.hidden_size=abc"])
@example(["job=model-smoke", "model.num_heads=0"])
@example(["job=model-smoke", "data.source=x"])
@example(["pruning=null", "pruning.stages=2"])
@example(["loss.temperature=" + "9" * 400])
@example(["data.label_names=[a, a]"])
@example(["eval=null", "train.steps=100", "teacher.model.x=&a {x: *a}"])
def test_load_config_with_random_overrides(overrides):
    config = _loaded_or_refused(None, overrides)
    if config is None:
        return
    tree = to_dict(config)
    last = overrides[-1] if overrides else None
    if last is not None and not last.startswith("job="):  # the last override is what the config holds
        key, raw = last.split("=", 1)
        found, actual = _lookup(tree, key.split("."))
        assert found, f"{key} missing from the loaded config"
        assert _contains(actual, parse_value(raw)), (key, actual, raw)


# random YAML trees built from the real keys (so they get past the key check) and random values
leaf_value = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 400), st.integers(-10**20, 10**20),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["label", "cot", "blended", "live", "cached", "none", "lora", "random", "distill",
                     "model-smoke", "forward_kl", "divergence", "linear"]),
    st.lists(st.one_of(st.integers(-2, 4), st.text(max_size=4)), max_size=4),
)


def _tree_from(items) -> dict:
    tree: dict = {}
    for key, value in items:
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return tree


def _as_file(overrides) -> str:
    """YAML text setting what `key=value` overrides set."""
    return yaml.safe_dump(_tree_from([(k, parse_value(v)) for k, v in (o.split("=", 1) for o in overrides)]),
                          sort_keys=False)


yaml_tree = st.lists(st.tuples(st.sampled_from(REAL_KEYS + BOGUS_KEYS), leaf_value), max_size=8).map(_tree_from)
config_file_text = st.one_of(
    st.lists(plausible_override, max_size=5).map(_as_file),
    yaml_tree.map(lambda t: yaml.safe_dump(t, sort_keys=False)),
    yaml_tree.map(lambda t: yaml.safe_dump(t, default_flow_style=True)),
    any_text,
    st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=5), st.floats()),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                 max_leaves=10).map(yaml.safe_dump),
)


@_settings(300)
@given(config_file_text, st.lists(override, max_size=2))
@example("", [])
@example("- a\n- b\n", [])
@example("job: model-smoke\nmodel: {}\n", [])
@example("data: 3\n", [])
@example("teacher: {model: {1: 2}}\n", [])
@example("pruning: null\neval: null\n", ["pruning.stages=2"])
def test_load_config_from_a_random_file(text, overrides):
    try:
        parsed = load_yaml(text)
    except yaml.YAMLError:
        parsed = None
    assume(not any(o.startswith("pruning") for o in overrides))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.yaml"
        path.write_text(text, encoding="utf-8")
        config = _loaded_or_refused(path, overrides)
    if config is None:
        return
    if isinstance(parsed, dict) and not overrides:  # what the file sets, the config holds
        for key, value in _flatten({k: v for k, v in parsed.items() if isinstance(k, str)}).items():
            if isinstance(value, dict) or key.split(".")[0] == "job":
                continue
            found, actual = _lookup(to_dict(config), key.split("."))
            if found and not key.startswith(("teacher.model.", "model.")):
                assert _contains(actual, value), (key, actual, value)


def _numeric_value(key: str):
    default = DEFAULTS[key]
    if isinstance(default, int):
        return st.one_of(st.integers(max(default, 1), max(4 * default, 8)), st.integers(-2, 10**9)).map(str)
    return st.one_of(st.floats(0, 1, exclude_min=True, exclude_max=True).map(repr),
                     st.floats(1e-12, 1e-3).map(lambda x: f"{x:e}"),
                     st.floats(0, 1e6).map(repr),
                     st.sampled_from(["1e-4", "3E-05", "2.5e+3", "0.5", "1", "7", "1e-400"]))


numeric_override = st.sampled_from(NUMERIC_KEYS).flatmap(
    lambda k: _numeric_value(k).map(lambda v: f"{k}={v}"))


@_settings(150)
@given(st.lists(numeric_override, min_size=1, max_size=5))
@example(["optimizer.learning_rate=1e-4", "loss.temperature=2.5e+3"])
@example(["train.steps=1000000000", "seed=123456789012"])
@example(["loss.label_smoothing=1e-400"])
def test_dump_and_reload_gives_the_same_config(overrides):
    try:
        config = load_config(None, overrides, check_paths=False)
    except RunConfigError:
        event("invalid combination")
        return  # an invalid combination (checked by the tests above); nothing to round-trip
    text = dump(config)
    note(text)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dumped.yaml"
        path.write_text(text, encoding="utf-8")
        again = load_config(path, check_paths=False)
    assert again == config
    assert dump(again) == text


# ---------------------------------------------------------------------------------------------------
# 2. the data loaders
# ---------------------------------------------------------------------------------------------------

def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text_of(value) -> str:
    return "" if _is_missing(value) else str(value).strip()


def _label_of(value):
    """The documented reading of a label cell: None (missing), an int (integral number) or stripped text."""
    if _is_missing(value):
        return None
    if isinstance(value, (bool, int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()):
        return int(value)
    return str(value).strip() or None


def check_data(data, *, rows: int | None = None, label_names=None):
    """The invariants every `ClassificationData` a source returns keeps."""
    assert isinstance(data, ClassificationData)
    assert len(data.texts) == len(data.labels) == len(data)
    labels = np.asarray(data.labels)
    assert labels.ndim == 1 and (labels.size == 0 or np.issubdtype(labels.dtype, np.integer))
    assert all(0 <= int(v) < len(data.label_names) for v in labels)
    assert all(isinstance(t, str) and t and t == t.strip() for t in data.texts)
    assert all(isinstance(n, str) for n in data.label_names)
    if label_names is not None:
        assert data.label_names == list(label_names)
    report = data.report
    assert report["rows"] == len(data)
    assert all(k == "rows" or k.startswith("dropped_") for k in report) and all(v >= 0 for v in report.values())
    if rows is not None:
        assert sum(report.values()) == rows, report
    if data.rationales is not None:
        assert len(data.rationales) == len(data)


text_cell = st.one_of(
    st.none(), st.just(float("nan")), st.just(""), st.sampled_from([" ", "\t\n", "  x  ", "headline", "é 日本"]),
    st.text(max_size=15), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
)
LABEL_WORDS = ["a", "b", " a ", "A", "pos", "neg", "1", "0", "2", "1.0", "nan", "", " ", "é"]
label_cell = st.one_of(
    st.none(), st.just(float("nan")), st.integers(-2, 4), st.sampled_from([0.0, 1.0, 2.0, 2.5, -1.0, 1e20, float("inf")]),
    st.sampled_from(LABEL_WORDS), st.text(max_size=6), st.booleans(), st.integers(-10**30, 10**30),
)
names = st.lists(st.one_of(st.sampled_from(["a", "b", "pos", "neg", "0", "1", "é"]), st.text(min_size=1, max_size=5)),
                 min_size=2, max_size=5, unique=True).filter(lambda ns: all(n.strip() for n in ns))


@st.composite
def tables(draw):
    n = draw(st.integers(0, 25))
    text_kind = draw(st.sampled_from(["mixed", "str", "int", "float"]))
    label_kind = draw(st.sampled_from(["mixed", "int", "float", "str", "int_or_missing"]))
    texts = draw(st.lists({"mixed": text_cell, "str": st.text(max_size=10), "int": st.integers(-3, 3),
                           "float": st.floats()}[text_kind], min_size=n, max_size=n))
    labels = draw(st.lists({"mixed": label_cell, "int": st.integers(-1, 4), "float": st.floats(-1, 4).map(round) | st.floats(),
                            "str": st.sampled_from(LABEL_WORDS), "int_or_missing": st.one_of(st.none(), st.integers(0, 3))
                            }[label_kind], min_size=n, max_size=n))
    columns = {"text": texts, "label": labels}
    if draw(st.booleans()):
        columns["rationale"] = draw(st.lists(st.one_of(st.none(), st.text(max_size=5)), min_size=n, max_size=n))
    if draw(st.booleans()):
        columns["other"] = list(range(n))
    return pd.DataFrame(columns)


@_settings(300)
@given(tables(), st.one_of(st.none(), names), st.sampled_from(["ok", "ok", "ok", "wrong label column", "rationales"]))
def test_from_table(table, label_names, mode):
    use_rationales = mode == "rationales" or (mode == "ok" and "rationale" in table.columns)
    wrong_column = mode == "wrong label column"
    columns = dict(text_column="text", label_column="labels" if wrong_column else "label",
                   rationale_column="rationale" if use_rationales else None)
    try:
        data = from_table(table, **columns, label_names=label_names)
    except DataError as err:
        event("DataError")
        wanted = [columns["text_column"], columns["label_column"]] + ([columns["rationale_column"]]
                                                                      if use_rationales else [])
        assert any(c not in table.columns for c in wanted), err
        return
    assert not wrong_column
    check_data(data, rows=len(table), label_names=label_names)
    texts = [_text_of(t) for t in table["text"].tolist()]
    raw = [_label_of(v) for v in table["label"].tolist()]
    assert data.report.get("dropped_empty_text", 0) == sum(not t for t in texts)
    assert data.report.get("dropped_missing_label", 0) == sum(bool(t) and r is None for t, r in zip(texts, raw))
    kept = [(t, r) for t, r in zip(texts, raw) if t and r is not None]
    numeric = all(isinstance(r, int) for _, r in kept)
    if label_names is None:
        assert data.report.get("dropped_unknown_label", 0) == 0
        assert len(set(data.label_names)) == len(data.label_names)
        assert sorted(set(data.label_names)) == sorted({str(r) for _, r in kept})
    # every kept row, in order, with the label the documented rules give it
    expected = []
    for text, label in kept:
        if label_names is None:
            expected.append((text, str(label)))
        elif numeric and 0 <= label < len(label_names):
            expected.append((text, label_names[label]))
        elif not numeric and str(label) in label_names:  # names, or a mix of ids and names: all read as names
            expected.append((text, str(label)))
    assert [(t, data.label_names[i]) for t, i in zip(data.texts, data.labels)] == expected
    if use_rationales:
        assert data.rationales is not None and len(data.rationales) == len(data)
    else:
        assert data.rationales is None


# random files


json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
                        st.sampled_from(LABEL_WORDS))
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=2) | st.dictionaries(
    st.text(max_size=3), inner, max_size=2), max_leaves=4)
COLUMN_NAMES = ["text", "label", "rationale", "Text", "label ", "other", ""]
record = st.one_of(
    st.fixed_dictionaries({"text": json_value, "label": json_value},
                          optional={"rationale": json_value, "other": json_scalar, "Text": json_scalar}),
    st.dictionaries(st.sampled_from(COLUMN_NAMES), json_value, max_size=4),
)


def _csv_cell(value) -> str:
    text = "" if value is None else str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text


@st.composite
def data_files(draw):
    """(suffix, bytes, number of table rows when the file is a well-formed table of them, else None)."""
    suffix = draw(st.sampled_from([".csv", ".jsonl", ".json", ".parquet"]))
    kind = draw(st.sampled_from(["bytes", "table", "table", "table"]))
    if kind == "bytes":
        prefix = draw(st.sampled_from([b"", b"text,label\n", b'{"text": "a", "label": 1}\n', b"PAR1", b"\xef\xbb\xbf"]))
        return suffix, prefix + draw(st.binary(max_size=200)), None
    records = draw(st.lists(record, max_size=12))
    if suffix == ".jsonl":
        lines = [json.dumps(r, ensure_ascii=draw(st.booleans())) for r in records]
        garbage = draw(st.sampled_from([None] * 6 + ["", "{", "[1, 2]", "not json", "null", '{"text": NaN}']))
        if garbage is not None:
            lines.insert(draw(st.integers(0, len(lines))), garbage)
        rows = len(records) if garbage is None and records and all(r for r in records) else None
        return suffix, ("\n".join(lines) + draw(st.sampled_from(["", "\n"]))).encode(), rows
    if suffix == ".json":
        shape = draw(st.sampled_from(["records", "columns", "scalar"]))
        if shape == "records":
            content = records
        elif shape == "columns":
            content = {k: {str(i): r.get(k) for i, r in enumerate(records)} for k in COLUMN_NAMES[:3]}
        else:
            content = draw(json_value)
        return suffix, json.dumps(content).encode(), None
    if suffix == ".csv":
        header = draw(st.sampled_from(["text,label", "label,text", "text,label,text", "Text,label", "text;label",
                                       "text,label,extra"]))
        cells = [[_csv_cell(r.get(c)) for c in header.split(",")] for r in records]
        body = "\n".join(",".join(row) for row in cells)
        return suffix, (header + "\n" + body).encode(), None
    # parquet: a frame of the drawn records, flattened so pyarrow can write it
    frame = pd.DataFrame({"text": [r.get("text") for r in records], "label": [r.get("label") for r in records]})
    frame = frame.map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    for column in frame.columns:
        kinds = {type(v) for v in frame[column] if v is not None}
        if len(kinds) > 1:
            frame[column] = [None if v is None else str(v) for v in frame[column]]
    buffer = io.BytesIO()
    try:
        frame.to_parquet(buffer)
    except Exception:  # noqa: BLE001 — a frame pyarrow cannot write: fall back to truncated bytes
        return suffix, b"PAR1" + draw(st.binary(max_size=40)), None
    blob = buffer.getvalue()
    if draw(st.integers(0, 4)) == 0:
        blob = blob[: draw(st.integers(0, len(blob)))]
        return suffix, blob, None
    return suffix, blob, len(frame)


@_settings(300)
@given(data_files(), st.one_of(st.none(), names))
@example((".csv", b"", None), None)
@example((".csv", b"text,label\n", None), None)
@example((".csv", b"\xff\xfe\x00t", None), None)
@example((".json", b"5", None), None)
@example((".json", b"null", None), None)
@example((".jsonl", b"", None), None)
@example((".parquet", b"abc", None), None)
@example((".jsonl", b'{"text": "a", "label": 123456789012345678901234567890}\n', None), None)
@example((".jsonl", b'{"text": "a", "label": 1e400}\n{"text": " ", "label": 1}\n', 2), None)
@example((".csv", b'text,label\n"a,1\n', None), ["x", "y"])
def test_load_source_from_a_random_file(case, label_names):
    suffix, blob, rows = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(blob)
        try:
            data = load_source(str(path), label_names=label_names)
        except DataError as err:
            event(f"DataError {suffix}")
            assert str(err)
            return
    event(f"loaded {suffix}" + (" (rows known)" if rows is not None else ""))
    check_data(data, rows=rows, label_names=label_names)


# ---------------------------------------------------------------------------------------------------
# 3. answers
# ---------------------------------------------------------------------------------------------------

completion_text = st.one_of(st.text(max_size=80), yaml_ish,
                            st.builds(lambda a, b: f"<think>\n{a}\n</think>\n\n{b}", st.text(max_size=20),
                                      st.text(max_size=20)))
any_names = st.lists(st.text(max_size=8), min_size=1, max_size=6)


@_settings(300)
@given(completion_text, any_names)
@example("", [""])
@example("</think>", ["a", "A"])
@example("İ", ["i̇", "i"])
def test_parse_answer_returns_none_or_a_label_the_completion_names(completion, label_names):
    index = parse_answer(completion, label_names)
    event("no label" if index is None else "a label")
    assert index is None or (isinstance(index, int) and 0 <= index < len(label_names))
    if index is not None:
        tail = completion.rsplit("</think>", 1)[-1].strip().strip(".").strip().lower()
        assert label_names[index].lower() in tail


clean_names = st.lists(st.text(alphabet=string.ascii_letters + " ", min_size=1, max_size=10).map(str.strip).filter(bool),
                       min_size=2, max_size=6, unique_by=str.lower).filter(
    lambda ns: not any(a.lower() in b.lower() for a in ns for b in ns if a is not b))


@_settings(200)
@given(clean_names, st.data())
def test_parse_answer_finds_the_named_label(label_names, data):
    index = data.draw(st.integers(0, len(label_names) - 1))
    name = label_names[index]
    think = data.draw(st.text(max_size=30))
    spelled = data.draw(st.sampled_from([name, name.upper(), name.lower(), f" {name}. ", f"{name}."]))
    completion = data.draw(st.sampled_from([spelled, f"<think>\n{think}\n</think>\n\n{spelled}"]))
    assert parse_answer(completion, label_names) == index


# ---------------------------------------------------------------------------------------------------
# regressions: the bugs this fuzzing found (each fixed; each case that found it kept)
# ---------------------------------------------------------------------------------------------------

YAML_CRASHES = ["!!int", "!!int x", "!!float ", "!!float x", "!!bool x", "!!timestamp x", "[!!int x]", "{a: !!bool x}",
                "[" * 1000]


@pytest.mark.parametrize("raw", YAML_CRASHES)
def test_parse_override_wraps_yaml_constructor_errors(raw):
    try:
        parse_override(f"data.source={raw}")
    except RunConfigError:
        pass


@pytest.mark.parametrize("raw", YAML_CRASHES)
def test_config_file_with_a_bad_tagged_scalar_is_a_config_error(tmp_path, raw):
    path = tmp_path / "run.yaml"
    path.write_text(f"data:\n  source: {raw}\n")
    with pytest.raises(RunConfigError):
        load_config(path, check_paths=False)


@pytest.mark.parametrize("job", ["[distill", "{", "a: b: c", "\t", "\x1f", "%", "&", "'", "!!python/object x"])
def test_job_override_with_bad_yaml_is_a_config_error(job):
    with pytest.raises(RunConfigError):
        load_config(None, [f"job={job}"], check_paths=False)


@pytest.mark.parametrize("text", ["1: 2\n", "true: x\n", "null: x\n", "data: {1: 2}\n"])
def test_config_file_with_a_non_string_key_is_a_config_error(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(RunConfigError):
        load_config(path, check_paths=False)


@pytest.mark.parametrize("blob", [b"\x80", b"job: \xe9\n"])
def test_config_file_not_utf8_is_a_config_error(tmp_path, blob):
    path = tmp_path / "run.yaml"
    path.write_bytes(blob)
    with pytest.raises(RunConfigError):
        load_config(path, check_paths=False)


def test_huge_pruning_stages_is_rejected_quickly():
    with pytest.raises(RunConfigError):
        load_config(None, ["pruning.stages=1000000000000"], check_paths=False)


@pytest.mark.parametrize("columns", [["text", "text", "label"], ["text", "label", "label"]])
def test_from_table_with_duplicate_columns_is_a_data_error(columns):
    with pytest.raises(DataError):
        from_table(pd.DataFrame([["a", "b", 1]], columns=columns))


def test_from_table_mixed_int_and_text_labels_get_distinct_names(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "1"}\n{"text": "c", "label": "x"}\n')
    data = load_source(str(path))
    assert len(set(data.label_names)) == len(data.label_names)


def test_nullable_parquet_columns_missing_values_are_dropped(tmp_path):
    path = tmp_path / "nullable.parquet"
    pd.DataFrame({"text": pd.array(["a", None, "c", "d"], dtype="string"),
                  "label": pd.array([1, 2, None, 1], dtype="Int64")}).to_parquet(path)
    data = load_source(str(path))
    check_data(data, rows=4)
    assert data.texts == ["a", "d"] and data.label_names == ["1"]
    assert data.report == {"rows": 2, "dropped_empty_text": 1, "dropped_missing_label": 1}
