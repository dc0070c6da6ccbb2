"""The sweep report: `SWEEP_DIR/report.md` and PNG plots under `SWEEP_DIR/plots/`.

It reads the sweep's results table (`results.parquet`, one row per point) and, when present, the
fitting code's `fits.json` (fitted laws, curves with interval bands, collapse points). It answers
the paper's question (arXiv:2606.24747): does general knowledge collapse (fall to chance) at a lower
compression ratio r than in-domain quality drops, and does chain-of-thought supervision (cot /
blended) recover some of it?

Every number in the markdown, findings included, is computed by `report_numbers(table, fits)` from
those two inputs; `render_markdown` only formats it, so a test can check one against the other.
This module reads fits.json as a document and does not import the fitting code.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from jaxdistill.atomic_files import atomic_write  # noqa: E402

AXES = ("D", "r", "format", "schedule", "method")
FORMAT_ORDER = ("label", "cot", "blended")
IN_DOMAIN = "in_domain"
R_LIMIT = 0.99  # collapse points are searched for r <= 0.99; null means "not reached"
DPI = 120


# ---------------------------------------------------------------------------------------------
# inputs


def load_table(sweep_dir: str | os.PathLike) -> pd.DataFrame:
    return pd.read_parquet(Path(sweep_dir) / "results.parquet")


def load_fits(sweep_dir: str | os.PathLike) -> dict | None:
    """fits.json, or None when the fitting step has not written one."""
    path = Path(sweep_dir) / "fits.json"
    return json.loads(path.read_text()) if path.exists() else None


def _num(x) -> float | None:
    """A finite float, or None (NaN, None, missing)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _done(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "done"] if "status" in df else df


def suites(df: pd.DataFrame) -> list[str]:
    """Suite names from the `S.acc` columns, in-domain first."""
    # the student's SUITE.acc; teacher.* and pruned_only.* columns are baselines
    names = [c[:-4] for c in df.columns if c.endswith(".acc") and c.count(".") == 1]
    return sorted(names, key=lambda s: (s != IN_DOMAIN, s))


def _general(df: pd.DataFrame) -> list[str]:
    return [f"{s}.acc" for s in suites(df) if s != IN_DOMAIN]


def _ordered(values, preferred=()) -> list:
    vals = {v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))}
    num = lambda v: _num(v) if _num(v) is not None else math.inf  # noqa: E731  numbers by value, then text
    return [v for v in preferred if v in vals] + sorted(vals - set(preferred), key=lambda v: (num(v), str(v)))


def _se(df: pd.DataFrame, metric: str) -> pd.Series:
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


def _cells(df: pd.DataFrame, metric: str, by: list[str]) -> pd.DataFrame:
    """Mean of `metric` per cell of `by` (over seeds), with the SE of that mean from per-point SEs."""
    d = pd.DataFrame({k: df[k] for k in by}).assign(y=df[metric].astype(float), v=_se(df, metric) ** 2)
    out = d.dropna(subset=["y"]).groupby(by, dropna=False).agg(
        y=("y", "mean"), v=("v", lambda v: v.sum(skipna=False)), n=("y", "size")).reset_index()
    out["se"] = np.sqrt(out.pop("v")) / out["n"]  # NaN when any point's SE is unknown
    return out


def _level(df: pd.DataFrame, col: str, fallback=None) -> float | None:
    """A per-sweep constant (teacher accuracy, chance) from the table, else `fallback`."""
    if col in df:
        v = _num(_done(df)[col].astype(float).median())
        if v is not None:
            return v
    return _num(fallback)


# ---------------------------------------------------------------------------------------------
# numbers


def _label(key: dict) -> str:
    return " / ".join(str(key[k]) for k in ("format", "schedule", "method") if k in key) or \
        " / ".join(f"{k}={v}" for k, v in key.items()) or "all"


def _interval(v, ci) -> tuple[float, float]:
    """The collapse point's interval with "not reached within r <= 0.99" (null) as +inf."""
    end = lambda x: math.inf if _num(x) is None else float(x)  # noqa: E731
    if ci is None or len(ci) != 2:
        return end(v), end(v)
    return end(ci[0]), end(ci[1])


