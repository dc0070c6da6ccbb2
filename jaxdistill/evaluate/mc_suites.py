"""The general-knowledge multiple-choice suites: their shipped files and lm-evaluation-harness prompts.

`SUITES` is the one table. Each row of a suite's file becomes a `Question`: option j is the text
`TARGET_DELIMITER + answers[j]` scored after `contexts[j]`. Ordinary suites share one context;
WinoGrande's partial scoring gives each option its own context and the same continuation. A k-shot
prompt is

    description + sum_{s in shots} (s.contexts[s.gold] + " " + s.answers[s.gold] + "\\n\\n") + context_j

exactly as the harness renders a plain-text prompt. Contexts, per suite (harness YAML -> shipped row):

    mmlu            "{question.strip()}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:"  answers A-D
                    header "The following are multiple choice questions (with answers) about {subject}.\\n\\n",
                    k-shot: the first k dev rows of the same subject (default 5)
    arc_*           "Question: {question}\\nAnswer:"                          answers: the choices
    piqa            "Question: {goal}\\nAnswer:"
    boolq           "{passage}\\nQuestion: {question}?\\nAnswer:"             answers: no, yes
    openbook_qa     "{question_stem}"
    commonsense_qa  "Question: {question}\\nA. ..\\nD. ..\\nAnswer:"         answers: letters
    copa            "{premise without its period} because|therefore"        answers: lower-cased first letter
    siqa            "Q: {context} {question}\\nA:"                             answers: the answer texts
    winogrande      "{sentence up to _}{option}" per option, continuation the rest of the sentence
    truthfulqa_mc1  the harness's six-QA preamble + "\\n\\n", then "Q: {question}\\nA:"; answers: mc1 targets

The llm-foundry rows carry a ready-made `query`; its fields are read back with a regular expression
and refilled into the harness's template. Known differences from the harness, all from the shipped
copies or deliberate: llm-foundry's CommonsenseQA keeps 4 of the 5 choices and its SIQA 2 of the 3
answers (chance 1/4 and 1/2); TruthfulQA is the 2025 `mc_task.json` (790 questions, not 817; its
empty false answers are dropped); COPA's continuation has one leading space (the harness's
`doc_to_choice` adds a second on top of the delimiter). Suites other than MMLU ship only their
evaluation split, so their k-shot examples are drawn (seeded, without replacement) from the same
file, never the question itself.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxdistill.data.sources import data_dir
from jaxdistill.evaluate.loglik import EvaluationError

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
MMLU_HEADER = "The following are multiple choice questions (with answers) about {subject}.\n\n"
TRUTHFULQA_PREAMBLE = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain.\n\n")


@dataclasses.dataclass(frozen=True)
class Question:
    """Option j scores `TARGET_DELIMITER + answers[j]` after `contexts[j]`; `gold` is the right option."""
    contexts: tuple[str, ...]   # [J]
    answers: tuple[str, ...]    # [J]
    gold: int
    subject: str = ""           # MMLU's subject; "" for single-file suites

    def __post_init__(self):
        if len(self.contexts) != len(self.answers) or len(self.answers) < 2:
            raise ValueError(f"{len(self.contexts)} contexts for {len(self.answers)} answers: need one "
                             "context per answer and at least two answers")
        for kind, texts in (("context", self.contexts), ("answer", self.answers)):
            bad = [j for j, text in enumerate(texts) if not (isinstance(text, str) and text)]
            if bad:
                raise ValueError(f"{kind} of option {bad[0]} is {texts[bad[0]]!r}: expected a non-empty string")
        if isinstance(self.gold, bool) or not isinstance(self.gold, int) or not 0 <= self.gold < len(self.answers):
            raise ValueError(f"gold {self.gold!r} is not an option index 0..{len(self.answers) - 1}")

    @property
    def solved(self) -> str:
        """The question with its right answer: the text of one k-shot example."""
        return self.contexts[self.gold] + TARGET_DELIMITER + self.answers[self.gold]


@dataclasses.dataclass(frozen=True)
class Suite:
    """Where a suite's rows live, how one becomes a `Question`, and its k-shot and metric defaults."""
    files: str                          # under data_dir(); "{subject}" in the name: one file per subject
    parse: Callable[[object], Question]  # one decoded row -> Question (raises on a malformed row)
    num_fewshot: int = 0
    description: str = ""               # before the shots; "{subject}" -> the subject, "_" as spaces
    shots: str | None = None            # k-shot pool per subject (its first k rows); None: the same file
    metrics: tuple[str, ...] = ("acc", "acc_norm")


