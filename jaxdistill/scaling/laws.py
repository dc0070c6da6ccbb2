"""Scaling laws of distilled, pruned students: how quality moves with data size D and compression r.

Two law families (log is the natural log; r = fraction of the teacher's parameters removed):

    bounded (accuracies):
        acc(D, r) = chance + (teacher - chance) * sigmoid(a + b log D + c log(1 - r))
      chance (the suite's uniform chance accuracy) and teacher (the teacher's accuracy) are read from
      the results table and held fixed; a, b, c are fitted. An accuracy cannot leave [chance, teacher]
      in practice (a student neither beats its teacher nor does worse than guessing for long), and a
      sigmoid in log-data and log-kept-fraction is the simplest monotone curve with both floors.

    power (losses; perplexities are fitted as log-perplexity, i.e. the mean loss):
        L(D, r) = E + A D^-alpha + B (1 - r)^-beta,      E, A, B, alpha, beta >= 0
      the usual additive data / model-size law (Chinchilla form) with the model size expressed as the
      kept fraction 1 - r: E is the irreducible loss, the other terms shrink with more data and a
      larger student.

With a single D value in a group the D term is not identifiable; it is dropped (b = 0, resp.
A = alpha = 0) and the fit says "d_term": false.

Fits minimise a Huber loss (`scipy.optimize.least_squares`) from several seeded starts and keep the
best, so one bad point cannot drag a curve. Uncertainty comes from a bootstrap over evaluation
examples: each point's 0/1 outcomes are resampled (independently per point), its accuracy recomputed
and the law refitted; points without per-example outcomes are redrawn from a normal with their
standard error. Percentiles of the draws give intervals on parameters, curves and derived quantities
such as the collapse point (the compression ratio where general knowledge falls to chance).

`fit_table` runs all of this over a sweep's results table and returns a JSON-serialisable document
(schema in its docstring; `report.py` reads it), written with `write_fits`.

One module (~480 lines): the families, the robust fit, the bootstrap and the collapse point share the
parameter layout (`PARAMS`, the dropped D term) and the draws; `fit_table` is the only consumer of all
of them. If it grows, the table-level document (`fit_table`, write/load) is the seam to split off.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import zlib
from collections.abc import Sequence

import numpy as np
from scipy.optimize import least_squares
from scipy.special import expit, logit

from jaxdistill.atomic_files import atomic_write

FAMILIES = {
    "bounded": "acc = chance + (teacher - chance) * sigmoid(a + b log D + c log(1 - r))",
    "power": "L = E + A * D^-alpha + B * (1 - r)^-beta, L = log perplexity (loss); E, A, B, alpha, beta >= 0",
}
PARAMS = {"bounded": ("a", "b", "c"), "power": ("E", "A", "alpha", "B", "beta")}
_D_PARAMS = {"bounded": ("b",), "power": ("A", "alpha")}
CURVE_R = np.linspace(0.0, 0.9, 46)          # r grid of the stored curves
COLLAPSE_R = np.round(np.linspace(0.0, 0.99, 991), 6)  # r grid the collapse point is solved on
_BEYOND = 2.0                                # stands for "not reached by r = 0.99" inside percentiles


def n_params(family: str, d_term: bool = True) -> int:
    """Number of fitted parameters of a family (fewer without the D term)."""
    return len(PARAMS[family]) - (0 if d_term else len(_D_PARAMS[family]))


def _family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown law family {family!r}; expected one of {sorted(FAMILIES)}")
    return family


def predict_draws(family: str, P, D, r, chance=None, teacher=None) -> np.ndarray:
    """Predictions [n_draws, n] for parameter rows P [n_draws, n_params] (order `PARAMS[family]`)."""
    P = np.atleast_2d(np.asarray(P, float))
    logd, v = np.broadcast_arrays(np.log(np.asarray(D, float)), np.log1p(-np.asarray(r, float)))
    logd, v = logd.ravel()[None], v.ravel()[None]
    col = [P[:, j:j + 1] for j in range(P.shape[1])]
    if _family(family) == "bounded":
        if chance is None or teacher is None:
            raise ValueError("the bounded law needs chance and teacher")
        return chance + (teacher - chance) * expit(col[0] + col[1] * logd + col[2] * v)
    E, A, alpha, B, beta = col
    return E + A * np.exp(-alpha * logd) + B * np.exp(-beta * v)


def predict(family: str, params: dict, D, r, chance=None, teacher=None) -> np.ndarray:
    """Law prediction at (D, r) (broadcast together) for a params dict as in `fit_law`'s result."""
    P = [params[k] for k in PARAMS[_family(family)]]
    shape = np.broadcast_shapes(np.shape(D), np.shape(r))
    return predict_draws(family, P, D, r, chance, teacher)[0].reshape(shape)