def _order(a: tuple[float, float], b: tuple[float, float]) -> str:
    """"<" when interval a lies wholly below b, ">" when above, "overlap" otherwise."""
    if a[1] < b[0]:
        return "<"
    if b[1] < a[0]:
        return ">"
    return "overlap"


def collapse_verdict(c: dict) -> str:
    """The paper's claim is r_general < r_in_domain: general knowledge collapses at lower compression
    than in-domain quality drops. Judged from the intervals (null ends = beyond r = 0.99)."""
    if _num(c.get("r_general")) is None and _num(c.get("r_in_domain")) is None:
        return "inconclusive: neither point reached within r <= 0.99"
    o = _order(_interval(c.get("r_general"), c.get("r_general_ci")),
               _interval(c.get("r_in_domain"), c.get("r_in_domain_ci")))
    note = "" if all(c.get(k) is not None for k in ("r_general_ci", "r_in_domain_ci")) else \
        " (point estimates only: an interval is missing)"
    return {"<": "supports the paper's claim", ">": "contradicts the paper's claim"}.get(
        o, "inconclusive: intervals overlap") + note


def _compare(done: pd.DataFrame, metric: str, axis: str, ref, alt) -> dict | None:
    """Matched comparison alt - ref along `axis`: cells equal on every other axis (seeds averaged);
    mean difference over cells, SE = sqrt(sum of per-cell variances) / n from the per-point SEs."""
    keys = [a for a in AXES if a != axis and a in done]
    a = _cells(done[done[axis] == ref], metric, keys)
    b = _cells(done[done[axis] == alt], metric, keys)
    m = a.merge(b, on=keys, suffixes=("_ref", "_alt"))
    if m.empty:
        return None
    diff = float((m["y_alt"] - m["y_ref"]).mean())
    se = _num(np.sqrt((m["se_ref"] ** 2 + m["se_alt"] ** 2).sum(skipna=False)) / len(m))
    return {"axis": axis, "ref": ref, "alt": alt, "metric": metric, "n": len(m), "matched_on": keys,
            "diff": diff, "se": se, "exceeds_2se": se is not None and abs(diff) > 2 * se}


def _comparison_pairs(done: pd.DataFrame) -> list[tuple[str, object, object]]:
    """(axis, reference, alternative): formats vs label, largest vs smallest D, schedules vs
    one-shot, methods vs full - whichever the sweep has."""
    pairs = []
    for axis, ref_pref in (("format", "label"), ("D", None), ("schedule", "one-shot"), ("method", "full")):
        if axis not in done:
            continue
        vals = _ordered(done[axis].unique(), FORMAT_ORDER if axis == "format" else ())
        if len(vals) < 2:
            continue
        if axis == "D":
            pairs.append((axis, min(vals), max(vals)))
            continue
        ref = ref_pref if ref_pref in vals else vals[0]
        pairs += [(axis, ref, v) for v in vals if v != ref]
    return pairs


def _fmt(x, nd: int = 3) -> str:
    x = _num(x)
    return "—" if x is None else f"{x:.{nd}f}"


def _fmt_int(x) -> str:
    x = _num(x)
    return "—" if x is None else str(int(round(x)))


def _fmt_r(v) -> str:
    return "not reached" if _num(v) is None else f"{float(v):.2f}"


def _fmt_r_ci(v, ci) -> str:
    if ci is None or len(ci) != 2:
        return _fmt_r(v)
    end = lambda x: f">{R_LIMIT:.2f}" if _num(x) is None else f"{float(x):.2f}"  # noqa: E731
    return f"{_fmt_r(v)} [{end(ci[0])}, {end(ci[1])}]"


def _fmt_g(x) -> str:
    x = _num(x)
    return "—" if x is None else f"{x:.3g}"