def _foundry_query(row: dict, *, pattern: str, template: str, answers: tuple[str, ...] = ()) -> Question:
    """An llm-foundry row {query, choices, gold}: the query's fields (named groups of `pattern`)
    refilled into `template`; the answers are the row's choices, or the query's groups `answers`."""
    match = re.fullmatch(pattern, row["query"], re.S)
    if match is None:
        raise ValueError(f"query {row['query'][:80]!r} does not match {pattern!r}")
    fields = match.groupdict()
    options = tuple(fields[name] for name in answers) if answers else tuple(row["choices"])
    if len(options) != len(row["choices"]):
        raise ValueError(f"{len(row['choices'])} choices but {len(options)} answers in the query")
    return Question((template.format(**fields),) * len(options), options, row["gold"])


def _partial(row: dict) -> Question:
    """WinoGrande {context_options, continuation, gold}: one context per option, a shared answer."""
    options = tuple(row["context_options"])
    return Question(options, (row["continuation"],) * len(options), row["gold"])


def _truthfulqa_mc1(row: dict) -> Question:
    """TruthfulQA mc_task.json {question, mc1_targets: {answer: 0|1}}: exactly one answer is true.
    Empty false answers (an artefact of 19 questions of the 2025 file) are not options."""
    targets = {answer: label for answer, label in row["mc1_targets"].items() if answer or label}
    labels = list(targets.values())
    if labels.count(1) != 1:
        raise ValueError(f"mc1_targets has {labels.count(1)} true answers, expected exactly 1")
    return Question((f"Q: {row['question']}\nA:",) * len(targets), tuple(targets), labels.index(1))


def _mmlu(row: list[str]) -> Question:
    """A headerless MMLU CSV row question,A,B,C,D,answer."""
    if len(row) != 6 or row[5] not in ("A", "B", "C", "D"):
        raise ValueError(f"{row!r}: expected 6 fields question,A,B,C,D,answer with answer one of A, B, C, D")
    context = row[0].strip() + "".join(f"\n{letter}. {text}" for letter, text in zip("ABCD", row[1:5]))
    return Question((context + "\nAnswer:",) * 4, ("A", "B", "C", "D"), "ABCD".index(row[5]))


_MC = "general_mc/mc_suites/"
_ARC = functools.partial(_foundry_query, pattern=r"Question: (?P<question>.*)",
                         template="Question: {question}\nAnswer:")
SUITES: dict[str, Suite] = {
    "mmlu": Suite("general_mc/mmlu/test/{subject}_test.csv", _mmlu, num_fewshot=5, description=MMLU_HEADER,
                  shots="general_mc/mmlu/dev/{subject}_dev.csv", metrics=("acc",)),
    "arc_easy": Suite(_MC + "arc_easy.jsonl", _ARC),
    "arc_challenge": Suite(_MC + "arc_challenge.jsonl", _ARC),
    "piqa": Suite(_MC + "piqa.jsonl", functools.partial(
        _foundry_query, pattern=r"Question: (?P<goal>.*)\n", template="Question: {goal}\nAnswer:")),
    "boolq": Suite(_MC + "boolq.jsonl", functools.partial(
        _foundry_query, pattern=r"Passage: (?P<passage>.*)\nQuestion: (?P<question>.*)\?",
        template="{passage}\nQuestion: {question}?\nAnswer:")),
    "openbook_qa": Suite(_MC + "openbook_qa.jsonl", functools.partial(
        _foundry_query, pattern=r"(?P<question_stem>.*)", template="{question_stem}")),
    "commonsense_qa": Suite(_MC + "commonsense_qa.jsonl", functools.partial(
        _foundry_query, pattern=(r"Question: (?P<question>.*)\nChoices:\nA\. (?P<A>.*)\nB\. (?P<B>.*)"
                                 r"\nC\. (?P<C>.*)\nD\. (?P<D>.*)\nAnswer:"),
        template="Question: {question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:")),
    "copa": Suite(_MC + "copa.jsonl", functools.partial(
        _foundry_query, pattern=r"(?P<premise>.*)", template="{premise}")),
    "siqa": Suite(_MC + "siqa.jsonl", functools.partial(
        _foundry_query, pattern=(r"Context: (?P<context>.*)\nQuestion: (?P<question>.*)\nChoices:"
                                 r"\nA\. (?P<A>.*)\nB\. (?P<B>.*)\nAnswer:"),
        template="Q: {context} {question}\nA:", answers=("A", "B"))),
    "winogrande": Suite(_MC + "winogrande.jsonl", _partial),
    "truthfulqa_mc1": Suite("general_mc/truthfulqa/mc_task.json", _truthfulqa_mc1,
                            description=TRUTHFULQA_PREAMBLE),
}


