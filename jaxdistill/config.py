"""The typed run config: frozen dataclasses, read from YAML + `key=value` overrides, validated at load.

    RunConfig                      the `distill` job (the default experiment: `jaxdistill run`)
      data       DataConfig        classification source, supervision format, D (subsample)
      teacher    TeacherConfig     checkpoint or a model built here; where teacher targets come from
      student    StudentConfig     initialisation; what trains (full | lora) and the LoRA adapters
      loss       losses.LossConfig the blended chain-of-thought loss (or kind=divergence)
      optimizer  OptimizerConfig   AdamW with warm-up and decay
      train      TrainConfig       steps, batch, checkpoints, logging
      pruning    PruningConfig | None   iterative structured pruning (null: none)
      eval       evaluate.EvalConfig | None   held-out split and suites for teacher / pruned-only / student
    SmokeConfig                    the `model-smoke` job

Every knob has one home, with its default, in these dataclasses; each section is the object the
layer that uses it takes (`losses.LossConfig`, `train.OptimizerConfig`, ...), so nothing below the
jobs reads a raw dict. `load_config` merges, in order, the dataclass defaults, a YAML file and
dotted overrides (`train.steps=10`, values parsed as YAML), then decodes the result with draccus;
every unknown key, bad type, bad choice, bad range, missing path and incompatible combination is a
`RunConfigError` naming the value and what would be valid — before any work starts.

(Over 350 lines on purpose: the whole schema, with its cross-field rules, reads in one file.)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import draccus
import yaml

from jaxdistill.data import FORMATS
from jaxdistill.data.teacher_cache import TARGET_METHODS
from jaxdistill.evaluate.loglik import EvaluationError
from jaxdistill.evaluate.run import EvalConfig
from jaxdistill.losses import LossConfig, LossInputError
from jaxdistill.models import ConfigError, ModelConfig
from jaxdistill.pruning import IMPORTANCE_METHODS, PruningError, PruningSchedule
from jaxdistill.pruning.widths import RATIO_OF, SPLITS
from jaxdistill.train import LoraConfig, OptimizerConfig, TrainConfig, TrainingError
from jaxdistill.train.step import TEACHER_TARGETS, TRAINABLE


class RunConfigError(ValueError):
    """A config file or override that names an unknown key or has a bad value."""


def check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise RunConfigError(f"{name}={value!r}; valid: {', '.join(map(str, valid))}")


def _check_path(name: str, value: str | None) -> None:
    if value is not None and not Path(value).exists():
        raise RunConfigError(f"{name}={value!r}: no such file or directory")


def _looks_like_path(value: str) -> bool:
    """A data source given as a local file (a hub id such as nvidia/FinHeadlineMix is not one)."""
    return value.startswith(("/", "./", "../", "~")) or Path(value).suffix.lower() in (
        ".parquet", ".csv", ".jsonl", ".json")


DEMO_TEACHER = {"model_type": "qwen3", "hidden_size": 128, "intermediate_size": 384, "num_layers": 4,
                "num_heads": 4, "num_kv_heads": 2, "head_dim": 32, "qk_norm": True, "tie_word_embeddings": True}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "finance_topic"      # finance_topic | finheadlinemix | a local file | a hub dataset id
    split: str = "train"
    text_column: str = "text"
    label_column: str = "label"
    rationale_column: str | None = None  # teacher traces, needed by the cot and blended formats
    format: str = "label"              # label | cot | blended
    max_len: int = 96                  # tokens per example (prompt cut from the left beyond it)
    subsample: int | None = 2000       # D, the data-set size axis (null: all)
    tokenizer: str | None = None       # null: the shipped 4096-token BPE; or a local HF tokenizer dir
    instruction: str | None = "Topic of: {text}"  # null: the default instruction and chat template

    def __post_init__(self):
        check_choice("data.format", self.format, FORMATS)
        if self.format != "label" and self.rationale_column is None:
            raise RunConfigError(f"data.format={self.format!r} needs data.rationale_column (the column "
                                 "holding the teacher's reasoning traces); or use data.format=label")
        if self.max_len < 2:
            raise RunConfigError(f"data.max_len={self.max_len}: must be >= 2")
        if self.subsample is not None and self.subsample < 1:
            raise RunConfigError(f"data.subsample={self.subsample}: must be >= 1, or null for all")


@dataclasses.dataclass(frozen=True)
class TeacherCacheConfig:
    method: str = "sample"             # sample (unbiased) | topk (biased)
    k: int = 16                        # samples or top-k tokens per supervised position

    def __post_init__(self):
        check_choice("teacher.cache.method", self.method, TARGET_METHODS)
        if self.k < 1:
            raise RunConfigError(f"teacher.cache.k={self.k}: must be >= 1")


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    path: str | None = None            # a local HF checkpoint directory; null: build one here
    targets: str = "live"              # where the student's teacher targets come from: none | live | cached
    prepare_steps: int = 150           # supervised steps for a teacher built here
    model: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEMO_TEACHER))
    cache: TeacherCacheConfig = dataclasses.field(default_factory=TeacherCacheConfig)

    def __post_init__(self):
        check_choice("teacher.targets", self.targets, TEACHER_TARGETS)
        if self.prepare_steps < 0:
            raise RunConfigError(f"teacher.prepare_steps={self.prepare_steps}: must be >= 0")
        if self.path is None:
            try:
                ModelConfig(vocab_size=1, **self.model)
            except (ConfigError, TypeError) as err:
                raise RunConfigError(f"teacher.model: {err}") from err


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    path: str | None = None            # a local HF checkpoint directory; null: see init
    init: str = "teacher"              # without a path: teacher (copy its weights) | random (its shape)
    trainable: str = "full"            # full | lora
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)

    def __post_init__(self):
        check_choice("student.init", self.init, ("teacher", "random"))
        check_choice("student.trainable", self.trainable, TRAINABLE)


@dataclasses.dataclass(frozen=True)
class PruningConfig:
    final_ratio: float = 0.5           # fraction of parameters removed at the end
    ratio_of: str = "total"            # total | non_embedding
    stages: int = 3
    kind: str = "cubic"                # linear | geometric | cubic
    interval: int = 30
    start: int = 20
    method: str = "activation"         # importance: activation | magnitude | taylor
    split: str = "width"               # width | depth | mixed
    multiple: int = 32                 # widths rounded to multiples of this
    calibration_batches: int = 4

    def __post_init__(self):
        check_choice("pruning.ratio_of", self.ratio_of, RATIO_OF)
        check_choice("pruning.method", self.method, IMPORTANCE_METHODS)
        check_choice("pruning.split", self.split, SPLITS)
        self.schedule()  # validates final_ratio, stages, kind, interval, start
        if self.multiple < 1 or self.calibration_batches < 1:
            raise RunConfigError(f"pruning.multiple={self.multiple}, pruning.calibration_batches="
                                 f"{self.calibration_batches}: both must be >= 1")

    def schedule(self) -> PruningSchedule:
        return PruningSchedule(self.final_ratio, stages=self.stages, kind=self.kind, interval=self.interval,
                               start=self.start)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The distill job: data -> teacher -> (cache) -> distil + prune the student -> export."""

    job: str = "distill"
    run_dir: str = "runs/distill-demo"
    seed: int = 0
    mesh: tuple[int, int, int] = (1, 1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    student: StudentConfig = dataclasses.field(default_factory=StudentConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    pruning: PruningConfig | None = dataclasses.field(default_factory=PruningConfig)
    eval: EvalConfig | None = dataclasses.field(default_factory=EvalConfig)  # null: no evaluation, no held-out split

    def __post_init__(self):
        check_choice("job", self.job, ("distill",))
        targets, loss = self.teacher.targets, self.loss
        if targets == "none" and loss.uses_teacher:
            raise RunConfigError(
                f"teacher.targets=none, but loss.kind={loss.kind!r} with loss.w_kl={loss.w_kl} needs the "
                "teacher: set teacher.targets=live|cached, or loss.kind=blended with loss.w_kl=0 (no teacher)")
        if targets == "cached" and loss.uses_teacher and loss.divergence != "forward_kl":
            raise RunConfigError(f"teacher.targets=cached estimates forward_kl only, not loss.divergence="
                                 f"{loss.divergence!r}: use loss.divergence=forward_kl or teacher.targets=live")
        if self.student.init == "teacher" and self.student.path is None and targets == "none" \
                and self.teacher.path is None and self.teacher.prepare_steps == 0:
            raise RunConfigError("student.init=teacher copies an untrained teacher (teacher.prepare_steps=0, "
                                 "no teacher.path): set one of them, or student.init=random")
        if targets == "cached" and not loss.uses_teacher:
            raise RunConfigError(f"teacher.targets=cached builds a teacher cache that loss.w_kl={loss.w_kl} never "
                                 "reads: set teacher.targets=none")
        if self.data.max_len > self.train.seq_len:
            raise RunConfigError(f"data.max_len={self.data.max_len} > train.seq_len={self.train.seq_len}: an "
                                 "example must fit in a row")
        if any(n == 0 or n < -1 for n in self.mesh) or list(self.mesh).count(-1) > 1:
            raise RunConfigError(f"mesh={list(self.mesh)}: sizes >= 1, or -1 (the remaining devices) at most once")
        if self.pruning is not None:
            last = self.pruning.schedule().stage_steps()[-1]
            if last >= self.train.steps:
                raise RunConfigError(f"the last pruning stage is at step {last} (pruning.start + (stages - 1) "
                                     f"* interval), not before train.steps={self.train.steps}")

    def check_paths(self) -> None:
        """Every local path the run reads exists."""
        _check_path("teacher.path", self.teacher.path)
        _check_path("student.path", self.student.path)
        _check_path("data.tokenizer", self.data.tokenizer)
        if _looks_like_path(self.data.source):
            _check_path("data.source", self.data.source)


@dataclasses.dataclass(frozen=True)
class SmokeBatch:
    rows: int = 4
    seq_len: int = 256
    examples_per_row: int = 3

    def __post_init__(self):
        if self.rows < 1 or not 1 <= self.examples_per_row <= self.seq_len:
            raise RunConfigError(f"batch.rows={self.rows} (>= 1), batch.examples_per_row={self.examples_per_row} "
                                 f"(1..seq_len={self.seq_len}): out of range")


@dataclasses.dataclass(frozen=True)
class SmokeConfig:
    """The model smoke job: a random model, HF export + import round trip, a packed forward."""

    job: str = "model-smoke"
    run_dir: str = "runs/model-smoke"
    seed: int = 0
    model: dict[str, Any] = dataclasses.field(default_factory=lambda: {**DEMO_TEACHER, "vocab_size": 1024})
    batch: SmokeBatch = dataclasses.field(default_factory=SmokeBatch)

    def __post_init__(self):
        try:
            ModelConfig(**self.model)
        except (ConfigError, TypeError) as err:
            raise RunConfigError(f"model: {err}") from err

    def check_paths(self) -> None:
        """The smoke job reads no files."""


JOBS: dict[str, type] = {"distill": RunConfig, "model-smoke": SmokeConfig}


def packaged_config(name: str) -> Path:
    """A YAML shipped in the package (`jaxdistill/configs/NAME`)."""
    return Path(__file__).resolve().parent / "configs" / name


def parse_override(text: str) -> dict[str, Any]:
    """'a.b=3' -> {'a': {'b': 3}}; the value is parsed as YAML (numbers, booleans, null, lists)."""
    if "=" not in text:
        raise RunConfigError(f"override {text!r} is not key=value (e.g. train.steps=10)")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise RunConfigError(f"override {text!r}: empty key")
    value: Any = yaml.safe_load(raw) if raw else ""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def merge(base: Any, update: Any) -> Any:
    """`update` merged into `base`, dicts recursively (a non-dict replaces what was there)."""
    if not isinstance(base, dict) or not isinstance(update, dict):
        return update
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(base.get(key), value)
    return out


def _check_keys(cls, tree: dict, where: str = "") -> None:
    """Every key names a field of the dataclass (recursively), else the valid keys are listed."""
    hints = typing.get_type_hints(cls)
    for key, value in tree.items():
        if key not in hints:
            raise RunConfigError(f"unknown config key {where + key!r}; valid keys here: "
                                 f"{', '.join(sorted(f.name for f in dataclasses.fields(cls)))}")
        sub = next((t for t in (hints[key], *typing.get_args(hints[key])) if dataclasses.is_dataclass(t)), None)
        if sub is not None and isinstance(value, dict):
            _check_keys(sub, value, f"{where}{key}.")
        elif sub is not None and (value is not None or type(None) not in typing.get_args(hints[key])):
            raise RunConfigError(f"config key {where + key!r} is a section; set its keys "
                                 f"({', '.join(f.name for f in dataclasses.fields(sub))}) instead of {value!r}")
        elif sub is None and not _has_type(value, hints[key]):
            raise RunConfigError(f"config key {where + key!r} = {value!r}: expected {_type_name(hints[key])}")


def _has_type(value, hint) -> bool:
    """Whether a YAML value fits a field type (an int may stand for a float, a bool for nothing else)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return len(value) == len(items) and all(_has_type(v, a) for v, a in zip(value, items))
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "").replace("NoneType", "null").replace("None", "null")


def job_of(file: dict, overrides=()) -> str:
    """The job a command line asks for: the last job=... override, else the config file's, else distill."""
    job = file.get("job", "distill")
    for text in overrides:
        if text.startswith("job="):
            job = yaml.safe_load(text.split("=", 1)[1])
    if not isinstance(job, str):
        raise RunConfigError(f"job={job!r}; valid: {', '.join(JOBS)}")
    return job


def _read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RunConfigError(f"config file {str(path)!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RunConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(loaded, dict):
        raise RunConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
    return loaded


def _reason(err: BaseException) -> str:
    """The message of the validation error a decoding failure wraps (draccus wraps `__post_init__`
    errors in a generic ParsingError), or draccus' own message for a bad type or shape."""
    while isinstance(err, draccus.utils.ParsingError) and err.__cause__ is not None:
        err = err.__cause__
    ours = (RunConfigError, LossInputError, PruningError, TrainingError, ConfigError, EvaluationError)
    return str(err) if isinstance(err, ours) else f"bad config value: {err}"


def load_config(path: str | Path | None = None, overrides=(), *, check_paths: bool = True):
    """The typed config of the job a file + overrides describe (`RunConfig` unless job=model-smoke).

    Order: the dataclass defaults, then the file, then each override. Dotted overrides merge into
    free-form mappings (`teacher.model.hidden_size=32`); a file that sets such a mapping replaces it
    (a model the file describes never inherits the default model's other fields)."""
    file = _read_yaml(path) if path is not None else {}
    job = job_of(file, overrides)
    check_choice("job", job, JOBS)
    cls = JOBS[job]
    tree = draccus.encode(cls())
    _check_keys(cls, file)
    tree = merge(_without_mappings(cls, tree, file), file)
    for update in map(parse_override, overrides):
        _check_keys(cls, update)
        tree = merge(tree, update)
    try:
        config = draccus.decode(cls, tree)
    except (draccus.utils.DecodingError, draccus.utils.ParsingError, RunConfigError, LossInputError, PruningError,
            TrainingError, EvaluationError) as err:
        raise RunConfigError(_reason(err)) from err
    if check_paths:
        config.check_paths()
    return config


def _without_mappings(cls, tree: dict, update: dict) -> dict:
    """`tree` with the free-form mapping fields that `update` sets emptied (so they are replaced)."""
    out = dict(tree)
    hints = typing.get_type_hints(cls)
    for key, value in update.items():
        sub = next((t for t in (hints[key], *typing.get_args(hints[key])) if dataclasses.is_dataclass(t)), None)
        if sub is not None and isinstance(value, dict) and isinstance(tree.get(key), dict):
            out[key] = _without_mappings(sub, tree[key], value)
        elif typing.get_origin(hints[key]) is dict:
            out[key] = {}
    return out


def to_dict(config) -> dict[str, Any]:
    """A config as plain YAML/JSON-able data (what `config show` prints, what checkpoints record)."""
    return draccus.encode(config)


def dump(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
