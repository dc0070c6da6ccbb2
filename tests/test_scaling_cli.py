"""`jaxdistill fit | report | recommend` on a synthetic sweep directory whose results follow known laws:
the printed collapse points and recommendation agree with the laws, the report is written."""

import json

import numpy as np
from click.testing import CliRunner
from scipy.special import expit

from jaxdistill.cli import main
from tests.test_scaling_laws import make_table

# General knowledge falls to chance well before in-domain quality leaves the teacher (the paper's claim).
IN_DOMAIN = ((2.0, 0.3, 1.2), 0.05, 0.6)
ARC = ((3.0, 0.0, 6.0), 0.25, 0.45)


def _sweep_dir(tmp_path):
    table = make_table({"blended": {"in_domain": IN_DOMAIN, "arc_easy": ARC}}, ds=(500, 2000), seed=1)
    table.insert(0, "sweep", "synthetic")
    table.to_parquet(tmp_path / "results.parquet")
    return tmp_path


def _r_where(law, D, threshold, above: bool):
    """The smallest r on a fine grid where the true law crosses `threshold` (below it, or above)."""
    (a, b, c), ch, te = law
    rs = np.linspace(0, 0.99, 991)
    acc = ch + (te - ch) * expit(a + b * np.log(D) + c * np.log1p(-rs))
    hit = acc <= threshold if above else acc < threshold
    return float(rs[np.argmax(hit)])


def test_fit_report_and_recommend_commands(tmp_path):
    path = _sweep_dir(tmp_path)
    runner = CliRunner()
    fitted = runner.invoke(main, ["fit", str(path), "--boot", "60"])
    assert fitted.exit_code == 0, fitted.output
    doc = json.loads((path / "fits.json").read_text())
    collapse = doc["groups"][0]["collapse"]["arc_easy.acc"]
    (_, ch, te) = ARC
    truth = _r_where(ARC, 2000, ch + 0.25 * (te - ch), above=True)
    assert abs(collapse["r_general"] - truth) < 0.1 and collapse["claim_holds"] and collapse["claim_prob"] > 0.9
    assert f"collapses at r={collapse['r_general']:.2f}" in fitted.output

    reported = runner.invoke(main, ["report", str(path)])
    assert reported.exit_code == 0, reported.output
    text = (path / "report.md").read_text()
    assert f"{collapse['r_general']:.2f}" in text and "supports the paper's claim" in text

    advice = runner.invoke(main, ["recommend", str(path), "--in-domain", "0.5", "--floor", "arc_easy.acc=0.35"])
    assert advice.exit_code == 0, advice.output
    out = json.loads(advice.output[advice.output.index("\n{") + 1:])
    r_id = _r_where(IN_DOMAIN, out["D"], 0.5, above=False)  # in-domain falls below the target here
    r_arc = _r_where(ARC, out["D"], 0.35, above=False)
    assert out["format"] == "blended" and abs(out["r"] - min(r_id, r_arc)) < 0.1

    bad = runner.invoke(main, ["recommend", str(path), "--in-domain", "0.5", "--floor", "arc_easy.acc"])
    assert bad.exit_code == 2 and "expected METRIC=VALUE" in bad.output
    unknown = runner.invoke(main, ["recommend", str(path), "--in-domain", "0.5", "--floor", "mmlu.acc=0.3"])
    assert unknown.exit_code == 2 and "mmlu.acc" in unknown.output
    missing = runner.invoke(main, ["fit", str(tmp_path / "nothing.txt")])
    assert missing.exit_code == 2
