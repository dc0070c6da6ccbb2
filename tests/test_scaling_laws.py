"""Scaling-law fits on synthetic sweeps drawn from known laws (jaxdistill.scaling.laws)."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from jaxdistill.scaling import FAMILIES, collapse_point, fit_law, fit_table, load_fits, predict, write_fits
from jaxdistill.scaling.laws import bootstrap_law, interval

DS = (500, 2000, 8000)
RS = (0.0, 0.2, 0.4, 0.6, 0.8)
N = 200  # examples per point
ARC = ((-1.0, 0.3, 3.0), 0.25, 0.7)  # (a, b, c), chance, teacher
PPL = (1.5, 50.0, 0.5, 0.3, 1.0)     # E, A, alpha, B, beta


def true_acc(law, D, r):
    (a, b, c), ch, te = law
    return ch + (te - ch) * expit(a + b * np.log(D) + c * np.log1p(-np.asarray(r, float)))


def true_loss(p, D, r):
    E, A, alpha, B, beta = p
    return E + A * np.asarray(D, float) ** -alpha + B * (1 - np.asarray(r, float)) ** -beta


def make_table(spec, *, ds=DS, rs=RS, n=N, seed=0, exact=False, ppl=None, ppl_noise=0.01):
    """One row per (format, D, r) point. spec: {format: {suite: law}}; accuracies are means of n
    simulated 0/1 outcomes (or the exact law with a small se when exact); ppl: {format: power params}."""
    rng = np.random.default_rng(seed)
    rows = []
    for fmt, suites in spec.items():
        for D in ds:
            for r in rs:
                row = {"point": f"{fmt}-D{D}-r{r}", "status": "done", "error": None, "D": D, "r": r,
                       "r_actual": r, "format": fmt, "schedule": "one-shot", "method": "full", "seed": 0}
                for suite, law in suites.items():
                    p = float(true_acc(law, D, r))
                    correct = None if exact else rng.binomial(1, p, n).tolist()
                    acc = p if exact else float(np.mean(correct))
                    row |= {f"{suite}.acc": acc, f"{suite}.acc_se": 0.01 if exact else math.sqrt(acc * (1 - acc) / n),
                            f"{suite}.n": n, f"{suite}.chance": law[1], f"{suite}.correct": correct,
                            f"teacher.{suite}.acc": law[2]}
                if ppl and fmt in ppl:
                    loss = float(true_loss(ppl[fmt], D, r)) + (0 if exact else rng.normal(0, ppl_noise))
                    row |= {"wiki.ppl": math.exp(loss), "wiki.ppl_se": math.exp(loss) * ppl_noise}
                rows.append(row)
    return pd.DataFrame(rows)


def test_bounded_fit_recovers_law_within_bootstrap_interval():
    doc = fit_table(make_table({"blended": {"arc_easy": ARC}}), boot=200, level=0.95, seed=0)
    assert doc["families"] == FAMILIES and doc["version"] == 1 and not doc["skipped"]
    (group,) = doc["groups"]
    assert group["key"] == {"format": "blended", "schedule": "one-shot", "method": "full"}
    fit = group["metrics"]["arc_easy.acc"]
    assert fit["family"] == "bounded" and fit["d_term"] and fit["n_points"] == 15 and fit["excluded"] == []
    assert (fit["chance"], fit["teacher"]) == (0.25, 0.7) and len(fit["draws"]) == 200
    for name, true in zip("abc", ARC[0]):
        lo, hi = fit["ci"][name]
        assert lo <= true <= hi, (name, true, lo, hi)
    acc = true_acc(ARC, *np.meshgrid(DS, RS))
    noise = float(np.sqrt(np.mean(acc * (1 - acc) / N)))
    assert 0.5 * noise < fit["rmse"] < 1.3 * noise
    assert fit["loo_rmse"] < 2 * noise
    assert set(fit["curves"]) == {"500", "2000", "8000"}
    curve = fit["curves"]["2000"]
    assert len(curve["r"]) == 46 and curve["r"][0] == 0 and curve["r"][-1] == pytest.approx(0.9)
    assert np.all(np.array(curve["lo"]) <= np.array(curve["mid"])) and np.all(np.array(curve["mid"]) <= curve["hi"])
    assert np.max(np.abs(np.array(curve["mid"]) - true_acc(ARC, 2000, curve["r"]))) < 0.05
    assert {o["point"] for o in fit["observed"]} == set(group["points"])
    assert set(fit["observed"][0]) == {"point", "D", "r", "y", "se"}


def test_power_fit_on_log_perplexity_recovers_law():
    doc = fit_table(make_table({"label": {}}, ppl={"label": PPL}), boot=200, level=0.95, seed=1)
    fit = doc["groups"][0]["metrics"]["wiki.ppl"]
    assert fit["family"] == "power" and fit["transform"] == "log" and fit["d_term"]
    for name, true in zip(("E", "A", "alpha", "B", "beta"), PPL):
        lo, hi = fit["ci"][name]
        assert lo <= true <= hi, (name, true, lo, hi)
        assert fit["params"][name] >= 0
    assert 0.4 * 0.01 < fit["rmse"] < 1.3 * 0.01 and fit["loo_rmse"] < 0.03
    obs = fit["observed"][0]  # observed and curves in ppl units, the law in log-ppl
    assert obs["y"] == pytest.approx(math.exp(true_loss(PPL, obs["D"], obs["r"])), rel=0.05)
    curve = fit["curves"]["2000"]
    assert np.allclose(np.log(curve["mid"]), predict("power", fit["params"], 2000, curve["r"]))
    assert np.all(np.array(curve["lo"]) <= curve["mid"]) and np.all(np.array(curve["mid"]) <= curve["hi"])


def test_fit_law_predict_and_bootstrap_directly():
    D, r = (a.ravel() for a in np.meshgrid(DS, RS))
    y = true_loss(PPL, D, r)
    fit = fit_law("power", D, r, y)
    assert fit["rmse"] < 1e-6 and fit["loo_rmse"] < 1e-3
    assert predict("power", fit["params"], 4000, 0.5) == pytest.approx(float(true_loss(PPL, 4000, 0.5)), rel=1e-5)
    draws = bootstrap_law(fit, D, r, y, se=np.full(len(y), 0.01), boot=50, seed=0)
    assert draws.shape == (50, 5) and np.all(draws >= 0)
    with pytest.raises(ValueError, match="finite"):
        fit_law("power", D, r, np.r_[y[:-1], np.nan])
    with pytest.raises(ValueError, match="teacher > chance"):
        fit_law("bounded", D, r, y, chance=0.5, teacher=0.4)
    with pytest.raises(ValueError, match="unknown law family"):
        fit_law("cubic", D, r, y)


def test_failed_and_nan_points_are_excluded_with_a_warning():
    table = make_table({"blended": {"arc_easy": ARC, "in_domain": ((0.0, 0.5, 2.0), 0.25, 0.9)}})
    table.loc[3, ["status", "error", "arc_easy.acc", "in_domain.acc"]] = ["failed", "OOM", np.nan, np.nan]
    table.loc[7, "arc_easy.acc"] = np.nan
    failed, nan = table.loc[3, "point"], table.loc[7, "point"]
    with pytest.warns(UserWarning) as record:
        doc = fit_table(table, boot=20)
    assert any(failed in str(w.message) for w in record) and any(nan in str(w.message) for w in record)
    metrics = doc["groups"][0]["metrics"]
    assert metrics["arc_easy.acc"]["excluded"] == [failed, nan] and metrics["arc_easy.acc"]["n_points"] == 13
    assert metrics["in_domain.acc"]["excluded"] == [failed] and metrics["in_domain.acc"]["n_points"] == 14
    assert nan not in {o["point"] for o in metrics["arc_easy.acc"]["observed"]}
    assert any(failed in w and "OOM" in w for w in doc["warnings"])


def test_single_d_group_fits_without_d_term():
    doc = fit_table(make_table({"label": {"arc_easy": ARC}}, ds=(2000,), ppl={"label": PPL}), boot=30)
    metrics = doc["groups"][0]["metrics"]
    acc, ppl = metrics["arc_easy.acc"], metrics["wiki.ppl"]
    assert not acc["d_term"] and acc["params"]["b"] == 0 and acc["ci"]["b"] == [0, 0]
    assert not ppl["d_term"] and ppl["params"]["A"] == 0 and ppl["params"]["alpha"] == 0
    assert list(acc["curves"]) == ["2000"]
    # the r dependence is still recovered: the fit tracks the true curve at the observed D
    grid = np.linspace(0, 0.8, 9)
    assert np.max(np.abs(predict("bounded", acc["params"], 2000, grid, 0.25, 0.7) - true_acc(ARC, 2000, grid))) < 0.06


def test_too_few_points_skip_the_metric():
    with pytest.warns(UserWarning, match="usable points"):
        doc = fit_table(make_table({"label": {"arc_easy": ARC}}, ds=(500,), rs=(0.0, 0.5)), boot=10)
    assert doc["groups"] == []
    (skip,) = doc["skipped"]
    assert skip["key"]["format"] == "label" and "needs >= 3" in skip["reason"]


def _entry(law, draws=()):
    (a, b, c), ch, te = law
    return {"family": "bounded", "params": {"a": a, "b": b, "c": c}, "chance": ch, "teacher": te,
            "d_term": True, "draws": [list(d) for d in draws]}


def _r_cross(law, D, q):
    """r where sigmoid(z) = q for a law (solved by hand: z is linear in log(1 - r))."""
    (a, b, c), _, _ = law
    return 1 - math.exp((logit(q) - a - b * math.log(D)) / c)


# general collapses (0.25 of the way above chance) at r ~ 0.3, in-domain degrades (below 90%) at r ~ 0.7
GENERAL_FIRST = ((-1.66, 0.3, 6.0), 0.25, 0.6)
INDOMAIN_LATE = ((0.117, 0.5, 2.0), 0.25, 0.9)
GENERAL_LATE = ((0.36, 0.3, 3.0), 0.25, 0.6)      # r ~ 0.75
INDOMAIN_EARLY = ((-1.40, 0.5, 4.0), 0.25, 0.9)   # r ~ 0.2


def test_collapse_point_matches_the_analytic_answer():
    for D in (500, 8000):
        out = collapse_point(_entry(GENERAL_FIRST), _entry(INDOMAIN_LATE), D=D)
        r_g, r_i = _r_cross(GENERAL_FIRST, D, 0.25), _r_cross(INDOMAIN_LATE, D, 0.9)
        assert 0 <= out["r_general"] - r_g <= 0.001 + 1e-9
        assert 0 <= out["r_in_domain"] - r_i <= 0.001 + 1e-9
        assert out["claim_holds"] and out["claim_prob"] is None and out["D"] == D
    never = ((5.0, 0.0, 0.1), 0.25, 0.6)  # stays near the teacher over the whole range
    out = collapse_point(_entry(never), _entry(INDOMAIN_LATE, draws=[(0.117, 0.5, 2.0)] * 4), D=8000)
    assert out["r_general"] is None and out["r_general_beyond"] and not out["claim_holds"]
    assert out["r_in_domain"] is not None and not out["r_in_domain_beyond"]


@pytest.mark.parametrize("general, in_domain, holds", [(GENERAL_FIRST, INDOMAIN_LATE, True),
                                                       (GENERAL_LATE, INDOMAIN_EARLY, False)])
def test_claim_probability_from_the_bootstrap(general, in_domain, holds):
    doc = fit_table(make_table({"blended": {"arc_easy": general, "in_domain": in_domain}}, seed=3), boot=100)
    out = doc["groups"][0]["collapse"]["arc_easy.acc"]
    assert out["D"] == 8000 and out["claim_holds"] is holds
    assert (out["claim_prob"] > 0.9) if holds else (out["claim_prob"] < 0.1)
    for name, law, q in (("r_general", general, 0.25), ("r_in_domain", in_domain, 0.9)):
        lo, hi = out[name + "_ci"]
        assert lo <= out[name] <= hi and abs(out[name] - _r_cross(law, 8000, q)) < 0.1


def test_write_load_round_trip_is_strict_json(tmp_path):
    table = make_table({"blended": {"arc_easy": ARC, "in_domain": INDOMAIN_LATE}}, ppl={"blended": PPL})
    doc = fit_table(table, boot=20)
    doc["warnings"].append(np.float64("nan"))  # anything numpy / NaN becomes plain JSON (null)
    path = tmp_path / "fits.json"
    write_fits(doc, path)
    assert os.listdir(tmp_path) == ["fits.json"]

    def no_constants(name):
        raise AssertionError(f"non-JSON constant {name}")
    loaded = json.loads(path.read_text(), parse_constant=no_constants)
    assert loaded == load_fits(path) and loaded["warnings"][-1] is None
    group = loaded["groups"][0]
    assert set(group["metrics"]) == {"arc_easy.acc", "in_domain.acc", "wiki.ppl"}
    assert set(group["collapse"]) == {"arc_easy.acc"}
    assert loaded["margins"] == {"general": 0.25, "in_domain": 0.1} and loaded["level"] == 0.9


def test_fit_table_is_deterministic_and_reads_a_parquet_table(tmp_path):
    table = make_table({"blended": {"arc_easy": ARC}})
    table.loc[0, "arc_easy.correct"] = None  # this point is bootstrapped from its acc_se instead
    table.to_parquet(tmp_path / "results.parquet")
    doc = fit_table(table, boot=10, seed=5)
    assert doc == fit_table(pd.read_parquet(tmp_path / "results.parquet"), boot=10, seed=5)
    assert doc != fit_table(table, boot=10, seed=6)


def test_interval_of_no_draws_is_none():
    assert interval(np.zeros((0, 3)), 0.9) is None
