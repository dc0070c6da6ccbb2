"""Teacher-written rationales for the cot / blended formats: the teacher is given a headline and its
gold label and explains the label (`generate_rationales`; prompts, stop tokens, cleaning), and the
quality of a set of traces (`trace_quality`). Records are the JSONL that `traces.attach_traces` reads.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import time
from pathlib import Path

from jaxdistill.atomic_files import jsonl_records
from jaxdistill.data.sources import ClassificationData, DataError
from jaxdistill.models import ModelConfig
from jaxdistill.models.transformer import Params
from jaxdistill.sample import SamplingSettings, generate


# ---------------------------------------------------------------------------- rationales

RATIONALE_PROMPT = ("Financial news headline: {text}\n"
                    "Category: {label}\n"
                    "In one or two sentences, explain why this headline is about {label}. "
                    "Reply with the explanation only.")
PLAIN_RATIONALE_CUE = "\nExplanation:"
# Turn-end tokens of common chat templates, taken as stop tokens when the template uses them.
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


def rationale_prompt(tokenizer, text: str, label: str, prompt: str = RATIONALE_PROMPT) -> str:
    """The teacher's prompt for one example: `prompt` with `{text}` and `{label}` filled in, as a chat
    user turn up to the assistant's generation prompt, or (no chat template) plain text ending in
    "Explanation:"."""
    user = prompt.format(text=text, label=label)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    return user + PLAIN_RATIONALE_CUE


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    return ids


def rationale_stop_tokens(tokenizer) -> tuple[int, ...]:
    """EOS plus the special tokens the chat template puts right after an assistant reply (the end of
    a turn, e.g. `<|im_end|>`), found by rendering a reply; plus known turn-end tokens the template names."""
    stops = set() if tokenizer.eos_token_id is None else {tokenizer.eos_token_id}
    template = getattr(tokenizer, "chat_template", None)
    if template:
        special = _special_ids(tokenizer)
        sentinel = "SENTINEL7319"
        try:
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                                      {"role": "assistant", "content": sentinel}], tokenize=False)
        except Exception:  # a template that refuses this conversation: fall back on the known names
            rendered = ""
        if sentinel in rendered:
            for t in tokenizer(rendered.rsplit(sentinel, 1)[1], add_special_tokens=False)["input_ids"]:
                if t not in special:
                    break
                stops.add(t)
        vocab = tokenizer.get_vocab()
        stops |= {vocab[name] for name in TURN_END_TOKENS if name in template and name in vocab}
    return tuple(sorted(stops))


_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_ECHO_PREFIX = re.compile(r"^\s*(?:explanation|rationale|reasoning|reason|answer)\s*:\s*", re.I)
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)")
_ABBREVIATIONS = frozenset("inc corp co ltd plc llc mr mrs ms dr prof st jr sr vs etc approx est no "
                           "jan feb mar apr jun jul aug sep sept oct nov dec".split())


def _sentences(text: str) -> tuple[list[str], str]:
    """(complete sentences, the unterminated rest) of whitespace-normalised text. A period after a
    known abbreviation, an initial or a dotted acronym (U.S.) does not end a sentence."""
    sentences, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        before = text[start:m.start()].split()
        last = before[-1].lower().lstrip("(\"'\u201c\u2018") if before else ""
        if (m.group()[0] == "." and m.end() < len(text)
                and (last in _ABBREVIATIONS or re.fullmatch(r"[a-z]|(?:[a-z]\.)+[a-z]", last))):
            continue
        sentences.append(text[start:m.end()].strip())
        start = m.end()
    return [s for s in sentences if s], text[start:].strip()


def clean_rationale(text: str, label: str | None = None, *, truncated: bool = False) -> str:
    """A teacher's explanation as a trace: stripped, cut at the first blank line, echoed prefixes
    ("Explanation:", "Category: <label>", "<label>:") removed, whitespace collapsed, and at most two
    sentences kept. A trace that says nothing but the label is "" (empty). With `truncated` (the
    generation hit max_new_tokens) an unfinished last sentence is dropped when a complete one precedes it."""
    text = _BLANK_LINE.split(text.strip(), 1)[0].strip()
    if label:
        label_prefix = re.compile(rf"^\s*(?:(?:category|label|topic)\s*:\s*)?{re.escape(label)}"
                                  r"(?:\s*[:.\n]|\s+[-\u2013\u2014])\s*", re.I)
        bare = re.sub(rf"(?i)\b(?:category|label|topic|explanation|answer)\b|{re.escape(label)}|[\W_]", "", text)
        if not bare:
            return ""
    previous = None
    while previous != text:
        previous = text
        text = _ECHO_PREFIX.sub("", text)
        if label:
            text = label_prefix.sub("", text)
    sentences, rest = _sentences(" ".join(text.split()))
    if rest and (not truncated or not sentences):
        sentences.append(rest)
    return " ".join(sentences[:2])


def _read_partial(partial: Path, data: ClassificationData, provenance: dict) -> set[int]:
    """Ids already written to a partial file, after checking it belongs to this run. A torn last
    line (a crash mid-write) is dropped from the file."""
    if not partial.exists():
        return set()
    try:
        records = jsonl_records(partial)
    except ValueError as err:
        raise DataError(str(err)) from err
    for r in records:
        for key, value in provenance.items():
            if key in r and r[key] != value:
                raise DataError(f"{partial} was written with {key}={r[key]!r}, this run has {value!r}; "
                                "delete it or rerun with the same settings")
        i = r.get("id")
        if not isinstance(i, int) or not 0 <= i < len(data) or ("text" in r and r["text"] != data.texts[i]):
            raise DataError(f"{partial}: record id={i!r} does not match this data set; delete the file")
    return {r["id"] for r in records}


def generate_rationales(config: ModelConfig, params: Params, tokenizer, data: ClassificationData, path, *,
                        teacher_id: str, prompt: str = RATIONALE_PROMPT, settings: SamplingSettings | None = None,
                        batch_size: int = 32, length_multiple: int = 16, progress: bool = True) -> dict:
    """Teacher rationales for every example of `data`: the teacher sees the headline and its gold
    label (`rationale_prompt`) and explains the label; the cleaned explanation (`clean_rationale`)
    is written as JSONL (`id`, `text`, `gold`, `trace`, `answer` = gold, `raw`, `stopped`, and
    provenance `teacher`, `prompt`, `sampling`) that `attach_traces` reads.

    Sampling: greedy, 48 new tokens, stopping at `rationale_stop_tokens` by default (settings
    without stop tokens get those). Prompts are sorted by length and run in batches of exactly
    `batch_size` rows (the last one filled with copies; fewer rows when fewer prompts are left to
    do), left-padded to a multiple of
    `length_multiple`: a run compiles the sampler once per length bucket. Resumable: finished
    batches are appended to `path + ".partial"` and skipped on a restart (which must use the same
    teacher, prompt and sampling); the file is renamed to `path` when complete.

    Returns counts: generated, skipped_done, empty (cleaned to nothing), truncated (no stop token
    within max_new_tokens), new_tokens, seconds, tokens_per_s."""
    from tqdm import tqdm

    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    stops = rationale_stop_tokens(tokenizer)
    if settings is None:
        settings = SamplingSettings(max_new_tokens=48, stop_tokens=stops)
    elif not settings.stop_tokens:
        settings = dataclasses.replace(settings, stop_tokens=stops)
    stop_set = set(settings.stop_tokens)
    provenance = {"teacher": teacher_id, "prompt": prompt,
                  "sampling": json.loads(json.dumps(dataclasses.asdict(settings)))}
    done_ids = _read_partial(partial, data, provenance)
    counts = {"generated": 0, "skipped_done": len(done_ids), "empty": 0, "truncated": 0, "new_tokens": 0}
    gold = [data.label_names[int(label)] for label in data.labels]
    todo = [i for i in range(len(data)) if i not in done_ids]
    chat = bool(getattr(tokenizer, "chat_template", None))
    bos = ([tokenizer.bos_token_id] if not chat and tokenizer.bos_token is not None
           and tokenizer.bos_token_id is not None else [])
    prompts = {i: bos + list(tokenizer(rationale_prompt(tokenizer, data.texts[i], gold[i], prompt),
                                       add_special_tokens=False)["input_ids"]) for i in todo}
    todo.sort(key=lambda i: (len(prompts[i]), i))
    rows = max(1, min(batch_size, len(todo)))  # a small data set needs no filler rows
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    start = time.perf_counter()
    with open(partial, "a") as out, tqdm(total=len(data), initial=len(done_ids), desc="rationales", unit="ex",
                                         disable=not progress, mininterval=2.0) as bar:
        for first in range(0, len(todo), rows):
            ids = todo[first:first + rows]
            fill = rows - len(ids)
            completions = generate(config, params, [prompts[i] for i in ids] + [prompts[ids[-1]]] * fill, settings,
                                   pad_id=pad_id, pad_to_multiple=length_multiple,
                                   row_ids=ids + [ids[-1]] * fill)[:len(ids)]
            for i, completion in zip(ids, completions):
                cut = next((k for k, t in enumerate(completion) if t in stop_set), None)
                raw = tokenizer.decode(completion if cut is None else completion[:cut], skip_special_tokens=True)
                trace = clean_rationale(raw, gold[i], truncated=cut is None)
                counts["generated"] += 1
                counts["empty"] += not trace
                counts["truncated"] += cut is None
                counts["new_tokens"] += len(completion)
                out.write(json.dumps({"id": i, "text": data.texts[i], "gold": gold[i], "trace": trace,
                                      "answer": gold[i], "raw": raw, "stopped": cut is not None,
                                      **provenance}) + "\n")
            out.flush()
            bar.update(len(ids))
            bar.set_postfix(tok_s=f"{counts['new_tokens'] / (time.perf_counter() - start):.0f}")
    partial.replace(path)
    counts["seconds"] = round(time.perf_counter() - start, 3)
    counts["tokens_per_s"] = round(counts["new_tokens"] / max(counts["seconds"], 1e-9), 1)
    return counts


# ---------------------------------------------------------------------------- trace quality

# Words too generic to say a trace names a label ("news" is in two finance_topic labels).
_GENERIC_WORDS = frozenset("and the for with news general other misc".split())


def _word_pattern(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        stem = re.escape(word[:-3]) + "(?:y|ies)"
    elif word.endswith("s") and len(word) > 3:
        stem = re.escape(word[:-1]) + "(?:s|es)?"
    else:
        stem = re.escape(word) + "(?:s|es)?"
    return rf"(?<![\w&]){stem}(?![\w&])"


def _label_words(name: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9&]+", name.lower()) if len(w) >= 3 and w not in _GENERIC_WORDS}


def _names(trace: str, name: str, words) -> bool:
    """Whether a (lower-cased) trace contains the label name or one of `words`, as whole words."""
    if re.search(rf"(?<![\w&]){re.escape(name.lower())}(?![\w&])", trace):
        return True
    return any(re.search(_word_pattern(w), trace) for w in words)


def trace_quality(records: list[dict], label_names, tokenizer=None) -> dict:
    """Summary of a set of trace records (e.g. from `generate_rationales`): n; mean and median trace
    length in words (and tokens, with a tokenizer) over the non-empty traces; the shares (of n) of
    empty traces, of traces naming the gold label (its name or one of its words, case-insensitive,
    whole words, plural-tolerant; words under 3 letters and a few generic words such as "news" do
    not count) and of traces naming some other label (its name or one of its words the gold label
    does not share); and 3 example traces (first, middle and last non-empty)."""
    names = list(label_names)
    words = {name: _label_words(name) for name in names}
    n = len(records)
    lengths, token_lengths, nonempty = [], [], []
    empty = gold_named = other_named = 0
    for r in records:
        trace = (r.get("trace") or "").strip()
        gold = r.get("gold", r.get("answer"))
        gold = names[gold] if isinstance(gold, int) else gold
        if not trace:
            empty += 1
            continue
        nonempty.append((r, gold))
        lengths.append(len(trace.split()))
        if tokenizer is not None:
            token_lengths.append(len(tokenizer(trace, add_special_tokens=False)["input_ids"]))
        low = trace.lower()
        if gold is not None:
            gold_named += _names(low, gold, words.get(gold, _label_words(gold)))
        gold_words = words.get(gold, set()) if gold is not None else set()
        other_named += any(_names(low, name, words[name] - gold_words) for name in names if name != gold)

    def share(k):
        return round(k / n, 4) if n else 0.0

    def mean(xs):
        return round(statistics.fmean(xs), 2) if xs else 0.0

    def median(xs):
        return float(statistics.median(xs)) if xs else 0.0

    picks = sorted({0, (len(nonempty) - 1) // 2, len(nonempty) - 1}) if nonempty else []
    summary = {"n": n, "mean_words": mean(lengths), "median_words": median(lengths),
               "empty_share": share(empty), "names_gold_share": share(gold_named),
               "names_other_share": share(other_named),
               "examples": [{"id": nonempty[k][0].get("id"), "gold": nonempty[k][1],
                             "trace": nonempty[k][0]["trace"]} for k in picks]}
    if tokenizer is not None:
        summary["mean_tokens"], summary["median_tokens"] = mean(token_lengths), median(token_lengths)
    return summary