class _Law:
    """One fitting problem. Internally log D is centred (u = log D - m) so the intercept and the
    D-coefficient are not nearly collinear; `public`/`internal` convert to the documented params."""

    def __init__(self, family, D, r, chance, teacher, d_term):
        self.family, self.chance, self.teacher = family, chance, teacher
        logd = np.log(np.asarray(D, float))
        self.m = float(np.mean(logd))
        self.u, self.v = logd - self.m, np.log1p(-np.asarray(r, float))
        self.free = np.array([d_term or k not in _D_PARAMS[family] for k in PARAMS[family]])
        if family == "bounded":
            lb, ub = np.full(3, -50.0), np.full(3, 50.0)
        else:  # alpha, beta capped at 10: beyond that the term is a step and the fit is degenerate
            lb, ub = np.zeros(5), np.array([np.inf, np.inf, 10.0, np.inf, 10.0])
        self.lb, self.ub = lb[self.free], ub[self.free]

    def model(self, x):
        """(prediction, jacobian over all params) at the internal vector x."""
        if self.family == "bounded":
            s = expit(x[0] + x[1] * self.u + x[2] * self.v)
            g = (self.teacher - self.chance) * s * (1 - s)
            return self.chance + (self.teacher - self.chance) * s, np.stack([g, g * self.u, g * self.v], 1)
        E, A, alpha, B, beta = x
        t1, t2 = np.exp(-alpha * self.u), np.exp(-beta * self.v)
        return E + A * t1 + B * t2, np.stack([np.ones_like(t1), t1, -A * self.u * t1, t2, -B * self.v * t2], 1)

    def full(self, xf):
        x = np.zeros(len(self.free))
        x[self.free] = xf
        return x

    def public(self, x):
        x = np.array(x, float)
        if self.family == "bounded":
            x[0] -= x[1] * self.m          # a = a_c - b m
        else:
            x[1] *= math.exp(x[2] * self.m)  # A = A_c e^(alpha m)
        return x

    def internal(self, p):
        x = np.array(p, float)
        if self.family == "bounded":
            x[0] += x[1] * self.m
        else:
            x[1] *= math.exp(-x[2] * self.m)
        return x

    def starts(self, y, n, rng):
        """n deterministic starts: a data-driven guess first, then random ones around / across it."""
        if self.family == "bounded":
            q = np.clip((y - self.chance) / (self.teacher - self.chance), 0.02, 0.98)
            X = np.stack([np.ones_like(self.u), self.u, self.v], 1)[:, self.free]
            guess = self.full(np.linalg.lstsq(X, logit(q), rcond=None)[0])
            out = [guess] + [guess + rng.normal(0, [1.0, 0.5, 1.0]) * (1 + k % 2) for k in range(n - 1)]
        else:
            lo, span = float(np.min(y)), float(np.ptp(y)) or 1.0
            guess = np.array([0.5 * max(lo, 0), span / 2, 0.5, span / 4, 0.5])
            out = [guess] + [np.array([rng.uniform(0, max(lo, 1e-3)), rng.uniform(0, span), rng.uniform(0.05, 1.5),
                                       rng.uniform(0, span), rng.uniform(0.05, 2.0)]) for _ in range(n - 1)]
        return [x * self.full(np.ones(self.free.sum())) for x in out]  # zero the dropped params

    def solve(self, y, x0s, f_scale):
        """Best (lowest Huber cost) internal solution over the starts x0s."""
        best = None
        for x0 in x0s:
            xf0 = np.clip(x0[self.free], self.lb + 1e-9, self.ub - 1e-9)
            try:
                res = least_squares(lambda xf: self.model(self.full(xf))[0] - y, xf0,
                                    jac=lambda xf: self.model(self.full(xf))[1][:, self.free],
                                    bounds=(self.lb, self.ub), loss="huber", f_scale=f_scale)
            except (ValueError, np.linalg.LinAlgError):
                continue
            if np.all(np.isfinite(res.x)) and (best is None or res.cost < best.cost):
                best = res
        if best is None:
            raise RuntimeError(f"{self.family} law: no start converged")
        return self.full(best.x)


def _robust_sigma(res) -> float:
    return 1.4826 * float(np.median(np.abs(res - np.median(res))))