def _comparison_text(axis: str, ref, alt, cmps: list[dict]) -> str:
    what = {"format": f"{alt} vs {ref} supervision", "D": f"D = {alt} vs D = {ref}",
            "schedule": f"{alt} vs {ref} pruning", "method": f"{alt} vs {ref} distillation"}[axis]
    parts = []
    for c in cmps:
        kind = "in-domain" if c["metric"].startswith(IN_DOMAIN + ".") else "general"
        if c["se"] is None:
            judged = "no SE available"
        elif c["exceeds_2se"]:
            judged = f"exceeds 2 SE: {'D = ' * (axis == 'D')}{alt} {'higher' if c['diff'] > 0 else 'lower'}"
        else:
            judged = "within 2 SE: no clear difference"
        parts.append(f"{kind} `{c['metric']}` {c['diff']:+.3f} ± {_fmt(c['se'])} SE over {c['n']} "
                     f"matched cells ({judged})")
    return f"**{what}** (matched on {', '.join(cmps[0]['matched_on'])}): " + "; ".join(parts) + "."


def report_numbers(table: pd.DataFrame, fits: dict | None) -> dict:
    """Everything the markdown shows, as plain values: run summary, headline collapse rows, fitted
    laws, per-point results, matched comparisons, findings (sentences built from these numbers),
    failed/excluded points and fit warnings."""
    df, done = table, _done(table)
    sts = suites(df)
    metrics = [f"{s}.acc" for s in sts]
    n_failed = int((df["status"] == "failed").sum()) if "status" in df else 0
    run = {"total": len(df), "done": len(done), "failed": n_failed,
           "axes": {a: _ordered(df[a].unique(), FORMAT_ORDER) for a in (*AXES, "seed") if a in df},
           "suites": sts, "wall_s": float(df["wall_s"].astype(float).sum()) if "wall_s" in df else None}

    results = []
    for _, row in df.iterrows():
        results.append({
            "point": row["point"], "status": row.get("status", "done"),
            **{a: row.get(a) for a in ("D", "r", "r_actual", *AXES[2:])},
            "suites": {s: {"acc": _num(row.get(f"{s}.acc")), "se": _num(row.get(f"{s}.acc_se"))} for s in sts},
            "macro_f1": _num(row.get(f"{IN_DOMAIN}.macro_f1")), "steps": _num(row.get("steps")),
            "wall_s": _num(row.get("wall_s"))})
    failed = [{"point": r["point"], "error": r.get("error") if isinstance(r.get("error"), str) else None}
              for _, r in df.iterrows()
              if r.get("status") == "failed"]

    headline, laws, excluded = [], [], []
    for g in (fits or {}).get("groups", []):
        label = _label(g.get("key", {}))
        for metric, m in g.get("metrics", {}).items():
            ci = m.get("ci") or {}
            laws.append({"group": label, "metric": metric, "family": m.get("family"),
                         "params": {k: (v, (ci.get(k) or [None, None])) for k, v in m.get("params", {}).items()},
                         "rmse": m.get("rmse"), "loo_rmse": m.get("loo_rmse"), "n_points": m.get("n_points"),
                         "d_term": m.get("d_term"), "excluded": list(m.get("excluded") or [])})
            excluded += [{"group": label, "metric": metric, "point": p} for p in m.get("excluded") or []]
        for metric, c in g.get("collapse", {}).items():
            headline.append({"group": label, "key": g.get("key", {}), "metric": metric, "D": c.get("D"),
                             "r_general": c.get("r_general"), "r_general_ci": c.get("r_general_ci"),
                             "r_in_domain": c.get("r_in_domain"), "r_in_domain_ci": c.get("r_in_domain_ci"),
                             "claim_holds": c.get("claim_holds"), "claim_prob": c.get("claim_prob"),
                             "verdict": collapse_verdict(c)})

    comparisons = [c for axis, ref, alt in _comparison_pairs(done) for metric in metrics
                   if (c := _compare(done, metric, axis, ref, alt)) is not None]

    findings = []
    for h in headline:
        claim = {True: "yes", False: "no"}.get(h["claim_holds"], "unknown")
        findings.append(
            f"**{h['group']}**, `{h['metric']}` at D = {_fmt_int(h['D'])}: general knowledge collapses at "
            f"r = {_fmt_r_ci(h['r_general'], h['r_general_ci'])}, in-domain quality drops at "
            f"r = {_fmt_r_ci(h['r_in_domain'], h['r_in_domain_ci'])}: {h['verdict']} "
            f"(fit: claim holds = {claim}, P(claim) = {_fmt(h['claim_prob'], 2)}).")
    # does CoT supervision move the general collapse point? label vs cot/blended in the same group
    by_rest: dict = {}
    for h in headline:
        rest = tuple((k, str(v)) for k, v in h["key"].items() if k != "format")
        by_rest.setdefault((rest, h["metric"], h["D"]), {})[h["key"].get("format")] = h
    for (rest, metric, D), per_fmt in by_rest.items():
        if "label" not in per_fmt:
            continue
        lab = per_fmt["label"]
        for f, h in per_fmt.items():
            if f == "label":
                continue
            o = _order(_interval(h["r_general"], h["r_general_ci"]), _interval(lab["r_general"], lab["r_general_ci"]))
            say = {">": f"{f} collapses later than label (intervals separate): "
                        "CoT supervision recovers general knowledge",
                   "<": f"{f} collapses earlier than label (intervals separate): "
                        "CoT supervision does not recover general knowledge here",
                   "overlap": "intervals overlap: no clear difference between the formats"}[o]
            findings.append(
                f"**General collapse point, {f} vs label** ({' / '.join(v for _, v in rest) or 'all'}; `{metric}` "
                f"at D = {_fmt_int(D)}): r = {_fmt_r_ci(h['r_general'], h['r_general_ci'])} vs "
                f"{_fmt_r_ci(lab['r_general'], lab['r_general_ci'])}: {say}.")
    pairs: dict = {}
    for c in comparisons:
        pairs.setdefault((c["axis"], c["ref"], c["alt"]), []).append(c)
    findings += [_comparison_text(axis, ref, alt, cs) for (axis, ref, alt), cs in pairs.items()]
    if not findings:
        findings.append("No fitted collapse points and no matched comparisons: nothing to conclude yet.")

    return {"run": run, "has_fits": fits is not None, "fits_meta": {k: (fits or {}).get(k) for k in
            ("version", "level", "boot", "margins", "families")}, "headline": headline, "laws": laws,
            "results": results, "comparisons": comparisons, "findings": findings, "failed": failed,
            "excluded": excluded, "skipped": list((fits or {}).get("skipped") or []),
            "warnings": list((fits or {}).get("warnings") or [])}


