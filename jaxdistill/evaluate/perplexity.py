"""Token-weighted language-modelling loss and perplexity of plain texts, and the texts to measure.

Each text x_1..x_n (tokenized without special tokens) is scored after its BOS token, or after its
first token when the tokenizer has no BOS (x_1 then goes unscored), through `loglik.score` with
context [BOS] and continuation x (cut to `max_length` - 1 tokens):

    loss       = - sum_texts sum_t log p(x_t | BOS, x_<t) / total scored tokens   (nats / token)
    perplexity = exp(loss)

    general_texts     general-domain text: the questions of ARC-Easy (data/general_mc/mc_suites)
    in_domain_texts   held-out in-domain text: finance_topic validation headlines
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence

import numpy as np

from jaxdistill.data import load_source, stratified_subsample
from jaxdistill.data.sources import data_dir
from jaxdistill.evaluate.classification import check_vocabulary
from jaxdistill.evaluate.loglik import EvaluationError, Request, score
from jaxdistill.models import ModelConfig
from jaxdistill.models.transformer import Params

GENERAL_TEXTS = "general_mc/mc_suites/arc_easy.jsonl"


def bos_ids(tokenizer) -> list[int]:
    """[BOS] when the tokenizer has one (the rule `data.formats.encode_example` prepends by), else []."""
    has_bos = getattr(tokenizer, "bos_token_id", None) is not None and tokenizer.bos_token is not None
    return [tokenizer.bos_token_id] if has_bos else []


def text_request(tokenizer, text: str, max_length: int, index: int = 0) -> Request:
    """Context [BOS] (or the first token), continuation the rest, at most `max_length` tokens in all."""
    ids = (bos_ids(tokenizer) + list(tokenizer(text, add_special_tokens=False)["input_ids"]))[:max_length]
    if len(ids) < 2:
        raise EvaluationError(f"text {index} ({text[:40]!r}) has no token to score after its "
                              f"{'BOS' if bos_ids(tokenizer) else 'first token'}")
    return Request(tuple(ids[:1]), (tuple(ids[1:]),))


def perplexity(config: ModelConfig, params: Params, tokenizer, texts: Sequence[str], *, batch_size: int = 8,
               max_length: int = 1024, mesh=None) -> dict:
    """{"suite": "perplexity", "n", "tokens", "metrics": {"loss", "perplexity"}, "seconds", "examples_per_s"};
    `mesh`: batches sharded over its batch axes (`loglik.score`)."""
    check_vocabulary(config, tokenizer)
    if not texts:
        raise EvaluationError("no texts to score")
    start = time.perf_counter()
    requests = [text_request(tokenizer, text, max_length, i) for i, text in enumerate(texts)]
    scores = score(config, params, requests, batch_size=batch_size, max_length=max_length,
                   pad_id=tokenizer.pad_token_id or 0, mesh=mesh)
    seconds = time.perf_counter() - start
    tokens = int(sum(s.lengths.sum() for s in scores))
    loss = -float(np.sum([s.logprobs.sum() for s in scores])) / tokens
    return {"suite": "perplexity", "n": len(texts), "tokens": tokens,
            "metrics": {"loss": loss, "perplexity": math.exp(loss)}, "stderr": {},
            "seconds": seconds, "examples_per_s": len(texts) / seconds}


def general_texts(limit: int | None = None) -> list[str]:
    """The first `limit` ARC-Easy questions (the query without its "Question: " prefix)."""
    path = data_dir() / GENERAL_TEXTS
    if not path.is_file():
        raise EvaluationError(f"general-domain texts: {path} not found (shipped in data/general_mc)")
    with open(path) as f:
        queries = [json.loads(line)["query"] for line in f if line.strip()]
    return [q.removeprefix("Question:").strip() for q in queries][:limit]


def in_domain_texts(limit: int | None = None) -> list[str]:
    """`limit` held-out finance_topic headlines (its validation split, which is sorted by class) in
    the split's class proportions (`stratified_subsample`, seed 0); all of them for None."""
    data = load_source("finance_topic", split="validation")
    if limit is not None and limit < len(data):
        data = data.subset(stratified_subsample(data.labels, limit))
    return data.texts
