"""The errors a job can meet, in two kinds, and how the command line reports them: one line naming
the bad value and what is valid, no traceback (`jaxdistill --debug ...` shows it).

    usage (exit 2)    the inputs are wrong: config, run directory, data files, model files, tokenizer,
                      mesh / batch sizes, evaluation settings; found before any training
    runtime (exit 1)  the run itself failed: a non-finite loss, a damaged checkpoint with no intact
                      one before it, a full disk, a step that cannot go on; and any error not foreseen
                      here (reported as an internal error)

A sweep records either kind as a failed point and goes on (`RUN_ERRORS`).
"""

from __future__ import annotations

from jaxdistill.atomic_files import no_space
from jaxdistill.config import RunConfigError
from jaxdistill.data import BatchingError, DataError
from jaxdistill.data.formats import FormatError
from jaxdistill.evaluate.loglik import EvaluationError
from jaxdistill.jobs.export import ExportError
from jaxdistill.jobs.rundir import RunDirError
from jaxdistill.losses import LossInputError
from jaxdistill.models import CheckpointError, ConfigError
from jaxdistill.models.sources import ModelSourceError
from jaxdistill.pruning import PruningError
from jaxdistill.train import TrainingError

USAGE_ERRORS = (RunConfigError, RunDirError, DataError, FormatError, ModelSourceError, CheckpointError, ConfigError,
                EvaluationError, ExportError)
RUN_ERRORS = (*USAGE_ERRORS, TrainingError, BatchingError, LossInputError, PruningError)
def describe(err: BaseException) -> tuple[str, int]:
    """(one-line message, exit code) for an error a command met."""
    full = no_space(err)
    if full is not None:
        where = f" writing {full.filename}" if full.filename else ""
        return (f"no space left on the device{where} ({full.strerror}): free some space and run the same command "
                "again; it resumes from the last complete checkpoint"), 1
    if isinstance(err, USAGE_ERRORS):
        return f"{type(err).__name__}: {err}", 2
    if isinstance(err, RUN_ERRORS):
        return f"{type(err).__name__}: {err}", 1
    text = str(err).strip().splitlines()
    return (f"internal error, {type(err).__name__}: {text[0] if text else ''} (rerun with jaxdistill --debug for the "
            "traceback, and please report it)"), 1