# ---------------------------------------------------------------------------------------------
# plots


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(str(p) for p in parts)).strip("-")


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"))
    plt.close(fig)


def _fit_groups(fits: dict | None, **want) -> list[dict]:
    """fits groups whose key agrees with `want` on every field the key has."""
    return [g for g in (fits or {}).get("groups", [])
            if all(str(g.get("key", {})[k]) == str(v) for k, v in want.items() if k in g.get("key", {}))]


def _curve(metric_fit: dict | None, D) -> dict | None:
    for k, c in ((metric_fit or {}).get("curves") or {}).items():
        if _num(k) is not None and _num(D) is not None and float(k) == float(D):
            return c
    return None


def _legend(ax, **kw):
    h, lab = ax.get_legend_handles_labels()
    seen = dict(zip(lab, h))
    if seen:
        ax.legend(seen.values(), seen.keys(), fontsize=7, **kw)


def _levels(ax, teacher, chance):
    if teacher is not None:
        ax.axhline(teacher, color="black", ls="--", lw=1, label="teacher")
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")


def _metric_levels(df, fits, metric) -> tuple[float | None, float | None]:
    fit = next((g["metrics"][metric] for g in (fits or {}).get("groups", []) if metric in g.get("metrics", {})), {})
    base = metric.rsplit(".", 1)[0]
    chance = _level(df, f"{base}.chance", fit.get("chance")) if metric.endswith(".acc") else None
    return _level(df, f"teacher.{metric}", fit.get("teacher")), chance


