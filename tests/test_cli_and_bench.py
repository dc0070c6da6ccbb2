"""The CLI (`jaxdistill run`, `jaxdistill bench`), run-config overrides, and FLOP accounting."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from jaxdistill.bench import forward_flops_per_token, run_benchmark
from jaxdistill.cli import main
from jaxdistill.models import ModelConfig
from jaxdistill.run_config import RunConfigError, load_run_config, parse_override

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["job=model-smoke", "model.num_layers=2", "batch.seq_len=64", "batch.rows=2"]


def test_run_default_job_writes_result(tmp_path):
    result = CliRunner().invoke(main, ["run", f"run_dir={tmp_path / 'run'}", *SMALL])
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "run" / "result.json").read_text())
    assert out["job"] == "model-smoke" and out["tokens"] == 128
    assert out["round_trip_max_abs_diff"] == 0.0
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_run_with_config_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"job: model-smoke\nrun_dir: {tmp_path / 'r'}\nmodel:\n  model_type: llama\n  qk_norm: false\n")
    result = CliRunner().invoke(main, ["run", str(config), *SMALL[1:]])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "model" / "config.json").read_text())["model_type"] == "llama"


@pytest.mark.parametrize("args, message", [
    (["job=model-smoke", "modle.num_layers=2"], "unknown config key 'modle'; valid keys here: batch, job, model"),
    (["job=model-smoke", "model.num_layers=two"], "'model.num_layers' = 'two': expected a int"),
    (["job=model-smoke", "model.model_type=gpt2"], "unsupported model_type 'gpt2'"),
    (["missing.yaml"], "config file 'missing.yaml' does not exist"),
    (["job=train"], "job='train': valid jobs are distill, model-smoke"),
    (["teacher.model.model_type=gpt2"], "unsupported model_type 'gpt2'"),
])
def test_run_bad_input_is_a_usage_error(args, message, tmp_path):
    extra = [] if "job=model-smoke" in args else ["data.subsample=50"]
    result = CliRunner().invoke(main, ["run", *args, f"run_dir={tmp_path}", *extra])
    assert result.exit_code == 2
    assert message in result.output


def test_overrides_parse_yaml_values():
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("x=[1, 2]") == {"x": [1, 2]}
    assert load_run_config(None, ["model.param_dtype=bfloat16"])["model"]["param_dtype"] == "bfloat16"
    with pytest.raises(RunConfigError, match="not key=value"):
        parse_override("seed")
    with pytest.raises(RunConfigError, match="is a section"):
        load_run_config(None, ["model=3"])


def test_bench_json_last_line(tmp_path):
    spec = tmp_path / "b.yaml"
    spec.write_text("benchmark: forward\nmodel: {model_type: llama, vocab_size: 64, hidden_size: 32,"
                    " intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, head_dim: 8}\n"
                    "batch: 2\nseq: 16\niters: 2\n")
    result = CliRunner().invoke(main, ["bench", str(spec), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["benchmark"] == "forward" and out["batch"] == 2 and out["seq"] == 16
    assert out["tokens_per_s"] > 0 and 0 < out["mfu"]
    assert out["flops_per_step"] == 32 * forward_flops_per_token(ModelConfig(
        model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=8), 16)


def test_bench_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown option\\(s\\) batchsize; valid: model, batch"):
        run_benchmark({"benchmark": "forward", "batchsize": 2})


def test_flops_match_hand_count():
    """L=3, d=32, H=4, K=2, D=8, F=64, V=97, T=12:
    per layer 2*(d*H*D + 2*d*K*D + H*D*d + 3*d*F) = 2*(1024+1024+1024+6144) = 18432;
    causal attention 2*T*H*D = 768 per layer; head 2*d*V = 6208.  3*(18432+768) + 6208 = 63808."""
    config = ModelConfig(model_type="llama", vocab_size=97, hidden_size=32, intermediate_size=64,
                         num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8)
    assert forward_flops_per_token(config, 12) == 63808


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    start = readme.index("<!-- test-command -->")
    block = readme[start:].split("```bash\n", 1)[1].split("```", 1)[0].strip()
    assert block and block in ci


@pytest.mark.skipif(shutil.which("jaxdistill") is None, reason="console script not installed")
def test_console_script_installed():
    out = subprocess.run(["jaxdistill", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "run" in out.stdout and "bench" in out.stdout


def test_shipped_configs_validate():
    """Every shipped run config is valid against its job's schema (keys and types)."""
    from jaxdistill.cli import JOBS, _job

    for path in [ROOT / "configs" / "finheadlinemix_qwen3.yaml"]:
        config = load_run_config(path, default=JOBS[_job(path, [])])
        assert config["job"] == "distill" and config["data"]["format"] == "blended"
