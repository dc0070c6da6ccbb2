"""A self-contained Hugging Face export of a trained classifier (student, or a teacher trained here):
everything `transformers.pipeline("text-generation", model=dir)` needs to reproduce the model's
predictions, and a model card that says how to ask it and how to read its answer.

    dir/
      model.safetensors (or shards + index)   the weights (`models.save_pretrained`)
      tokenizer.json, tokenizer_config.json, ...   the tokenizer the model was trained with, unchanged
      generation_config.json   bos/eos/pad ids, greedy decoding, max_new_tokens for the format
      README.md                the model card: prompt template, answer format and parsing, labels,
                               a runnable pipeline snippet, and (from `card`) teacher, compression,
                               data, training and evaluation
      config.json              the architecture, bos/eos/pad ids, id2label/label2id with the class
                               names; rewritten last, so a directory whose config.json has the class
                               names holds a complete export

The prompt is documented as one string with the BOS token written out (`<bos>Topic of: {headline}
\\nAnswer: `), tokenized with `add_special_tokens=False`: that gives exactly the ids training used
(`data.formats.encode_example`: `[BOS] + instruction + separator`, or the chat template's text)
whatever the tokenizer's own add-BOS default is; `export_model` checks this before writing.

Every file is written atomically (temporary name, then rename); in a multi-process run every process
calls `export_model` (the weights are gathered) and process 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax

from jaxdistill.atomic_files import atomic_write, write_json
from jaxdistill.data.formats import FORMATS, Template, encode_example, prompt_text
from jaxdistill.models import ModelConfig, save_pretrained
from jaxdistill.parts import PROMPT
from jaxdistill.pruning import param_count

CARD_SECTIONS = ("teacher", "compression", "data", "training", "eval")
CARD_KEYS = ("name",) + CARD_SECTIONS
PLACEHOLDER = "{headline}"
EXAMPLE_HEADLINE = "Fed holds rates steady as inflation cools"
_UNTRUNCATED = 1 << 30  # encode_example's max_len: never cut a prompt


class ExportError(ValueError):
    """An export that cannot be made self-contained as asked (bad arguments, a prompt the tokenizer
    cannot reproduce from text)."""


def special_token_ids(config: ModelConfig, tokenizer) -> dict[str, int | list[int] | None]:
    """{bos, eos, pad}_token_id: the tokenizer's (training put its BOS before every prompt and its EOS
    after every answer), else the model config's; pad falls back to EOS (a pad id keeps `generate`
    from guessing; one prompt at a time is never padded)."""
    ids = {}
    for name in ("bos", "eos", "pad"):
        own = getattr(tokenizer, f"{name}_token_id", None)
        fallback = getattr(config, f"{name}_token_id")
        ids[f"{name}_token_id"] = own if own is not None else (list(fallback) if isinstance(fallback, tuple)
                                                                else fallback)
    if ids["pad_token_id"] is None:
        eos = ids["eos_token_id"]
        ids["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
    return ids


def documented_prompt(tokenizer, template: Template, label_names: Sequence[str]) -> str:
    """The prompt string with `{headline}` where the headline goes, BOS written out: tokenized with
    `add_special_tokens=False` it is the training prompt (see the module docstring)."""
    text, chat = prompt_text(tokenizer, template, PLACEHOLDER, label_names)
    bos = getattr(tokenizer, "bos_token", None)
    if not chat and bos is not None and getattr(tokenizer, "bos_token_id", None) is not None:
        return bos + text
    return text


def check_prompt(tokenizer, template: Template, label_names: Sequence[str], prompt: str,
                 headline: str = EXAMPLE_HEADLINE) -> None:
    """Refuse a documented prompt whose text does not tokenize to the training prompt's ids."""
    example = encode_example(tokenizer, headline, 0, label_names, format="label", template=template,
                             max_len=_UNTRUNCATED)
    want = example.tokens[example.parts == PROMPT].tolist()
    got = list(tokenizer(prompt.replace(PLACEHOLDER, headline), add_special_tokens=False)["input_ids"])
    if got != want:
        raise ExportError(f"the prompt string {prompt!r} tokenizes to {got} for {headline!r}, but training "
                          f"used {want}: this tokenizer does not read its special tokens back from text")


def generation_budget(tokenizer, template: Template, label_names: Sequence[str], data_format: str,
                      max_len: int) -> int:
    """max_new_tokens: for `label` the longest answer + EOS (no valid answer is longer); for cot / blended
    max_len - 1, since a training example's trace + answer fit in max_len tokens with at least one
    prompt token (`encode_example`)."""
    if data_format != "label":
        return max_len - 1
    answer = max(len(tokenizer(template.answer.format(label=name), add_special_tokens=False)["input_ids"])
                 for name in label_names)
    return answer + (tokenizer.eos_token_id is not None)


