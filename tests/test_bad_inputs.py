"""The bad-input table: every input mistake a user can make is one line naming the bad value and what
is valid, exit code 2 (usage) or 1 (the run failed), no traceback, and — for the mistakes found before
any training — no run directory left behind. Loading never executes code from a file."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.small_run import SMALL, TINY, invoke
from tests.tiny_models import make_hf_checkpoint


class Evil:
    """A pickle that, if ever unpickled, creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _csv(tmp, text: str | bytes, name="data.csv") -> list[str]:
    path = tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return [f"data.source={path}"]


def _config_file(tmp, text: str) -> list[str]:
    (tmp / "c.yaml").write_text(text)
    return [str(tmp / "c.yaml")]


def _unknown_labels(tmp) -> list[str]:
    """Half the rows carry a label outside data.label_names."""
    rows = "".join(f"headline {i},{'Dividend' if i % 2 else 'Weather'}\n" for i in range(40))
    return _csv(tmp, "text,label\n" + rows) + ["data.label_names=[Dividend,Other]"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_hf_checkpoint("llama3", tmp_path_factory.mktemp("hf") / "llama")


def _teacher(tmp, llama_dir, damage) -> list[str]:
    """A copy of a tiny Llama checkpoint, damaged by `damage(dir)`, as the teacher."""
    target = tmp / "teacher"
    shutil.copytree(llama_dir, target)
    damage(target)
    return [f"teacher.path={target}", f"data.tokenizer={Path(TINY).parents[2] / 'data' / 'finance_topic' / 'bpe-4096.json'}"]


def _truncate(d):
    f = d / "model.safetensors"
    with open(f, "r+b") as h:
        h.truncate(f.stat().st_size // 2)


def _rewrite(d, change):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(d / "model.safetensors")
    change(tensors)
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})


def _pickled_weights(d, name):
    for f in d.glob("*.safetensors"):
        f.unlink()
    with open(d / name, "wb") as h:
        pickle.dump(Evil(d / "EXECUTED"), h)


def _config_json(d, text):
    (d / "config.json").write_text(text)


# name -> (arguments after `run TINY` (or in place of TINY when they start with a .yaml), exit code, message)
CASES = {
    "malformed YAML": (lambda t, m: _config_file(t, "a: [1\n b"), 2, "not valid YAML"),
    "YAML not a mapping": (lambda t, m: _config_file(t, "- 1\n- 2\n"), 2, "expected a mapping at the top level"),
    "missing config file": (lambda t, m: [str(t / "nope.yaml")], 2, "does not exist"),
    "unknown key": (lambda t, m: ["trian.steps=3"], 2, "unknown config key 'trian'"),
    "wrong type": (lambda t, m: ["train.steps=ten"], 2, "train.steps"),
    "steps=0": (lambda t, m: ["train.steps=0"], 2, "train.steps=0: must be >= 1"),
    "bad flow value": (lambda t, m: ["train.steps=[1,"], 2, "is not valid YAML"),
    "pruning range": (lambda t, m: ["pruning.final_ratio=1.5"], 2, "final_ratio"),
    "missing data file": (lambda t, m: [f"data.source={t / 'none.csv'}"], 2, "no such file or directory"),
    "hub id offline": (lambda t, m: ["data.source=someorg/somedata"], 2, "hub is offline"),
    "not a source": (lambda t, m: ["data.source=what is this"], 2, "is neither a local file"),
    "missing column": (lambda t, m: _csv(t, "x,y\n1,2\n"), 2, "column(s) ['text', 'label'] not found"),
    "invalid UTF-8": (lambda t, m: _csv(t, b"text,label\n\xff\xfe bad,Dividend\n"), 2, "not UTF-8 text"),
    "header-only CSV": (lambda t, m: _csv(t, "text,label\n"), 2, "has no usable rows"),
    "empty file": (lambda t, m: _csv(t, ""), 2, "cannot be read as csv"),
    "garbage parquet": (lambda t, m: _csv(t, b"PAR1 not really", "d.parquet"), 2, "cannot be read as parquet"),
    "garbage JSONL": (lambda t, m: _csv(t, "{not json\n", "d.jsonl"), 2, "cannot be read as jsonl"),
    "unsupported file type": (lambda t, m: _csv(t, "a", "d.xlsx"), 2, "unsupported file type"),
    "unknown labels": (lambda t, m: _unknown_labels(t), 2, "dropped_unknown_label 20"),
    "label_names too few": (lambda t, m: ["data.label_names=[one]"], 2, "at least two distinct"),
    "max_len 4": (lambda t, m: ["data.max_len=4"], 2, "do not fit data.max_len=4"),
    "mesh > devices": (lambda t, m: ["mesh=[16,1,1]"], 2, "needs 16 devices"),
    "batch indivisible": (lambda t, m: ["mesh=[3,1,1]"], 2, "does not divide over the mesh's batch axes"),
    "tokenizer dir empty": (lambda t, m: (t / "tok").mkdir() or [f"data.tokenizer={t / 'tok'}"], 2, "tokenizer"),
    "teacher dir without config.json": (lambda t, m: _teacher(t, m, lambda d: (d / "config.json").unlink()), 2,
                                        "no config.json"),
    "config.json not JSON": (lambda t, m: _teacher(t, m, lambda d: _config_json(d, "{oops")), 2, "not valid JSON"),
    "config.json unknown architecture": (lambda t, m: _teacher(t, m, lambda d: _config_json(
        d, '{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}')), 2, "unsupported model_type 'gpt2'"),
    "truncated safetensors": (lambda t, m: _teacher(t, m, _truncate), 2, "not a complete safetensors file"),
    "safetensors wrong shape": (lambda t, m: _teacher(t, m, lambda d: _rewrite(d, lambda w: w.update(
        {"model.norm.weight": np.ones(7, np.float32)}))), 2, "'model.norm.weight' has shape [7], expected [32]"),
    "safetensors wrong dtype": (lambda t, m: _teacher(t, m, lambda d: _rewrite(d, lambda w: w.update(
        {"model.norm.weight": np.ones(32, np.int32)}))), 2, "'model.norm.weight' has dtype I32"),
    "pickle weights (.bin)": (lambda t, m: _teacher(t, m, lambda d: _pickled_weights(d, "pytorch_model.bin")), 2,
                              "pytorch_model.bin is never loaded: pickle files can run code"),
    "pickle named .safetensors": (lambda t, m: _teacher(t, m, lambda d: _pickled_weights(d, "model.safetensors")), 2,
                                  "not a complete safetensors file"),
    "tokenizer larger than the teacher's vocabulary": (lambda t, m: _teacher(t, m, lambda d: None), 2,
                                                       "the tokenizer has 4096 tokens but the teacher's vocabulary is 97"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, llama_dir):
    setup, code, message = CASES[name]
    extra = setup(tmp_path, llama_dir)
    config = [] if extra and extra[0].endswith(".yaml") else [TINY]
    run_dir = tmp_path / "run"
    result = invoke("run", *config, *extra, f"run_dir={run_dir}", f"cache_dir={tmp_path / 'cache'}", *(
        SMALL if not config else []))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert not run_dir.exists(), "a run that fails validation creates nothing"
    assert not list(tmp_path.rglob("EXECUTED")), "loading executed code from a pickle"


def test_non_finite_loss_at_the_first_step_says_there_is_no_checkpoint(tmp_path):
    result = invoke("run", TINY, *SMALL, f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'c'}",
                    "optimizer.learning_rate=1e30", "optimizer.clip_norm=null")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "became non-finite at step" in result.output
    assert "no checkpoint was saved before it" in result.output and "step None" not in result.output


