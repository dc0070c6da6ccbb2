"""The typed run config: defaults, overrides, and every config mistake refused at load time (a usage
error naming the value and the valid ones) before any work starts."""

import pytest
from click.testing import CliRunner

from jaxdistill.cli import main
from jaxdistill.config import RunConfig, RunConfigError, load_config, packaged_config
from jaxdistill.losses import LossConfig
from jaxdistill.train import OptimizerConfig

TINY = packaged_config("tiny.yaml")


def test_defaults_are_the_experiment_and_overrides_are_typed():
    config = load_config(None, ["loss.temperature=2", "optimizer.b2=0.99", "loss.label_smoothing=0.1",
                                "loss.scale_by_t2=true", "student.lora.modules=[q, v]", "mesh=[1,-1,1]"])
    assert isinstance(config, RunConfig) and isinstance(config.loss, LossConfig)
    assert config.loss.temperature == 2.0 and isinstance(config.loss.temperature, float)
    assert config.loss.label_smoothing == 0.1 and config.loss.scale_by_t2
    assert config.optimizer == OptimizerConfig(learning_rate=2e-4, warmup_steps=3, b2=0.99)
    assert config.student.lora.modules == ("q", "v") and config.mesh == (1, -1, 1)
    assert config.teacher.path == "smollm2-135m-instruct" and config.data.format == "blended"
    assert config.pruning.final_ratio == 0.3 and config.eval.suites == ("in_domain", "arc_easy", "piqa")
    tiny = load_config(TINY)  # the small from-scratch configuration tests use
    assert tiny.teacher.path is None and tiny.teacher.model["hidden_size"] == 128 and tiny.pruning.final_ratio == 0.5
    assert load_config(None, ["pruning=null"]).pruning is None
    assert load_config(TINY, ["pruning=null", "pruning.final_ratio=0.3"]).pruning.stages == 3


def test_config_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\ntrain:\n  steps: 90\nteacher:\n  prepare_steps: 20\n")
    config = load_config(path, ["train.steps=100", "teacher.model.hidden_size=64"])
    assert config.seed == 3 and config.train.steps == 100 and config.train.batch_size == 8
    assert config.teacher.prepare_steps == 20 and config.teacher.targets == "live"
    assert config.teacher.model["hidden_size"] == 64 and config.teacher.model["num_layers"] == 4


@pytest.mark.parametrize("override, message", [
    ("student.init=bogus", "student.init='bogus'; valid: teacher, random"),
    ("pruning.kind=bogus", "schedule kind 'bogus'; valid: linear, geometric, cubic"),
    ("pruning.method=bogus", "pruning.method='bogus'; valid: activation, magnitude, taylor"),
    ("pruning.split=diagonal", "pruning.split='diagonal'; valid: width, depth, mixed"),
    ("pruning.final_ratio=1.5", "final_ratio=1.5 is outside the valid range (0, 1)"),
    ("pruning.start=200", "the last pruning stage is at step 260"),
    ("teacher.targets=teacher", "teacher.targets='teacher'; valid: none, live, cached"),
    ("student.trainable=half", "student.trainable='half'; valid: full, lora"),
    ("student.lora.modules=[q, qq]", "LoRA modules ['q', 'qq']: unknown ['qq']"),
    ("loss.kind=mse", "kind='mse'"),
    ("loss.divergence=l2", "divergence='l2'"),
    ("loss.chunk_size=0", "chunk_size=0"),
    ("optimizer.decay=step", "optimizer.decay='step'; valid: cosine, linear, constant"),
    ("train.micro_batches=3", "train.batch_size=16 is not a multiple of train.micro_batches=3"),
    ("train.steps=ten", "config key 'train.steps' = 'ten': expected int"),
    ("loss.temperature=true", "config key 'loss.temperature' = True: expected float"),
    ("data.subsample=1.5", "config key 'data.subsample' = 1.5: expected int | null"),
    ("data.format=cot", "data.format='cot' needs reasoning traces: set data.rationale_column"),
    ("teacher.learning_rate=0", "teacher.learning_rate=0.0: must be > 0"),
    ("teacher.traces.prompt=why", "teacher.traces.prompt='why': must contain {text} and {label}"),
    ("data.format=json", "data.format='json'; valid: label, cot, blended"),
    ("teacher.targets=none", "teacher.targets=none, but loss.kind='blended' with loss.w_kl=1.0 needs the teacher"),
    ("teacher.path=/no/such/dir", "teacher.path='/no/such/dir': no such file or directory"),
    ("data.source=./missing.parquet", "data.source='./missing.parquet': no such file or directory"),
    ("mesh=[1,1]", "config key 'mesh' = [1, 1]: expected tuple[int, int, int]"),
    ("mesh=[-1,-1,1]", "mesh=[-1, -1, 1]: sizes >= 1, or -1 (the remaining devices) at most once"),
    ("data.max_len=500", "data.max_len=500 > train.seq_len=192"),
    ("loss=null", "config key 'loss' is a section; set its keys"),
    ("train.stop_at_step=0", "train.stop_at_step=0: must be >= 1"),
    ("student.lora.alpha=0", "alpha=0.0 (> 0)"),
    ("job=[a]", "job=['a']; valid: distill, model-smoke"),
    ("eval.suites=[in_domain, trivia]", "unknown eval suite(s) ['trivia']; available: in_domain"),
    ("eval.held_out=1.5", "eval.held_out=1.5: must be in (0, 1)"),
])
def test_bad_config_is_a_usage_error_before_any_work(override, message, tmp_path):
    result = CliRunner().invoke(main, ["run", str(TINY), f"run_dir={tmp_path / 'run'}", override])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "run").exists()  # nothing was started


