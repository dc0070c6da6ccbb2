"""Multiple-choice accuracy on the general-knowledge suites, with lm-evaluation-harness conventions.

Prompts and data are `mc_suites`' (the `SUITES` table). Here they become `loglik.Request`s and
metrics. Tokenisation is the harness's `_encode_pair`: trailing whitespace of the context moves to
the continuation, then

    context ids      = tokenize(context.rstrip())
    continuation ids = tokenize(context + " " + answer)[len(context ids):]

with the tokenizer's own special-token default (the harness's `add_bos_token=None`). Options that
share a context share one request, so a prompt is computed once for all its answers.

For question i with option log-likelihoods ll_ij (summed over the continuation's tokens), answers
a_ij and right option g_i, over n questions:

    acc      = mean_i [argmax_j ll_ij == g_i]
    acc_norm = mean_i [argmax_j ll_ij / len(a_ij) == g_i]     len in characters, without the delimiter
    stderr   = sqrt(p (1 - p) / (n - 1))                       the harness's sample stderr of a mean
    chance   = mean_i 1 / J_i

argmax takes the first of equal maxima, as numpy (and the harness) does. Under partial scoring
(WinoGrande) every option scores the same continuation, so acc_norm = acc. MMLU reports acc only:
per subject, overall over all questions (micro, "acc") and the mean of the subjects' ("acc_subject_mean").
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from jaxdistill.evaluate.loglik import Request, Scores, score
from jaxdistill.evaluate.mc_suites import SUITES, TARGET_DELIMITER, Question, load_questions, suite
from jaxdistill.models import ModelConfig
from jaxdistill.models.transformer import Params

__all__ = ["SUITES", "build_requests", "evaluate_suite", "mean_stderr", "option_logliks", "suite_metrics"]

_CHUNK = 512


def _options_by_context(question: Question) -> dict[str, list[int]]:
    """context -> the options scored after it (all of them, or one each under partial scoring)."""
    groups: dict[str, list[int]] = {}
    for j, context in enumerate(question.contexts):
        groups.setdefault(context, []).append(j)
    return groups


def build_requests(suite_name: str, tokenizer, *, limit: int | None = None, num_fewshot: int | None = None,
                   seed: int = 0) -> tuple[list[Request], np.ndarray, dict]:
    """(requests, gold [N] int, meta) for a suite; no model involved. meta["questions"] are the
    `Question`s with full prompts; meta["slots"][i][j] = (request, continuation) of option j of
    question i. `limit`, `num_fewshot`, `seed`: see `mc_suites.load_questions`. Texts are encoded in
    batches of `_CHUNK` questions (one tokenizer call each, parallel where the tokenizer allows)."""
    questions = load_questions(suite_name, limit=limit, num_fewshot=num_fewshot, seed=seed)
    requests, slots = [], []
    for start in range(0, len(questions), _CHUNK):
        chunk = [(q, _options_by_context(q)) for q in questions[start:start + _CHUNK]]
        texts = [text for q, groups in chunk for context, options in groups.items()
                 for text in (context.rstrip(), *(context + TARGET_DELIMITER + q.answers[j] for j in options))]
        ids = iter(tokenizer(texts)["input_ids"])
        for q, groups in chunk:
            where: dict[int, tuple[int, int]] = {}
            for options in groups.values():
                context = tuple(next(ids))
                continuations = tuple(tuple(next(ids)[len(context):]) for _ in options)
                where.update({j: (len(requests), c) for c, j in enumerate(options)})
                requests.append(Request(context, continuations))
            slots.append([where[j] for j in range(len(q.answers))])
    return requests, np.array([q.gold for q in questions], dtype=int), {"questions": questions, "slots": slots}


def option_logliks(scores: Sequence[Scores], slots) -> list[np.ndarray]:
    """Per question, [J] float64 log-likelihoods of its options."""
    return [np.array([scores[r].logprobs[c] for r, c in where], dtype=np.float64) for where in slots]


def _correct(logliks: list[np.ndarray], gold: np.ndarray, lengths: list[np.ndarray] | None = None) -> np.ndarray:
    """[N] bool: argmax_j ll_ij (divided by lengths_ij when given) == gold_i."""
    lengths = lengths or [np.ones_like(ll) for ll in logliks]
    return np.array([np.argmax(ll / n) == g for ll, n, g in zip(logliks, lengths, gold)], dtype=bool)


def mean_stderr(correct: np.ndarray) -> tuple[float, float]:
    """(p, sqrt(p (1 - p) / (n - 1))): a 0/1 mean and its standard error (nan for n < 2)."""
    n, p = len(correct), float(np.mean(correct))
    return p, float(np.sqrt(p * (1 - p) / (n - 1))) if n > 1 else float("nan")


def suite_metrics(suite_name: str, gold: np.ndarray, meta: dict, scores: Sequence[Scores]) -> dict:
    """{"n", "metrics", "stderr", "chance", "correct" (0/1 per question, acc)} (+ "subjects" when the questions have subjects) from the
    scores of `build_requests`' requests."""
    questions = meta["questions"]
    logliks = option_logliks(scores, meta["slots"])
    correct = {"acc": _correct(logliks, gold),
               "acc_norm": _correct(logliks, gold, [np.array([len(a) for a in q.answers], float) for q in questions])}
    out = {"n": len(questions), "metrics": {}, "stderr": {},
           "chance": float(np.mean([1 / len(q.answers) for q in questions])),
           "correct": correct["acc"].astype(int).tolist()}  # per question: what a bootstrap resamples
    for metric in suite(suite_name).metrics:
        out["metrics"][metric], out["stderr"][metric] = mean_stderr(correct[metric])
    subjects = np.array([q.subject for q in questions])
    if subjects.size and subjects[0]:
        out["subjects"] = {}
        for subject in dict.fromkeys(subjects):
            acc, stderr = mean_stderr(correct["acc"][subjects == subject])
            out["subjects"][subject] = {"n": int(np.sum(subjects == subject)), "acc": acc, "stderr": stderr}
        out["metrics"]["acc_subject_mean"] = float(np.mean([s["acc"] for s in out["subjects"].values()]))
    return out


def evaluate_suite(name: str, config: ModelConfig, params: Params, tokenizer, *, limit: int | None = None,
                   batch_size: int = 8, num_fewshot: int | None = None, mesh=None) -> dict:
    """Score one suite: {"suite", "n", "metrics", "stderr", "chance", "seconds", "examples_per_s"}
    (+ "subjects" for MMLU). seconds is the wall time of the whole call: tokenising, compiling, scoring.
    `mesh`: batches sharded over its batch axes (`loglik.score`)."""
    start = time.perf_counter()
    requests, gold, meta = build_requests(name, tokenizer, limit=limit, num_fewshot=num_fewshot)
    scores = score(config, params, requests, batch_size=batch_size, progress=name, mesh=mesh)
    result = {"suite": name, **suite_metrics(name, gold, meta, scores)}
    result["seconds"] = time.perf_counter() - start
    result["examples_per_s"] = result["n"] / result["seconds"]
    return result
