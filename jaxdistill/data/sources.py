"""Classification sources, stratified splits and stratified subsampling to a data-set size D.

A source yields a `ClassificationData`: texts, integer labels into `label_names`, optional
rationales. Rows with empty text or a label outside the label vocabulary are dropped and counted
in `report`, never passed on.

    finance_topic   the shipped default: data/finance_topic (20 topic classes, MIT)
    finheadlinemix  nvidia/FinHeadlineMix from the hub, or a local parquet/CSV/JSONL copy
    a local file    .parquet / .csv / .jsonl / .json, with configurable columns
    an HF dataset   any dataset id `datasets.load_dataset` resolves (needs the hub)
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np

from jaxdistill import resources

FINHEADLINEMIX_ID = "nvidia/FinHeadlineMix"


def data_dir() -> Path:
    """The shipped data folder ($JAXDISTILL_DATA, else `jaxdistill.resources.data_dir`)."""
    return resources.data_dir()


class DataError(ValueError):
    """A data source whose files, columns or labels do not fit the configuration."""


@dataclasses.dataclass
class ClassificationData:
    texts: list[str]
    labels: np.ndarray                 # [N] int, index into label_names
    label_names: list[str]
    rationales: list[str | None] | None = None
    report: dict[str, int] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices) -> ClassificationData:
        idx = np.asarray(indices, dtype=int)
        return ClassificationData([self.texts[i] for i in idx], self.labels[idx], self.label_names,
                                  None if self.rationales is None else [self.rationales[i] for i in idx],
                                  dict(self.report))


def _read_table(path: Path):
    """A local table as a DataFrame; a file that cannot be read as its type is a `DataError` naming
    the file and what is wrong (not UTF-8, not CSV / JSON / parquet, empty)."""
    import pandas as pd

    suffix = path.suffix.lower()
    readers = {".parquet": pd.read_parquet, ".csv": lambda p: pd.read_csv(p, keep_default_na=False),
               ".jsonl": lambda p: pd.read_json(p, lines=True), ".json": pd.read_json}
    if suffix not in readers:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .parquet, .csv, .jsonl or .json")
    try:
        return readers[suffix](path)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at offset {err.start}); "
                        "save it as UTF-8") from err
    except Exception as err:  # noqa: BLE001 — pandas / pyarrow raise many types for a malformed file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise DataError(f"{path}: cannot be read as {suffix[1:]} ({type(err).__name__}: {reason})") from err


def _missing(value) -> bool:
    """None, NaN, or pandas' missing value (pd.NA / NaT, from nullable columns such as a parquet file's)."""
    import pandas as pd

    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or array cell: not a missing scalar
        return False


def _label_value(value):
    """A label as int (integral numbers, also from float columns), str, or None (missing)."""
    if _missing(value):
        return None
    if isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()):
        return int(value)
    text = str(value).strip()
    return text or None


def from_table(table, *, text_column: str = "text", label_column: str = "label",
               rationale_column: str | None = None, label_names: list[str] | None = None,
               where: str = "data") -> ClassificationData:
    """Build from a pandas DataFrame. Labels may be names or integer ids; with `label_names` given,
    others are unknown (dropped, counted); without, the vocabulary is the sorted distinct labels of
    the rows kept. Rows with empty text or a missing label are dropped and counted."""
    wanted = [text_column, label_column] + ([rationale_column] if rationale_column else [])
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise DataError(f"{where}: column(s) {missing} not found; the columns are {list(table.columns)} "
                        "(set text_column / label_column / rationale_column)")
    doubled = sorted({c for c in wanted if list(table.columns).count(c) > 1})
    if doubled:
        raise DataError(f"{where}: column(s) {doubled} appear more than once; rename the duplicates")
    texts = ["" if _missing(t) else str(t).strip() for t in table[text_column].tolist()]
    raw = [_label_value(v) for v in table[label_column].tolist()]
    if not all(isinstance(v, int) for v, t in zip(raw, texts) if v is not None and t):  # names, or a mix: 1 and
        # "1" are one class
        raw = [None if v is None else str(v) for v in raw]
    rationales = table[rationale_column].tolist() if rationale_column else None
    report = Counter()
    candidates = []
    for i, (text, label) in enumerate(zip(texts, raw)):
        if not text:
            report["dropped_empty_text"] += 1
        elif label is None:
            report["dropped_missing_label"] += 1
        else:
            candidates.append(i)
    numeric = all(isinstance(raw[i], int) for i in candidates)
    if label_names is None:  # the vocabulary of the rows that survive
        vocab = sorted({raw[i] for i in candidates}, key=lambda v: (not isinstance(v, int), str(v)))
        label_names = [str(v) for v in vocab]
        lookup = {v: i for i, v in enumerate(vocab)}
    elif numeric:
        lookup = {i: i for i in range(len(label_names))}
    else:
        lookup = {name: i for i, name in enumerate(label_names)}
    keep = []
    for i in candidates:
        if raw[i] in lookup:
            keep.append(i)
        else:
            report["dropped_unknown_label"] += 1
    report["rows"] = len(keep)
    return ClassificationData([texts[i] for i in keep], np.array([lookup[raw[i]] for i in keep], np.int64),
                              list(label_names), None if rationales is None else [rationales[i] for i in keep],
                              dict(report))


def load_source(name: str = "finance_topic", *, split: str = "train", text_column: str = "text",
                label_column: str = "label", rationale_column: str | None = None,
                label_names: list[str] | None = None) -> ClassificationData:
    """Load a named source, a local file, or a Hugging Face dataset id (see the module docstring)."""
    if name == "finance_topic":
        folder = data_dir() / "finance_topic"
        file = folder / {"train": "train.parquet", "validation": "validation.parquet"}.get(split, "")
        if not file.is_file():
            raise DataError(f"finance_topic has splits 'train' and 'validation' in {folder}; got {split!r}")
        names = (folder / "classes.txt").read_text().strip().splitlines()
        return from_table(_read_table(file), text_column="text", label_column="label",
                          label_names=label_names or names, where=str(file))
    path = Path(name)
    if path.is_file():
        return from_table(_read_table(path), text_column=text_column, label_column=label_column,
                          rationale_column=rationale_column, label_names=label_names, where=str(path))
    if name == "finheadlinemix":
        name = FINHEADLINEMIX_ID
    if not _hub_id(name):
        raise DataError(f"data.source={name!r} is neither a local file (.parquet/.csv/.jsonl/.json; none at "
                        f"{path.absolute()}), nor finance_topic / finheadlinemix, nor a hub dataset id (org/name)")
    try:  # the hub, or the local datasets cache (an offline node with the dataset cached works)
        import datasets

        table = datasets.load_dataset(name, split=split).to_pandas()
    except Exception as err:  # noqa: BLE001 — the hub is unreachable, the id is wrong, no cached copy
        from jaxdistill.models.sources import hub_unavailable

        why = hub_unavailable(None)
        where = f"the Hugging Face hub is {why} and no cached copy was found" if why else str(err).splitlines()[0]
        raise DataError(f"data.source={name!r} (split {split!r}) is not a local file and could not be loaded with "
                        f"datasets.load_dataset: {where}. Pass a local .parquet/.csv/.jsonl/.json path, or the "
                        "shipped finance_topic") from err
    return from_table(table, text_column=text_column, label_column=label_column,
                      rationale_column=rationale_column, label_names=label_names, where=name)


def _hub_id(name: str) -> bool:
    """A Hugging Face dataset id: `name` or `org/name`, letters, digits, `-_.` only."""
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(p and all(c.isalnum() or c in "-_." for c in p) for p in parts)


def stratified_split(labels, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> list[np.ndarray]:
    """Index arrays, one per fraction, with every class split in the same proportions (each part
    within one example per class of exact). Deterministic in `seed`."""
    fractions = np.asarray(fractions, float)
    if np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise DataError(f"split fractions {fractions.tolist()} must be >= 0 and sum to 1")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        bounds = np.floor(np.cumsum(fractions) * len(idx) + 0.5).astype(int)
        bounds[-1] = len(idx)
        for part, chunk in zip(parts, np.split(idx, bounds[:-1])):
            part.extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=int)) for p in parts]


def stratified_subsample(labels, size: int, seed: int = 0) -> np.ndarray:
    """`size` indices keeping the class proportions (largest-remainder rounding, each class within
    one example of exact). Deterministic in `seed`."""
    labels = np.asarray(labels)
    if not 0 < size <= len(labels):
        raise DataError(f"subsample size {size} is outside the valid range [1, {len(labels)}]")
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(labels)
    take = np.floor(exact).astype(int)
    remainder_order = np.argsort(-(exact - take), kind="stable")
    take[remainder_order[: size - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in zip(classes, take)]
    return np.sort(np.concatenate(chosen))
