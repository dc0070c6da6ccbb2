"""The sweep's results table as the report and its plots read it (`report.py`, `plots.py`): the axes,
per-point standard errors, seed-averaged cells with the SE of their mean, per-sweep levels (teacher
accuracy, chance) and the number format both print (`fmt_int`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

AXES = ("D", "r", "format", "schedule", "method")
FORMAT_ORDER = ("label", "cot", "blended")
IN_DOMAIN = "in_domain"
R_LIMIT = 0.99  # collapse points are searched for r <= 0.99; null means "not reached"


def num(x) -> float | None:
    """A finite float, or None (NaN, None, missing)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def done_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "done"] if "status" in df else df


def suites(df: pd.DataFrame) -> list[str]:
    """Suite names from the `S.acc` columns, in-domain first."""
    # the student's SUITE.acc; teacher.* and pruned_only.* columns are baselines
    names = [c[:-4] for c in df.columns if c.endswith(".acc") and c.count(".") == 1]
    return sorted(names, key=lambda s: (s != IN_DOMAIN, s))


def general_metrics(df: pd.DataFrame) -> list[str]:
    return [f"{s}.acc" for s in suites(df) if s != IN_DOMAIN]


def ordered(values, preferred=()) -> list:
    vals = {v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))}
    by_value = lambda v: num(v) if num(v) is not None else math.inf  # noqa: E731  numbers by value, then text
    return [v for v in preferred if v in vals] + sorted(vals - set(preferred), key=lambda v: (by_value(v), str(v)))


def point_se(df: pd.DataFrame, metric: str) -> pd.Series:
    """Per-point standard error of `metric`: the `S.acc_se` column, else the binomial SE from `S.n`
    (NaN when neither is known)."""
    nan = pd.Series(np.nan, index=df.index)
    if not metric.endswith(".acc"):
        return nan
    base = metric[:-4]
    se = df[f"{base}.acc_se"].astype(float) if f"{base}.acc_se" in df else nan
    if f"{base}.n" in df:
        y, n = df[metric].astype(float), df[f"{base}.n"].astype(float)
        se = se.fillna(np.sqrt(y * (1 - y) / n))
    return se


def cell_means(df: pd.DataFrame, metric: str, by: list[str]) -> pd.DataFrame:
    """Mean of `metric` per cell of `by` (over seeds), with the SE of that mean from per-point SEs."""
    d = pd.DataFrame({k: df[k] for k in by}).assign(y=df[metric].astype(float), v=point_se(df, metric) ** 2)
    out = d.dropna(subset=["y"]).groupby(by, dropna=False).agg(
        y=("y", "mean"), v=("v", lambda v: v.sum(skipna=False)), n=("y", "size")).reset_index()
    out["se"] = np.sqrt(out.pop("v")) / out["n"]  # NaN when any point's SE is unknown
    return out


def level(df: pd.DataFrame, col: str, fallback=None) -> float | None:
    """A per-sweep constant (teacher accuracy, chance) from the table, else `fallback`."""
    if col in df:
        v = num(done_rows(df)[col].astype(float).median())
        if v is not None:
            return v
    return num(fallback)


def fmt_int(x) -> str:
    x = num(x)
    return "—" if x is None else str(int(round(x)))
