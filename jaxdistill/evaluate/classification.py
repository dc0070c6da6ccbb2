"""In-domain classification evaluation: accuracy, macro-F1, per-class recall and the confusion matrix
of a model on a `ClassificationData`, read from the model in one of two ways.

Both read the prompt exactly as training builds it (`data.formats.encode_example`: without a chat
template `[BOS] + instruction + plain_separator`), untruncated.

    score     constrained: for every label y, log p(a_y | prompt) through `loglik.score`, one
              request per example with one continuation per label (the prompt is computed once);
              prediction = argmax_y. a_y is the token sequence the format supervises:
                  label          answer(y) + EOS
                  cot / blended  think_open + think_close + answer(y) + EOS, i.e. the answer after
                                 an EMPTY reasoning trace ("<think>\\n\\n</think>\\n\\n"): a CoT
                                 student is asked for its answer without reasoning first.
    generate  greedy decoding of trace + answer, stopping at EOS or after `max_new_tokens`;
              `parse_answer` reads the label after the last think_close. Unparsable completions
              count as wrong and their rate is reported.

Metrics over n examples with gold g_i and prediction p_i (None: unparsable), K classes:

    acc         = (1/n) sum_i [p_i = g_i]
    stderr(acc) = sqrt(acc (1 - acc) / (n - 1))          (lm-evaluation-harness's sample stderr)
    C[g, p]     = #{i : g_i = g, p_i = p}                (K x K, gold rows, predicted columns;
                                                          unparsable predictions are in no column)
    recall_c    = C[c, c] / #{i : g_i = c}               (classes with a gold example)
    precision_c = C[c, c] / #{i : p_i = c},  F1_c = 2 P R / (P + R)  (0 when P + R = 0)
    macro-F1    = mean of F1_c over the classes present in gold or predictions (scikit-learn's
                  default label set)
    chance      majority = max_c #{i : g_i = c} / n,  uniform = 1 / K
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from jaxdistill.data import (ClassificationData, Template, completion_text, encode_example, parse_answer,
                             stratified_subsample)
from jaxdistill.data.formats import FORMATS
from jaxdistill.evaluate.loglik import EvaluationError, Request, score
from jaxdistill.models import ModelConfig
from jaxdistill.models.transformer import Params
from jaxdistill.parts import ANSWER, PROMPT
from jaxdistill.sample import SamplingSettings, generate

METHODS = ("score", "generate")
_UNTRUNCATED = 1 << 30  # encode_example's max_len: never cut a prompt


def check_vocabulary(config: ModelConfig, tokenizer) -> None:
    """Refuse a tokenizer whose ids reach past the model's embedding table (checked before any work)."""
    if len(tokenizer) > config.vocab_size:
        raise EvaluationError(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary is "
                              f"{config.vocab_size}: ids {config.vocab_size}..{len(tokenizer) - 1} have no "
                              "embedding; evaluate with the tokenizer the model was trained with")


def accuracy_stderr(correct: Sequence[bool]) -> float | None:
    """sqrt(p (1 - p) / (n - 1)) for the mean p of n 0/1 outcomes (None for n < 2)."""
    n = len(correct)
    p = float(np.mean(correct)) if n else 0.0
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _prompt_and_answer(tokenizer, text: str, label: int, label_names, template: Template):
    """(prompt ids, answer ids incl. EOS) of a label-format training example."""
    ex = encode_example(tokenizer, text, label, label_names, format="label", template=template,
                        max_len=_UNTRUNCATED)
    return tuple(ex.tokens[ex.parts == PROMPT].tolist()), ex.tokens[ex.parts == ANSWER].tolist()


def label_requests(tokenizer, data: ClassificationData, *, format: str = "label",
                   template: Template = Template()) -> list[Request]:
    """One `Request` per example: the prompt, and per label the continuation a_y of the module docstring."""
    if format not in FORMATS:
        raise EvaluationError(f"format={format!r}; valid: {', '.join(FORMATS)}")
    empty_trace = [] if format == "label" else _ids(tokenizer, template.think_open + template.think_close)
    answers = tuple(tuple(empty_trace + _prompt_and_answer(tokenizer, data.texts[0], y, data.label_names,
                                                           template)[1])
                    for y in range(len(data.label_names)))
    return [Request(_prompt_and_answer(tokenizer, text, 0, data.label_names, template)[0], answers)
            for text in data.texts]


def label_scores(config: ModelConfig, params: Params, tokenizer, data: ClassificationData, *,
                 format: str = "label", template: Template = Template(), batch_size: int = 8,
                 mesh=None) -> np.ndarray:
    """log p(a_y | prompt_i)  # [N, K] float64"""
    requests = label_requests(tokenizer, data, format=format, template=template)
    scores = score(config, params, requests, batch_size=batch_size, pad_id=tokenizer.pad_token_id or 0, mesh=mesh)
    return np.stack([s.logprobs for s in scores])


