"""The run config's schema: frozen dataclasses with their defaults and every check, per field and
across fields (see `jaxdistill.config` for the layout). Each section is the object the layer that uses
it takes (`losses.LossConfig`, `train.OptimizerConfig`, ...); the checks raise `RunConfigError`
naming the bad value and what would be valid.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from jaxdistill.data import FORMATS
from jaxdistill.data.teacher_cache import TARGET_METHODS
from jaxdistill.evaluate.run import EvalConfig
from jaxdistill.losses import LossConfig
from jaxdistill.models import ConfigError, ModelConfig
from jaxdistill.pruning import IMPORTANCE_METHODS, PruningSchedule
from jaxdistill.pruning.widths import RATIO_OF, SPLITS
from jaxdistill.train import LoraConfig, OptimizerConfig, TrainConfig
from jaxdistill.train.step import TEACHER_TARGETS, TRAINABLE


class RunConfigError(ValueError):
    """A config file or override that names an unknown key or has a bad value."""


def check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise RunConfigError(f"{name}={value!r}; valid: {', '.join(map(str, valid))}")


def _check_path(name: str, value: str | None) -> None:
    if value is not None and not Path(value).exists():
        raise RunConfigError(f"{name}={value!r}: no such file or directory")


def _is_local(value: str) -> bool:
    """A model given as a local path (not a hub id such as org/name, nor a preset name)."""
    return value.startswith(("/", "./", "../", "~")) or value.endswith(".gguf") or Path(value).exists()


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
    rationale_column: str | None = None  # traces in the data; null with format cot|blended: the teacher writes them
    format: str = "blended"            # label | cot | blended
    max_len: int = 128                 # tokens per example (prompt cut from the left beyond it)
    subsample: int | None = 160        # D, the data-set size axis (null: all)
    tokenizer: str | None = None       # null: the teacher's (a teacher built here: the shipped 4096-token BPE)
    instruction: str | None = "Topic of: {text}"  # null: the default instruction and chat template
    # names of the classes, in label-id order: numeric labels (0, 1, 2) are taught and exported as these
    # names; with names given, a label outside them is unknown (null: the source's own names)
    label_names: tuple[str, ...] | None = None
    # the largest share of rows a filter may drop (empty text, unknown label, too long) before the run
    # stops with the counts; 1.0 allows any loss
    max_dropped: float = 0.05

    def __post_init__(self):
        check_choice("data.format", self.format, FORMATS)
        if self.label_names is not None and (len(self.label_names) < 2 or len(set(self.label_names)) < len(
                self.label_names) or not all(str(n).strip() for n in self.label_names)):
            raise RunConfigError(f"data.label_names={list(self.label_names)}: at least two distinct, non-empty "
                                 "names, or null")
        if not 0 <= self.max_dropped <= 1:
            raise RunConfigError(f"data.max_dropped={self.max_dropped}: a share in [0, 1]")
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
class TracesConfig:
    """Teacher-written rationales for the cot and blended formats (when the data has none): the teacher
    is given the headline and its gold label and explains the label in one or two sentences."""

    max_new_tokens: int = 32
    batch_size: int = 64
    prompt: str | None = None          # a user message with {text} and {label}; null: the default

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise RunConfigError(f"teacher.traces.max_new_tokens={self.max_new_tokens}, teacher.traces.batch_size="
                                 f"{self.batch_size}: both must be >= 1")
        if self.prompt is not None and ("{text}" not in self.prompt or "{label}" not in self.prompt):
            raise RunConfigError(f"teacher.traces.prompt={self.prompt!r}: must contain {{text}} and {{label}}")


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    # a local HF checkpoint directory, a .gguf file, a hub id or a preset (smollm2-135m-instruct);
    # null: a model built here from teacher.model and trained from scratch
    path: str | None = "smollm2-135m-instruct"
    hub: bool | None = None            # try the Hugging Face hub for presets and hub ids (null: when reachable)
    targets: str = "live"              # where the student's teacher targets come from: none | live | cached
    prepare_steps: int = 28            # supervised fine-tuning steps on the task (label format) before distilling
    learning_rate: float | None = 3e-4  # for those steps (null: optimizer.learning_rate)
    # headlines it fine-tunes on, drawn from the training split independently of D (null: the run's D)
    prepare_subsample: int | None = 2000
    model: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEMO_TEACHER))
    cache: TeacherCacheConfig = dataclasses.field(default_factory=TeacherCacheConfig)
    traces: TracesConfig = dataclasses.field(default_factory=TracesConfig)

    def __post_init__(self):
        check_choice("teacher.targets", self.targets, TEACHER_TARGETS)
        if self.prepare_steps < 0:
            raise RunConfigError(f"teacher.prepare_steps={self.prepare_steps}: must be >= 0")
        if self.prepare_subsample is not None and self.prepare_subsample < 1:
            raise RunConfigError(f"teacher.prepare_subsample={self.prepare_subsample}: must be >= 1, or null")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise RunConfigError(f"teacher.learning_rate={self.learning_rate}: must be > 0, or null")
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
    """The distill job: data -> teacher (resolve, fine-tune, traces) -> (cache) -> distil + prune the
    student -> compact -> evaluate -> export.

    The defaults are the embedded experiment (`jaxdistill run`): SmolLM2-135M-Instruct fine-tuned on the
    shipped finance-topic headlines, a student distilled with the blended loss over teacher-written
    rationales while pruned in three cubic stages to 30% of its parameters removed, then teacher,
    pruned-only baseline and student evaluated in-domain and on ARC-Easy and PIQA.
    `jaxdistill/configs/tiny.yaml` is the small from-scratch configuration tests and CI use."""

    job: str = "distill"
    run_dir: str = "runs/smollm2-finance"
    seed: int = 0
    cache_dir: str | None = None       # models, prepared teachers, traces (null: $JAXDISTILL_CACHE or ~/.cache/jaxdistill)
    mesh: tuple[int, int, int] = (1, 1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    student: StudentConfig = dataclasses.field(default_factory=StudentConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=lambda: OptimizerConfig(
        learning_rate=2e-4, warmup_steps=3))
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        steps=12, batch_size=8, seq_len=128, log_every=2, checkpoint_every=10))
    pruning: PruningConfig | None = dataclasses.field(default_factory=lambda: PruningConfig(
        final_ratio=0.3, stages=3, interval=3, start=2))
    eval: EvalConfig | None = dataclasses.field(default_factory=lambda: EvalConfig(
        suites=("in_domain", "arc_easy", "piqa"), limit=100))  # null: no evaluation, no held-out split

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
        if self.data.format != "label" and self.data.rationale_column is None and self.teacher.path is None:
            raise RunConfigError(f"data.format={self.data.format!r} needs reasoning traces: set data.rationale_column "
                                 "(traces in the data) or teacher.path (a pretrained teacher writes them); "
                                 "or use data.format=label")
        if self.data.max_len > self.train.seq_len:
            raise RunConfigError(f"data.max_len={self.data.max_len} > train.seq_len={self.train.seq_len}: an "
                                 "example must fit in a row")
        if any(n == 0 or n < -1 for n in self.mesh) or list(self.mesh).count(-1) > 1:
            raise RunConfigError(f"mesh={list(self.mesh)}: sizes >= 1, or -1 (the remaining devices) at most once")
        if self.pruning is not None:
            last = self.pruning.start + (self.pruning.stages - 1) * self.pruning.interval  # the last stage's step
            if last >= self.train.steps:
                raise RunConfigError(f"the last pruning stage is at step {last} (pruning.start + (stages - 1) "
                                     f"* interval), not before train.steps={self.train.steps}")

    def check_paths(self) -> None:
        """Every local path the run reads exists."""
        if self.teacher.path is not None and _is_local(self.teacher.path):
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
