"""GSM8K (grade-school maths word problems): k-shot chain-of-thought generation, exact match of the
final number.

Data: data/gsm8k/ (test.jsonl, all 1,319 problems; train_head50.jsonl, the first 50 training problems,
the pool of worked examples). The prompt follows lm-evaluation-harness's `gsm8k` task: the first k
training problems with their worked answers in GSM8K's own form (rationale with <<calculator>>
annotations, then "#### N"), then the question, joined by blank lines, after BOS when the tokenizer
has one:

    Question: <train question 1>
    Answer: <train answer 1, ending "#### N1">

    ...

    Question: <test question>
    Answer:

Greedy generation stops at EOS or after `max_new_tokens`; the decoded text is cut before the first
"Question:" (the next shot the model starts to invent; the sampler stops on token ids only, so the
stop string is applied to the text). Exact match: parse_final_number(completion) ==
parse_final_number(gold answer), where parse_final_number reads the first number after the last
"####" (the harness's strict "#### N"), or without one the last number of the text, then drops "$",
thousands commas and trailing decimal zeros ("#### 1,000" -> "1000", "$5.50" -> "5.5").
"""

from __future__ import annotations

import json
import re
import time

from jaxdistill.data.sources import data_dir
from jaxdistill.evaluate.classification import accuracy_stderr, check_vocabulary, greedy_completions
from jaxdistill.evaluate.loglik import EvaluationError
from jaxdistill.evaluate.perplexity import bos_ids
from jaxdistill.models import ModelConfig
from jaxdistill.models.transformer import Params

STOP_STRINGS = ("Question:",)
# a number: optional sign and "$", digits (thousands groups "1,000" allowed), optional decimals; not
# the tail of a word or of another number ("v2", "3-5" reads 3 and 5)
_NUMBER = re.compile(r"(?<![\w.])-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def load_split(name: str) -> list[dict]:
    """Rows {"question", "answer"} of data/gsm8k/<name>.jsonl ("test" or "train_head50")."""
    path = data_dir() / "gsm8k" / f"{name}.jsonl"
    if not path.is_file():
        raise EvaluationError(f"GSM8K split {name!r}: {path} not found; shipped: test, train_head50")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def parse_final_number(text: str) -> str | None:
    """The final answer of a completion, normalised (see the module docstring), or None."""
    marked = "####" in text
    found = _NUMBER.findall(text.rsplit("####", 1)[-1])
    if not found:
        return None
    number = found[0 if marked else -1].replace("$", "").replace(",", "")
    return number.rstrip("0").rstrip(".") if "." in number else number


def fewshot_prompt(shots: list[dict], question: str) -> str:
    """The k-shot prompt text of the module docstring."""
    blocks = [f"Question: {s['question']}\nAnswer: {s['answer']}" for s in shots]
    return "\n\n".join(blocks + [f"Question: {question}\nAnswer:"])


def evaluate_gsm8k(config: ModelConfig, params: Params, tokenizer, *, limit: int | None = None,
                   num_fewshot: int = 4, batch_size: int = 8, max_new_tokens: int = 256) -> dict:
    """{"suite": "gsm8k", "n", "num_fewshot", "metrics": {"exact_match"}, "stderr", "chance",
    "unparsable_rate", "seconds", "examples_per_s"} on the first `limit` test problems."""
    check_vocabulary(config, tokenizer)
    pool = load_split("train_head50")
    if not 0 <= num_fewshot <= len(pool):
        raise EvaluationError(f"num_fewshot={num_fewshot}: the shipped pool has {len(pool)} worked examples "
                              f"(valid: 0..{len(pool)})")
    problems = load_split("test")[:limit]
    if not problems:
        raise EvaluationError(f"no GSM8K problems to evaluate (limit={limit})")
    start = time.perf_counter()
    prompts = [bos_ids(tokenizer) + list(tokenizer(fewshot_prompt(pool[:num_fewshot], p["question"]),
                                                   add_special_tokens=False)["input_ids"]) for p in problems]
    completions = greedy_completions(config, params, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, stop_strings=STOP_STRINGS)
    seconds = time.perf_counter() - start
    predicted = [parse_final_number(c) for c in completions]
    correct = [p is not None and p == parse_final_number(row["answer"]) for p, row in zip(predicted, problems)]
    return {"suite": "gsm8k", "n": len(problems), "num_fewshot": num_fewshot,
            "metrics": {"exact_match": sum(correct) / len(correct)},
            "stderr": {"exact_match": accuracy_stderr(correct)}, "chance": {"exact_match": 0.0},
            "unparsable_rate": sum(p is None for p in predicted) / len(predicted),
            "seconds": seconds, "examples_per_s": len(problems) / seconds}
