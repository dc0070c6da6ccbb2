"""The PyTorch reference step (`benchmarks/torch_reference.py`) on tiny models: its blended loss is the
`BlendedCoT` formula (checked against float64 numpy and against jaxdistill's own `evaluate` on the same
logits), and `reference_step` runs and reports finite positive step times."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_reference.py"
_spec = importlib.util.spec_from_file_location("torch_reference", _PATH)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

# vocab 4096 covers the shipped BPE's ids (the finance examples reach 4095)
TINY = dict(model_type="llama", vocab_size=4096, hidden_size=32, intermediate_size=64, num_layers=2,
            num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=False)
SPEC = {"benchmark": "step", "teacher": TINY, "student": {**TINY, "hidden_size": 16, "num_layers": 1},
        "data": "finance", "format": "blended", "max_len": 128, "batch": 3, "seq": 128,
        "loss": {"kind": "blended", "temperature": 2.0},
        "optimizer": {"learning_rate": 1e-4, "weight_decay": 0.01, "clip_norm": None}}


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _numpy_blended(s, t, targets, parts, tau):
    """answer CE mean + trace CE mean + KL_tau(p_T || p_S) mean over trace + answer, in float64."""
    s, t = s.astype(np.float64), t.astype(np.float64)
    log_p = _log_softmax(s)
    safe = np.where(targets >= 0, targets, 0)
    ce = -np.take_along_axis(log_p, safe[..., None], -1)[..., 0]
    log_s, log_t = _log_softmax(s / tau), _log_softmax(t / tau)
    kl = (np.exp(log_t) * (log_t - log_s)).sum(-1)
    answer, trace = (targets >= 0) & (parts == 3), (targets >= 0) & (parts == 2)
    both = answer | trace
    return ce[answer].mean() + ce[trace].mean() + kl[both].mean()


def test_blended_loss_matches_float64_formula():
    teacher, student, _, s_config = ref.build_models(SPEC, seed=0)
    batch = ref.finance_batches(1, batch=3, vocab=s_config.vocab_size, seed=0)[0]
    assert batch["input_ids"].shape[0] == 3 and batch["attention_mask"].sum() < batch["input_ids"].numel()
    parts, targets = batch["parts"].numpy(), batch["targets"].numpy()
    assert (parts == 2).any() and (parts == 3).any()
    assert batch["useful"] == int(((parts == 2) | (parts == 3)).sum())
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        value = float(ref.step_loss(ref.loss_config(SPEC), s_logits, t_logits, batch))
    expected = _numpy_blended(s_logits.numpy(), t_logits.numpy(), targets, parts, tau=2.0)
    assert value == pytest.approx(expected, rel=1e-5)

    # and it is jaxdistill's BlendedCoT on the same logits and targets
    from jaxdistill.losses import LossConfig
    from jaxdistill.losses.token_loss import evaluate

    tokens = {"labels": np.where(targets >= 0, targets, -1).astype(np.int32), "parts": parts,
              "weights": batch["weights"].numpy()}
    jax_value, _ = evaluate(LossConfig(kind="blended", temperature=2.0).token_loss(), s_logits.numpy(),
                            t_logits.numpy(), tokens)
    assert float(jax_value) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("data", ["finance", "random"])
def test_reference_step_reports_times(data):
    spec = {**SPEC, "data": data, "seq": 16}
    if data == "random":
        spec["loss"] = {"kind": "divergence", "divergence": "forward_kl", "temperature": 2.0}
    out = ref.reference_step(spec, steps=2 if data == "random" else 1, warmup=0)
    for key in ("step_ms_median", "step_ms_p10", "step_ms_p90", "tokens_per_s", "useful_tokens_per_s",
                "peak_flops", "mfu"):
        assert math.isfinite(out[key]) and out[key] > 0, (key, out[key])
    assert out["step_ms_p10"] <= out["step_ms_median"] <= out["step_ms_p90"]
    assert math.isfinite(out["last_loss"])
    if data == "random":
        assert out["tokens_per_step"] == out["useful_tokens_per_step"] == 3 * 16