def _plot_vs_r(df, fits, metric, schedule, method, colors, path) -> bool:
    """(a) metric vs r, one line per format, observed ± SE and fitted curve with band; panel per D."""
    sub = df[(df["schedule"] == schedule) & (df["method"] == method)]
    fgs = {f: _fit_groups(fits, format=f, schedule=schedule, method=method) for f in colors}
    Ds = set(sub["D"].dropna()) | {float(k) for gs in fgs.values() for g in gs
                                   for k in ((g["metrics"].get(metric) or {}).get("curves") or {})}
    if not Ds or (metric not in sub and not any(fgs.values())):
        return False
    Ds = sorted(Ds)
    fig, axes = plt.subplots(1, len(Ds), figsize=(4.4 * len(Ds), 3.8), sharey=True, squeeze=False)
    teacher, chance = _metric_levels(df, fits, metric)
    for ax, D in zip(axes[0], Ds):
        drawn = set()
        for f, color in colors.items():
            pts = sub[(sub["format"] == f) & (sub["D"] == D)].sort_values("r") if metric in sub else sub[:0]
            if len(pts):
                ax.errorbar(pts["r"], pts[metric], yerr=_se(pts, metric).fillna(0), color=color, capsize=3,
                            ms=4, fmt="o" if fgs[f] else "o-", lw=1, label=f"{f} observed")
            for g in fgs[f]:
                c = _curve(g["metrics"].get(metric), D)
                if c is None or id(g) in drawn:
                    continue
                drawn.add(id(g))
                ax.plot(c["r"], c["mid"], color=color, lw=1.5, label=f"{f} fit")
                if c.get("lo") and c.get("hi"):
                    ax.fill_between(c["r"], np.asarray(c["lo"], float), np.asarray(c["hi"], float),
                                    color=color, alpha=0.18, lw=0)
        _levels(ax, teacher, chance)
        ax.set_title(f"D = {_fmt_int(D)}")
        ax.set_xlabel("compression ratio r")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    _legend(axes[0][-1], loc="best")
    fig.suptitle(f"{metric} vs compression ratio ({schedule}, {method})")
    _save(fig, path)
    return True


