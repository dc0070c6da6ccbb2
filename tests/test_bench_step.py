"""`jaxdistill bench` for the distillation step: the JSON it prints (random and task workloads, on
shrunk models so it stays quick), and the FLOP accounting against a hand count."""

import json

import pytest
from click.testing import CliRunner

from jaxdistill.bench_step import STEP_PRESETS
from jaxdistill.cli import main
from jaxdistill.models import ModelConfig
from jaxdistill.perf import forward_flops_per_token, step_flops, step_matmuls

FIELDS = ("step_ms_median", "step_ms_p10", "step_ms_p90", "tokens_per_s", "compile_s", "flops_per_step", "mfu",
          "peak_flops", "peak_source", "temp_bytes", "backend", "device_kind", "useful_tokens_per_s")
SHRINK = ["teacher.hidden_size=64", "teacher.intermediate_size=128", "teacher.num_layers=2",
          "student.hidden_size=32", "student.intermediate_size=64", "student.num_layers=2",
          "teacher.vocab_size=4096", "student.vocab_size=4096", "steps=2", "warmup=1", "batch=2", "seq=128"]


def _bench(config, *overrides):
    result = CliRunner().invoke(main, ["bench", f"jaxdistill/configs/bench/{config}.yaml", "--json", *SHRINK,
                                       *overrides])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_bench_cpu_small_prints_the_step_json():
    out = _bench("cpu_small")
    assert out["benchmark"] == "step" and out["backend"] == "cpu" and out["compilations"] == 1
    for field in FIELDS:
        assert field in out, field
    assert 0 < out["step_ms_p10"] <= out["step_ms_median"] <= out["step_ms_p90"]
    assert out["flops_per_step"]["teacher"] > 0 and 0 < out["mfu"] < 1.5
    assert out["peak_source"].startswith("measured fp32 matmul ceiling")
    assert out["remat"] == "dots_no_batch"  # auto on CPU
    assert out["useful_tokens_per_step"] == 2 * 128


def test_bench_cpu_task_with_cached_targets_and_capacity():
    out = _bench("cpu_task", "peak_tflops=1.0", "steps=1", "warmup=0")  # the ceiling: tested above
    assert out["targets"] == "cached" and out["flops_per_step"]["teacher"] == 0.0
    assert out["dropped_tokens"] == 0.0 and out["capacity"] % 64 == 0
    assert 0 < out["useful_tokens_per_step"] <= out["capacity"] <= 2 * 128
    assert out["target_cache_build_s"] > 0 and out["peak_source"] == "given"


def test_bench_rejects_a_bad_option():
    result = CliRunner().invoke(main, ["bench", "jaxdistill/configs/bench/cpu_small.yaml", "stepz=3"])
    assert result.exit_code == 2 and "unknown option(s) stepz" in result.output


def test_step_flops_match_a_hand_count():
    c = ModelConfig(model_type="llama", vocab_size=100, hidden_size=8, intermediate_size=12, num_layers=2,
                    num_heads=2, num_kv_heads=1, head_dim=4)
    T, B = 6, 3
    # per token per layer: q 8x8, k 8x4, v 8x4, o 8x8, gate/up 8x12 each, down 12x8 -> 64+32+32+64+96+96+96 = 480
    # multiply-adds; attention QK^T + AV = T*H*D + T*H*D = 96 multiply-adds, halved (causal) = 48;
    # head 8 x 100 = 800
    per_token = 2 * (2 * 480 + 2 * 48 + 800)
    assert forward_flops_per_token(c, T) == per_token == 3712
    flops = step_flops(c, c, B * T, T)
    assert flops == {"student": 3 * per_token * B * T, "teacher": per_token * B * T}
    # the ceiling's weights add up to the same FLOPs (forward + both backward products)
    assert sum(f for _, f in step_matmuls(c, B, T, backward=True)) == pytest.approx(flops["student"])
    assert sum(f for _, f in step_matmuls(c, B, T, backward=False)) == pytest.approx(flops["teacher"])


def test_cpu_small_presets_are_the_issue_workload():
    t, s = STEP_PRESETS["cpu-small-teacher"], STEP_PRESETS["cpu-small-student"]
    assert (t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads, t.intermediate_size) == (512, 8, 8, 4, 1408)
    assert (s.hidden_size, s.num_layers, s.num_heads, s.num_kv_heads, s.intermediate_size) == (256, 8, 4, 2, 704)
    assert t.vocab_size == s.vocab_size == 8192 and not t.tie_word_embeddings
    flops = step_flops(s, t, 8 * 128, 128)
    assert sum(flops.values()) / 1e9 == pytest.approx(108.7, abs=0.05)
