"""The errors a job can meet after its config was accepted (bad data, model files, a failed step, ...):
the command line reports them as one line without a traceback, and a sweep records them as a failed
point and goes on."""

from jaxdistill.data import BatchingError, DataError
from jaxdistill.data.formats import FormatError
from jaxdistill.losses import LossInputError
from jaxdistill.models import CheckpointError, ConfigError
from jaxdistill.models.sources import ModelSourceError
from jaxdistill.pruning import PruningError
from jaxdistill.train import TrainingError

RUN_ERRORS = (TrainingError, DataError, FormatError, BatchingError, PruningError, CheckpointError, ConfigError,
              LossInputError, ModelSourceError)