def _plot_vs_D(df, metric, schedule, method, colors, path) -> bool:
    """(b) observed metric vs D, one line per r, one panel per format."""
    sub = df[(df["schedule"] == schedule) & (df["method"] == method)]
    if metric not in sub or sub[metric].notna().sum() == 0:
        return False
    fmts = [f for f in colors if (sub["format"] == f).any()]
    rs = sorted(sub["r"].dropna().unique())
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(fmts), figsize=(4.4 * len(fmts), 3.8), sharey=True, squeeze=False)
    for ax, f in zip(axes[0], fmts):
        cells = _cells(sub[sub["format"] == f], metric, ["r", "D"])
        for i, r in enumerate(rs):
            c = cells[cells["r"] == r].sort_values("D")
            if len(c):
                ax.errorbar(c["D"], c["y"], yerr=c["se"].fillna(0), fmt="o-", capsize=3, ms=4,
                            color=cmap(i / max(len(rs) - 1, 1)), label=f"r = {r:.2f}")
        ax.set_xscale("log")
        ax.set_xticks(sorted(sub["D"].dropna().unique()), [_fmt_int(D) for D in sorted(sub["D"].dropna().unique())])
        ax.minorticks_off()
        ax.set_title(f"format: {f}")
        ax.set_xlabel("D (training examples)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    _legend(axes[0][-1], loc="best")
    fig.suptitle(f"{metric} vs D at each r ({schedule}, {method})")
    _save(fig, path)
    return True


def _plot_tradeoff(df, fits, schedule, method, colors, path) -> bool:
    """(c) in-domain accuracy vs each general metric, one curve per format ordered by r (observed
    cells and fitted mids), at the collapse D (else the largest D); teacher marked."""
    sub = df[(df["schedule"] == schedule) & (df["method"] == method)]
    gens, idm = _general(df), f"{IN_DOMAIN}.acc"
    if idm not in df or not gens or sub.empty:
        return False
    fig, axes = plt.subplots(1, len(gens), figsize=(4.8 * len(gens), 4.2), squeeze=False)
    for ax, gm in zip(axes[0], gens):
        Dc = [h.get("D") for g in _fit_groups(fits, schedule=schedule, method=method)
              for k, h in g.get("collapse", {}).items() if k == gm and h.get("D") is not None]
        D = Dc[0] if Dc else sub["D"].max()
        for f, color in colors.items():
            at = sub[(sub["format"] == f) & (sub["D"] == D)]
            c = _cells(at, gm, ["r"]).merge(_cells(at, idm, ["r"]), on="r", suffixes=("_g", "_i")).sort_values("r")
            if len(c):
                ax.plot(c["y_g"], c["y_i"], "o-", color=color, ms=4, label=f"{f} observed")
                for _, row in c.iterrows():
                    ax.annotate(f"{row['r']:.2f}", (row["y_g"], row["y_i"]), fontsize=6,
                                xytext=(3, 3), textcoords="offset points")
            for g in _fit_groups(fits, format=f, schedule=schedule, method=method):
                cg, ci = _curve(g["metrics"].get(gm), D), _curve(g["metrics"].get(idm), D)
                if cg and ci:
                    ax.plot(cg["mid"], np.interp(cg["r"], ci["r"], ci["mid"]), "--", color=color, lw=1.2,
                            label=f"{f} fit")
        tg, chg = _metric_levels(df, fits, gm)
        ti, chi = _metric_levels(df, fits, idm)
        if tg is not None and ti is not None:
            ax.plot([tg], [ti], "*", color="black", ms=12, label="teacher")
        if chg is not None:
            ax.axvline(chg, color="grey", ls=":", lw=1, label="chance")
        if chi is not None:
            ax.axhline(chi, color="grey", ls=":", lw=1)
        ax.set_xlabel(f"general: {gm}")
        ax.set_ylabel(f"in-domain: {idm}")
        ax.set_title(f"D = {_fmt_int(D)} (labels: r)")
        ax.grid(alpha=0.3)
        _legend(ax, loc="best")
    fig.suptitle(f"In-domain vs general trade-off ({schedule}, {method})")
    _save(fig, path)
    return True


def _plot_collapse(headline: list[dict], path) -> bool:
    """(d) collapse points with intervals: r_general and r_in_domain per group/metric; a point not
    reached within r <= 0.99 is drawn at 1.0 as a triangle."""
    if not headline:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(headline) + 1.6))
    for i, h in enumerate(headline):
        for name, off, color in (("r_general", -0.12, "C3"), ("r_in_domain", 0.12, "C0")):
            v, ci = _num(h[name]), h[f"{name}_ci"]
            x = v if v is not None else 1.0
            lo, hi = (_num(ci[0]), _num(ci[1])) if ci and len(ci) == 2 else (v, v)
            lo, hi = (lo if lo is not None else 1.0), (hi if hi is not None else 1.0)
            label = {"r_general": "general collapse", "r_in_domain": "in-domain drop"}[name]
            ax.errorbar([x], [i + off], xerr=[[max(x - lo, 0)], [max(hi - x, 0)]], fmt="o" if v is not None else ">",
                        color=color, capsize=3, mfc=color if v is not None else "none", label=label)
    ax.axvline(R_LIMIT, color="grey", ls=":", lw=1, label="search limit r = 0.99")
    ax.set_yticks(range(len(headline)))
    ax.set_yticklabels([f"{h['group']}\n{h['metric']} @ D={_fmt_int(h['D'])}" for h in headline], fontsize=7)
    ax.set_xlim(0, 1.03)
    ax.set_xlabel("compression ratio r")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    _legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("Collapse points with intervals (triangle: not reached)")
    _save(fig, path)
    return True


