"""Reasoning traces produced elsewhere (e.g. vLLM) or by `generate.generate_traces`: import from
JSONL and attach to a data set, with a policy for traces whose answer disagrees with the gold label.

A record has `trace` (or a `completion` holding `<think>trace</think> answer`), optionally
`answer`, and `id` (index into the data) or `text` (matched to the input text).

Policies: keep (keep every trace, parsable or not, gold label unchanged), drop (drop examples whose trace
disagrees or has no parsable answer), relabel (take the trace's answer as the label; unparsable
dropped). Examples without a trace are dropped. Every case is counted.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from jaxdistill.data.formats import Template, parse_answer
from jaxdistill.data.sources import ClassificationData, DataError

POLICIES = ("keep", "drop", "relabel")


def load_traces(path) -> list[dict]:
    records = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n}: not a JSON object ({err})") from err
    return records


def split_completion(completion: str, template: Template = Template()) -> str:
    """The reasoning trace inside `<think>...</think>` of a completion ("" when there is none)."""
    open_tag, close_tag = template.think_open.strip(), template.think_close.strip()
    if close_tag in completion:
        return completion.split(close_tag, 1)[0].replace(open_tag, "").strip()
    return ""


def attach_traces(data: ClassificationData, records: list[dict], *, policy: str = "drop",
                  template: Template = Template()) -> tuple[ClassificationData, dict[str, int]]:
    """The examples that have a usable trace, with `rationales` set, and the counts."""
    if policy not in POLICIES:
        raise DataError(f"trace policy {policy!r}; valid: {', '.join(POLICIES)}")
    by_id, by_text = {}, {}
    for r in records:
        if "id" in r:
            by_id[int(r["id"])] = r
        elif "text" in r:
            by_text[r["text"]] = r
    counts: Counter = Counter()
    keep, labels, traces = [], [], []
    for i, (text, gold) in enumerate(zip(data.texts, data.labels)):
        record = by_id.get(i) or by_text.get(text)
        trace = None if record is None else (record.get("trace") or
                                              split_completion(record.get("completion", ""), template))
        if not trace:
            counts["missing_trace"] += 1
            continue
        raw_answer = record.get("answer") or record.get("completion") or ""
        answer = parse_answer(raw_answer, data.label_names, template)
        if answer is None:
            counts["unparsable"] += 1
            if policy != "keep":
                continue
        elif answer == gold:
            counts["agree"] += 1
        else:
            counts["disagree"] += 1
            if policy == "drop":
                continue
            if policy == "relabel":
                counts["relabelled"] += 1
                gold = answer
        keep.append(i)
        labels.append(gold)
        traces.append(trace)
    counts["kept"] = len(keep)
    out = data.subset(keep)
    out.labels[:] = labels
    out.rationales = traces
    out.report = {**data.report, **{f"traces_{k}": v for k, v in counts.items()}}
    return out, dict(counts)
