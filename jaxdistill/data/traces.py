"""Reasoning traces: written by the teacher with `generate_traces` (the `jaxdistill.sample`
sampler over a data set's prompts, to resumable JSONL) or produced elsewhere (e.g. vLLM), then
imported from JSONL and attached to a data set, with a policy for traces whose answer disagrees
with the gold label.

A record has `trace` (or a `completion` holding `<think>trace</think> answer`), optionally
`answer`, and `id` (index into the data) or `text` (matched to the input text).

Policies: keep (keep every trace, parsable or not, gold label unchanged), drop (drop examples whose trace
disagrees or has no parsable answer), relabel (take the trace's answer as the label; unparsable
dropped). Examples without a trace are dropped. Every case is counted.

Rationales (`generate_rationales`): a small chat teacher that cannot think out loud is instead given
the headline AND its gold label and asked to explain the label in one or two sentences. The cleaned
explanation is the trace, the gold label the answer, so the records attach with any policy (the
answer always agrees). `trace_quality` summarises a file of them.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

from jaxdistill.atomic_files import jsonl_records
from jaxdistill.data.formats import Template, parse_answer, prompt_text
from jaxdistill.data.sources import ClassificationData, DataError
from jaxdistill.models import ModelConfig
from jaxdistill.models.transformer import Params
from jaxdistill.sample import SamplingSettings, generate

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


def completion_text(tokenizer, ids) -> str:
    """Decoded completion, keeping special tokens such as <think> (which carry the trace's
    boundaries) and dropping only EOS and padding."""
    drop = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    return tokenizer.decode([t for t in ids if t not in drop], skip_special_tokens=False)


def generate_traces(config: ModelConfig, params: Params, tokenizer, data: ClassificationData, path, *,
                    teacher_id: str, template: Template | None = None,
                    settings: SamplingSettings = SamplingSettings(), batch_size: int = 8) -> dict[str, int]:
    """Teacher completions (reasoning trace + answer) for every example of a `ClassificationData`,
    written as JSONL (`id`, `text`, `gold`, `completion`, `trace`, `answer`, provenance). Resumable:
    finished batches are appended to `path + ".partial"` and skipped on a restart; the file is
    renamed to `path` when complete. Returns counts: generated, skipped_done, unparsable."""
    template = template or Template()
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    done_ids = set()
    if partial.exists():
        done_ids = {record["id"] for record in jsonl_records(partial)}
    provenance = {"teacher": teacher_id, "sampling": dataclasses.asdict(settings)}
    counts = {"generated": 0, "skipped_done": len(done_ids), "unparsable": 0}
    todo = [i for i in range(len(data)) if i not in done_ids]
    with open(partial, "a") as out:
        for start in range(0, len(todo), batch_size):
            ids = todo[start:start + batch_size]
            prompts = [tokenizer(prompt_text(tokenizer, template, data.texts[i], data.label_names)[0],
                                 add_special_tokens=False)["input_ids"] for i in ids]
            completions = generate(config, params, prompts, settings,
                                   pad_id=tokenizer.pad_token_id or 0, row_ids=ids)
            for i, completion_ids in zip(ids, completions):
                text = completion_text(tokenizer, completion_ids)
                answer = parse_answer(text, data.label_names, template)
                counts["unparsable"] += answer is None
                out.write(json.dumps({"id": i, "text": data.texts[i], "gold": data.label_names[data.labels[i]],
                                      "completion": text, "trace": split_completion(text, template),
                                      "answer": None if answer is None else data.label_names[answer],
                                      **provenance}) + "\n")
                counts["generated"] += 1
            out.flush()
    partial.replace(path)
    return counts


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
