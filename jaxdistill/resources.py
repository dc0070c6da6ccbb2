"""Where the shipped data lives (`data/` of the repository: datasets, tokenizers, evaluation suites).

The folder is kept once, at the repository root; a wheel or non-editable install carries a copy as
the package `jaxdistill._data` (pyproject.toml maps that package onto `data/`). `data_dir()` is the
one place every reader of shipped data asks.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

ENV = "JAXDISTILL_DATA"


class DataDirNotFound(FileNotFoundError):
    """No shipped data folder was found."""


def data_dir() -> Path:
    """The shipped data folder, the first of:

    1. $JAXDISTILL_DATA, when set (returned as given, existing or not: the caller reports what is missing);
    2. `data/` of the source checkout this package is imported from (a checkout or an editable install);
    3. the installed copy, `jaxdistill/_data/` (a wheel or non-editable install).
    """
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    root = Path(__file__).resolve().parents[1]
    checkout = root / "data"
    if (root / "pyproject.toml").is_file() and checkout.is_dir():   # pyproject: a checkout, not site-packages
        return checkout
    installed = resources.files("jaxdistill") / "_data"
    if isinstance(installed, Path) and installed.is_dir():         # not a Path: imported from a zip
        return installed
    raise DataDirNotFound(f"no shipped data folder: ${ENV} is not set, {checkout} is not a source checkout's "
                          f"data/, and {installed} does not exist. Set {ENV} to a copy of the repository's "
                          "data/ folder, or reinstall jaxdistill from a wheel that carries it.")
