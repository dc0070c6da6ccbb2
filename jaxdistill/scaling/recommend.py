"""The smallest student the fitted laws predict is good enough.

Given a fits document (`laws.fit_table`), an in-domain accuracy target and a floor per general
metric, search every fitted group and candidate data size D for the largest compression ratio r
(= the smallest student) whose predicted in-domain accuracy reaches the target while every floored
general metric stays at or above its floor. Predictions use the point-estimate laws; the same
search repeated on each bootstrap draw gives an interval on that r.
"""

from __future__ import annotations

import numbers

import numpy as np

from jaxdistill.scaling.laws import COLLAPSE_R, PARAMS, _plain, interval, predict_draws

_INFEASIBLE = -1.0  # stands for "no r meets both" inside percentiles


def _check(doc, in_domain_target, general_floor, in_domain, formats):
    def in_unit(x):
        return isinstance(x, numbers.Real) and not isinstance(x, bool) and 0 < float(x) < 1
    if not in_unit(in_domain_target):
        raise ValueError(f"in_domain_target={in_domain_target!r} must be a number in (0, 1)")
    fitted = {m: f["family"] for g in doc["groups"] for m, f in g["metrics"].items()}
    if in_domain not in fitted:
        raise ValueError(f"the fits have no {in_domain!r} metric; fitted: {sorted(fitted)}")
    for m, floor in general_floor.items():
        if m == in_domain or m not in fitted:
            raise ValueError(f"general_floor: unknown general metric {m!r}; fitted: "
                             f"{sorted(k for k in fitted if k != in_domain)}")
        if fitted[m] != "bounded":
            raise ValueError(f"general_floor: {m!r} is a {fitted[m]} (loss) metric, not an accuracy")
        if not in_unit(floor):
            raise ValueError(f"general_floor[{m!r}]={floor!r} must be a number in (0, 1)")
    known = {g["key"].get("format") for g in doc["groups"]}
    for f in formats or ():
        if f not in known:
            raise ValueError(f"formats: unknown format {f!r}; fitted: {sorted(map(str, known))}")


def _preds(fit, D, r_grid, draws=False):
    """[n_rows, len(r_grid)]: the point estimate (draws=False) or the bootstrap draws."""
    rows = (fit.get("draws") or []) if draws else [[fit["params"][p] for p in PARAMS[fit["family"]]]]
    if not rows:
        return np.zeros((0, len(r_grid)))
    return predict_draws(fit["family"], rows, D, r_grid, fit["chance"], fit["teacher"])


def _feasible(preds, need):
    """Boolean mask (same shape as the preds) where every metric meets its bound."""
    return np.logical_and.reduce([preds[m] >= bound for m, bound in need.items()])


def _where(c):
    return f"format={c['key'].get('format')}, key={c['key']}, D={c['D']:.10g}"


