"""The self-contained Hugging Face export (jobs/export.py), checked against transformers: the model
card's own pipeline snippet, run by transformers (torch, CPU, greedy), must reproduce the project's
generation path (`sample.generate` via `greedy_completions`, then `parse_answer`) token for token on
validation headlines, for a tiny model trained until it answers them in the label and blended formats."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdistill.data import (ClassificationData, Template, encode_dataset, load_source, load_tokenizer,
                             parse_answer)
from jaxdistill.data.formats import loss_weights
from jaxdistill.evaluate.classification import greedy_completions, label_requests
from jaxdistill.jobs.export import ExportError, export_model
from jaxdistill.models import ModelConfig, forward, init_params, load_pretrained

LABEL = Template(instruction="Topic of: {text}", use_chat_template=False)  # the run config's data section
BLENDED = Template(instruction="Think, then give the topic of: {text}", use_chat_template=False)
MAX_LEN = 160
CARD = {
    "name": "tiny test student",
    "teacher": {"spec": "smollm2-135m-instruct", "path": "/cache/teachers/abc"},
    "compression": {"compression_ratio": {"total": 0.5, "non_embedding": 0.75}, "student_params": 600_000,
                    "teacher_params": 1_200_000},
    "data": {"source": "finance_topic", "D": 160, "format": "label"},
    "eval": {"held_out": 400, "student": {"in_domain": {"n": 400, "metrics": {"acc": 0.85, "macro_f1": 0.8},
                                                        "stderr": {"acc": 0.025}, "chance": {"uniform": 0.05}}}},
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def headlines():
    """The shortest validation headline of each of ten classes (short: cheap to train on), with short
    synthetic traces."""
    data = load_source("finance_topic", split="validation")
    rows = [min(np.flatnonzero(data.labels == c), key=lambda r: (len(data.texts[r]), r)) for c in range(0, 20, 2)]
    texts = [data.texts[r] for r in rows]
    traces = [f"It starts with {t.split()[0]}." for t in texts]
    return ClassificationData(texts, data.labels[rows], data.label_names, rationales=traces)


@pytest.fixture(scope="module")
def trained(tokenizer, headlines):
    """(config, params) of a tiny Llama trained (Adam, full batch) until it answers the ten headlines in
    the label format under LABEL and in the blended format under BLENDED: distinct greedy outputs with
    wide margins, so transformers and the project cannot part on a near-tie."""
    config = ModelConfig(model_type="llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=256)
    examples, weights = [], []
    for format, template in (("label", LABEL), ("blended", BLENDED)):
        encoded, counts = encode_dataset(headlines, tokenizer, format=format, template=template, max_len=MAX_LEN)
        assert counts == {"examples": 10}
        examples += [e.tokens for e in encoded]
        weights += [loss_weights(e.parts, format) for e in encoded]
    T = max(map(len, examples))
    tokens = np.zeros((len(examples), T), np.int32)
    segments, w = np.zeros_like(tokens), np.zeros(tokens.shape, np.float32)
    for r, (seq, wt) in enumerate(zip(examples, weights)):
        tokens[r, :len(seq)], segments[r, :len(seq)], w[r, :len(seq)] = seq, 1, wt
    tokens, segments, w = map(jnp.asarray, (tokens, segments, w))
    optimizer = optax.adam(1e-2)

    def loss(params):
        log_p = jax.nn.log_softmax(forward(config, params, tokens, segment_ids=segments)[:, :-1])  # [B, T-1, V]
        nll = -jnp.take_along_axis(log_p, tokens[:, 1:, None], axis=-1)[..., 0]
        return (nll * w[:, 1:]).sum() / w[:, 1:].sum()

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    params = init_params(config, jax.random.key(0))
    state = optimizer.init(params)
    for _ in range(60):
        params, state, value = step(params, state)
    assert float(value) < 0.05, f"tiny model did not fit its 20 examples: loss {float(value):.3f}"
    return config, jax.device_get(params)


@pytest.fixture(scope="module")
def exported(trained, tokenizer, headlines, tmp_path_factory):
    """{format: export directory} for the label format (with the full card) and blended (no card)."""
    root = tmp_path_factory.mktemp("export")
    config, params = trained
    return {"label": export_model(root / "label", config, params, tokenizer, label_names=headlines.label_names,
                                  template=LABEL, data_format="label", card=CARD, max_len=MAX_LEN),
            "blended": export_model(root / "blended", config, params, tokenizer,
                                    label_names=headlines.label_names, template=BLENDED, data_format="blended",
                                    max_len=MAX_LEN)}


def card_snippet(path):
    """The model card's usage code: (its namespace after running it, what it printed)."""
    (code,) = re.findall(r"## Usage\n\n```python\n(.*?)```", (path / "README.md").read_text(), re.S)
    printed = []
    namespace = {"print": printed.append}
    exec(code, namespace)
    return namespace, printed