def test_a_model_in_a_file_replaces_the_default_model(tmp_path):
    """A file's teacher.model is the whole architecture (nothing inherited from the demo's qwen3);
    a dotted override changes one field of it."""
    path = tmp_path / "c.yaml"
    path.write_text("teacher:\n  model: {model_type: llama, hidden_size: 64, intermediate_size: 128, num_layers: 2,"
                    " num_heads: 4, num_kv_heads: 4, head_dim: 16}\n")
    model = load_config(path, ["teacher.model.num_layers=3"]).teacher.model
    assert model == {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_layers": 3,
                     "num_heads": 4, "num_kv_heads": 4, "head_dim": 16}


def test_bad_yaml_is_a_usage_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {steps: [\n")
    result = CliRunner().invoke(main, ["config", "show", str(path)])
    assert result.exit_code == 2 and "not valid YAML" in result.output


def test_cached_targets_need_forward_kl():
    with pytest.raises(RunConfigError, match="teacher.targets=cached estimates forward_kl only, not loss.divergence='jsd'"):
        load_config(None, ["teacher.targets=cached", "loss.divergence=jsd"])
    # label-only supervision needs no teacher at all
    assert load_config(None, ["teacher.targets=none", "loss.w_kl=0", "loss.w_trace_ce=0"]).loss.uses_teacher is False
    with pytest.raises(RunConfigError, match="builds a teacher cache that loss.w_kl=0.0 never reads"):
        load_config(None, ["teacher.targets=cached", "loss.w_kl=0"])


def test_yaml_1_2_numbers_in_overrides_and_files(tmp_path):
    """`1e-4` is a number (YAML 1.2), in an override and in a config file; quoted it stays a string."""
    from jaxdistill.config import load_config, load_yaml

    assert load_config(None, ["optimizer.learning_rate=1e-4"], check_paths=False).optimizer.learning_rate == 1e-4
    path = tmp_path / "run.yaml"
    path.write_text("optimizer:\n  learning_rate: 3E-4\n  weight_decay: 1e-2\n")
    config = load_config(path, check_paths=False)
    assert (config.optimizer.learning_rate, config.optimizer.weight_decay) == (3e-4, 1e-2)
    assert load_yaml("a: '1e-4'\nb: 10\nc: 7e\n") == {"a": "1e-4", "b": 10, "c": "7e"}
