"""The sweep report: `SWEEP_DIR/report.md` and PNG plots under `SWEEP_DIR/plots/`.

It reads the sweep's results table (`results.parquet`, one row per point) and, when present, the
fitting code's `fits.json` (fitted laws, curves with interval bands, collapse points). It answers
the paper's question (arXiv:2606.24747): does general knowledge collapse (fall to chance) at a lower
compression ratio r than in-domain quality drops, and does chain-of-thought supervision (cot /
blended) recover some of it?

Every number in the markdown, findings included, is computed by `report_numbers(table, fits)` from
those two inputs; `render_markdown` only formats it, so a test can check one against the other.
This module reads fits.json as a document and does not import the fitting code; the plots are
in `plots.py`, and the table accessors both use (axes, per-point SEs, seed-averaged cells, levels) in
`sweep_table.py`. What stays here is one unit: the numbers, the findings written from them and the
markdown they render to, which a test checks against each other.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from jaxdistill.atomic_files import atomic_write
from jaxdistill.scaling.sweep_table import (AXES, FORMAT_ORDER, IN_DOMAIN, R_LIMIT, cell_means, done_rows, fmt_int,
                                          num, ordered, suites)



# ---------------------------------------------------------------------------------------------
# inputs


def load_table(sweep_dir: str | os.PathLike) -> pd.DataFrame:
    return pd.read_parquet(Path(sweep_dir) / "results.parquet")


def load_fits(sweep_dir: str | os.PathLike) -> dict | None:
    """fits.json, or None when the fitting step has not written one."""
    path = Path(sweep_dir) / "fits.json"
    return json.loads(path.read_text()) if path.exists() else None


# ---------------------------------------------------------------------------------------------
# numbers


def _label(key: dict) -> str:
    return " / ".join(str(key[k]) for k in ("format", "schedule", "method") if k in key) or \
        " / ".join(f"{k}={v}" for k, v in key.items()) or "all"


def _interval(v, ci) -> tuple[float, float]:
    """The collapse point's interval with "not reached within r <= 0.99" (null) as +inf."""
    end = lambda x: math.inf if num(x) is None else float(x)  # noqa: E731
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
    if num(c.get("r_general")) is None and num(c.get("r_in_domain")) is None:
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
    a = cell_means(done[done[axis] == ref], metric, keys)
    b = cell_means(done[done[axis] == alt], metric, keys)
    m = a.merge(b, on=keys, suffixes=("_ref", "_alt"))
    if m.empty:
        return None
    diff = float((m["y_alt"] - m["y_ref"]).mean())
    se = num(np.sqrt((m["se_ref"] ** 2 + m["se_alt"] ** 2).sum(skipna=False)) / len(m))
    return {"axis": axis, "ref": ref, "alt": alt, "metric": metric, "n": len(m), "matched_on": keys,
            "diff": diff, "se": se, "exceeds_2se": se is not None and abs(diff) > 2 * se}


def _comparison_pairs(done: pd.DataFrame) -> list[tuple[str, object, object]]:
    """(axis, reference, alternative): formats vs label, largest vs smallest D, schedules vs
    one-shot, methods vs full - whichever the sweep has."""
    pairs = []
    for axis, ref_pref in (("format", "label"), ("D", None), ("schedule", "one-shot"), ("method", "full")):
        if axis not in done:
            continue
        vals = ordered(done[axis].unique(), FORMAT_ORDER if axis == "format" else ())
        if len(vals) < 2:
            continue
        if axis == "D":
            pairs.append((axis, min(vals), max(vals)))
            continue
        ref = ref_pref if ref_pref in vals else vals[0]
        pairs += [(axis, ref, v) for v in vals if v != ref]
    return pairs


def _fmt(x, nd: int = 3) -> str:
    x = num(x)
    return "—" if x is None else f"{x:.{nd}f}"


def _fmt_r(v) -> str:
    return "not reached" if num(v) is None else f"{float(v):.2f}"


def _fmt_r_ci(v, ci) -> str:
    if ci is None or len(ci) != 2:
        return _fmt_r(v)
    end = lambda x: f">{R_LIMIT:.2f}" if num(x) is None else f"{float(x):.2f}"  # noqa: E731
    return f"{_fmt_r(v)} [{end(ci[0])}, {end(ci[1])}]"


def _fmt_g(x) -> str:
    x = num(x)
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
    df, done = table, done_rows(table)
    sts = suites(df)
    metrics = [f"{s}.acc" for s in sts]
    n_failed = int((df["status"] == "failed").sum()) if "status" in df else 0
    run = {"total": len(df), "done": len(done), "failed": n_failed,
           "axes": {a: ordered(df[a].unique(), FORMAT_ORDER) for a in (*AXES, "seed") if a in df},
           "suites": sts, "wall_s": float(df["wall_s"].astype(float).sum()) if "wall_s" in df else None}

    results = []
    for _, row in df.iterrows():
        results.append({
            "point": row["point"], "status": row.get("status", "done"),
            **{a: row.get(a) for a in ("D", "r", "r_actual", *AXES[2:])},
            "suites": {s: {"acc": num(row.get(f"{s}.acc")), "se": num(row.get(f"{s}.acc_se"))} for s in sts},
            "macro_f1": num(row.get(f"{IN_DOMAIN}.macro_f1")), "steps": num(row.get("steps")),
            "wall_s": num(row.get("wall_s"))})
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
            f"**{h['group']}**, `{h['metric']}` at D = {fmt_int(h['D'])}: general knowledge collapses at "
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
                f"at D = {fmt_int(D)}): r = {_fmt_r_ci(h['r_general'], h['r_general_ci'])} vs "
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




def _table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows])


def render_markdown(nums: dict, plots: list[tuple[str, str]], title: str) -> str:
    run = nums["run"]
    md = [f"# {title}", "", "## What was run", ""]
    md.append(f"- Points: {run['total']} total, {run['done']} done, {run['failed']} failed.")
    for a, vals in run["axes"].items():
        shown = [fmt_int(v) if a in ("D", "seed") else (f"{v:.2f}" if a == "r" else str(v)) for v in vals]
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
            [[h["group"], h["metric"], fmt_int(h["D"]), _fmt_r_ci(h["r_general"], h["r_general_ci"]),
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
              _fmt(law["rmse"], 4), _fmt(law["loo_rmse"], 4), fmt_int(law["n_points"]),
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
        [[p["point"], p["status"], fmt_int(p["D"]), _fmt(p["r"], 2), _fmt(p["r_actual"], 3),
          *[str(p[a]) if isinstance(p[a], str) else "—" for a in ("format", "schedule", "method")],
          *[f"{_fmt(p['suites'][s]['acc'])} ± {_fmt(p['suites'][s]['se'])}" if p["suites"][s]["acc"] is not None
            else "—" for s in sts],
          _fmt(p["macro_f1"]), fmt_int(p["steps"]), _fmt(p["wall_s"], 1)] for p in nums["results"]]))

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
    from jaxdistill.scaling.plots import write_plots  # plots.py reuses this module's helpers

    plots = write_plots(table, fits, sweep / "plots", nums["headline"])
    md = render_markdown(nums, plots, title or f"Sweep report: {sweep.resolve().name}")
    path = sweep / "report.md"
    atomic_write(path, lambda tmp: tmp.write_text(md))
    return path