def _check_arguments(label_names, template, data_format, card, max_len) -> None:
    if data_format not in FORMATS:
        raise ExportError(f"data_format={data_format!r}; valid: {', '.join(FORMATS)}")
    names = [str(n) for n in label_names]
    if len(names) < 2 or len(set(names)) < len(names) or not all(n.strip() for n in names):
        raise ExportError(f"label_names={names}: need at least two distinct, non-empty class names "
                          "(in label-id order)")
    if not isinstance(template, Template):
        raise ExportError(f"template={template!r}: expected a jaxdistill.data.Template")
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise ExportError(f"card keys {unknown} are unknown; valid: {', '.join(CARD_KEYS)}")
    if max_len < 2:
        raise ExportError(f"max_len={max_len}: must be >= 2 (data.max_len)")


def export_model(out_dir: str | os.PathLike, config: ModelConfig, params, tokenizer, *,
                 label_names: Sequence[str], template: Template, data_format: str,
                 card: Mapping | None = None, max_len: int = 128, strict_prompt: bool = True) -> Path:
    """Write the self-contained export of the module docstring to `out_dir` and return its path.

    label_names: the class names in label-id order. template / data_format: how the model was trained
    (`jobs.evaluation.template_of(run)`, run.data.format; a teacher fine-tuned here: "label").
    max_len: the training examples' token limit (run.data.max_len), which bounds a cot / blended
    completion. card: optional sections of the model card, each omitted when absent —
    name (title), teacher, compression, data, training (mappings, listed as key: value) and eval
    ({model: {suite: result}} as `evaluate.run.run_suites` makes, plus scalar notes such as held_out).
    Every process of a multi-process run must call it; process 0 writes."""
    card = dict(card or {})
    _check_arguments(label_names, template, data_format, card, max_len)
    label_names = [str(n) for n in label_names]
    prompt = documented_prompt(tokenizer, template, label_names)
    try:
        check_prompt(tokenizer, template, label_names, prompt)
        mismatch = None
    except ExportError as err:  # strict_prompt=False: exported anyway, the card says how to build the ids
        if strict_prompt:
            raise
        mismatch = str(err)
    ids = special_token_ids(config, tokenizer)
    config = config.replace(**{k: tuple(v) if isinstance(v, list) else v for k, v in ids.items()})
    budget = generation_budget(tokenizer, template, label_names, data_format, max_len)
    path = Path(out_dir)
    save_pretrained(config, params, path)  # every process gathers; process 0 writes
    if jax.process_index() != 0:
        return path
    save_tokenizer(tokenizer, path)
    write_generation_config(path, ids, budget)
    readme = model_card(path, config, tokenizer, label_names=label_names, template=template,
                        data_format=data_format, prompt=prompt, ids=ids, max_new_tokens=budget, card=card)
    if mismatch is not None:
        readme = readme.replace("## Answer", f"**Note.** {mismatch}. Build the input ids as "
                                "`[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False).input_ids`, "
                                "`text` being the prompt without its leading BOS token.\n\n## Answer", 1)
    atomic_write(path / "README.md", lambda tmp: tmp.write_text(readme))
    hf_config = json.loads((path / "config.json").read_text())
    hf_config["id2label"] = {str(i): name for i, name in enumerate(label_names)}
    hf_config["label2id"] = {name: i for i, name in enumerate(label_names)}
    write_json(path / "config.json", hf_config)  # last: its class names mark a complete export
    return path


def save_tokenizer(tokenizer, path: Path) -> None:
    """The tokenizer's files next to the model, each renamed into place whole (saved to a temporary
    directory first), so `AutoTokenizer.from_pretrained(path)` gives the training tokenizer back."""
    with tempfile.TemporaryDirectory(dir=path, prefix=".tokenizer-") as staging:
        tokenizer.save_pretrained(staging)
        for file in sorted(Path(staging).iterdir()):
            atomic_write(path / file.name, lambda tmp, src=file: shutil.copyfile(src, tmp))


def write_generation_config(path: Path, ids: Mapping, max_new_tokens: int) -> None:
    """generation_config.json: the special ids and greedy decoding of `max_new_tokens` at most."""
    from transformers import GenerationConfig  # config classes only; no torch needed

    settings = GenerationConfig(**ids, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens)
    atomic_write(path / "generation_config.json", lambda tmp: tmp.write_text(settings.to_json_string(use_diff=True)))