def fit_law(family: str, D, r, y, *, chance=None, teacher=None, starts: int = 8, seed: int = 0,
            d_term: bool | None = None) -> dict:
    """Fit one law to points (D, r, y) (all finite; y a loss for `power`).

    Returns {"family", "params", "d_term", "n_points", "rmse", "loo_rmse", "huber_scale", "chance",
    "teacher"}. d_term defaults to "more than one distinct D". The Huber scale is 1.345 x a robust
    (MAD) estimate of the residual noise, taken from a first fit at a data-wide scale; leave-one-out
    refits start from the full-data solution (a warm start is enough for a one-point perturbation).
    """
    D, r, y = (np.asarray(a, float).ravel() for a in (D, r, y))
    if not (len(D) == len(r) == len(y)) or not np.all(np.isfinite(np.r_[D, r, y])):
        raise ValueError("fit_law needs equal-length, finite D, r, y (exclude NaN points first)")
    if np.any(D <= 0) or np.any((r < 0) | (r >= 1)):
        raise ValueError("fit_law needs D > 0 and r in [0, 1)")
    if _family(family) == "bounded" and not (chance is not None and teacher is not None and teacher > chance):
        raise ValueError(f"the bounded law needs teacher > chance (got chance={chance}, teacher={teacher})")
    d_term = len(np.unique(D)) > 1 if d_term is None else d_term
    k = n_params(family, d_term)
    if len(y) < k + 1:
        raise ValueError(f"{family} law with {k} parameters needs >= {k + 1} points, got {len(y)}")
    law = _Law(family, D, r, chance, teacher, d_term)
    rng = np.random.default_rng(seed)
    scale0 = max(_robust_sigma(y), 1e-3 * float(np.std(y)), 1e-9)
    x = law.solve(y, law.starts(y, max(starts, 1), rng), 1.345 * scale0)
    res = law.model(x)[0] - y
    f_scale = 1.345 * max(_robust_sigma(res) * math.sqrt(len(y) / (len(y) - k)), 1e-3 * float(np.std(y)), 1e-9)
    x = law.solve(y, [x], f_scale)
    pred = law.model(x)[0]
    loo = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        sub = _Law(family, D[keep], r[keep], chance, teacher, d_term)
        xi = sub.solve(y[keep], [sub.internal(law.public(x))], f_scale)
        loo.append(predict_draws(family, sub.public(xi), D[i], r[i], chance, teacher)[0, 0] - y[i])
    return {"family": family, "params": dict(zip(PARAMS[family], map(float, law.public(x)))),
            "d_term": bool(d_term), "n_points": int(len(y)),
            "rmse": float(np.sqrt(np.mean((pred - y) ** 2))), "loo_rmse": float(np.sqrt(np.mean(np.square(loo)))),
            "huber_scale": float(f_scale), "chance": chance, "teacher": teacher}


def bootstrap_law(fit: dict, D, r, y, *, correct=None, se=None, boot: int = 200, seed: int = 0) -> np.ndarray:
    """Bootstrap parameter draws [n_ok, n_params] (order `PARAMS[family]`) for a `fit_law` result.

    Point i is redrawn from its examples when correct[i] is a non-empty 0/1 sequence (resampling n
    outcomes with replacement and averaging is exactly Binomial(n, mean)/n, drawn that way for speed),
    else from Normal(y_i, se_i), else (no se either) from Normal(y_i, residual rmse of the fit).
    Each draw is refitted from the point estimate; draws whose fit fails are dropped.
    """
    D, r, y = (np.asarray(a, float).ravel() for a in (D, r, y))
    n = len(y)
    correct = [None] * n if correct is None else list(correct)
    se = np.full(n, np.nan) if se is None else np.array([np.nan if s is None else s for s in se], float)
    k = n_params(fit["family"], fit["d_term"])
    sigma_fit = fit["rmse"] * math.sqrt(n / max(n - k, 1))
    counts = np.array([len(c) if c is not None and len(c) else 0 for c in correct])
    means = np.array([float(np.mean(c)) if m else 0.0 for c, m in zip(correct, counts)])
    noise_sd = np.where(np.isfinite(se), se, sigma_fit)
    law = _Law(fit["family"], D, r, fit["chance"], fit["teacher"], fit["d_term"])
    x0 = law.internal([fit["params"][p] for p in PARAMS[fit["family"]]])
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(boot):
        yb = np.where(counts > 0, rng.binomial(np.maximum(counts, 1), means) / np.maximum(counts, 1),
                      y + noise_sd * rng.standard_normal(n))
        try:
            draws.append(law.public(law.solve(yb, [x0], fit["huber_scale"])))
        except RuntimeError:
            continue
    return np.array(draws).reshape(-1, len(PARAMS[fit["family"]]))


