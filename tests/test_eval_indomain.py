"""In-domain classification, GSM8K and perplexity evaluation, against independent references:
transformers (PyTorch) log-likelihoods on hand-built token ids, a planted bigram model that must score
100%, random labels that must score chance, hand-computed metrics and hand-written prompt strings."""

import math

import numpy as np
import pytest

from jaxdistill.data import ClassificationData, Template, load_source, load_tokenizer
from jaxdistill.evaluate.classification import (classification_metrics, evaluate_classification, label_requests,
                                                label_scores)
from jaxdistill.evaluate.gsm8k import evaluate_gsm8k, fewshot_prompt, load_split, parse_final_number
from jaxdistill.evaluate.loglik import EvaluationError
from jaxdistill.evaluate.perplexity import general_texts, in_domain_texts, perplexity
from jaxdistill.models import ModelConfig, load_pretrained
from tests.tiny_models import hf_config, make_hf_checkpoint

TEMPLATE = Template(instruction="Topic of: {text}", use_chat_template=False)  # the run config's data section
LABELS = ["Earnings", "IPO", "Macro"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(checkpoint dir, config, params) of a tiny random HF Llama with the shipped BPE's vocabulary."""
    path = make_hf_checkpoint("llama3", tmp_path_factory.mktemp("eval") / "llama", vocab_size=4096)
    return (path, *load_pretrained(path))


@pytest.fixture(scope="module")
def headlines():
    return load_source("finance_topic", split="validation").texts[::97]


def torch_logprobs(path, sequences, starts) -> list[float]:
    """sum_{t >= start} log p(x_t | x_<t) per sequence, from transformers in float64 log-softmax."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    out = []
    with torch.no_grad():
        for seq, start in zip(sequences, starts):
            logits = model(torch.tensor([seq])).logits[0].double()
            log_p = torch.log_softmax(logits[:-1], -1)[torch.arange(len(seq) - 1), torch.tensor(seq[1:])]
            out.append(float(log_p[start - 1:].sum()))
    return out


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_label_scores_match_transformers(tokenizer, llama, headlines):
    path, config, params = llama
    data = ClassificationData(headlines[:3], np.array([0, 1, 2]), LABELS)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for format, trace in (("label", ""), ("cot", "<think>\n\n</think>\n\n")):
        got = label_scores(config, params, tokenizer, data, format=format, template=TEMPLATE)  # [3, 3]
        sequences, starts = [], []
        for text in data.texts:
            prompt = [bos] + ids(tokenizer, f"Topic of: {text}\nAnswer: ")
            for name in LABELS:
                sequences.append(prompt + ids(tokenizer, trace) + ids(tokenizer, name) + [eos])
                starts.append(len(prompt))
        want = np.array(torch_logprobs(path, sequences, starts)).reshape(3, 3)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


def test_prompt_and_continuation_strings(tokenizer):
    data = ClassificationData(["Apple beats estimates"], np.array([0]), LABELS)
    (label,) = label_requests(tokenizer, data, format="label", template=TEMPLATE)
    assert tokenizer.decode(label.context) == "<bos>Topic of: Apple beats estimates\nAnswer: "
    assert [tokenizer.decode(c) for c in label.continuations] == ["Earnings<eos>", "IPO<eos>", "Macro<eos>"]
    (cot,) = label_requests(tokenizer, data, format="cot", template=TEMPLATE)
    assert cot.context == label.context
    assert tokenizer.decode(cot.continuations[1]) == "<think>\n\n</think>\n\nIPO<eos>"


def planted_bigram(path, tokenizer, chains):
    """A one-layer Llama whose attention and MLP output nothing, so logits depend on the current token
    only: after token a the next token of its chain gets logit 10 sqrt(H), every other token 0."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(hf_config("llama3", vocab_size=4096, num_hidden_layers=1))
    successor = {a: b for chain in chains for a, b in zip(chain, chain[1:])}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.norm.weight.fill_(1.0)
        for dim, (a, b) in enumerate(successor.items()):
            model.model.embed_tokens.weight[a, dim] = 1.0
            model.lm_head.weight[b, dim] = 10.0
    model.save_pretrained(path)
    return load_pretrained(path)


def test_planted_model_scores_100_percent_both_ways(tokenizer, headlines, tmp_path):
    markers = [" profit", " oil", " bond"]  # the last prompt token says the class
    texts = [h + markers[i % 3] for i, h in enumerate(headlines[:12])]
    labels = np.arange(12) % 3
    template = Template(instruction="{text}", use_chat_template=False, plain_separator="")
    last = [ids(tokenizer, t)[-1] for t in texts]
    answers = [ids(tokenizer, name) + [tokenizer.eos_token_id] for name in LABELS]
    chains = [[last[c]] + answers[c] for c in range(3)]
    assert len({t for chain in chains for t in chain[:-1]}) == sum(len(c) - 1 for c in chains) <= 32
    assert all(last[i] == last[labels[i]] for i in range(12))
    config, params = planted_bigram(tmp_path / "planted", tokenizer, chains)
    data = ClassificationData(texts, labels, LABELS)
    for method in ("score", "generate"):
        result = evaluate_classification(config, params, tokenizer, data, template=template, method=method,
                                         max_new_tokens=6)
        assert result["metrics"] == {"acc": 1.0, "macro_f1": 1.0}
        assert result["confusion"] == [[4, 0, 0], [0, 4, 0], [0, 0, 4]]
        assert result["per_class_recall"] == {"Earnings": 1.0, "IPO": 1.0, "Macro": 1.0}
    assert result["unparsable_rate"] == 0.0


def test_random_labels_score_chance(tokenizer, llama):
    """Gold labels drawn as a random balanced permutation are independent of the model, so
    P(p_i = g_i) = 1/K for every example whatever it predicts: acc ~ 1/K within the binomial spread."""
    _, config, params = llama
    n, k = 48, 3
    texts = load_source("finance_topic", split="validation").texts[::80][:n]
    labels = np.random.default_rng(0).permutation(np.arange(n) % k)
    result = evaluate_classification(config, params, tokenizer, ClassificationData(texts, labels, LABELS),
                                     template=TEMPLATE)
    assert result["n"] == n and result["chance"] == {"majority": 1 / 3, "uniform": 1 / 3}
    assert abs(result["metrics"]["acc"] - 1 / k) <= 3 * math.sqrt((1 / k) * (1 - 1 / k) / n)
    assert sum(map(sum, result["confusion"])) == n


def test_classification_metrics_by_hand():
    m = classification_metrics([0, 0, 0, 1, 1, 2], [0, 1, None, 1, 1, 0], num_classes=4)
    # recall 1/3, 1, 0; precision 1/2, 2/3, 0; F1 0.4, 0.8, 0 over the classes present (3 is not)
    assert m["n"] == 6 and m["acc"] == 0.5 and m["acc_stderr"] == pytest.approx(math.sqrt(0.25 / 5))
    assert m["macro_f1"] == pytest.approx(0.4)
    assert m["per_class_recall"] == pytest.approx([1 / 3, 1.0, 0.0, None])
    assert m["confusion"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert (m["majority"], m["uniform"], m["unparsable_rate"]) == (0.5, 0.25, pytest.approx(1 / 6))
    assert m["correct"] == [1, 0, 0, 1, 1, 0]  # per example, in order (what a sweep's bootstrap resamples)
    with pytest.raises(EvaluationError, match=r"\[5\] are outside 0..3"):
        classification_metrics([0, 1], [0, 5], num_classes=4)


@pytest.mark.parametrize("text, number", [
    ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 1,000", "1000"),
    ("It costs $5.50 in all.", "5.5"),
    ("The answer is 7.", "7"),
    ("The temperature drops to -3 degrees", "-3"),
    ("She has 3 apples and 12 pears, so 15 fruits", "15"),
    ("#### 72\nthen 4 more", "72"),
    ("Pages 3-5 are missing: 2.0 pages", "2"),
    ("no number at all", None),
])
def test_parse_final_number(text, number):
    assert parse_final_number(text) == number


def test_gsm8k_one_shot_prompt_and_run(tokenizer, llama):
    (shot,) = load_split("train_head50")[:1]
    assert fewshot_prompt([shot], "How many legs do 2 cats have?") == (
        "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
        "May. How many clips did Natalia sell altogether in April and May?\n"
        "Answer: Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72\n\n"
        "Question: How many legs do 2 cats have?\nAnswer:")
    assert len(load_split("test")) == 1319
    _, config, params = llama
    result = evaluate_gsm8k(config, params, tokenizer, limit=2, num_fewshot=1, batch_size=2, max_new_tokens=4)
    assert (result["suite"], result["n"], result["chance"]) == ("gsm8k", 2, {"exact_match": 0.0})
    assert 0.0 <= result["metrics"]["exact_match"] <= 1.0


def test_perplexity_matches_transformers(tokenizer, llama):
    path, config, params = llama
    texts = ["Fed holds rates steady", "Oil prices jump after OPEC cuts output"]
    result = perplexity(config, params, tokenizer, texts)
    sequences = [[tokenizer.bos_token_id] + ids(tokenizer, t) for t in texts]
    tokens = sum(len(s) - 1 for s in sequences)
    loss = -sum(torch_logprobs(path, sequences, [1, 1])) / tokens
    assert (result["n"], result["tokens"]) == (2, tokens)
    assert result["metrics"]["loss"] == pytest.approx(loss, rel=1e-4)
    assert result["metrics"]["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)


def test_perplexity_texts():
    assert general_texts(2)[0] == ("Which statement best explains why photosynthesis is the foundation of "
                                   "most food webs?")
    held_out = load_source("finance_topic", split="validation")
    texts = in_domain_texts(40)  # the split is sorted by class: a prefix would be one class
    assert len(texts) == 40 and len({held_out.labels[held_out.texts.index(t)] for t in texts}) >= 10


@pytest.mark.parametrize("run", [
    lambda c, t: evaluate_classification(c, None, t, ClassificationData(["x"], np.array([0]), LABELS)),
    lambda c, t: perplexity(c, None, t, ["x y"]),
    lambda c, t: evaluate_gsm8k(c, None, t, limit=1),
], ids=["in_domain", "perplexity", "gsm8k"])
def test_vocabulary_mismatch_refused_before_any_work(tokenizer, run):
    small = ModelConfig(model_type="llama", vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=1,
                        num_heads=4, num_kv_heads=2, head_dim=8)
    with pytest.raises(EvaluationError, match=r"tokenizer has 4096 tokens but the model's vocabulary is 97"):
        run(small, tokenizer)  # params=None: any work before the check would fail differently