@pytest.mark.parametrize("override, shown", [
    ("optimizer.learning_rate=1e-4", "learning_rate: 0.0001"),
    ("data.instruction=Topic: {text}", "instruction: 'Topic: {text}'"),
    ("data.instruction=Classify this: {text} -> label: ", "instruction: 'Classify this: {text} -> label: '"),
])
def test_overrides_take_yaml12_numbers_and_colons_unquoted(override, shown):
    result = invoke("config", "show", override)
    assert result.exit_code == 0, result.output
    assert shown in result.output


def test_one_megabyte_single_line_row_is_read_and_cut_to_max_len(tmp_path):
    from jaxdistill.data import encode_dataset, load_source, load_tokenizer

    rows = "".join(f"headline number {i},Dividend\n" for i in range(20))
    (tmp_path / "big.csv").write_text("text,label\n" + "word " * 200_000 + ",Dividend\n" + rows)
    data = load_source(str(tmp_path / "big.csv"))
    assert len(data) == 21 and len(data.texts[0]) > 900_000
    examples, counts = encode_dataset(data.subset([0, 1]), load_tokenizer(None), max_len=32)
    assert len(examples) == 2 and counts["truncated_prompt"] >= 1 and len(examples[0].tokens) == 32


def test_label_names_name_numeric_labels_in_training_and_export(tmp_path):
    """Sentiment-style numeric labels (0, 1, 2) with data.label_names: the run teaches and exports the
    names, never the digits."""
    from jaxdistill.config import load_config
    from jaxdistill.data import encode_dataset, load_tokenizer
    from jaxdistill.jobs.evaluation import split_data, template_of

    rows = "".join(f"company {i} reports quarter number {i},{i % 3}\n" for i in range(90))
    (tmp_path / "sentiment.csv").write_text("text,label\n" + rows)
    run = load_config(TINY, [f"data.source={tmp_path / 'sentiment.csv'}", "data.label_names=[negative,neutral,positive]",
                             "data.subsample=null", "eval=null", f"run_dir={tmp_path / 'run'}"])
    data, _, _ = split_data(run)
    assert data.label_names == ["negative", "neutral", "positive"] and len(data) == 90
    assert [data.label_names[y] for y in data.labels[:3]] == ["negative", "neutral", "positive"]
    tokenizer = load_tokenizer(None)
    examples, _ = encode_dataset(data.subset([1]), tokenizer, format="label", template=template_of(run))
    answer = tokenizer.decode(examples[0].tokens[examples[0].parts == 3])
    assert answer.startswith("neutral"), answer