def recommend(doc: dict, *, in_domain_target: float, general_floor: dict[str, float], ds=None, formats=None,
              r_grid=None, in_domain: str = "in_domain.acc") -> dict:
    """Largest r predicted to meet in_domain acc >= in_domain_target and metric >= floor for every
    general_floor entry, over the document's groups (restricted to `formats`) and data sizes `ds`
    (default: each group's curve D values).

    Returns {"r", "D", "format", "key", "predicted": {metric: {"mid", "lo", "hi"}} at (D, r),
    "r_ci": [lo, hi] (the same search on each bootstrap draw; None where a draw meets nothing),
    "feasible_prob" (fraction of draws meeting both somewhere), "student_fraction": 1 - r,
    "alternatives": [the best per format], "message"}. When no candidate meets both, r, D, format,
    key, predicted, r_ci and student_fraction are None, "alternatives" is empty and "best_achievable"
    / "message" give the best values the fits reach. Raises ValueError on a target outside (0, 1),
    an unknown or non-accuracy metric in general_floor, or an unknown format.
    """
    _check(doc, in_domain_target, general_floor, in_domain, formats)
    r_grid = COLLAPSE_R if r_grid is None else np.asarray(r_grid, float)
    need = {in_domain: float(in_domain_target), **{m: float(v) for m, v in general_floor.items()}}
    level = doc.get("level", 0.9)
    cands = []
    for g in doc["groups"]:
        if (formats and g["key"].get("format") not in formats) or any(m not in g["metrics"] for m in need):
            continue
        fits = {m: g["metrics"][m] for m in need}
        gds = ds if ds is not None else sorted({float(d) for f in fits.values() for d in f["curves"]})
        for D in gds:
            mids = {m: _preds(f, D, r_grid)[0] for m, f in fits.items()}
            ok = _feasible(mids, need)
            cands.append({"key": g["key"], "fits": fits, "D": float(D), "mids": mids, "ok": ok,
                          "r": float(r_grid[ok].max()) if ok.any() else None})
    if not cands:
        raise ValueError(f"no fitted group has all of {sorted(need)}" + (f" in formats {formats}" if formats else ""))
    feasible = sorted((c for c in cands if c["r"] is not None), key=lambda c: (-c["r"], c["D"]))
    if not feasible:
        return _unreachable(cands, need, in_domain, r_grid)

    def describe(c):
        preds = {}
        for m, f in c["fits"].items():
            band = interval(_preds(f, c["D"], [c["r"]], draws=True), level)
            mid = float(_preds(f, c["D"], [c["r"]])[0, 0])
            preds[m] = {"mid": mid, "lo": band[0][0] if band else None, "hi": band[1][0] if band else None}
        draws = {m: _preds(f, c["D"], r_grid, draws=True) for m, f in c["fits"].items()}
        nb = min(len(v) for v in draws.values())
        r_ci, prob = None, None
        if nb:
            ok = _feasible({m: v[:nb] for m, v in draws.items()}, need)
            r_draw = np.where(ok.any(1), np.where(ok, r_grid, -np.inf).max(1), _INFEASIBLE)
            r_ci = [None if x < 0 else float(x) for x in interval(r_draw, level)]
            prob = float(ok.any(1).mean())
        D = int(c["D"]) if c["D"].is_integer() else c["D"]
        return {"r": c["r"], "D": D, "format": c["key"].get("format"), "key": c["key"], "predicted": preds,
                "r_ci": r_ci, "feasible_prob": prob, "student_fraction": 1 - c["r"]}

    best = describe(feasible[0])
    per_format = {}
    for c in feasible:
        per_format.setdefault(c["key"].get("format"), c)
    best["alternatives"] = [describe(c) for c in per_format.values()]
    best["message"] = (f"r={best['r']:.3f} (the student keeps {best['student_fraction']:.1%} of the teacher's "
                       f"parameters) with {_where(feasible[0])}")
    return _plain(best)


def _unreachable(cands, need, in_domain, r_grid):
    """The no-solution answer: the best each requirement reaches, alone and with the others met."""
    best = {}

    def record(name, c, values, mask):
        if mask.any():
            i = int(np.flatnonzero(mask)[np.argmax(values[mask])])
            if name not in best or values[i] > best[name]["value"]:
                best[name] = {"value": float(values[i]), "format": c["key"].get("format"), "key": c["key"],
                              "D": c["D"], "r": float(r_grid[i])}

    for c in cands:
        everywhere = np.ones_like(c["ok"])
        record(in_domain, c, c["mids"][in_domain], everywhere)
        general_ok = _feasible({m: c["mids"][m] for m in need if m != in_domain},
                               {m: v for m, v in need.items() if m != in_domain}) if len(need) > 1 else everywhere
        record(in_domain + " (general floors met)", c, c["mids"][in_domain], general_ok)
        for m in need:
            if m != in_domain:
                record(m + f" ({in_domain} target met)", c, c["mids"][m], c["mids"][in_domain] >= need[in_domain])
    wanted = ", ".join(f"{m} >= {v:g}" for m, v in need.items())
    parts = [f"{name} at most {b['value']:.4f} ({_where(b)}, r={b['r']})" for name, b in best.items()]
    missing = [n for n in [in_domain + " (general floors met)"] + [f"{m} ({in_domain} target met)" for m in need
                                                                    if m != in_domain] if n not in best]
    parts += [f"{n}: never" for n in missing]
    return _plain({"r": None, "D": None, "format": None, "key": None, "predicted": None, "r_ci": None,
                   "feasible_prob": None, "student_fraction": None, "alternatives": [], "best_achievable": best,
                   "message": f"no fitted group and D is predicted to meet {wanted}; best achievable: "
                              + "; ".join(parts)})