def suite(name: str) -> Suite:
    if name not in SUITES:
        raise EvaluationError(f"unknown suite {name!r}; available suites: {', '.join(SUITES)}")
    return SUITES[name]


def _subject_files(pattern: str) -> dict[str, Path]:
    """subject -> file, in sorted subject order ({"": file} when the name has no "{subject}")."""
    path = data_dir() / pattern
    if "{subject}" not in path.name:
        return {"": path}
    head, tail = path.name.split("{subject}")
    files = {p.name[len(head):len(p.name) - len(tail)]: p for p in sorted(path.parent.glob(f"{head}*{tail}"))}
    if not files:
        raise EvaluationError(f"no files {path.name.replace('{subject}', '*')} in {path.parent}")
    return files


def _records(path: Path) -> list[tuple[str, object]]:
    """(where, raw record) of a .jsonl (a JSON line), .csv (a field list, no header) or .json (a list item)."""
    if not path.is_file():
        raise EvaluationError(f"suite file {path} does not exist (data folder {data_dir()}, set by JAXDISTILL_DATA)")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [(f"line {i}", line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if path.suffix == ".csv":
        reader, records, start = csv.reader(io.StringIO(text, newline="")), [], 1
        for row in reader:
            records.append((f"line {start}", row))
            start = reader.line_num + 1
        return records
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise EvaluationError(f"{path}: not valid JSON ({err})") from err
    return [(f"item {i}", item) for i, item in enumerate(items, 1)]


def load_file(path: Path, parse: Callable[[object], Question]) -> list[Question]:
    """Every row of `path` as a `Question`; a malformed row raises naming the file and line."""
    decode = json.loads if path.suffix == ".jsonl" else (lambda record: record)
    questions = []
    for where, record in _records(path):
        try:
            questions.append(parse(decode(record)))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise EvaluationError(f"{path}, {where}: malformed row ({type(err).__name__}: {err})") from err
    return questions


def draw_shots(pool: list[Question], index: int, k: int, seed: int) -> list[Question]:
    """k questions of `pool` other than pool[index], without replacement, from rng((seed, index))."""
    picks = np.random.default_rng((seed, index)).choice(len(pool) - 1, size=k, replace=False)
    return [pool[j + (j >= index)] for j in picks]


def with_prompt(question: Question, description: str, shots: list[Question], subject: str) -> Question:
    """The question with description and k-shot examples before each of its contexts."""
    prefix = description + "".join(shot.solved + FEWSHOT_DELIMITER for shot in shots)
    return dataclasses.replace(question, contexts=tuple(prefix + c for c in question.contexts), subject=subject)


def load_questions(name: str, *, limit: int | None = None, num_fewshot: int | None = None,
                   seed: int = 0) -> list[Question]:
    """The suite's questions with their full prompts, in file order. `limit`: the first N rows of
    each file (for MMLU, of each subject, as the harness's --limit applies per subject task)."""
    spec = suite(name)
    k = spec.num_fewshot if num_fewshot is None else num_fewshot
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise EvaluationError(f"num_fewshot={k!r}: expected a whole number >= 0")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise EvaluationError(f"limit={limit!r}: expected None or a whole number >= 1")
    out = []
    for subject, path in _subject_files(spec.files).items():
        pool = load_file(path, spec.parse)
        fixed = load_file(data_dir() / spec.shots.format(subject=subject), spec.parse) if spec.shots and k else []
        available = len(fixed) if spec.shots else len(pool) - 1
        if k > available:
            raise EvaluationError(f"num_fewshot={k} for suite {name!r}: {path.name} offers {available} "
                                  "k-shot examples")
        description = spec.description.format(subject=subject.replace("_", " "))
        for i, question in enumerate(pool[:limit]):
            shots = fixed[:k] if spec.shots else draw_shots(pool, i, k, seed)
            out.append(with_prompt(question, description, shots, subject))
    return out
