"""The typed run config: frozen dataclasses, read from YAML + `key=value` overrides, validated at load.

    RunConfig                      the `distill` job (the default experiment: `jaxdistill run`)
      data       DataConfig        classification source, supervision format, D (subsample)
      teacher    TeacherConfig     model source (dir | .gguf | hub id | preset) or one built here; fine-tuning,
                                   rationales (traces), where teacher targets come from
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

`schema.py` holds the dataclasses and their checks, `loading.py` the reading and decoding.
"""

from jaxdistill.config.loading import (dump, job_of, load_config, load_yaml, merge, packaged_config, parse_override,
                                      to_dict)
from jaxdistill.config.schema import (DEMO_TEACHER, JOBS, DataConfig, PruningConfig, RunConfig, RunConfigError,
                                      SmokeBatch, SmokeConfig, StudentConfig, TeacherCacheConfig, TeacherConfig,
                                      TracesConfig, check_choice)

__all__ = ["load_yaml", "DEMO_TEACHER", "JOBS", "DataConfig", "PruningConfig", "RunConfig", "RunConfigError", "SmokeBatch",
           "SmokeConfig", "StudentConfig", "TeacherCacheConfig", "TeacherConfig", "TracesConfig", "check_choice",
           "dump", "job_of", "load_config", "merge", "packaged_config", "parse_override", "to_dict"]
