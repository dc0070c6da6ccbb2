"""The real pipeline at tiny scale: a tiny random Llama written as a GGUF file is the teacher (converted
once into the cache), fine-tuned on the task, writes rationales for the blended format, is distilled
into a pruned student, and teacher / pruned-only / student are evaluated in-domain and on a general
suite; a second run with the same teacher settings reuses the prepared teacher, its evaluation and
the traces from the cache."""

import json
import os

import numpy as np
import pytest

from jaxdistill.config import load_config
from jaxdistill.jobs.distill import run_distill
from jaxdistill.models import load_pretrained
from tests.test_gguf import T, hf_config, random_tensors, write_gguf

OVERRIDES = ["data.subsample=40", "data.max_len=120", "train.seq_len=128", "train.batch_size=4",
             "teacher.prepare_steps=2", "teacher.traces.max_new_tokens=6", "teacher.traces.batch_size=8",
             "train.steps=6", "train.log_every=2", "train.checkpoint_every=6", "pruning.start=2",
             "pruning.interval=2", "pruning.stages=2", "pruning.final_ratio=0.3", "pruning.multiple=8",
             "pruning.calibration_batches=1", "loss.chunk_size=64", "eval.suites=[in_domain, arc_easy]",
             "eval.limit=6", "eval.batch_size=4", "optimizer.learning_rate=0.001"]


@pytest.fixture(scope="module")
def teacher_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf"
    hf = hf_config("llama", max_position_embeddings=512)
    write_gguf(path, "llama", random_tensors("llama", hf, tied=True), hf, types=lambda name: T.Q8_0,
               tokenizer={"pre": "smollm"})
    return path


def _run(path, teacher, logs):
    run = load_config(None, [*OVERRIDES, f"run_dir={path}", f"teacher.path={teacher}"])
    return run_distill(run, log=logs.append)


@pytest.mark.slow
def test_gguf_teacher_end_to_end_and_reuse(teacher_gguf, tmp_path):
    cache = tmp_path / "jaxdistill-cache"  # the autouse fixture's JAXDISTILL_CACHE
    assert os.environ["JAXDISTILL_CACHE"] == str(cache)
    logs = []
    result = _run(tmp_path / "a", teacher_gguf, logs)

    # the GGUF was converted once into the cache, and the teacher prepared there
    converted = [p for p in (cache / "converted").iterdir() if (p / "config.json").is_file()]
    assert len(converted) == 1 and (converted[0] / "tokenizer.json").is_file()
    assert result["teacher"]["kind"] == "gguf"
    prepared = cache / "teachers" / os.path.basename(result["teacher"]["prepared"])
    assert json.loads((prepared / "prepared.json").read_text())["steps"] == 2
    split = json.loads((tmp_path / "a" / "split.json").read_text())  # the teacher's own sample, not D
    assert len(split["train"]) == 40 and len(split["teacher"]) == 2000
    assert not set(split["teacher"]) & set(split["held_out"])
    assert (tmp_path / "a" / "teacher" / "config.json").is_file()  # a link to the prepared teacher

    # rationales: one per training example, cached, attached, their quality reported
    traces = result["traces"]
    assert traces["n"] == 40 and traces["attach"]["kept"] + traces["attach"].get("missing_trace", 0) == 40
    assert set(traces) >= {"mean_words", "empty_share", "names_gold_share", "examples"}
    lines = (cache / "traces").glob("*.jsonl")
    records = [json.loads(line) for f in lines for line in f.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == list(range(40))
    assert result["data"]["examples"] == traces["attach"]["kept"]

    # three models evaluated in-domain and on ARC-Easy with standard errors; the student is smaller
    for model in ("teacher", "pruned_only", "student"):
        block = result["eval"][model]
        assert block["in_domain"]["n"] == 6 and 0 <= block["in_domain"]["metrics"]["acc"] <= 1
        assert block["arc_easy"]["n"] == 6 and block["arc_easy"]["stderr"]["acc"] is not None
    assert 0.2 < result["compression_ratio"]["total"] < 0.4
    assert set(result["wall_s"]) >= {"resolve_teacher", "prepare_teacher", "traces", "distill", "eval_student"}

    # the exported student is self-contained: weights, tokenizer (from the GGUF), generation ids
    from transformers import AutoTokenizer

    student = tmp_path / "a" / "student"
    tok = AutoTokenizer.from_pretrained(student)
    assert tok("Topic of: stocks")["input_ids"] and tok.eos_token == "<|im_end|>"
    config, _ = load_pretrained(student)
    assert config.num_layers == 2

    # a second run with the same teacher settings: no conversion, no fine-tuning, no generation
    logs2 = []
    again = _run(tmp_path / "b", teacher_gguf, logs2)
    assert not (tmp_path / "b" / "metrics-teacher.jsonl").exists()
    assert any("from the cache" in m for m in logs2 if m.startswith("teacher:"))
    assert any("from the cache" in m for m in logs2 if m.startswith("traces:"))
    assert again["eval"]["teacher"] == result["eval"]["teacher"]
    assert again["traces"]["n"] == 40
    np.testing.assert_allclose(again["final"]["loss"], result["final"]["loss"], rtol=1e-5)


def test_convert_command(teacher_gguf, tmp_path):
    from click.testing import CliRunner

    from jaxdistill.cli import main

    out = tmp_path / "hf"
    result = CliRunner().invoke(main, ["convert", str(teacher_gguf), str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert json.loads((out / "gguf_source.json").read_text())["tensor_types"] == {"F32": 5, "Q8_0": 15}
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    result = CliRunner().invoke(main, ["convert", str(bad), str(tmp_path / "x")])
    assert result.exit_code == 2 and "bad.gguf" in result.output and "Traceback" not in result.output