@pytest.mark.parametrize("format, template", [("label", LABEL), ("blended", BLENDED)])
def test_card_pipeline_reproduces_project_generation(format, template, exported, trained, tokenizer, headlines):
    import torch

    config, params = trained
    names = headlines.label_names
    answer_budget = max(len(tokenizer(n, add_special_tokens=False)["input_ids"]) for n in names) + 1  # + EOS
    budget = answer_budget if format == "label" else MAX_LEN - 1
    prompts = [r.context for r in label_requests(tokenizer, headlines, format=format, template=template)]
    ours = greedy_completions(config, params, tokenizer, prompts, max_new_tokens=budget)
    our_labels = [parse_answer(c, names, template) for c in ours]
    assert len(set(ours)) == 10 and None not in our_labels  # the check has something to detect

    card, printed = card_snippet(exported[format])
    assert card["pipe"].model.dtype == torch.float32 and card["pipe"].model.generation_config.max_new_tokens == budget
    theirs = [card["complete"](t) for t in headlines.texts]
    assert theirs == ours
    assert [card["parse"](c) for c in theirs] == [None if y is None else names[y] for y in our_labels]
    assert card["LABELS"] == names and len(printed) == 1
    if format == "label":  # a memorised answer: the gold label's name
        assert theirs == [names[y] for y in headlines.labels]
    else:
        assert all(c.startswith("<think>\nIt starts with") and "\n</think>\n\n" in c for c in theirs)