# ------------------------------------------------------------------------------------ model card


def model_card(path: Path, config: ModelConfig, tokenizer, *, label_names: Sequence[str], template: Template,
               data_format: str, prompt: str, ids: Mapping, max_new_tokens: int, card: Mapping) -> str:
    """README.md: front matter, prompt, answer, labels, usage, then the `card` sections present."""
    eos = tokenizer.eos_token if tokenizer.eos_token_id is not None else None  # what training put after answers
    count = param_count(config)["total"]
    title = card.get("name") or f"{path.name}: financial headline topic classifier"
    parts = [
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- jaxdistill\n"
        "- text-classification\n---\n",
        f"# {title}\n\nA {config.model_type} causal language model ({count:,} parameters, {config.num_layers} "
        f"layers, hidden size {config.hidden_size}) that classifies a headline into one of {len(label_names)} "
        f"topics by generating the topic's name. Trained with jaxdistill in the `{data_format}` format "
        f"({_FORMAT_WORDS[data_format]}).\n",
        _prompt_section(tokenizer, template, label_names, prompt),
        _answer_section(template, data_format, eos, ids, max_new_tokens),
        "## Labels\n\n`config.json` has them as `id2label` / `label2id`.\n\n| id | label |\n|---|---|\n"
        + "".join(f"| {i} | {_cell(name)} |\n" for i, name in enumerate(label_names)),
        _usage_section(path, prompt, template, eos),
    ]
    for section in CARD_SECTIONS:
        if card.get(section):
            parts.append(_SECTION_RENDER.get(section, _mapping_section)(section, card[section]))
    return "\n".join(parts)


_FORMAT_WORDS = {
    "label": "prompt -> answer",
    "cot": "prompt -> reasoning trace -> answer",
    "blended": "prompt -> reasoning trace -> answer, with a teacher divergence over trace and answer tokens",
}


def _prompt_section(tokenizer, template: Template, label_names: Sequence[str], prompt: str) -> str:
    text, chat = prompt_text(tokenizer, template, PLACEHOLDER, label_names)
    if chat:
        built = ("the tokenizer's chat template applied to " + ("the system turn `system` and " if template.system
                                                                 else "")
                 + "the user turn `instruction`, up to the assistant's generation prompt")
    else:
        built = (("the BOS token, " if prompt != text else "") + ("`system` and a blank line, " if template.system
                                                                   else "")
                 + "`instruction`, then `plain_separator`")
    fields = json.dumps(dataclasses.asdict(template), indent=2, ensure_ascii=False)
    return (f"## Prompt\n\nA headline becomes the prompt by replacing `{PLACEHOLDER}` in this string (a Python "
            f"literal; special tokens are written out):\n\n```python\nPROMPT = {prompt!r}\n```\n\n"
            "Tokenize it with `add_special_tokens=False`: the string already holds every special token, and "
            "the token ids are then exactly those of training. For example:\n\n"
            f"```text\n{prompt.replace(PLACEHOLDER, EXAMPLE_HEADLINE)}\n```\n\n"
            f"It is {built}, from the training template (`jaxdistill.data.Template`; `{{text}}` is the "
            f"headline, `{{labels}}` the comma-separated label names):\n\n```json\n{fields}\n```\n")


def _answer_section(template: Template, data_format: str, eos: str | None, ids: Mapping,
                    max_new_tokens: int) -> str:
    answer = template.answer.format(label="<label>")
    shape = answer if data_format == "label" else template.think_open + "<trace>" + template.think_close + answer
    end = f"`{eos}` (id {ids['eos_token_id']})" if eos is not None else None
    stop = (f"stops at token id(s) {ids['eos_token_id']}" if ids["eos_token_id"] is not None
            else "no EOS token, so generation runs to max_new_tokens")
    close = template.think_close.strip()
    lines = [
        "## Answer\n",
        f"The completion is `{shape!r}`" + (f" followed by EOS {end}" if end else "") + ", where `<label>` is "
        "one of the labels below" + ("" if data_format == "label" else " and `<trace>` a short reasoning "
                                     "trace") + ".\n",
        "Parse it as jaxdistill's `parse_answer` does: take the text after the last "
        f"`{close}` (all of it if there is none), strip whitespace and periods, and match it to a label "
        "name ignoring case; failing that, the one label name it contains; otherwise it is unparsable.\n",
        f"`generation_config.json`: greedy decoding (`do_sample=false`), {stop}, at most "
        f"`max_new_tokens={max_new_tokens}` new tokens "
        + ("(the longest answer with its EOS).\n" if data_format == "label"
           else "(training's token limit per example, less one prompt token: trace and answer fit in it).\n"),
    ]
    return "\n".join(lines)


