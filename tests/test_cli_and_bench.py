"""The CLI (`jaxdistill run`, `jaxdistill bench`), run-config overrides, and FLOP accounting."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from jaxdistill.bench import check_spec, run_benchmark
from jaxdistill.cli import main
from jaxdistill.config import JOBS, RunConfigError, load_config, packaged_config, parse_override
from jaxdistill.models import ModelConfig
from jaxdistill.perf import forward_flops_per_token

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
    config.write_text(f"job: model-smoke\nrun_dir: {tmp_path / 'r'}\nmodel: {{model_type: llama, vocab_size: 256, "
                      "hidden_size: 64, intermediate_size: 128, num_layers: 4, num_heads: 4, num_kv_heads: 2, head_dim: 16}\n")
    result = CliRunner().invoke(main, ["run", str(config), *SMALL[1:]])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "model" / "config.json").read_text())["model_type"] == "llama"


@pytest.mark.parametrize("args, message", [
    (["job=model-smoke", "modle.num_layers=2"], "unknown config key 'modle'; valid keys here: batch, job, model"),
    (["job=model-smoke", "model.num_layers=two"], "model: num_layers='two': must be a positive integer"),
    (["job=model-smoke", "model.model_type=gpt2"], "unsupported model_type 'gpt2'"),
    (["missing.yaml"], "config file 'missing.yaml' does not exist"),
    (["job=train"], "job='train'; valid: distill, model-smoke"),
    (["teacher.path=null", "teacher.model.model_type=gpt2"], "unsupported model_type 'gpt2'"),
])
def test_run_bad_input_is_a_usage_error(args, message, tmp_path):
    extra = [] if "job=model-smoke" in args else ["data.subsample=50"]
    result = CliRunner().invoke(main, ["run", *args, f"run_dir={tmp_path}", *extra])
    assert result.exit_code == 2
    assert message in result.output


def test_overrides_parse_yaml_values():
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("x=[1, 2]") == {"x": [1, 2]}
    assert load_config(None, ["job=model-smoke", "model.param_dtype=bfloat16"]).model["param_dtype"] == "bfloat16"
    with pytest.raises(RunConfigError, match="not key=value"):
        parse_override("seed")
    with pytest.raises(RunConfigError, match="is a section"):
        load_config(None, ["data=3"])


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
    """Every shipped YAML is valid: run configs against their job's schema (keys, types, choices,
    ranges, combinations; paths are the user's), benchmark specs against the benchmark's options."""
    run_configs = sorted(packaged_config("").glob("*.yaml"))
    assert [p.name for p in run_configs] == ["finheadlinemix_qwen3.yaml", "tiny.yaml"]
    config = load_config(run_configs[0], check_paths=False)
    assert config.job == "distill" and config.data.format == "blended" and config.teacher.path == "/models/Qwen3-32B"
    tiny = load_config(run_configs[1])
    assert tiny.teacher.path is None and tiny.data.format == "label" and tiny.eval.suites is None
    bench_specs = sorted(packaged_config("bench").glob("*.yaml"))
    assert [p.stem for p in bench_specs] == ["cpu_small", "cpu_task", "forward_cpu", "forward_qwen3_0.6b",
                                             "gpu_qwen3_0.6b", "gpu_qwen3_1.7b", "loss_memory"]
    for path in bench_specs:
        check_spec(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("job", sorted(JOBS))
def test_config_show_round_trips(job, tmp_path):
    """`config show` prints every key resolved; loading what it prints gives the same config."""
    result = CliRunner().invoke(main, ["config", "show", f"job={job}", "seed=7"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["seed"] == 7 and shown["job"] == job
    printed = tmp_path / "shown.yaml"
    printed.write_text(result.output)
    assert load_config(printed, check_paths=False) == load_config(None, [f"job={job}", "seed=7"], check_paths=False)


def test_bench_overrides_merge_deep(tmp_path):
    spec = tmp_path / "b.yaml"
    spec.write_text("benchmark: forward\nmodel: {model_type: llama, vocab_size: 64, hidden_size: 64,"
                    " intermediate_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, head_dim: 8}\n"
                    "batch: 2\nseq: 16\niters: 1\n")
    result = CliRunner().invoke(main, ["bench", str(spec), "--json", "model.hidden_size=32", "seq=8"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["seq"] == 8 and out["flops_per_step"] == 16 * forward_flops_per_token(ModelConfig(
        model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=8), 8)


def test_launcher_turns_on_malloc_huge_pages_once():
    """`jaxdistill/launch.py` re-executes with glibc's malloc huge pages only where they exist and
    nobody chose otherwise."""
    from jaxdistill.launch import REEXECUTED, TUNABLES, huge_pages_env

    assert huge_pages_env({"A": "1"}, "linux", (2, 36)) == {"A": "1", "GLIBC_TUNABLES": TUNABLES, REEXECUTED: "1"}
    assert huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.check=3"}, "linux", (2, 36)) is None  # yours wins
    assert huge_pages_env({REEXECUTED: "1"}, "linux", (2, 36)) is None  # the tunable was dropped (setuid): no loop
    assert huge_pages_env({"JAXDISTILL_HUGE_PAGES": "0"}, "linux", (2, 36)) is None
    assert huge_pages_env({}, "linux", (2, 34)) is None       # the tunable came with glibc 2.35
    assert huge_pages_env({}, "linux", None) is None          # musl and others
    assert huge_pages_env({}, "darwin", (2, 36)) is None


def test_launcher_reexecutes_once_with_the_tunable(tmp_path):
    """The launcher re-executes its process once with GLIBC_TUNABLES set (where glibc has the tunable)
    and then runs the CLI; the re-executed process sees the variable; the installed command runs."""
    from jaxdistill.launch import REEXECUTED, TUNABLES, _glibc_version, huge_pages_env

    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXDISTILL_HUGE_PAGES", REEXECUTED)}
    probe = tmp_path / "probe.py"  # a script run through the launcher's main, reporting its environment
    probe.write_text("import os, sys\nsys.argv = ['jaxdistill', '--help']\nfrom jaxdistill.launch import main\n"
                     "print('TUNABLES=' + os.environ.get('GLIBC_TUNABLES', ''), flush=True)\n"
                     "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)\n")
    out = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=120, env=env)
    want = TUNABLES if huge_pages_env(env, sys.platform, _glibc_version()) is not None else ""
    lines = [line for line in out.stdout.splitlines() if line.startswith("TUNABLES=")]
    # re-executed: the first run printed no tunable, the second the tunable; else one run without
    assert lines == (["TUNABLES=", f"TUNABLES={TUNABLES}"] if want else ["TUNABLES="]), out.stdout + out.stderr
    assert out.stdout.rstrip().endswith("exit 0"), out.stdout + out.stderr
    if shutil.which("jaxdistill") is not None:  # the installed console script goes through the launcher
        help_out = subprocess.run(["jaxdistill", "--help"], capture_output=True, text=True, timeout=120, env=env)
        assert help_out.returncode == 0 and "Usage" in help_out.stdout
