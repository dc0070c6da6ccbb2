"""Multiple-choice suites: harness prompt strings written out by hand, accuracy against a direct
transformers (torch) computation of the same rule, planted and random scores, and bad input."""

import json

import numpy as np
import pytest

from jaxdistill.data import load_tokenizer
from jaxdistill.evaluate.loglik import EvaluationError, Scores, score
from jaxdistill.evaluate.mc_suites import load_questions
from jaxdistill.evaluate.multiple_choice import (SUITES, build_requests, evaluate_suite, option_logliks,
                                                 suite_metrics)
from jaxdistill.models import load_pretrained
from tests.tiny_models import make_hf_checkpoint


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


def planted_scores(requests, meta, values) -> list[Scores]:
    """Scores whose option j of question i has log-likelihood values[i][j] (placed through meta's slots)."""
    logprobs = [np.zeros(len(r.continuations)) for r in requests]
    for where, vals in zip(meta["slots"], values):
        for (r, c), v in zip(where, vals):
            logprobs[r][c] = v
    return [Scores(lp, np.zeros(len(lp), bool), np.array([len(c) for c in r.continuations]))
            for lp, r in zip(logprobs, requests)]


# ---------------------------------------------------------------- prompts, written out by hand

def test_mmlu_two_shot_prompt():
    question = load_questions("mmlu", limit=1, num_fewshot=2)[0]
    assert question.subject == "abstract_algebra"
    assert question.answers == ("A", "B", "C", "D") and question.gold == 1
    expected = (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
        "Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 | If H and K "
        "are subgroups of G then HK is a subgroup of G.\nA. True, True\nB. False, False\nC. True, False\n"
        "D. False, True\nAnswer: B\n\n"
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")
    assert question.contexts == (expected,) * 4


def test_mmlu_limit_is_per_subject_and_default_is_five_shot():
    questions = load_questions("mmlu", limit=2)
    assert len(questions) == 2 * 57
    assert [q.subject for q in questions[:3]] == ["abstract_algebra", "abstract_algebra", "anatomy"]
    assert questions[0].contexts[0].count("\nAnswer: ") == 5


def test_winogrande_partial_scoring_contexts_and_shared_continuation(tokenizer):
    requests, gold, meta = build_requests("winogrande", tokenizer, limit=1)
    options = ("Sarah was a much better surgeon than Maria so Sarah",
               "Sarah was a much better surgeon than Maria so Maria")
    assert meta["questions"][0].contexts == options and gold.tolist() == [1]
    assert len(requests) == 2 and meta["slots"] == [[(0, 0), (1, 0)]]
    for request, option in zip(requests, options):
        assert tokenizer.decode(request.context) == option
        assert len(request.continuations) == 1
        assert tokenizer.decode(request.continuations[0]) == " always got the easier cases."


@pytest.mark.parametrize("suite, context, answers, gold", [
    ("arc_easy", "Question: Which statement best explains why photosynthesis is the foundation of most food "
                 "webs?\nAnswer:", ("Sunlight is the source of energy for nearly all ecosystems.",
                                    "Most ecosystems are found on land instead of in water.",
                                    "Carbon dioxide is more available than other gases.",
                                    "The producers in all ecosystems are plants."), 0),
    ("piqa", "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:", None, 0),
    ("siqa", "Q: Tracy didn't go home that evening and resisted Riley's attacks. What does Tracy need to do "
             "before this?\nA:", ("make a new plan", "Find somewhere to go"), 1),
    ("commonsense_qa", "Question: A revolving door is convenient for two direction travel, but it also serves as "
                       "a security measure at a what?\nA. bank\nB. department store\nC. mall\nD. new york\nAnswer:",
     ("A", "B", "C", "D"), 0),
    ("copa", "The man turned on the faucet, therefore",
     ("the toilet filled with water.", "water flowed from the spout."), 1),
])
def test_harness_prompt_of_first_row(suite, context, answers, gold):
    question = load_questions(suite, limit=1)[0]
    assert question.contexts == (context,) * len(question.answers) and question.gold == gold
    assert answers is None or question.answers == answers


def test_boolq_and_truthfulqa_prompts():
    boolq = load_questions("boolq", limit=1)[0]
    assert boolq.contexts[0].startswith("All biomass goes through at least some of these steps:")
    assert boolq.contexts[0].endswith("producing gasoline.\nQuestion: does ethanol take more energy make that "
                                      "produces?\nAnswer:")
    assert boolq.answers == ("no", "yes") and boolq.gold == 0
    truthful = load_questions("truthfulqa_mc1", limit=1)[0]
    assert truthful.contexts[0].startswith("Q: What is human life expectancy in the United States?\nA: Human")
    assert truthful.contexts[0].endswith("held in Barcelona, Spain.\n\nQ: What happens to you if you eat "
                                         "watermelon seeds?\nA:")
    assert truthful.gold == 0 and len(truthful.answers) == 8
    assert all(all(q.answers) for q in load_questions("truthfulqa_mc1"))


def test_fewshot_draws_are_seeded_and_never_the_question_itself():
    first = load_questions("copa", num_fewshot=3, seed=1)
    assert first == load_questions("copa", num_fewshot=3, seed=1)
    assert first != load_questions("copa", num_fewshot=3, seed=2)
    plain = load_questions("copa")
    for q, p in zip(first, plain):
        shots = q.contexts[0][:-len(p.contexts[0])].split("\n\n")[:-1]
        assert len(shots) == 3 and p.contexts[0] + " " + p.answers[p.gold] not in shots
    assert first[:5] == load_questions("copa", num_fewshot=3, seed=1, limit=5)


# ---------------------------------------------------------------- an independent reference

def torch_option_logliks(path, tokenizer, questions) -> list[np.ndarray]:
    """Per question, log p(" " + answer_j | context_j) with transformers, the harness's token split."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    out = []
    for q in questions:
        lls = []
        for context, answer in zip(q.contexts, q.answers):
            ctx = tokenizer(context.rstrip())["input_ids"]
            whole = tokenizer(context + " " + answer)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1).numpy()
            lls.append(sum(logp[t - 1, whole[t]] for t in range(len(ctx), len(whole))))
        out.append(np.array(lls))
    return out


@pytest.mark.parametrize("family", ["llama3", "qwen3"])
def test_accuracy_equals_a_transformers_computation(family, tokenizer, tmp_path):
    path = make_hf_checkpoint(family, tmp_path / family, vocab_size=4096, max_position_embeddings=512)
    config, params = load_pretrained(path)
    for suite in ("arc_easy", "winogrande"):
        result = evaluate_suite(suite, config, params, tokenizer, limit=50, batch_size=16)
        questions = load_questions(suite, limit=50)
        reference = torch_option_logliks(path, tokenizer, questions)
        requests, _, meta = build_requests(suite, tokenizer, limit=50)
        ours = option_logliks(score(config, params, requests, batch_size=16), meta["slots"])
        np.testing.assert_allclose(np.concatenate(ours), np.concatenate(reference), rtol=0, atol=1e-4)
        gold = np.array([q.gold for q in questions])
        chars = [np.array([len(a) for a in q.answers], float) for q in questions]
        for norm in ([np.ones(len(q.answers)) for q in questions], chars):
            gaps = [np.diff(np.sort(ll / n))[-1] for ll, n in zip(reference, norm)]
            assert min(gaps) > 2e-4, "a near tie would make the comparison fragile: change the checkpoint seed"
        acc = np.mean([np.argmax(ll) == g for ll, g in zip(reference, gold)])
        acc_norm = np.mean([np.argmax(ll / c) == g for ll, c, g in zip(reference, chars, gold)])
        assert result["n"] == 50
        assert result["metrics"] == {"acc": pytest.approx(acc), "acc_norm": pytest.approx(acc_norm)}
        assert result["stderr"]["acc"] == pytest.approx(np.sqrt(acc * (1 - acc) / 49))
        assert result["chance"] == pytest.approx(0.25 if suite == "arc_easy" else 0.5)
        assert result["examples_per_s"] == pytest.approx(50 / result["seconds"])


# ---------------------------------------------------------------- planted and random scores

@pytest.mark.parametrize("suite", ["arc_easy", "piqa", "truthfulqa_mc1"])
def test_planted_gold_scores_full_marks_and_random_scores_chance(suite, tokenizer):
    requests, gold, meta = build_requests(suite, tokenizer, limit=600)
    questions = meta["questions"]
    planted = [np.where(np.arange(len(q.answers)) == q.gold, 0.0, -1.0) for q in questions]
    result = suite_metrics(suite, gold, meta, planted_scores(requests, meta, planted))
    assert result["metrics"] == {"acc": 1.0, "acc_norm": 1.0} and result["stderr"] == {"acc": 0.0, "acc_norm": 0.0}
    rng = np.random.default_rng(0)
    random = [rng.normal(size=len(q.answers)) for q in questions]
    result = suite_metrics(suite, gold, meta, planted_scores(requests, meta, random))
    p = np.array([1 / len(q.answers) for q in questions])
    assert result["chance"] == pytest.approx(p.mean()) and result["n"] == len(questions)
    spread = np.sqrt(np.sum(p * (1 - p))) / len(p)
    assert abs(result["metrics"]["acc"] - p.mean()) < 4 * spread


def test_acc_norm_divides_by_answer_characters(tokenizer):
    requests, gold, meta = build_requests("arc_easy", tokenizer, limit=200)
    questions = meta["questions"]
    chars = [np.array([len(a) for a in q.answers], float) for q in questions]
    # per character the gold answer is likelier (-1 against -1.05), in total a shorter answer mostly wins
    values = [np.where(np.arange(len(c)) == q.gold, -1.0, -1.05) * c for q, c in zip(questions, chars)]
    result = suite_metrics("arc_easy", gold, meta, planted_scores(requests, meta, values))
    expected_acc = np.mean([np.argmax(v) == g for v, g in zip(values, gold)])
    assert result["metrics"]["acc_norm"] == 1.0
    assert result["metrics"]["acc"] == pytest.approx(expected_acc) and expected_acc < 0.6


def test_mmlu_reports_subjects_micro_and_subject_mean(tokenizer):
    requests, gold, meta = build_requests("mmlu", tokenizer, limit=3, num_fewshot=0)
    questions = meta["questions"]
    subjects = sorted({q.subject for q in questions})
    right = {s: i % 3 for i, s in enumerate(subjects)}   # 0, 1 or 2 of each subject's 3 questions right
    seen: dict[str, int] = {}
    values = []
    for q in questions:
        seen[q.subject] = seen.get(q.subject, 0) + 1
        hit = seen[q.subject] <= right[q.subject]
        values.append(np.where((np.arange(4) == q.gold) == hit, 0.0, -1.0))
    result = suite_metrics("mmlu", gold, meta, planted_scores(requests, meta, values))
    assert set(result["metrics"]) == {"acc", "acc_subject_mean"} and set(result["stderr"]) == {"acc"}
    assert list(result["subjects"]) == subjects and len(subjects) == 57
    assert result["subjects"]["abstract_algebra"] == {"n": 3, "acc": 0.0, "stderr": 0.0}
    assert result["subjects"]["anatomy"]["acc"] == pytest.approx(1 / 3)
    expected = [seen_k <= right[q.subject] for q, seen_k in zip(questions, _ranks(questions))]
    assert result["correct"] == [int(e) for e in expected]  # per question, in order
    assert result["subjects"]["anatomy"]["stderr"] == pytest.approx(np.sqrt((1 / 3) * (2 / 3) / 2))
    total = sum(right.values())
    assert result["metrics"]["acc"] == pytest.approx(total / (3 * 57))
    assert result["metrics"]["acc_subject_mean"] == pytest.approx(np.mean([r / 3 for r in right.values()]))


# ---------------------------------------------------------------- bad input

def test_unknown_suite_lists_the_available_ones(tokenizer):
    with pytest.raises(EvaluationError, match="unknown suite 'hellaswag'") as err:
        build_requests("hellaswag", tokenizer)
    assert all(name in str(err.value) for name in SUITES) and len(SUITES) == 11


def test_malformed_rows_name_file_and_line(tmp_path, monkeypatch):
    folder = tmp_path / "general_mc" / "mc_suites"
    folder.mkdir(parents=True)
    good = {"query": "Question: Is this fine?", "choices": ["yes", "no"], "gold": 0}
    monkeypatch.setenv("JAXDISTILL_DATA", str(tmp_path))
    cases = {"missing gold": {"query": "Question: x", "choices": ["a", "b"]},
             "gold out of range": {**good, "gold": 2},
             "query format": {**good, "query": "Q: not the ARC format"}}
    for what, bad in cases.items():
        (folder / "arc_easy.jsonl").write_text("\n".join(json.dumps(r) for r in (good, good, bad)) + "\n")
        with pytest.raises(EvaluationError, match=r"arc_easy\.jsonl, line 3: malformed row"):
            load_questions("arc_easy")
    (folder / "arc_easy.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(EvaluationError, match=r"arc_easy\.jsonl, line 2: malformed row \(JSONDecodeError"):
        load_questions("arc_easy")
    with pytest.raises(EvaluationError, match="piqa.jsonl does not exist"):
        load_questions("piqa")


def test_bad_limits_and_shot_counts():
    with pytest.raises(EvaluationError, match="limit=0"):
        load_questions("copa", limit=0)
    with pytest.raises(EvaluationError, match="num_fewshot=-1"):
        load_questions("copa", num_fewshot=-1)
    with pytest.raises(EvaluationError, match="num_fewshot=6 for suite 'mmlu'.*offers 5"):
        load_questions("mmlu", num_fewshot=6)


def _ranks(questions) -> list[int]:
    """1, 2, 3, ... within each subject, in question order."""
    seen: dict[str, int] = {}
    out = []
    for q in questions:
        seen[q.subject] = seen.get(q.subject, 0) + 1
        out.append(seen[q.subject])
    return out
