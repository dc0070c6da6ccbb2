"""Evaluation in every run (teacher / pruned-only / student on a held-out split training never sees)
and `jaxdistill eval` on a run directory and on a Hugging Face model directory."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from jaxdistill.cli import main
from jaxdistill.config import load_config, packaged_config
from jaxdistill.data import load_source, stratified_split, stratified_subsample
from jaxdistill.jobs.distill import run_distill
from tests.tiny_models import make_hf_checkpoint

BASE = ["data.subsample=120", "data.max_len=40", "train.seq_len=80", "train.batch_size=4", "teacher.prepare_steps=2",
        "teacher.model.hidden_size=32", "teacher.model.intermediate_size=64", "teacher.model.num_layers=2",
        "teacher.model.head_dim=8", "train.steps=4", "train.log_every=2", "train.checkpoint_every=4",
        "pruning.start=1", "pruning.interval=1", "pruning.stages=1", "pruning.multiple=8",
        "pruning.calibration_batches=1", "loss.chunk_size=64", "eval.limit=12", "eval.batch_size=4",
        "eval.suites=[in_domain, perplexity_in_domain]"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    result = run_distill(load_config(packaged_config("tiny.yaml"), [*BASE, f"run_dir={path}"]), log=lambda m: None)
    return path, result


def test_run_evaluates_teacher_pruned_only_and_student(run_dir):
    path, result = run_dir
    block = result["eval"]
    assert block["suites"] == ["in_domain", "perplexity_in_domain"]
    for model in ("teacher", "pruned_only", "student"):
        in_domain = block[model]["in_domain"]
        assert in_domain["n"] == 12 and 0.0 <= in_domain["metrics"]["acc"] <= 1.0
        assert in_domain["chance"]["uniform"] == pytest.approx(1 / 20)
        assert np.isfinite(block[model]["perplexity_in_domain"]["metrics"]["perplexity"])
        assert json.loads((path / f"eval-{model}.json").read_text()) == block[model]
    assert json.loads((path / "result.json").read_text())["eval"] == block


def test_held_out_split_never_overlaps_training(run_dir):
    path, _ = run_dir
    ids = json.loads((path / "split.json").read_text())
    train, held = set(ids["train"]), set(ids["held_out"])
    assert len(train) == 120 and len(held) > 100 and not train & held
    # the same split, derived independently from the source and the seed
    data = load_source("finance_topic")
    rest, held_rows = stratified_split(data.labels, (0.9, 0.1), seed=0)
    assert held == set(held_rows.tolist())
    assert train == set(rest[stratified_subsample(data.labels[rest], 120, seed=0)].tolist())


def test_eval_command_on_a_run_directory(run_dir):
    path, result = run_dir
    out = CliRunner().invoke(main, ["eval", str(path), "--suites", "in_domain", "--limit", "12"])
    assert out.exit_code == 0, out.output
    written = json.loads((path / "eval.json").read_text())
    assert set(written) == {"teacher", "student"}
    # the same models on the same held-out examples: the numbers the run reported
    assert written["student"]["in_domain"]["metrics"] == result["eval"]["student"]["in_domain"]["metrics"]
    assert "in_domain" in out.output and "teacher" in out.output


def test_eval_command_bad_input(tmp_path):
    out = CliRunner().invoke(main, ["eval", str(tmp_path), "--suites", "in_domain,trivia"])
    assert out.exit_code == 2 and "unknown eval suite(s) ['trivia']; available: in_domain" in out.output
    out = CliRunner().invoke(main, ["eval", str(tmp_path)])
    assert out.exit_code == 2 and "neither a run directory (config.yaml) nor a Hugging Face model directory" in out.output
    model = make_hf_checkpoint("llama3", tmp_path / "llama")  # vocabulary 97, the shipped BPE has 4096
    out = CliRunner().invoke(main, ["eval", str(model), "--suites", "in_domain"])
    assert out.exit_code == 2 and "tokenizer has 4096 tokens but the model's vocabulary is 97" in out.output
    assert not (model / "eval.json").exists()