def greedy_completions(config: ModelConfig, params: Params, tokenizer, prompts: Sequence[Sequence[int]], *,
                       max_new_tokens: int, batch_size: int = 8, stop_strings: Sequence[str] = ()) -> list[str]:
    """Greedy completions (decoded with `completion_text`), stopping at EOS or after `max_new_tokens`,
    each cut before the first of `stop_strings`. Prompts run longest first in batches of exactly
    `batch_size` rows (the last one filled with repeats), so batches share compiled programs."""
    settings = SamplingSettings(max_new_tokens=max_new_tokens, stop_tokens=tuple(
        t for t in (tokenizer.eos_token_id,) if t is not None))
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = idx + [idx[0]] * (batch_size - len(idx))
        ids = generate(config, params, [prompts[i] for i in rows], settings, pad_id=tokenizer.pad_token_id or 0)
        for i, completion in zip(idx, ids):
            text = completion_text(tokenizer, completion)
            out[i] = text[:min([text.find(s) for s in stop_strings if s in text], default=len(text))]
    return out


def classification_metrics(gold: Sequence[int], predicted: Sequence[int | None], num_classes: int) -> dict:
    """The metrics of the module docstring: {"n", "acc", "acc_stderr", "macro_f1", "per_class_recall"
    ([K], None for classes without a gold example), "confusion" (K x K lists), "majority", "uniform",
    "unparsable_rate", "correct" (0/1 per example: what a bootstrap over examples resamples)}."""
    gold = np.asarray(gold, int)
    pred = np.array([-1 if p is None else p for p in predicted], int)
    if len(gold) == 0 or len(gold) != len(pred):
        raise EvaluationError(f"need as many predictions as gold labels (at least one): got {len(gold)} gold, "
                              f"{len(pred)} predicted")
    bad = (set(gold[(gold < 0) | (gold >= num_classes)].tolist())
           | set(pred[(pred < -1) | (pred >= num_classes)].tolist()))
    if bad:
        raise EvaluationError(f"class ids {sorted(bad)} are outside 0..{num_classes - 1} (a prediction may "
                              "also be None: unparsable)")
    parsed = pred >= 0
    confusion = np.zeros((num_classes, num_classes), int)
    np.add.at(confusion, (gold[parsed], pred[parsed]), 1)
    true_pos = np.diag(confusion)
    gold_count = np.bincount(gold, minlength=num_classes)
    pred_count = confusion.sum(axis=0)
    recall = np.divide(true_pos, gold_count, out=np.zeros(num_classes), where=gold_count > 0)
    precision = np.divide(true_pos, pred_count, out=np.zeros(num_classes), where=pred_count > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes),
                   where=precision + recall > 0)
    present = (gold_count > 0) | (pred_count > 0)
    correct = gold == pred
    return {"n": len(gold), "acc": float(correct.mean()), "acc_stderr": accuracy_stderr(correct),
            "macro_f1": float(f1[present].mean()),
            "per_class_recall": [float(r) if c > 0 else None for r, c in zip(recall, gold_count)],
            "confusion": confusion.tolist(), "majority": float(gold_count.max() / len(gold)),
            "uniform": 1.0 / num_classes, "unparsable_rate": float(np.mean(~parsed)),
            "correct": correct.astype(int).tolist()}


def evaluate_classification(config: ModelConfig, params: Params, tokenizer, data: ClassificationData, *,
                            format: str = "label", template: Template = Template(), method: str = "score",
                            limit: int | None = None, batch_size: int = 8, max_new_tokens: int = 64,
                            mesh=None) -> dict:
    """The in-domain result on `data`, or on `limit` of its examples in its class proportions
    (`stratified_subsample`, seed 0), as in the module docstring. `mesh` shards the scoring batches
    over the mesh's batch axes (the generation path runs unsharded)."""
    check_vocabulary(config, tokenizer)
    if method not in METHODS:
        raise EvaluationError(f"method={method!r}; valid: {', '.join(METHODS)}")
    if len(data) == 0 or (limit is not None and limit < 1):
        raise EvaluationError(f"no examples to evaluate: {len(data)} examples, limit={limit} "
                              "(valid: >= 1, or None for all)")
    if limit is not None and limit < len(data):
        data = data.subset(stratified_subsample(data.labels, limit))
    start = time.perf_counter()
    if method == "score":
        predicted = label_scores(config, params, tokenizer, data, format=format, template=template,
                                 batch_size=batch_size, mesh=mesh).argmax(axis=1).tolist()
    else:
        prompts = [r.context for r in label_requests(tokenizer, data, format=format, template=template)]
        completions = greedy_completions(config, params, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size)
        predicted = [parse_answer(c, data.label_names, template) for c in completions]
    seconds = time.perf_counter() - start
    m = classification_metrics(data.labels, predicted, len(data.label_names))
    return {"suite": "in_domain", "method": method, "format": format, "n": m["n"],
            "metrics": {"acc": m["acc"], "macro_f1": m["macro_f1"]}, "stderr": {"acc": m["acc_stderr"]},
            "chance": {"majority": m["majority"], "uniform": m["uniform"]},
            "per_class_recall": {name: r for name, r in zip(data.label_names, m["per_class_recall"])
                                 if r is not None},
            "confusion": m["confusion"], "correct": m["correct"],
            **({"unparsable_rate": m["unparsable_rate"]} if method == "generate" else {}),
            "seconds": seconds, "examples_per_s": m["n"] / seconds}