def test_tokenizer_config_and_generation_config(exported, trained, tokenizer, headlines):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    path = exported["label"]
    reloaded = AutoTokenizer.from_pretrained(path)
    for text in headlines.texts + ["<bos>Topic of: x\nAnswer: <think>\n</think>\n\nIPO<eos>"]:
        for special in (False, True):
            assert (reloaded(text, add_special_tokens=special)["input_ids"]
                    == tokenizer(text, add_special_tokens=special)["input_ids"])
    assert (reloaded.bos_token_id, reloaded.eos_token_id, reloaded.pad_token_id) == (1, 2, 0)
    hf = AutoConfig.from_pretrained(path)
    assert hf.id2label == dict(enumerate(headlines.label_names))
    assert hf.label2id == {n: i for i, n in enumerate(headlines.label_names)}
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 0)
    generation = GenerationConfig.from_pretrained(path)
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (1, 2, 0)
    assert generation.do_sample is False and generation.num_beams == 1
    assert json.loads((exported["blended"] / "generation_config.json").read_text())["max_new_tokens"] == MAX_LEN - 1
    config, params = trained  # the export also loads back here, e.g. as the teacher of a later run
    loaded_config, loaded = load_pretrained(path)
    assert loaded_config == config and (loaded_config.bos_token_id, loaded_config.eos_token_id) == (1, 2)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not [p.name for p in path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_model_card_sections(exported, headlines):
    label = (exported["label"] / "README.md").read_text()
    assert "PROMPT = '<bos>Topic of: {headline}\\nAnswer: '" in label
    assert "<bos>Topic of: Fed holds rates steady as inflation cools\nAnswer: \n" in label
    assert "The completion is `'<label>'` followed by EOS `<eos>` (id 2)" in label
    assert all(f"| {i} | {n.replace('|', chr(92) + '|')} |" in label for i, n in enumerate(headlines.label_names))
    assert "## Teacher\n\n- spec: smollm2-135m-instruct\n- path: /cache/teachers/abc\n" in label
    assert "600,000 parameters, 50.0% of the teacher's 1,200,000." in label
    assert "  - non_embedding: 0.75\n" in label and "- D: 160\n" in label
    assert "| in_domain | acc | 400 | 0.8500 ± 0.0250 |" in label
    assert "| in_domain | macro_f1 | 400 | 0.8000 |" in label
    assert "- chance on in_domain: uniform 0.05" in label and "- held_out: 400" in label
    blended = (exported["blended"] / "README.md").read_text()
    assert "PROMPT = '<bos>Think, then give the topic of: {headline}\\nAnswer: '" in blended
    assert "The completion is `'<think>\\n<trace>\\n</think>\\n\\n<label>'` followed by EOS" in blended
    assert not any(f"## {s}" in blended for s in ("Teacher", "Compression", "Data", "Evaluation"))


def test_only_process_zero_writes(trained, tokenizer, headlines, tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    out = export_model(tmp_path / "out", *trained, tokenizer, label_names=headlines.label_names, template=LABEL,
                       data_format="label")
    assert not out.exists()


@pytest.mark.parametrize("change, message", [
    (dict(card={"accuracy": 0.9}), r"card keys \['accuracy'\] are unknown; valid: name, teacher"),
    (dict(data_format="sft"), r"data_format='sft'; valid: label, cot, blended"),
    (dict(label_names=["IPO", "IPO"]), r"label_names=\['IPO', 'IPO'\]: need at least two distinct"),
])
def test_bad_arguments_refused_before_writing(change, message, trained, tokenizer, headlines, tmp_path):
    kwargs = {"label_names": headlines.label_names, "template": LABEL, "data_format": "label", **change}
    with pytest.raises(ExportError, match=message):
        export_model(tmp_path / "out", *trained, tokenizer, **kwargs)
    assert not (tmp_path / "out").exists()


def test_prompt_the_tokenizer_cannot_read_back_is_refused(exported, trained, headlines, tmp_path):
    """A tokenizer that splits special-token text into pieces would turn the card's '<bos>' into
    other ids than training's BOS: the export says so instead of documenting a wrong prompt."""
    from transformers import AutoTokenizer

    splitting = AutoTokenizer.from_pretrained(exported["label"], split_special_tokens=True)
    with pytest.raises(ExportError, match=r"tokenizes to \[.*\] for 'Fed holds rates steady as inflation "
                                          r"cools', but training used \[1, "):
        export_model(tmp_path / "out", *trained, splitting, label_names=headlines.label_names, template=LABEL,
                     data_format="label")


def test_chat_template_prompt_is_documented_as_rendered(exported, trained, headlines, tmp_path):
    """With a chat template the prompt is the rendered chat (its own BOS, none added in front), and the
    template travels with the tokenizer."""
    from transformers import AutoTokenizer

    chat = AutoTokenizer.from_pretrained(exported["label"])
    chat.chat_template = ("{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}assistant: {% endif %}")
    template = Template(instruction="Topic of: {text}", system="Classify headlines.")
    out = export_model(tmp_path / "chat", *trained, chat, label_names=headlines.label_names, template=template,
                       data_format="label")
    readme = (out / "README.md").read_text()
    assert "PROMPT = '<bos>system: Classify headlines.\\n<bos>user: Topic of: {headline}\\nassistant: '" in readme
    assert "the tokenizer's chat template applied to the system turn `system` and the user turn" in readme
    assert AutoTokenizer.from_pretrained(out).chat_template == chat.chat_template