def write_plots(table: pd.DataFrame, fits: dict | None, plot_dir: Path, headline: list[dict]) -> list[tuple[str, str]]:
    """Write every plot; returns [(caption, path relative to the sweep dir)]."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    done = _done(table)
    fits_metrics = {m for g in (fits or {}).get("groups", []) for m in g.get("metrics", {})}
    metrics = [f"{s}.acc" for s in suites(table)]
    metrics += sorted(fits_metrics - set(metrics))
    formats = _ordered(list(done["format"].unique()) +
                       [g["key"]["format"] for g in (fits or {}).get("groups", []) if "format" in g.get("key", {})],
                       FORMAT_ORDER)
    colors = {f: f"C{i}" for i, f in enumerate(formats)}
    combos = {(s, m) for s, m in zip(done["schedule"], done["method"])}
    combos |= {(g["key"]["schedule"], g["key"]["method"]) for g in (fits or {}).get("groups", [])
               if {"schedule", "method"} <= set(g.get("key", {}))}
    out = []

    def add(ok, caption, name):
        if ok:
            out.append((caption, f"plots/{name}"))

    for s, m in sorted(combos, key=str):
        for metric in metrics:
            name = f"vs_r_{_slug(metric, s, m)}.png"
            add(_plot_vs_r(done, fits, metric, s, m, colors, plot_dir / name), f"{metric} vs r ({s}, {m})", name)
        for metric in metrics:
            name = f"vs_D_{_slug(metric, s, m)}.png"
            add(_plot_vs_D(done, metric, s, m, colors, plot_dir / name), f"{metric} vs D ({s}, {m})", name)
        name = f"tradeoff_{_slug(s, m)}.png"
        add(_plot_tradeoff(done, fits, s, m, colors, plot_dir / name),
            f"in-domain vs general trade-off ({s}, {m})", name)
    add(_plot_collapse(headline, plot_dir / "collapse.png"), "collapse points per format", "collapse.png")
    return out


# ---------------------------------------------------------------------------------------------
# markdown


def _table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows])


def render_markdown(nums: dict, plots: list[tuple[str, str]], title: str) -> str:
    run = nums["run"]
    md = [f"# {title}", "", "## What was run", ""]
    md.append(f"- Points: {run['total']} total, {run['done']} done, {run['failed']} failed.")
    for a, vals in run["axes"].items():
        shown = [_fmt_int(v) if a in ("D", "seed") else (f"{v:.2f}" if a == "r" else str(v)) for v in vals]
        md.append(f"- {a}: {', '.join(shown)}")
    md.append(f"- Suites: {', '.join(f'{s} (in-domain)' if s == IN_DOMAIN else s for s in run['suites'])}")
    if run["wall_s"] is not None:
        md.append(f"- Total wall time (sum of `wall_s`): {run['wall_s']:.1f} s ({run['wall_s'] / 3600:.2f} h)")
    meta = nums["fits_meta"]
    if nums["has_fits"]:
        margins = ", ".join(f"{k} {v}" for k, v in (meta.get("margins") or {}).items())
        md.append(f"- Fits: fits.json version {meta.get('version')}, interval level {meta.get('level')}, "
                  f"{meta.get('boot')} bootstrap resamples, collapse margins: {margins or '—'}")
    else:
        md.append("- No fits.json: this report has no fitted curves, laws or collapse points.")

    md += ["", "## Headline: collapse point per format", ""]
    if nums["headline"]:
        md.append("Paper's claim: general knowledge collapses (r_general) at lower compression than in-domain "
                  "quality drops (r_in_domain). Intervals at the fits' level; `>0.99` / not reached = beyond the "
                  "searched range r <= 0.99.")
        md += ["", _table(
            ["group", "general metric", "D", "r_general [CI]", "r_in_domain [CI]", "claim holds?", "P(claim)",
             "verdict"],
            [[h["group"], h["metric"], _fmt_int(h["D"]), _fmt_r_ci(h["r_general"], h["r_general_ci"]),
              _fmt_r_ci(h["r_in_domain"], h["r_in_domain_ci"]),
              {True: "yes", False: "no"}.get(h["claim_holds"], "—"), _fmt(h["claim_prob"], 2), h["verdict"]]
             for h in nums["headline"]])]
    else:
        md.append("No collapse points (no fits.json, or no group could be fitted).")

    md += ["", "## Findings", ""] + [f"- {f}" for f in nums["findings"]]

    md += ["", "## Fitted laws", ""]
    if nums["laws"]:
        md += [f"- `{k}`: {v}" for k, v in (meta.get("families") or {}).items()] + [""]
        md.append(_table(
            ["group", "metric", "family", "params [CI]", "rmse", "loo_rmse", "n points", "excluded"],
            [[law["group"], law["metric"], law["family"] or "—",
              "; ".join(f"{k} = {_fmt_g(v)} [{_fmt_g(ci[0])}, {_fmt_g(ci[1])}]"
                        for k, (v, ci) in law["params"].items()),
              _fmt(law["rmse"], 4), _fmt(law["loo_rmse"], 4), _fmt_int(law["n_points"]),
              ", ".join(law["excluded"]) or "—"] for law in nums["laws"]]))
    else:
        md.append("No fitted laws.")

    md += ["", "## Plots", ""]
    for caption, rel in plots:
        md += [f"### {caption}", "", f"![{caption}]({rel})", ""]

    md += ["## Results", ""]
    sts = run["suites"]
    md.append(_table(
        ["point", "status", "D", "r", "r_actual", "format", "schedule", "method", *[f"{s} acc ± se" for s in sts],
         "macro-F1", "steps", "wall_s"],
        [[p["point"], p["status"], _fmt_int(p["D"]), _fmt(p["r"], 2), _fmt(p["r_actual"], 3),
          *[str(p[a]) if isinstance(p[a], str) else "—" for a in ("format", "schedule", "method")],
          *[f"{_fmt(p['suites'][s]['acc'])} ± {_fmt(p['suites'][s]['se'])}" if p["suites"][s]["acc"] is not None
            else "—" for s in sts],
          _fmt(p["macro_f1"]), _fmt_int(p["steps"]), _fmt(p["wall_s"], 1)] for p in nums["results"]]))

    md += ["", "## Failed and excluded points, fit warnings", ""]
    md += [f"- failed: `{f['point']}`: {f['error'] or 'no error recorded'}"
           for f in nums["failed"]] or ["- No failed points."]
    md += [f"- excluded from the `{e['metric']}` fit of {e['group']}: `{e['point']}`" for e in nums["excluded"]]
    md += [f"- skipped group {_label(s.get('key', {}))}: {s.get('reason')}" for s in nums["skipped"]]
    md += [f"- warning: {w}" for w in nums["warnings"]]
    return "\n".join(md) + "\n"


def write_report(sweep_dir: str | os.PathLike, *, table: pd.DataFrame | str | os.PathLike | None = None,
                 fits: dict | str | os.PathLike | None = None, title: str | None = None) -> Path:
    """Write SWEEP_DIR/report.md and SWEEP_DIR/plots/*.png (each file atomically); returns the report
    path. `table` / `fits` default to SWEEP_DIR/results.parquet and SWEEP_DIR/fits.json (absent: no
    fitted curves); either may be given as an object or a path."""
    sweep = Path(sweep_dir)
    if table is None or isinstance(table, (str, os.PathLike)):
        table = pd.read_parquet(table) if table is not None else load_table(sweep)
    if fits is None:
        fits = load_fits(sweep)
    elif isinstance(fits, (str, os.PathLike)):
        fits = json.loads(Path(fits).read_text())
    nums = report_numbers(table, fits)
    plots = write_plots(table, fits, sweep / "plots", nums["headline"])
    md = render_markdown(nums, plots, title or f"Sweep report: {sweep.resolve().name}")
    path = sweep / "report.md"
    atomic_write(path, lambda tmp: tmp.write_text(md))
    return path
