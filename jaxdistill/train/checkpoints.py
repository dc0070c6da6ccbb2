"""Checkpoints: an orbax CheckpointManager around (train state, data iterator state, run config).

orbax writes each step to a temporary directory and renames it when complete, so a kill mid-save
leaves the previous checkpoint as the latest loadable one.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxdistill.train.step import TrainState


class Checkpoints:
    def __init__(self, directory, *, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory,
                                             options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def save(self, step: int, state, data_state: dict, config: dict, *, wait: bool = True) -> None:
        """Save `state` (a `TrainState` or any pytree) with the iterator state and the run config."""
        tree = state.as_dict() if isinstance(state, TrainState) else state
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(tree), data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config)))
        if wait:
            self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

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
    """Shapes, dtypes and shardings of a placed state (the target of a restore)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
