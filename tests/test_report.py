"""The sweep report (jaxdistill.scaling.report): on a tiny synthetic sweep (2 D x 3 r x 2 formats and a
failed point) with a synthetic fits.json, the markdown's tables are parsed back and checked against the
table's and fits' values at the printed precision, the plots it links are real PNGs, and the findings
phrase each collapse verdict the way the fits' intervals say."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from jaxdistill.scaling.report import report_numbers, write_report

SUITES = ("in_domain", "arc_easy")
GROUP = {"schedule": "iterative-3", "method": "full"}


def _acc(suite, D, r, fmt):
    """Smooth synthetic accuracies; irrational-ish offsets so rounding is actually exercised."""
    bonus = 0.0312 if fmt == "blended" else 0.0
    if suite == "in_domain":
        return 0.8713 - 0.2917 * r + 0.0173 * math.log(D / 500) + bonus
    return 0.2500 + 0.1931 * (1 - r) ** 2 + 0.0117 * math.log(D / 500) + bonus


def make_table(extra_methods=()):
    rows, i = [], 0
    for method in ("full", *extra_methods):
        for fmt in ("label", "blended"):
            for D in (500, 2000):
                for r in (0.0, 0.3, 0.6):
                    i += 1
                    row = {"point": f"p{i:02d}", "status": "done", "error": None, "D": D, "r": r,
                           "r_actual": r + 0.00437 * (r > 0), "format": fmt, "schedule": GROUP["schedule"],
                           "method": method, "seed": 0, "steps": 40 + i, "tokens": 1000 * i,
                           "wall_s": 12.345 + i, "distill_s": 10.0, "eval_s": 1.0, "compile_s": 1.0,
                           "student_params": 1e6 * (1 - r), "teacher_params": 1e6,
                           "in_domain.macro_f1": _acc("in_domain", D, r, fmt) - 0.0421}
                    for s in SUITES:
                        acc = _acc(s, D, r, fmt) - (0.0123 if method == "lora" else 0.0)
                        n = 200 if s == "in_domain" else 300
                        row |= {f"{s}.acc": acc, f"{s}.acc_se": math.sqrt(acc * (1 - acc) / n), f"{s}.n": n,
                                f"{s}.chance": 0.5 if s == "in_domain" else 0.25,
                                f"{s}.correct": [1, 0, 1], f"teacher.{s}.acc": 0.9137 if s == "in_domain" else 0.4521,
                                f"teacher.{s}.acc_se": 0.02}
                    rows.append(row)
    rows.append({"point": "p_fail", "status": "failed", "error": "RuntimeError: out of memory", "D": 2000,
                 "r": 0.9, "format": "label", "schedule": GROUP["schedule"], "method": "full", "seed": 0,
                 "wall_s": 3.25})
    return pd.DataFrame(rows)


COLLAPSE = {
    # general collapses only after in-domain drops, intervals apart: contradicts the paper
    "label": {"D": 2000, "r_general": 0.7123, "r_general_ci": [0.6234, 0.8012], "r_in_domain": 0.3111,
              "r_in_domain_ci": [0.2049, 0.4], "claim_holds": False, "claim_prob": 0.031},
    # general collapses, in-domain never drops within r <= 0.99: supports it
    "blended": {"D": 2000, "r_general": 0.3149, "r_general_ci": [0.2, 0.4], "r_in_domain": None,
                "r_in_domain_ci": [0.5, None], "claim_holds": True, "claim_prob": 0.934},
}


def make_fits(table):
    grid = np.linspace(0, 0.99, 12)
    groups = []
    for fmt in ("label", "blended"):
        metrics = {}
        for s in SUITES:
            curves = {str(D): {"r": grid.tolist(), "mid": [_acc(s, D, r, fmt) for r in grid],
                               "lo": [_acc(s, D, r, fmt) - 0.03 for r in grid],
                               "hi": [_acc(s, D, r, fmt) + 0.03 for r in grid]} for D in (500, 2000)}
            pts = table[(table["format"] == fmt) & (table["status"] == "done")]
            metrics[f"{s}.acc"] = {
                "family": "bounded", "params": {"a": 1.23456, "b": 0.2, "c": 2.5},
                "ci": {"a": [0.9, 1.5], "b": [0.1, 0.3], "c": [1.9, None]},
                "chance": 0.25, "teacher": 0.45, "d_term": True, "n_points": len(pts), "rmse": 0.01234,
                "loo_rmse": 0.02345, "excluded": ["p03"] if fmt == "label" else [], "curves": curves,
                "observed": [{"point": p["point"], "D": p["D"], "r": p["r"], "y": p[f"{s}.acc"],
                              "se": p[f"{s}.acc_se"]} for _, p in pts.iterrows()]}
        groups.append({"key": {"format": fmt, **GROUP}, "points": list(pts["point"]), "metrics": metrics,
                       "collapse": {"arc_easy.acc": COLLAPSE[fmt]}})
    return {"version": 1, "level": 0.9, "boot": 200, "margins": {"general": 0.25, "in_domain": 0.1},
            "families": {"bounded": "acc = chance + (teacher - chance) * sigmoid(a + b log D + c log(1 - r))",
                         "power": "L = E + A D^-alpha + B (1 - r)^-beta"},
            "groups": groups, "skipped": [{"key": {"format": "cot"}, "reason": "too few points"}],
            "warnings": ["arc_easy.acc: bootstrap hit the bound in 3 resamples"]}


def md_table(md, heading):
    """Rows (header -> cell) of the first markdown table after `## heading`."""
    lines = md.split(f"## {heading}", 1)[1].splitlines()
    rows = [ln for ln in lines[lines.index(next(ln for ln in lines if ln.startswith("|"))):]]
    rows = rows[:next((i for i, ln in enumerate(rows) if not ln.startswith("|")), len(rows))]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in rows]
    return [dict(zip(cells[0], c)) for c in cells[2:]]


def close(cell, value, nd):
    return abs(float(cell) - value) <= 0.5 * 10 ** -nd + 1e-12


def parse_r_ci(cell):
    """'0.31 [0.20, >0.99]' -> (0.31, 0.2, None); None for 'not reached' / '>0.99'."""
    m = re.fullmatch(r"(\S+(?: reached)?) \[(\S+), (\S+)\]", cell)
    return tuple(None if t in ("not reached", ">0.99") else float(t) for t in m.groups())


@pytest.fixture
def sweep(tmp_path):
    table = make_table()
    table.to_parquet(tmp_path / "results.parquet")
    (tmp_path / "fits.json").write_text(json.dumps(make_fits(table)))
    return tmp_path, table


def test_report_numbers_match_table_and_fits(sweep):
    root, table = sweep
    path = write_report(root, title="Synthetic sweep")
    md = path.read_text()
    assert path == root / "report.md" and md.startswith("# Synthetic sweep")

    # results table: every point, values at the printed precision
    rows = {r["point"]: r for r in md_table(md, "Results")}
    assert set(rows) == set(table["point"])
    for _, p in table[table["status"] == "done"].iterrows():
        row = rows[p["point"]]
        assert row["status"] == "done" and int(row["D"]) == p["D"]
        assert close(row["r"], p["r"], 2) and len(row["r"].split(".")[1]) == 2
        assert close(row["r_actual"], p["r_actual"], 3)
        assert (row["format"], row["schedule"], row["method"]) == (p["format"], p["schedule"], p["method"])
        for s in SUITES:
            acc, se = row[f"{s} acc ± se"].split(" ± ")
            assert close(acc, p[f"{s}.acc"], 3) and close(se, p[f"{s}.acc_se"], 3)
            assert len(acc.split(".")[1]) == 3 and len(se.split(".")[1]) == 3
        assert close(row["macro-F1"], p["in_domain.macro_f1"], 3)
        assert int(row["steps"]) == p["steps"] and close(row["wall_s"], p["wall_s"], 1)
    assert rows["p_fail"]["status"] == "failed" and rows["p_fail"]["arc_easy acc ± se"] == "—"
    assert "failed: `p_fail`: RuntimeError: out of memory" in md
    assert "13 total, 12 done, 1 failed" in md
    assert f"{table['wall_s'].sum():.1f} s" in md and "- D: 500, 2000\n- r: 0.00, 0.30, 0.60, 0.90" in md

    # headline table: collapse points with intervals, claim flags
    head = {r["group"]: r for r in md_table(md, "Headline: collapse point per format")}
    for fmt, c in COLLAPSE.items():
        row = head[f"{fmt} / iterative-3 / full"]
        assert row["general metric"] == "arc_easy.acc" and int(row["D"]) == c["D"]
        for name in ("r_general", "r_in_domain"):
            got = parse_r_ci(row[f"{name} [CI]"])
            for g, want in zip(got, (c[name], *c[f"{name}_ci"])):
                assert (g is None and want is None) or close(g, want, 2)
        assert row["claim holds?"] == ("yes" if c["claim_holds"] else "no")
        assert close(row["P(claim)"], c["claim_prob"], 2)
    assert head["label / iterative-3 / full"]["verdict"] == "contradicts the paper's claim"
    assert head["blended / iterative-3 / full"]["verdict"] == "supports the paper's claim"

    # laws table
    laws = md_table(md, "Fitted laws")
    assert len(laws) == 4 and all(close(r["rmse"], 0.01234, 4) and close(r["loo_rmse"], 0.02345, 4) for r in laws)
    assert "a = 1.23 [0.9, 1.5]" in laws[0]["params [CI]"] and "c = 2.5 [1.9, —]" in laws[0]["params [CI]"]

    # findings: verdict phrasing and a matched comparison recomputed here from the table
    findings = md.split("## Findings", 1)[1].split("## ", 1)[0]
    label_line = next(ln for ln in findings.splitlines() if ln.startswith("- **label / iterative-3 / full**"))
    assert "contradicts the paper's claim" in label_line and "claim holds = no" in label_line
    assert "supports the paper's claim" in next(ln for ln in findings.splitlines()
                                                if ln.startswith("- **blended / iterative-3 / full**"))
    assert "blended collapses earlier than label" in findings
    done = table[table["status"] == "done"].set_index(["D", "r", "format"])
    for s in SUITES:
        b, lab = done.xs("blended", level="format"), done.xs("label", level="format")
        diff = (b[f"{s}.acc"] - lab[f"{s}.acc"]).mean()
        se = np.sqrt((b[f"{s}.acc_se"] ** 2 + lab[f"{s}.acc_se"] ** 2).sum()) / len(b)
        assert f"`{s}.acc` {diff:+.3f} ± {se:.3f} SE over 6 matched cells" in findings
        assert ("exceeds 2 SE: blended higher" if diff > 2 * se else "within 2 SE") in findings
    assert "excluded from the `arc_easy.acc` fit of label / iterative-3 / full: `p03`" in md
    assert "warning: arc_easy.acc: bootstrap hit the bound" in md and "skipped group cot: too few points" in md

    # plots: every link is a PNG that exists; each kind is there; no temp files left behind
    links = re.findall(r"!\[[^\]]*\]\((plots/[^)]+)\)", md)
    assert {re.match(r"plots/(vs_r|vs_D|tradeoff|collapse)", ln).group(1) for ln in links} == \
        {"vs_r", "vs_D", "tradeoff", "collapse"}
    for ln in links:
        assert (root / ln).read_bytes().startswith(b"\x89PNG")
    assert not [p for p in (root / "plots").iterdir() if ".tmp-" in p.name]


def test_report_without_fits(sweep):
    root, table = sweep
    (root / "fits.json").unlink()
    md = write_report(root).read_text()
    assert "No fits.json" in md and "No collapse points" in md and "No fitted laws" in md
    links = re.findall(r"!\[[^\]]*\]\((plots/[^)]+)\)", md)
    assert links and "plots/collapse.png" not in links
    for ln in links:
        assert (root / ln).read_bytes().startswith(b"\x89PNG")
    assert len(md_table(md, "Results")) == len(table)


def test_matched_comparisons_cover_method():
    table = make_table(extra_methods=("lora",))
    nums = report_numbers(table, None)
    lora = [c for c in nums["comparisons"] if c["axis"] == "method"]
    assert {c["metric"] for c in lora} == {"in_domain.acc", "arc_easy.acc"}
    assert all(c["ref"] == "full" and c["alt"] == "lora" and c["n"] == 12 for c in lora)
    assert all(abs(c["diff"] + 0.0123) < 1e-9 for c in lora)
    assert any(f.startswith("**lora vs full distillation**") for f in nums["findings"])
    d = next(c for c in nums["comparisons"] if c["axis"] == "D" and c["metric"] == "in_domain.acc")
    assert (d["ref"], d["alt"]) == (500, 2000) and abs(d["diff"] - 0.0173 * math.log(4)) < 1e-9
