"""The engine's error: training cannot go on."""


class TrainingError(RuntimeError):
    """Training cannot go on (bad step settings, non-finite loss, incompatible models or data)."""