def interval(values, level: float) -> list:
    """Percentile interval [lo, hi] of values along axis 0 (None when there are no values)."""
    values = np.asarray(values, float)
    if values.shape[0] == 0:
        return None
    q = np.quantile(values, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return [q[0], q[1]]


def _threshold_r(pred: np.ndarray, below: np.ndarray, r_grid) -> np.ndarray:
    """Per row, the first grid r where `below` holds (pred crossed the threshold), else _BEYOND."""
    hit = below.any(axis=1)
    return np.where(hit, np.asarray(r_grid)[below.argmax(axis=1)], _BEYOND)


def _r_value(x) -> float | None:
    return None if x is None or not np.isfinite(x) or x > COLLAPSE_R[-1] + 1e-9 else float(x)


def collapse_point(general: dict, in_domain: dict, *, D=None, margin_general: float = 0.25,
                   margin_in_domain: float = 0.1, level: float = 0.9, r_grid=None) -> dict:
    """Compression ratios where general knowledge collapses and where in-domain quality degrades.

    general / in_domain are bounded-law metric entries (as in the fits document: params, chance,
    teacher, optionally "draws" and "observed"). At data size D (default: the largest observed D):
      r_general   = smallest r with pred <= chance + margin_general * (teacher - chance)
      r_in_domain = smallest r with pred <  teacher - margin_in_domain * (teacher - chance)
    on r_grid (default 0..0.99 step 0.001); None with "*_beyond": true when not reached by 0.99.
    claim_holds: r_general < r_in_domain (general knowledge goes first; "beyond" counts as infinity);
    claim_prob: the fraction of paired bootstrap draws where that holds.
    """
    r_grid = COLLAPSE_R if r_grid is None else np.asarray(r_grid, float)
    for f in (general, in_domain):
        if f["family"] != "bounded":
            raise ValueError("collapse_point needs bounded (accuracy) fits")
    if D is None:
        D = max(o["D"] for f in (general, in_domain) for o in f.get("observed", [])) if (
            general.get("observed") or in_domain.get("observed")) else None
        if D is None:
            raise ValueError("collapse_point: pass D (the fits carry no observed points)")

    def solve(f, margin, above_chance):
        rows = [[f["params"][p] for p in PARAMS["bounded"]]] + list(f.get("draws") or [])
        pred = predict_draws("bounded", rows, D, r_grid, f["chance"], f["teacher"])
        span = f["teacher"] - f["chance"]
        below = pred <= f["chance"] + margin * span if above_chance else pred < f["teacher"] - margin * span
        return _threshold_r(pred, below, r_grid)

    rg, ri = solve(general, margin_general, True), solve(in_domain, margin_in_domain, False)
    nb = min(len(rg), len(ri)) - 1
    out = {"D": float(D) if not float(D).is_integer() else int(D)}
    for name, v in (("r_general", rg), ("r_in_domain", ri)):
        ci = interval(v[1:], level) if len(v) > 1 else None
        out[name], out[name + "_ci"] = _r_value(v[0]), None if ci is None else [_r_value(c) for c in ci]
        out[name + "_beyond"] = bool(v[0] > r_grid[-1])
    out["claim_holds"] = bool(rg[0] < ri[0])
    out["claim_prob"] = float(np.mean(rg[1:nb + 1] < ri[1:nb + 1])) if nb > 0 else None
    return out


# ----------------------------------------------------------------------------------- results tables

def _plain(x):
    """JSON-ready copy: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    return x


def _default_metrics(table) -> list[str]:
    # the student's metrics are SUITE.METRIC; teacher.* and pruned_only.* (baselines) carry a model prefix
    return [c for c in table.columns if c.count(".") == 1 and (c.endswith(".acc") or c.endswith(".ppl"))]


def _num_key(d: float) -> str:
    """A D value as a JSON object key: "2000", not "2000.0" or "2e+03"."""
    return str(int(d)) if float(d).is_integer() else repr(float(d))


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _fit_metric(g, metric, key, failed, *, boot, level, seed, starts, curve_ds, warn):
    """(metric entry, None) or (None, skip reason) for one metric of one group."""
    family = "power" if metric.endswith(".ppl") or metric.endswith(".loss") else "bounded"
    suite = metric.rsplit(".", 1)[0]
    y = g[metric].map(_num).to_numpy(float)
    se = g[metric + "_se"].map(_num).to_numpy(float) if metric + "_se" in g else np.full(len(y), np.nan)
    raw, raw_se = y, se  # the metric's own units, for "observed"
    if metric.endswith(".ppl"):  # fit the loss log(ppl); its se by the delta method
        with np.errstate(divide="ignore", invalid="ignore"):
            se, y = se / y, np.log(np.where(y > 0, y, np.nan))
    D = g["D"].map(_num).to_numpy(float)
    r = g["r"].map(_num).to_numpy(float)
    if "r_actual" in g:  # fit on the ratio actually achieved where it is known
        ra = g["r_actual"].map(_num).to_numpy(float)
        r = np.where(np.isfinite(ra), ra, r)
    ids = g["point"].astype(str).tolist()
    ok = np.isfinite(y) & np.isfinite(D) & (D > 0) & np.isfinite(r) & (r >= 0) & (r < 1)
    if not ok.any():
        return None, f"{metric}: no values in this group"
    bad = [p for p, o in zip(ids, ok) if not o]
    if bad:
        warn(f"group {key}, {metric}: excluding points with a missing/NaN value: {', '.join(bad)}")
    excluded = failed + bad
    chance = teacher = None
    if family == "bounded":
        col_c, col_t = suite + ".chance", "teacher." + metric
        chance = float(np.nanmedian(g[col_c].map(_num))) if col_c in g and g[col_c].map(_num).notna().any() else None
        teacher = float(np.nanmedian(g[col_t].map(_num))) if col_t in g and g[col_t].map(_num).notna().any() else None
        if chance is None or teacher is None:
            return None, f"{metric}: no {col_c if chance is None else col_t} value"
        if teacher <= chance:
            return None, f"{metric}: teacher accuracy {teacher:.4g} is not above chance {chance:.4g}"
    D, r, y, se, raw, raw_se = D[ok], r[ok], y[ok], se[ok], raw[ok], raw_se[ok]
    d_term = len(np.unique(D)) > 1
    need = n_params(family, d_term) + 1
    if len(y) < need:
        return None, f"{metric}: {len(y)} usable points, the {family} law needs >= {need}"
    rng_seed = int(np.random.SeedSequence([seed, zlib.crc32(f"{key}|{metric}".encode())]).generate_state(1)[0])
    fit = fit_law(family, D, r, y, chance=chance, teacher=teacher, starts=starts, seed=rng_seed, d_term=d_term)
    correct = None
    if family == "bounded" and suite + ".correct" in g:
        correct = [c if isinstance(c, (list, tuple, np.ndarray)) and len(c) else None
                   for c, o in zip(g[suite + ".correct"], ok) if o]
    draws = bootstrap_law(fit, D, r, y, correct=correct, se=se, boot=boot, seed=rng_seed + 1)
    names = PARAMS[family]
    ci = interval(draws, level)
    ds = sorted({float(d) for d in (D if curve_ds is None else curve_ds)})
    units = np.exp if metric.endswith(".ppl") else (lambda v: v)  # curves in the metric's units (monotone)
    curves = {}
    for d in ds:
        mid = units(predict(family, fit["params"], d, CURVE_R, chance, teacher))
        lo, hi = interval(units(predict_draws(family, draws, d, CURVE_R, chance, teacher)), level) or (None, None)
        curves[_num_key(d)] = {"r": CURVE_R, "mid": mid, "lo": lo, "hi": hi}
    observed = [{"point": p, "D": int(d) if float(d).is_integer() else d, "r": rr, "y": yy, "se": s}
                for p, d, rr, yy, s in zip([i for i, o in zip(ids, ok) if o], D, r, raw, raw_se)]
    entry = {"family": family, "params": fit["params"],
             "ci": {n: ([ci[0][j], ci[1][j]] if ci is not None else None) for j, n in enumerate(names)},
             "chance": chance, "teacher": teacher, "d_term": fit["d_term"], "n_points": fit["n_points"],
             "rmse": fit["rmse"], "loo_rmse": fit["loo_rmse"], "excluded": excluded, "curves": curves,
             "observed": observed, "transform": "log" if metric.endswith(".ppl") else "identity",
             "huber_scale": fit["huber_scale"], "draws": draws}
    return _plain(entry), None


def fit_table(table, *, metrics: Sequence[str] | None = None, by: Sequence[str] = ("format", "schedule", "method"),
              general: Sequence[str] | None = None, in_domain: str = "in_domain.acc", boot: int = 200,
              level: float = 0.9, seed: int = 0, curve_ds=None, margin_general: float = 0.25,
              margin_in_domain: float = 0.1, starts: int = 8) -> dict:
    """Fit every metric of every group of a sweep results table; returns the fits document.

    metrics default to every student `SUITE.acc` column (not the `teacher.*` / `pruned_only.*`
    baselines), plus every `SUITE.ppl` column (fitted as log-perplexity with the power law); accuracies use the bounded law. Points with status != "done"
    or a NaN value are excluded with a warning and listed per metric. Metric fits with fewer usable
    points than parameters + 1 are skipped (warned, listed in "skipped"). `collapse` holds, per
    general metric (default: every `.acc` metric except `in_domain`), `collapse_point` at the group's
    largest D. Each metric entry also stores its bootstrap parameter draws ("draws", rows ordered as
    `PARAMS[family]`) and "transform" ("log" for perplexities: the law, params, rmse and loo_rmse are
    in log-perplexity, while curves and observed y / se stay in the metric's own units, ppl). The
    ratio fitted (and shown as the observed "r") is `r_actual` where known, else the target `r`.

    Document: {"version": 1, "level", "boot", "margins": {"general", "in_domain"}, "families",
      "groups": [{"key": {by: value}, "points": [ids],
                  "metrics": {metric: {"family", "params", "ci": {param: [lo, hi]}, "chance", "teacher",
                                       "d_term", "n_points", "rmse", "loo_rmse", "excluded": [ids],
                                       "curves": {"<D>": {"r", "mid", "lo", "hi"}},
                                       "observed": [{"point", "D", "r", "y", "se"}], "transform",
                                       "huber_scale", "draws"}},
                  "collapse": {general metric: collapse_point(...)}}],
      "skipped": [{"key", "metric", "reason"}], "warnings": [str]}
    """
    metrics = list(_default_metrics(table) if metrics is None else metrics)
    missing = [m for m in list(metrics) + list(by) + ["point", "D", "r"] if m not in table.columns]
    if missing:
        raise ValueError(f"results table has no column(s) {missing}")
    general = [m for m in metrics if m.endswith(".acc") and m != in_domain] if general is None else list(general)
    doc = {"version": 1, "level": level, "boot": boot,
           "margins": {"general": margin_general, "in_domain": margin_in_domain},
           "families": dict(FAMILIES), "groups": [], "skipped": [], "warnings": []}

    def warn(msg):
        warnings.warn(msg, stacklevel=3)
        doc["warnings"].append(msg)

    for vals, g in table.groupby(list(by), sort=True, dropna=False):
        key = _plain(dict(zip(by, vals)))
        done = g["status"].eq("done") if "status" in g else np.ones(len(g), bool)
        failed = g.loc[~np.asarray(done), "point"].astype(str).tolist()
        if failed:
            errs = g.loc[~np.asarray(done), "error"].tolist() if "error" in g else [None] * len(failed)
            warn(f"group {key}: excluding failed points: "
                 + ", ".join(f"{p} ({e})" if e else p for p, e in zip(failed, errs)))
        fits = {}
        for metric in metrics:
            entry, reason = _fit_metric(g[np.asarray(done)], metric, key, failed, boot=boot, level=level,
                                        seed=seed, starts=starts, curve_ds=curve_ds, warn=warn)
            if entry is None:
                warn(f"group {key}: skipping {reason}")
                doc["skipped"].append({"key": key, "metric": metric, "reason": reason})
            else:
                fits[metric] = entry
        if not fits:
            continue
        collapse = {}
        if in_domain in fits:
            d_max = g.loc[np.asarray(done), "D"].max()
            for m in general:
                if m in fits and fits[m]["family"] == "bounded":
                    collapse[m] = collapse_point(fits[m], fits[in_domain], D=d_max, margin_general=margin_general,
                                                 margin_in_domain=margin_in_domain, level=level)
        doc["groups"].append({"key": key, "points": g["point"].astype(str).tolist(), "metrics": fits,
                              "collapse": _plain(collapse)})
    return _plain(doc)


def write_fits(doc: dict, path) -> None:
    """Write the fits document as strict JSON (no NaN), atomically (temp file + os.replace)."""
    text = json.dumps(_plain(doc), indent=1, allow_nan=False) + "\n"
    atomic_write(os.fspath(path), lambda tmp: tmp.write_text(text))


def load_fits(path) -> dict:
    with open(path) as f:
        return json.load(f)