def _usage_section(path: Path, prompt: str, template: Template, eos: str | None) -> str:
    close = template.think_close.strip() or "</think>"
    strip_eos = f".removesuffix({eos!r})" if eos else ""
    code = f'''from transformers import pipeline

pipe = pipeline("text-generation", model={str(path.resolve())!r})
PROMPT = {prompt!r}
LABELS = [pipe.model.config.id2label[i] for i in range(len(pipe.model.config.id2label))]


def complete(headline: str) -> str:
    """The model's completion: greedy, settings from generation_config.json; special tokens kept."""
    out = pipe(PROMPT.replace("{PLACEHOLDER}", headline), add_special_tokens=False, return_full_text=False,
               skip_special_tokens=False)
    return out[0]["generated_text"]{strip_eos}


def parse(completion: str) -> str | None:
    """The label the completion names (see Answer), or None."""
    answer = completion.rsplit({close!r}, 1)[-1].strip().strip(".").strip().lower()
    found = [n for n in LABELS if n.lower() == answer] or [n for n in LABELS if n.lower() in answer]
    return found[0] if len(found) == 1 else None


print(parse(complete({EXAMPLE_HEADLINE!r})))
'''
    return f"## Usage\n\n```python\n{code}```\n"


def _value(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value)
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _bullets(mapping: Mapping, indent: str = "") -> str:
    out = []
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out.append(f"{indent}- {key}:\n" + _bullets(value, indent + "  "))
        else:
            out.append(f"{indent}- {key}: {_value(value)}\n")
    return "".join(out)


def _mapping_section(name: str, mapping: Mapping) -> str:
    return f"## {name.capitalize()}\n\n{_bullets(mapping)}"


def _compression_section(name: str, mapping: Mapping) -> str:
    """The card's entries, led by the student's share of the teacher's parameters when both are given."""
    student, teacher = mapping.get("student_params"), mapping.get("teacher_params")
    lead = (f"{student:,} parameters, {student / teacher:.1%} of the teacher's {teacher:,}.\n\n"
            if isinstance(student, int) and isinstance(teacher, int) and teacher > 0 else "")
    return f"## Compression\n\n{lead}{_bullets(mapping)}"


def _is_results(value) -> bool:
    """A {suite: result} mapping of one model (`evaluate.run.run_suites`)."""
    return isinstance(value, Mapping) and any(isinstance(r, Mapping) and "metrics" in r for r in value.values())


def _eval_section(name: str, evals: Mapping) -> str:
    """One row per (suite, metric): 'value ± stderr' per model; scalar entries become notes."""
    models = [m for m, v in evals.items() if _is_results(v)]
    notes = {k: v for k, v in evals.items() if k not in models}
    suites = list(dict.fromkeys(s for m in models for s in evals[m]))
    rows = ["| suite | metric | n | " + " | ".join(models) + " |", "|---|---|---|" + "---|" * len(models)]
    chance = []
    for suite in suites:
        results = [evals[m].get(suite) for m in models]
        first = next(r for r in results if r is not None)
        metrics = list(dict.fromkeys(k for r in results if r is not None for k in r.get("metrics", {})))
        for metric in metrics:
            cells = [_metric_cell(r, metric) for r in results]
            rows.append(f"| {suite} | {metric} | {_value(first.get('n', ''))} | " + " | ".join(cells) + " |")
        given = first.get("chance")
        if isinstance(given, Mapping) and given:
            chance.append(f"- chance on {suite}: " + ", ".join(f"{k} {_value(v)}" for k, v in given.items()) + "\n")
        elif isinstance(given, (int, float)):  # multiple-choice suites: one number
            chance.append(f"- chance on {suite}: {_value(given)}\n")
    text = "## Evaluation\n\n" + "\n".join(rows) + "\n"
    if chance:
        text += "\n" + "".join(chance)
    if notes:
        text += "\n" + _bullets(notes)
    return text


def _metric_cell(result: Mapping | None, metric: str) -> str:
    if result is None or metric not in result.get("metrics", {}):
        return "-"
    value = result["metrics"][metric]
    err = (result.get("stderr") or {}).get(metric)
    spread = f" ± {err:.4f}" if isinstance(err, float) and math.isfinite(err) else ""
    return (f"{value:.4f}" if isinstance(value, float) else _value(value)) + spread


_SECTION_RENDER = {"compression": _compression_section, "eval": _eval_section}
