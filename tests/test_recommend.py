"""recommend(): the smallest student the fitted laws allow, checked against brute force on the true laws."""

import numpy as np
import pytest

from jaxdistill.scaling import fit_table, recommend
from tests.test_scaling_laws import DS, PPL, make_table, true_acc

LAWS = {  # format -> suite -> ((a, b, c), chance, teacher)
    "label": {"in_domain": ((0.5, 0.4, 2.0), 0.25, 0.9), "arc_easy": ((-1.0, 0.3, 4.0), 0.25, 0.6),
              "piqa": ((-0.5, 0.2, 3.0), 0.5, 0.75)},
    "blended": {"in_domain": ((0.0, 0.4, 2.5), 0.25, 0.9), "arc_easy": ((-0.5, 0.3, 2.5), 0.25, 0.6),
                "piqa": ((0.0, 0.2, 2.0), 0.5, 0.75)},
}
TARGET, FLOORS = 0.8, {"arc_easy.acc": 0.45, "piqa.acc": 0.62}
GRID = np.round(np.linspace(0, 0.99, 991), 6)


def brute_force(target, floors, formats=tuple(LAWS)):
    """{format: (r, D)}: the largest r (then smallest D) meeting everything on the true laws."""
    best = {}
    for fmt in formats:
        for D in DS:
            ok = true_acc(LAWS[fmt]["in_domain"], D, GRID) >= target
            for metric, floor in floors.items():
                ok &= true_acc(LAWS[fmt][metric.split(".")[0]], D, GRID) >= floor
            if ok.any() and (fmt not in best or GRID[ok].max() > best[fmt][0]):
                best[fmt] = (float(GRID[ok].max()), D)
    return best


@pytest.fixture(scope="module")
def exact_doc():
    """Fits of noise-free accuracies: they recover the true laws, so recommend must equal brute force."""
    with pytest.warns(UserWarning, match="skipping wiki.ppl: no values"):  # only "label" has a ppl suite
        return fit_table(make_table(LAWS, exact=True, ppl={"label": PPL}), boot=40, seed=0)


@pytest.fixture(scope="module")
def noisy_doc():
    return fit_table(make_table(LAWS, seed=0), boot=100, seed=0)


def test_recommend_matches_brute_force_on_the_true_laws(exact_doc):
    truth = brute_force(TARGET, FLOORS)
    fmt = max(truth, key=lambda f: (truth[f][0], -truth[f][1]))
    assert 0.1 < truth[fmt][0] < 0.9 and len(truth) == 2  # an interior answer, both formats feasible
    out = recommend(exact_doc, in_domain_target=TARGET, general_floor=FLOORS)
    assert out["format"] == fmt and out["D"] == truth[fmt][1] and out["key"]["format"] == fmt
    assert out["r"] == pytest.approx(truth[fmt][0], abs=0.002)
    assert out["student_fraction"] == pytest.approx(1 - out["r"])
    assert out["predicted"]["in_domain.acc"]["mid"] >= TARGET
    assert all(out["predicted"][m]["mid"] >= floor for m, floor in FLOORS.items())
    alternatives = {a["format"]: a for a in out["alternatives"]}
    assert set(alternatives) == set(truth)
    for f, (r, D) in truth.items():
        assert alternatives[f]["D"] == D and alternatives[f]["r"] == pytest.approx(r, abs=0.002)
    assert "keeps" in out["message"]


def test_recommend_respects_formats_and_ds(exact_doc):
    truth = brute_force(TARGET, FLOORS, formats=("label",))
    out = recommend(exact_doc, in_domain_target=TARGET, general_floor=FLOORS, formats=["label"])
    assert out["format"] == "label" and out["r"] == pytest.approx(truth["label"][0], abs=0.002)
    out = recommend(exact_doc, in_domain_target=TARGET, general_floor={}, ds=[500])
    assert out["D"] == 500


def test_recommend_interval_covers_the_truth(noisy_doc):
    # floors low enough that in-domain alone binds: with two constraints crossing at about the same r,
    # the answer is a minimum of two noisy crossings and biased low (so would be its interval)
    floors = {"arc_easy.acc": 0.4, "piqa.acc": 0.6}
    truth = brute_force(TARGET, floors)
    out = recommend(noisy_doc, in_domain_target=TARGET, general_floor=floors)
    lo, hi = out["r_ci"]
    assert out["format"] == "blended" and lo <= out["r"] <= hi and lo <= truth["blended"][0] <= hi
    for metric, p in out["predicted"].items():
        assert p["lo"] <= p["mid"] <= p["hi"]
    assert 0 < out["feasible_prob"] <= 1


def test_unreachable_target_gives_the_best_achievable(exact_doc):
    out = recommend(exact_doc, in_domain_target=0.95, general_floor=FLOORS)
    assert out["r"] is None and out["format"] is None and out["alternatives"] == []
    assert "no fitted group" in out["message"] and "best achievable" in out["message"]
    best_true = max(float(true_acc(LAWS[f]["in_domain"], D, 0.0)) for f in LAWS for D in DS)
    assert out["best_achievable"]["in_domain.acc"]["value"] == pytest.approx(best_true, abs=1e-3)
    assert out["best_achievable"]["in_domain.acc"]["r"] == 0.0


@pytest.mark.parametrize("kwargs, match", [
    ({"in_domain_target": 1.5, "general_floor": FLOORS}, "in_domain_target=1.5"),
    ({"in_domain_target": 0.0, "general_floor": FLOORS}, "in_domain_target=0.0"),
    ({"in_domain_target": "0.8", "general_floor": FLOORS}, "in_domain_target='0.8'"),
    ({"in_domain_target": 0.8, "general_floor": {"mmlu.acc": 0.3}}, "'mmlu.acc'"),
    ({"in_domain_target": 0.8, "general_floor": {"wiki.ppl": 3.0}}, "'wiki.ppl' is a power"),
    ({"in_domain_target": 0.8, "general_floor": {"arc_easy.acc": 1.2}}, r"general_floor\['arc_easy.acc'\]=1.2"),
    ({"in_domain_target": 0.8, "general_floor": FLOORS, "formats": ["cot"]}, "'cot'"),
])
def test_bad_inputs_raise(exact_doc, kwargs, match):
    with pytest.raises(ValueError, match=match):
        recommend(exact_doc, **kwargs)
