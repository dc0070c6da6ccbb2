"""Data: sources, splits, formats, packing, iterator state, sampler, traces, teacher-target cache."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from jaxdistill import losses
from jaxdistill.data import (BatchIterator, DataError, Template, attach_traces, build_rows, build_teacher_cache,
                             completion_text, encode_dataset, encode_example, generate_traces, load_source,
                             load_tokenizer, load_traces, pack_rows, packing_efficiency, parse_answer,
                             stratified_split, stratified_subsample)
from jaxdistill.data.teacher_cache import TargetSettings, targets_from_logits
from jaxdistill.data.tokenizer import train_bpe
from jaxdistill.models import ModelConfig, forward, init_params
from jaxdistill.parts import ANSWER, PROMPT, TRACE
from jaxdistill.sample import SamplingSettings, generate


@pytest.fixture(scope="module")
def bpe():
    return load_tokenizer()


@pytest.fixture(scope="module")
def qwen_tokenizer():
    return load_tokenizer(str(__import__("jaxdistill.data.sources", fromlist=["x"]).data_dir() / "tokenizers/qwen2"))


@pytest.fixture(scope="module")
def finance():
    return load_source("finance_topic", split="validation")


def _model(vocab, seed=0, scale=10.0, **kw):
    config = ModelConfig(model_type="qwen3", vocab_size=vocab, hidden_size=32, intermediate_size=64,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True, **kw)
    return config, jax.tree.map(lambda x: x * scale if x.ndim > 1 else x, init_params(config, jax.random.key(seed)))


# ---------------------------------------------------------------------------- sources


def test_finance_topic_shipped(finance):
    assert len(finance) == 4117 and len(finance.label_names) == 20
    assert finance.label_names[0] == "Analyst Update" and finance.labels.max() == 19


def test_finheadlinemix_local_parquet(tmp_path):
    rng = np.random.default_rng(0)
    categories = [f"event {i:02d}" for i in range(35)]
    table = pd.DataFrame({"headline": [f"headline number {i}" for i in range(700)],
                          "category": [categories[i] for i in rng.integers(0, 35, 700)]})
    table.loc[3, "headline"] = "   "
    table.to_parquet(tmp_path / "finheadlinemix.parquet")
    data = load_source(str(tmp_path / "finheadlinemix.parquet"), text_column="headline", label_column="category")
    assert len(data.label_names) == 35 and data.label_names == sorted(set(table.category))
    assert len(data) == 699 and data.report["dropped_empty_text"] == 1
    with pytest.raises(DataError, match=r"column\(s\) \['label'\] not found; the columns are \['headline', 'category'\]"):
        load_source(str(tmp_path / "finheadlinemix.parquet"), text_column="headline")
    restricted = load_source(str(tmp_path / "finheadlinemix.parquet"), text_column="headline",
                             label_column="category", label_names=categories[:30])
    assert restricted.report["dropped_unknown_label"] == int((~table.category.isin(categories[:30])).sum())


def test_hub_unreachable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="hub is offline .*[Pp]ass a local .parquet/.csv/.jsonl/.json path"):
        load_source("finheadlinemix")


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.5, 0.5)])
def test_stratified_split_proportions_and_seed(finance, fractions):
    parts = stratified_split(finance.labels, fractions, seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(finance)))
    for cls in range(20):
        n = int((finance.labels == cls).sum())
        for part, f in zip(parts, fractions):
            assert abs(int((finance.labels[part] == cls).sum()) - f * n) <= 1
    again = stratified_split(finance.labels, fractions, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not np.array_equal(parts[0], stratified_split(finance.labels, fractions, seed=4)[0])


def test_stratified_subsample(finance):
    idx = stratified_subsample(finance.labels, 500, seed=1)
    assert len(idx) == 500 and len(set(idx.tolist())) == 500
    for cls in range(20):
        exact = 500 * (finance.labels == cls).mean()
        assert abs(int((finance.labels[idx] == cls).sum()) - exact) <= 1
    assert np.array_equal(idx, stratified_subsample(finance.labels, 500, seed=1))
    with pytest.raises(DataError, match=r"subsample size 5000 is outside the valid range \[1, 4117\]"):
        stratified_subsample(finance.labels, 5000)


# ---------------------------------------------------------------------------- formats


def test_label_format_parts(bpe):
    template = Template(instruction="Topic? {text}", use_chat_template=False, plain_separator=" => ")
    ex = encode_example(bpe, "Fed hikes rates", 1, ["Markets", "Fed"], template=template, max_len=64)
    prompt = ex.tokens[ex.parts == PROMPT]
    answer = ex.tokens[ex.parts == ANSWER]
    assert prompt[0] == bpe.bos_token_id and bpe.decode(prompt[1:]) == "Topic? Fed hikes rates => "
    assert answer[-1] == bpe.eos_token_id and bpe.decode(answer[:-1]) == "Fed"
    assert (ex.parts == TRACE).sum() == 0
    assert list(ex.parts) == sorted(ex.parts)  # prompt, then answer


def test_cot_chat_template_with_think(qwen_tokenizer):
    tok = qwen_tokenizer
    ex = encode_example(tok, "Oil jumps 5%", 0, ["Energy | Oil", "Fed"], format="cot",
                        trace="Oil prices moved.", max_len=512)
    text = lambda part: tok.decode(ex.tokens[ex.parts == part])
    assert text(PROMPT).startswith("<|im_start|>system") and text(PROMPT).endswith("<|im_start|>assistant\n")
    assert "Headline: Oil jumps 5%" in text(PROMPT)
    assert text(TRACE) == "<think>\nOil prices moved.\n</think>\n\n"
    assert text(ANSWER) == "Energy | Oil<|im_end|>"


def test_truncation_keeps_answer_and_counts(qwen_tokenizer):
    from collections import Counter

    counts = Counter()
    long_text = "word " * 400
    ex = encode_example(qwen_tokenizer, long_text, 1, ["A", "B"], format="cot", trace="short trace",
                        max_len=64, counts=counts)
    assert len(ex) == 64 and qwen_tokenizer.decode(ex.tokens[ex.parts == ANSWER]) == "B<|im_end|>"
    assert counts["truncated_prompt"] == 1
    too_long = encode_example(qwen_tokenizer, "x", 0, ["A", "B"], format="cot", trace="t " * 200,
                              max_len=64, counts=counts)
    assert too_long is None and counts["dropped_too_long"] == 1
    assert encode_example(qwen_tokenizer, "x", 0, ["A", "B"], format="cot", trace=None, counts=counts) is None
    assert counts["dropped_missing_trace"] == 1


def test_parse_answer():
    names = ["Fed | Central Banks", "Energy | Oil", "Markets"]
    assert parse_answer("<think>\nrates\n</think>\n\nFed | Central Banks", names) == 0
    assert parse_answer("It is about energy | oil.", names) == 1
    assert parse_answer("<think>x</think> no idea", names) is None
    assert parse_answer("Markets or Energy | Oil", names) is None  # ambiguous


# ---------------------------------------------------------------------------- batching


def test_packed_row_logits_equal_examples_alone(bpe, finance):
    examples, _ = encode_dataset(finance.subset(range(12)), bpe, max_len=96,
                                 template=Template(instruction="{text}", use_chat_template=False))
    rows = pack_rows([len(e) for e in examples], 192)
    assert any(len(r) > 1 for r in rows)
    batch = build_rows(examples, rows, 192, "label")
    config, params = _model(len(bpe), scale=3.0)  # logits of a few units, as a trained model's
    logits = np.asarray(forward(config, params, jnp.asarray(batch["tokens"]),
                                segment_ids=jnp.asarray(batch["segment_ids"])))
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = len(examples[i])
            alone = np.asarray(forward(config, params, jnp.asarray(examples[i].tokens[None])))[0]
            assert np.abs(logits[r, start:start + n] - alone).max() <= 1e-4
            np.testing.assert_array_equal(batch["labels"][r, start:start + n - 1], examples[i].tokens[1:])
            assert batch["labels"][r, start + n - 1] == -1
            start += n


def test_iterator_state_restores_exactly_and_hosts_split(bpe, finance):
    examples, _ = encode_dataset(finance.subset(range(200)), bpe, max_len=64,
                                 template=Template(instruction="{text}", use_chat_template=False))
    for mode in ("pack", "pad"):
        it = BatchIterator(examples, batch_size=8, seq_len=128, mode=mode, seed=5, buckets=(32, 64, 128))
        for _ in range(7):
            next(it)
        state = json.loads(json.dumps(it.state()))
        expected = [next(it) for _ in range(30)]  # crosses an epoch boundary
        restored = BatchIterator(examples, batch_size=8, seq_len=128, mode=mode, seed=5, buckets=(32, 64, 128))
        restored.restore(state)
        for a, b in zip(expected, [next(restored) for _ in range(30)]):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
        hosts = [BatchIterator(examples, batch_size=8, seq_len=128, mode=mode, seed=5, buckets=(32, 64, 128),
                               process_index=p, process_count=2) for p in range(2)]
        full = BatchIterator(examples, batch_size=8, seq_len=128, mode=mode, seed=5, buckets=(32, 64, 128))
        for _ in range(3):
            whole, parts = next(full), [next(h) for h in hosts]
            np.testing.assert_array_equal(whole["tokens"], np.concatenate([p["tokens"] for p in parts]))
    packed = BatchIterator(examples, batch_size=8, seq_len=128, mode="pack", seed=5)
    padded = BatchIterator(examples, batch_size=8, seq_len=128, mode="pad", seed=5)
    assert packing_efficiency([next(packed) for _ in range(5)]) > packing_efficiency([next(padded) for _ in range(5)])


# ---------------------------------------------------------------------------- sampler


def test_greedy_equals_full_forward_argmax_and_batching():
    config, params = _model(64, sliding_window=6)
    prompts = [[5, 6, 7, 8, 9], [11, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
    settings = SamplingSettings(max_new_tokens=7)
    batched = generate(config, params, prompts, settings, pad_to_multiple=8)
    for prompt, out in zip(prompts, batched):
        seq, reference = list(prompt), []
        for _ in range(7):
            token = int(jnp.argmax(forward(config, params, jnp.asarray([seq]))[0, -1]))
            reference.append(token)
            seq.append(token)
        assert out == reference
        assert generate(config, params, [prompt], settings, pad_to_multiple=8)[0] == out


def test_sampling_reproducible_stop_tokens_and_no_recompile():
    config, params = _model(64)
    prompts = [[5, 6, 7], [9, 10, 11, 12]]
    settings = SamplingSettings(max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.9, seed=7)
    first = generate(config, params, prompts, settings)
    assert first == generate(config, params, prompts, settings)
    assert first != generate(config, params, prompts, SamplingSettings(max_new_tokens=12, temperature=1.0, seed=8))
    stop = first[0][3]
    stopped = generate(config, params, prompts, SamplingSettings(max_new_tokens=12, temperature=1.0, top_k=20,
                                                                  top_p=0.9, seed=7, stop_tokens=(stop,)))
    assert stopped[0] == first[0][:first[0].index(stop) + 1]
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *a, **k: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None)
    generate(config, params, [[1, 2], [3, 4, 5]], settings)
    assert compiles == []  # same padded shapes and settings: the compiled sampler is reused


def test_generate_traces_jsonl_resumable(bpe, finance, tmp_path):
    config, params = _model(len(bpe))
    data = finance.subset(range(5))
    out = tmp_path / "traces.jsonl"
    partial = tmp_path / "traces.jsonl.partial"
    partial.write_text(json.dumps({"id": 0, "completion": "done before"}) + "\n")
    settings = SamplingSettings(max_new_tokens=6, temperature=0.7, seed=1, stop_tokens=(bpe.eos_token_id,))
    template = Template(instruction="{text}", use_chat_template=False)
    counts = generate_traces(config, params, bpe, data, out, teacher_id="tiny-random", template=template,
                             settings=settings, batch_size=2)
    records = load_traces(out)
    assert counts["skipped_done"] == 1 and counts["generated"] == 4 and not partial.exists()
    assert sorted(r["id"] for r in records) == list(range(5))
    assert all(r["teacher"] == "tiny-random" and r["sampling"]["seed"] == 1 for r in records[1:])
    assert counts["unparsable"] == sum(r["answer"] is None for r in records[1:])


# ---------------------------------------------------------------------------- traces


def test_trace_policies(finance):
    data = finance.subset(range(6))
    names = data.label_names
    records = [
        {"id": 0, "trace": "about analysts", "answer": names[data.labels[0]]},            # agrees
        {"id": 1, "completion": f"<think>\nhmm\n</think>\n\n{names[(data.labels[1] + 1) % 20]}"},  # disagrees
        {"id": 2, "trace": "no answer given", "answer": "banana"},                       # unparsable
        {"text": data.texts[3], "trace": "matched by text", "answer": names[data.labels[3]]},
        {"id": 4, "trace": "", "answer": names[0]},                                       # empty trace
    ]
    kept, counts = attach_traces(data, records, policy="drop")
    assert counts == {"agree": 2, "disagree": 1, "unparsable": 1, "missing_trace": 2, "kept": 2}
    assert kept.rationales == ["about analysts", "matched by text"]
    relabelled, counts = attach_traces(data, records, policy="relabel")
    assert counts["relabelled"] == 1 and counts["kept"] == 3
    assert relabelled.labels[1] == (data.labels[1] + 1) % 20 and relabelled.rationales[1] == "hmm"
    _, counts = attach_traces(data, records, policy="keep")
    assert counts["kept"] == 4
    with pytest.raises(DataError, match="trace policy 'maybe'; valid: keep, drop, relabel"):
        attach_traces(data, records, policy="maybe")


# ---------------------------------------------------------------------------- teacher cache


def _cache_inputs(bpe, finance):
    data = finance.subset(range(10))
    data.rationales = [f"reasoning about headline {i}" for i in range(10)]
    template = Template(instruction="{text}", use_chat_template=False)
    examples, _ = encode_dataset(data, bpe, format="blended", max_len=80, template=template)
    return examples


@pytest.mark.parametrize("method", ["sample", "topk"])
def test_cached_targets_equal_live_teacher(bpe, finance, tmp_path, method):
    examples = _cache_inputs(bpe, finance)
    teacher_config, teacher = _model(len(bpe), seed=1)
    settings = TargetSettings(method=method, k=8, seed=3)
    cache = build_teacher_cache(teacher_config, teacher, examples, tmp_path, format="blended",
                                tokenizer_id="bpe-4096", settings=settings, seq_len=160, batch_rows=2)
    assert cache.meta["positions"] == sum(int((e.parts[1:] >= TRACE).sum()) for e in examples)
    # A different batching of the same examples than the one the cache was built with.
    it = BatchIterator(examples, batch_size=3, seq_len=200, format="blended", seed=9)
    student_config, student = _model(len(bpe), seed=2)
    for _ in range(2):
        batch = next(it)
        tokens, segments = jnp.asarray(batch["tokens"]), jnp.asarray(batch["segment_ids"])
        live = targets_from_logits(forward(teacher_config, teacher, tokens, segment_ids=segments),
                                   jnp.asarray(batch["example_ids"]), jnp.asarray(batch["positions"]), settings)
        cached = cache.targets(batch)
        logits = forward(student_config, student, tokens, segment_ids=segments)
        w = jnp.asarray(batch["weights"])
        live_loss, cached_loss = losses.sparse_kl(logits, live, w), losses.sparse_kl(logits, cached, w)
        assert float(cached_loss) == pytest.approx(float(live_loss), rel=1e-6)
        assert float(live_loss) != 0.0


def test_cache_invalidated_by_teacher_or_data_and_resumes(bpe, finance, tmp_path):
    examples = _cache_inputs(bpe, finance)
    config, teacher = _model(len(bpe), seed=1)
    kw = dict(format="blended", tokenizer_id="bpe-4096", seq_len=160, batch_rows=2)
    first = build_teacher_cache(config, teacher, examples, tmp_path, **kw)
    assert build_teacher_cache(config, teacher, examples, tmp_path, **kw).path == first.path
    changed = jax.tree.map(lambda x: x, teacher)
    changed["final_norm"]["scale"] = changed["final_norm"]["scale"].at[0].add(1.0)
    assert build_teacher_cache(config, changed, examples, tmp_path, **kw).path != first.path
    assert build_teacher_cache(config, teacher, examples[:-1], tmp_path, **kw).path != first.path
    # Resume: drop meta.json and rewind progress; the rebuilt arrays are identical.
    ids_before = np.array(first.ids)
    (first.path / "meta.json").unlink()
    (first.path / "progress.json").write_text(json.dumps({"rows": 2, "packing": {"seq_len": 160, "batch_rows": 2}}))
    np.asarray(np.load(first.path / "ids.npy", mmap_mode="r+"))[-1] = 0
    resumed = build_teacher_cache(config, teacher, examples, tmp_path, **kw)
    np.testing.assert_array_equal(np.array(resumed.ids), ids_before)


def test_bpe_training_is_deterministic(tmp_path):
    texts = load_source("finance_topic", split="validation").texts[:2000]
    train_bpe(texts, 512, tmp_path / "a.json")
    train_bpe(texts, 512, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_cache_key_and_progress_guards(bpe, finance, tmp_path):
    examples = _cache_inputs(bpe, finance)
    config, teacher = _model(len(bpe), seed=1)
    kw = dict(format="blended", tokenizer_id="bpe-4096", batch_rows=2)
    first = build_teacher_cache(config, teacher, examples, tmp_path, seq_len=160, **kw)
    # Same weights, other architecture setting: other logits, so another cache.
    other = build_teacher_cache(config.replace(rope_theta=10.0), teacher, examples, tmp_path, seq_len=160, **kw)
    assert other.path != first.path
    # An interrupted build resumed with another packing starts over instead of leaving gaps.
    ids = np.array(first.ids)
    (first.path / "meta.json").unlink()
    (first.path / "progress.json").write_text(json.dumps({"rows": 3, "packing": {"seq_len": 80, "batch_rows": 2}}))
    np.asarray(np.load(first.path / "ids.npy", mmap_mode="r+"))[:] = 0
    np.testing.assert_array_equal(np.array(build_teacher_cache(config, teacher, examples, tmp_path, seq_len=160,
                                                               **kw).ids), ids)
    with pytest.raises(ValueError, match=r"example ids must be unique to key the cache; duplicated: \[0\]"):
        build_teacher_cache(config, teacher, examples + examples[:1], tmp_path, seq_len=160, **kw)


def test_completion_keeps_think_boundaries_and_rows_sample_independently(bpe):
    from jaxdistill.data.traces import split_completion

    ids = bpe("<think>\nrates went up\n</think>\n\nFed | Central Banks", add_special_tokens=False)["input_ids"]
    text = completion_text(bpe, ids + [bpe.eos_token_id])
    assert split_completion(text) == "rates went up"
    assert parse_answer(text, ["Fed | Central Banks", "Markets"]) == 0
    config, params = _model(64)
    settings = SamplingSettings(max_new_tokens=8, temperature=1.0, seed=2)
    alone = generate(config, params, [[7, 8, 9]], settings, row_ids=[42])[0]
    batched = generate(config, params, [[1, 2], [7, 8, 9]], settings, row_ids=[5, 42])[1]
    assert alone == batched
    with pytest.raises(ValueError, match=r"top_k=100 exceeds the vocabulary \(64\)"):
        generate(config, params, [[1]], SamplingSettings(temperature=1.0, top_k=100))


def test_label_columns_with_missing_and_float_ids():
    from jaxdistill.data import BatchingError
    from jaxdistill.data.sources import from_table

    table = pd.DataFrame({"text": ["a", "b", "c", "", "e"], "label": [0.0, 1.0, None, 1.0, 1.0]})
    data = from_table(table, label_names=["A", "B"])
    assert data.labels.tolist() == [0, 1, 1]
    assert data.report == {"dropped_missing_label": 1, "dropped_empty_text": 1, "rows": 3}
    mixed = from_table(pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", 3, None]}))
    assert mixed.label_names == ["3", "x"] and len(mixed) == 2
    ghost = from_table(pd.DataFrame({"text": ["a", ""], "label": ["A", "GHOST"]}))
    assert ghost.label_names == ["A"]
    from jaxdistill.data.formats import Example

    long = [Example(np.arange(30, dtype=np.int32), np.full(30, 3, np.int8), 7, 0)]
    with pytest.raises(BatchingError, match=r"1 example\(s\) longer than seq_len=20 \(ids \[7\]\)"):
        BatchIterator(long, batch_size=1, seq_len=20, mode="pad")
