"""Supervision formats: an example becomes token ids plus, per token, the part it belongs to.

    label    prompt -> answer
    cot      prompt -> reasoning trace -> answer
    blended  as cot (the blended loss adds a teacher divergence over trace + answer tokens)

Parts use the ids of `jaxdistill.parts`: PROMPT=1, TRACE=2, ANSWER=3 (0 is padding). With a chat tokenizer
the prompt is `apply_chat_template([system?, user], add_generation_prompt=True)` and the trace is
wrapped Qwen3-style in `<think>\\n...\\n</think>\\n\\n`; the answer ends with the tokenizer's EOS
token. Over-long examples lose prompt tokens from the left (the end of the prompt, next to the
answer, survives); the trace and answer are never cut, and an example whose trace + answer alone do
not fit is dropped. Both are counted.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from jaxdistill.parts import ANSWER, PROMPT, TRACE

FORMATS = ("label", "cot", "blended")


class FormatError(ValueError):
    """A supervision format that cannot be built from the given example."""


@dataclasses.dataclass(frozen=True)
class Template:
    """How a classification example is worded. `{text}` is the input, `{labels}` the class list."""

    instruction: str = ("Classify this financial news headline into exactly one category.\n"
                        "Categories: {labels}\nHeadline: {text}")
    system: str | None = None
    answer: str = "{label}"
    use_chat_template: bool = True
    think_open: str = "<think>\n"
    think_close: str = "\n</think>\n\n"
    plain_separator: str = "\nAnswer: "  # between prompt and completion without a chat template


@dataclasses.dataclass
class Example:
    tokens: np.ndarray   # [n] int32
    parts: np.ndarray    # [n] int8: PROMPT / TRACE / ANSWER
    example_id: int
    label: int

    def __len__(self) -> int:
        return len(self.tokens)


def loss_weights(parts: np.ndarray, format: str) -> np.ndarray:
    """Per-token weights of the supervised tokens: answer for `label`, trace + answer otherwise."""
    if format not in FORMATS:
        raise FormatError(f"format={format!r}; valid: {', '.join(FORMATS)}")
    supervised = (parts == ANSWER) if format == "label" else (parts == ANSWER) | (parts == TRACE)
    return supervised.astype(np.float32)


def prompt_text(tokenizer, template: Template, text: str, label_names) -> tuple[str, bool]:
    """(the prompt's text, whether the tokenizer's chat template made it): the instruction with
    `{text}` and `{labels}` filled in, as a chat user turn (after an optional system turn) up to the
    assistant's generation prompt, or without a chat template `system + instruction + plain_separator`."""
    user = template.instruction.format(text=text, labels=", ".join(label_names))
    if template.use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": template.system}] if template.system else [])
        messages.append({"role": "user", "content": user})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
    prefix = f"{template.system}\n\n" if template.system else ""
    return prefix + user + template.plain_separator, False


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def encode_example(tokenizer, text: str, label: int, label_names, *, format: str = "label",
                   template: Template = Template(), trace: str | None = None, max_len: int = 256,
                   example_id: int = 0, counts: Counter | None = None) -> Example | None:
    """Token ids and parts of one example, or None (counted in `counts`) when it cannot fit."""
    counts = Counter() if counts is None else counts
    if format not in FORMATS:
        raise FormatError(f"format={format!r}; valid: {', '.join(FORMATS)}")
    if format != "label" and not trace:
        counts["dropped_missing_trace"] += 1
        return None
    prompt_string, chat = prompt_text(tokenizer, template, text, label_names)
    prompt = _ids(tokenizer, prompt_string)
    if not chat and getattr(tokenizer, "bos_token_id", None) is not None and tokenizer.bos_token is not None:
        prompt = [tokenizer.bos_token_id] + prompt
    trace_ids = [] if format == "label" else _ids(tokenizer, template.think_open + trace.strip()
                                                  + template.think_close)
    answer = _ids(tokenizer, template.answer.format(label=label_names[label]))
    if tokenizer.eos_token_id is not None:
        answer.append(tokenizer.eos_token_id)
    budget = max_len - len(trace_ids) - len(answer)
    if budget < 1:
        counts["dropped_too_long"] += 1
        return None
    if len(prompt) > budget:
        counts["truncated_prompt"] += 1
        prompt = prompt[len(prompt) - budget:]
    tokens = np.array(prompt + trace_ids + answer, np.int32)
    parts = np.array([PROMPT] * len(prompt) + [TRACE] * len(trace_ids) + [ANSWER] * len(answer), np.int8)
    counts["examples"] += 1
    return Example(tokens, parts, example_id, int(label))


def encode_dataset(data, tokenizer, *, format: str = "label", template: Template = Template(),
                   max_len: int = 256) -> tuple[list[Example], dict[str, int]]:
    """Encode a `ClassificationData` (its rationales are the traces for cot / blended)."""
    counts: Counter = Counter()
    examples = []
    for i, (text, label) in enumerate(zip(data.texts, data.labels)):
        trace = data.rationales[i] if data.rationales is not None else None
        ex = encode_example(tokenizer, text, int(label), data.label_names, format=format,
                            template=template, trace=trace, max_len=max_len, example_id=i, counts=counts)
        if ex is not None:
            examples.append(ex)
    return examples, dict(counts)


def parse_answer(completion: str, label_names, template: Template = Template()) -> int | None:
    """The label a completion names: the text after the last `</think>` (or all of it), matched to
    a label name exactly (case-insensitive), else the single label name it contains; None if none
    or several match."""
    close = template.think_close.strip()
    tail = completion.rsplit(close, 1)[-1] if close and close in completion else completion
    tail = tail.strip().strip(".").strip().lower()
    names = [n.lower() for n in label_names]
    if tail in names:
        return names.index(tail)
    found = [i for i, n in enumerate(names) if n in tail]
    return found[0] if len(found) == 1 else None
