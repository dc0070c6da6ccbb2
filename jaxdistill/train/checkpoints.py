"""Checkpoints: an orbax CheckpointManager around (train state, data iterator state, run config,
and the student's model config).

orbax writes each step to a temporary directory and renames it when complete, so a kill mid-save
leaves the previous checkpoint as the latest loadable one; a save that fails (a full disk) removes its
temporary directory before the error goes on. A checkpoint found damaged on restore (a file deleted
or truncated) is moved aside by `quarantine` to `<dir>.damaged/<step>` (never deleted) once an
older intact one has been restored (`train.loop.resume`). The model item (`model_to_json`) records
the shape the state was saved in — a student compacted mid-run has a smaller one than it started
with; checkpoints written before that item existed simply have none (`saved_model` -> None).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxdistill.atomic_files import no_space

from jaxdistill.models import ModelConfig
from jaxdistill.train.step import TrainState


def model_to_json(config: ModelConfig) -> dict[str, Any]:
    """Every `ModelConfig` field as JSON (`model_from_json` reads it back equal)."""
    out = dataclasses.asdict(config)
    out["rope_scaling"] = config.rope_params or None
    if isinstance(config.eos_token_id, tuple):
        out["eos_token_id"] = list(config.eos_token_id)
    return out


def model_from_json(saved: dict[str, Any]) -> ModelConfig:
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    saved = {k: v for k, v in saved.items() if k in fields}
    if isinstance(saved.get("eos_token_id"), list):
        saved["eos_token_id"] = tuple(saved["eos_token_id"])
    return ModelConfig(**saved)


class Checkpoints:
    def __init__(self, directory, *, keep: int = 3):
        self.directory = Path(directory).absolute()
        # handlers named up front, so reading one item (`saved_model`) needs no guessing (nor warns)
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                    "config": ocp.JsonCheckpointHandler(), "model": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, item_handlers=handlers,
                                             options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def save(self, step: int, state, data_state: dict, config: dict, *, model: ModelConfig | None = None,
             wait: bool = True) -> None:
        """Save `state` (a `TrainState` or any pytree) with the iterator state, the run config and,
        if given, the model config the state's params are laid out as."""
        tree = state.as_dict() if isinstance(state, TrainState) else state
        items = dict(state=ocp.args.StandardSave(tree), data=ocp.args.JsonSave(data_state),
                     config=ocp.args.JsonSave(config))
        if model is not None:
            items["model"] = ocp.args.JsonSave(model_to_json(model))
        absl = logging.getLogger("absl")  # orbax logs a failed save's traceback from each of its threads
        level = absl.level
        absl.setLevel(logging.CRITICAL)
        try:
            self.manager.save(step, args=ocp.args.Composite(**items))
            if wait:
                self.manager.wait_until_finished()
        except BaseException as err:  # a full disk, a kill signal: no temporary directory stays behind
            self.remove_temporary()
            if no_space(err) is not None:  # tensorstore reports it as a ValueError
                raise OSError(errno.ENOSPC, f"no space left on device (checkpoint step {step})",
                              str(self.directory)) from err
            raise
        finally:
            absl.setLevel(level)

    def remove_temporary(self) -> None:
        """Remove unfinished saves (orbax's `*.orbax-checkpoint-tmp*` directories)."""
        for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def quarantine(self, step: int) -> Path:
        """Move a damaged checkpoint out of the manager's sight, to `<dir>.damaged/<step>[-<time>]`."""
        aside = self.directory.with_name(f"{self.directory.name}.damaged") / str(step)
        if aside.exists():
            aside = aside.with_name(f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if jax.process_index() == 0:
            aside.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(aside)
        if jax.process_count() > 1:  # every process sees the move before it looks again
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jaxdistill-quarantine-{step}")
        self.manager.reload()
        return aside

    def saved_model(self, step: int) -> ModelConfig | None:
        """The model config saved with checkpoint `step` (None: saved without one)."""
        if "model" not in self.manager.item_metadata(step):
            return None
        return model_from_json(self.manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.JsonRestore()))["model"])

    def restore(self, step: int, abstract_state=None):
        """(state, data iterator state, run config). With a `TrainState` of abstract arrays (shapes,
        dtypes, shardings) the state comes back as a `TrainState` in that placement; without, as the
        saved dict of arrays."""
        target = abstract_state.as_dict() if isinstance(abstract_state, TrainState) else abstract_state
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))
        state = TrainState(**out["state"]) if isinstance(abstract_state, TrainState) else out["state"]
        return state, out["data"], out["config"]


def abstract_like(state):
    """Shapes, dtypes and shardings of a placed (or already abstract) state: the target of a restore."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        state)
