"""Teacher-written rationales: prompt and stop tokens, trace cleaning, JSONL records that attach,
resumability, a bounded number of sampler compilations, and the trace-quality summary."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import sample
from jaxdistill.data import (ClassificationData, DataError, attach_traces, clean_rationale, generate_rationales,
                             load_source, load_tokenizer, load_traces, rationale_prompt, rationale_stop_tokens,
                             trace_quality)
from jaxdistill.data.sources import data_dir
from jaxdistill.models import ModelConfig
from jaxdistill.models.transformer import abstract_params
from jaxdistill.sample import SamplingSettings

# A chat template whose turns end with a special token that is no known turn-end name: the stop
# token must be found by rendering an assistant reply.
CHAT_TEMPLATE = ("{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}</think>\n{% endfor %}"
                 "{% if add_generation_prompt %}<bos>assistant: {% endif %}")


@pytest.fixture(scope="module")
def bpe():
    return load_tokenizer()


@pytest.fixture(scope="module")
def chat_bpe():
    tok = load_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def finance():
    return load_source("finance_topic", split="validation")


def _model(vocab, seed=0, std=0.2):
    """A tiny random qwen3 model, drawn with numpy from the abstract params (init_params would
    trace the module, seconds on a busy CPU): unit norm scales, zero biases, normal kernels."""
    config = ModelConfig(model_type="qwen3", vocab_size=vocab, hidden_size=32, intermediate_size=64,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        value = (np.ones(leaf.shape) if name == "scale" else np.zeros(leaf.shape) if name == "bias"
                 else rng.normal(0.0, std, leaf.shape))
        return jnp.asarray(value, leaf.dtype)

    return config, jax.tree_util.tree_map_with_path(draw, abstract_params(config))


# ---------------------------------------------------------------------------- prompt, stop tokens, cleaning


def test_prompt_and_stop_tokens(bpe, chat_bpe):
    qwen = load_tokenizer(str(data_dir() / "tokenizers/qwen2"))
    text = rationale_prompt(qwen, "Apple beats {estimates}", "Earnings")
    assert text.endswith("<|im_start|>user\nFinancial news headline: Apple beats {estimates}\nCategory: Earnings\n"
                         "In one or two sentences, explain why this headline is about Earnings. "
                         "Reply with the explanation only.<|im_end|>\n<|im_start|>assistant\n")
    im_end, endoftext = qwen.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert rationale_stop_tokens(qwen) == (im_end,)        # its EOS is <|im_end|>
    qwen.eos_token = "<|endoftext|>"
    assert rationale_stop_tokens(qwen) == tuple(sorted((im_end, endoftext)))  # EOS + the chat turn end

    plain = rationale_prompt(bpe, "Fed holds", "Macro", prompt="{text} is {label}.")
    assert plain == "Fed holds is Macro.\nExplanation:"
    assert rationale_stop_tokens(bpe) == (bpe.eos_token_id,)
    assert rationale_prompt(chat_bpe, "Fed holds", "Macro", prompt="{text}|{label}") == \
        "<bos>user: Fed holds|Macro</think>\n<bos>assistant: "
    assert rationale_stop_tokens(chat_bpe) == (bpe.eos_token_id, bpe.convert_tokens_to_ids("</think>"))


@pytest.mark.parametrize("raw, truncated, expected", [
    (" The firm reported results. Profit beat U.S. estimates by 3.5%. Shares rose.", False,
     "The firm reported results. Profit beat U.S. estimates by 3.5%."),       # at most two sentences
    ("It reports quarterly profit.\n  \nSecond paragraph. More.", False, "It reports quarterly profit."),
    ("Explanation: Earnings: Apple Inc. posted\nrecord   sales!", False, "Apple Inc. posted record sales!"),
    ("Category: Earnings\nIt is about profit", False, "It is about profit"),   # stopped: last words kept
    ("It is about profit. The company then went on to", True, "It is about profit."),  # cut mid-sentence
    ("The company then went on to", True, "The company then went on to"),
    ("Earnings.", False, ""),                                                   # only the label: empty
    ("  Category: earnings \n\n Details.", False, ""),
    ("Earnings-related headline about profit.", False, "Earnings-related headline about profit."),
])
def test_clean_rationale(raw, truncated, expected):
    assert clean_rationale(raw, "Earnings", truncated=truncated) == expected


# ---------------------------------------------------------------------------- generation


def test_records_attach_and_resume(chat_bpe, finance, tmp_path):
    config, params = _model(len(chat_bpe))
    data = finance.subset(range(10))
    out, partial = tmp_path / "rationales.jsonl", tmp_path / "rationales.jsonl.partial"
    settings = SamplingSettings(max_new_tokens=6)
    gold = [data.label_names[label] for label in data.labels]
    before = [{"id": i, "text": data.texts[i], "gold": gold[i], "trace": f"done before {i}.", "answer": gold[i],
               "teacher": "tiny-random"} for i in (0, 4, 7)]
    partial.write_text("".join(json.dumps(r) + "\n" for r in before) + '{"id": 9, "tex')  # torn last line

    with pytest.raises(DataError, match="written with teacher='tiny-random', this run has 'other'"):
        generate_rationales(config, params, chat_bpe, data, out, teacher_id="other", settings=settings,
                            progress=False)
    counts = generate_rationales(config, params, chat_bpe, data, out, teacher_id="tiny-random", settings=settings,
                                 batch_size=4, length_multiple=64, progress=False)  # one compiled shape
    assert counts["skipped_done"] == 3 and counts["generated"] == 7 and not partial.exists()
    assert counts["truncated"] <= 7 and 7 <= counts["new_tokens"] <= 7 * 6
    records = load_traces(out)
    assert sorted(r["id"] for r in records) == list(range(10))
    assert records[:3] == before
    stops = rationale_stop_tokens(chat_bpe)
    for r in records[3:]:
        assert r["answer"] == r["gold"] == gold[r["id"]] and r["text"] == data.texts[r["id"]]
        assert r["sampling"]["stop_tokens"] == list(stops) and r["sampling"]["max_new_tokens"] == 6
        assert r["teacher"] == "tiny-random" and "{label}" in r["prompt"]
        assert r["trace"] == clean_rationale(r["raw"], r["gold"], truncated=not r["stopped"])
    assert counts["empty"] == sum(not r["trace"] for r in records) == 0

    kept, attach_counts = attach_traces(data, records, policy="keep")
    assert attach_counts == {"agree": 10, "kept": 10}
    np.testing.assert_array_equal(kept.labels, data.labels)
    by_id = {r["id"]: r["trace"] for r in records}
    assert kept.rationales == [by_id[i] for i in range(10)]

    # a finished file, resumed with nothing left: no new records, every id still once
    partial.write_text(out.read_text())
    again = generate_rationales(config, params, chat_bpe, data, out, teacher_id="tiny-random",
                                settings=settings, progress=False)
    assert again["generated"] == 0 and again["skipped_done"] == 10
    assert sorted(r["id"] for r in load_traces(out)) == list(range(10))


def test_compiles_once_per_length_bucket(bpe, tmp_path, monkeypatch):
    config, params = _model(len(bpe), seed=1)
    rng = np.random.default_rng(0)
    words = rng.integers(1, 21, 24)                         # prompts of ~7-26 tokens: two length buckets
    data = ClassificationData([" ".join(["stock"] * int(k)) for k in words], np.zeros(24, np.int64), ["Markets"])
    shapes = []
    original = sample.generate

    def spy(config, params, prompts, settings, **kw):
        shapes.append((len(prompts), -(-max(map(len, prompts)) // kw["pad_to_multiple"]) * kw["pad_to_multiple"]))
        return original(config, params, prompts, settings, **kw)

    monkeypatch.setattr("jaxdistill.data.rationales.generate", spy)
    settings = SamplingSettings(max_new_tokens=3)
    before = sample._generate._cache_size()
    counts = generate_rationales(config, params, bpe, data, tmp_path / "r.jsonl", teacher_id="t",
                                 prompt="{text} => {label}", settings=settings, batch_size=4, progress=False)
    compiled = sample._generate._cache_size() - before
    assert counts["generated"] == 24 and len(shapes) == 6
    assert all(rows == 4 for rows, _ in shapes)                      # fixed batch size
    assert [p for _, p in shapes] == sorted(p for _, p in shapes)    # sorted by length
    assert len(set(map(len, (bpe(t)["input_ids"] for t in data.texts)))) >= 12   # many prompt lengths ...
    assert compiled == len(set(shapes)) == 2                        # ... one compilation per length bucket


# ---------------------------------------------------------------------------- quality summary


def test_trace_quality_exact(bpe):
    names = ["Earnings", "Fed | Central Banks", "Stock Movement", "Stock Commentary", "M&A | Investments",
             "Company | Product News"]
    records = [
        # 7 words, gold + other: "company" is a word of "Company | Product News"
        {"id": 0, "gold": "Earnings", "trace": "The company reported quarterly earnings above estimates."},
        {"id": 1, "gold": "Fed | Central Banks", "trace": "The bank raised rates."},        # 4, gold ("banks" -> bank)
        {"id": 2, "gold": "Stock Movement", "trace": "Shares fell after the stock commentary."},     # 6, gold + other
        {"id": 3, "gold": "Earnings", "trace": "  "},                                                   # empty
        {"id": 4, "gold": "M&A | Investments", "trace": "It is news about a deal."},  # 6, neither ("news" is generic)
        {"id": 5, "gold": 0, "trace": "Profits rose as the Fed cut rates. EARNINGS!"},              # 8, gold + other
        {"id": 6, "gold": "Stock Movement", "trace": "The stock jumped 5%."},  # 4, gold ("stock" shared: not other)
    ]
    quality = trace_quality(records, names, tokenizer=bpe)
    tokens = [len(bpe(r["trace"], add_special_tokens=False)["input_ids"]) for r in records if r["trace"].strip()]
    assert quality == {
        "n": 7, "mean_words": 5.83, "median_words": 6.0, "empty_share": round(1 / 7, 4),
        "names_gold_share": round(5 / 7, 4), "names_other_share": round(3 / 7, 4),
        "mean_tokens": round(float(np.mean(tokens)), 2), "median_tokens": float(np.median(tokens)),
        "examples": [{"id": 0, "gold": "Earnings", "trace": records[0]["trace"]},
                     {"id": 2, "gold": "Stock Movement", "trace": records[2]["trace"]},
                     {"id": 6, "gold": "Stock Movement", "trace": records[6]["trace"]}]}
    assert trace_quality([], names)["n"] == 0
