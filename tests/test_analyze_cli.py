"""`twinnode analyze` on release directories: the table, --json keys, weight, screening, errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_small_frame

from twinnode.cli.main import main
from twinnode.data import write_table
from twinnode.lab.simtwins import as_release, poison_frame, posterior_twins
from twinnode.releasedir import save_release


@pytest.fixture
def workdir(tmp_path: Path, small_schema) -> Path:
    """schema.toml, local.csv, test.csv and four peers' releases (the last one shifted)."""
    (tmp_path / "schema.toml").write_text(small_schema.to_toml(), encoding="utf-8")
    write_table(make_small_frame(small_schema, 150, seed=1), tmp_path / "local.csv", small_schema)
    write_table(make_small_frame(small_schema, 300, seed=2), tmp_path / "test.csv", small_schema)
    for i in range(4):
        frame = make_small_frame(small_schema, 400, seed=10 + i)
        if i == 3:
            frame = poison_frame(small_schema, frame, "flip:smoker")
        twins = posterior_twins(small_schema, frame, sender=f"hosp{i}", k=6, seed=i)
        save_release(as_release(twins), tmp_path / f"release-{i}", small_schema)
    return tmp_path


def _args(d: Path, *extra: str) -> list[str]:
    return ["analyze", "--schema", str(d / "schema.toml"), "--local", str(d / "local.csv"),
            "--twins", *(str(d / f"release-{i}") for i in range(4)), *extra]


def test_analyze_prints_the_coefficient_table_with_local_alongside(workdir, capsys):
    # Execute
    code = main(_args(workdir, "--test", str(workdir / "test.csv")))
    out = capsys.readouterr().out
    # Assert
    assert code == 0
    assert "exp(coef)" in out and "[0.025" in out and "agree-p" in out  # the summary table
    for term in ("Intercept", "age", "region[south]", "region[east]", "smoker"):
        assert term in out
    assert "twins of 4 peer(s) (hosp0, hosp1, hosp2, hosp3), K = 6" in out
    assert "FLAGGED" in out and "hosp3" in out
    assert "test log-likelihood per record" in out and "combined" in out


def test_analyze_names_the_terms_where_the_twins_disagree_with_the_local_rows(workdir, capsys):
    # Prepare: hosp3 codes smoker the other way round; screening off keeps it in the fit
    # Execute
    main(_args(workdir, "--screen", "off", "--weight", "1"))
    out = capsys.readouterr().out
    main(_args(workdir, "--screen", "off", "--weight", "1", "--json"))
    doc = json.loads(capsys.readouterr().out)
    # Assert
    assert doc["agreement"]["disagreeing"] == ["smoker"]
    assert "DISAGREE on smoker" in out
    assert "between-release term (pmm" in out
    het = doc["pooling"]["heterogeneity"]["terms"]["smoker"]
    assert het["added_variance"] > 0 and het["sites"] == 5


def test_on_disagreement_local_reports_the_local_fit_where_the_twins_disagree(workdir, capsys):
    # Prepare: hosp3 codes smoker the other way round; screening off keeps it in the fit
    base = ("--screen", "off", "--weight", "1", "--agreement-alpha", "0.05")
    # Execute
    main(_args(workdir, *base, "--on-disagreement", "local"))
    out = capsys.readouterr().out
    main(_args(workdir, *base, "--on-disagreement", "local", "--json"))
    doc = json.loads(capsys.readouterr().out)
    main(_args(workdir, *base, "--json"))
    kept = json.loads(capsys.readouterr().out)
    # Assert: smoker is the local fit's, marked; the terms that agree are as by default
    smoker = doc["coefficients"]["smoker"]
    assert doc["replaced_by_local"] == ["smoker"] and smoker["local_only"] is True
    assert (smoker["estimate"], smoker["lower"], smoker["upper"]) == \
        (smoker["local_estimate"], smoker["local_lower"], smoker["local_upper"])
    assert kept["coefficients"]["smoker"]["estimate"] != smoker["estimate"]
    assert doc["coefficients"]["age"] == kept["coefficients"]["age"]
    assert doc["options"]["on_disagreement"] == "local"
    assert doc["options"]["agreement_alpha"] == 0.05
    assert "(local only: smoker:" in out
    assert "reported with the local-only estimate and interval" in out


def test_an_agreement_alpha_outside_0_1_is_refused(workdir, capsys):
    code = main(_args(workdir, "--agreement-alpha", "1.5"))
    assert code != 0 and "--agreement-alpha must be in (0, 1)" in capsys.readouterr().err


def test_analyze_json_has_the_documented_keys(workdir, capsys):
    # Execute
    code = main(_args(workdir, "--test", str(workdir / "test.csv"), "--json", "--draws", "30"))
    doc = json.loads(capsys.readouterr().out)
    # Assert
    assert code == 0
    assert {"coefficients", "pooling", "screening", "ll_local", "ll_combined",
            "ll_local_samples", "ll_combined_samples"} <= set(doc)
    smoker = doc["coefficients"]["smoker"]
    assert {"estimate", "se", "local_estimate", "local_se"} <= set(smoker)
    assert len(doc["ll_local_samples"]) == 30 and isinstance(doc["ll_combined"], float)
    assert doc["pooling"]["rule"] == "mixed" and doc["pooling"]["k"] == 6
    assert doc["screening"]["flagged"] == ["hosp3"]
    assert doc["screening"]["with_flagged"]["peers"] == ["hosp0", "hosp1", "hosp2", "hosp3"]


def test_analyze_prints_the_validation_curve_the_weight_and_the_verdict(workdir, capsys):
    # Execute
    code = main(_args(workdir, "--cv-replicates", "3"))
    out = capsys.readouterr().out
    # Assert: one curve line per λ of the default grid, the chosen one marked
    assert code == 0
    assert "chosen by cross-validation, best rule" in out
    assert "5-fold cross-validation on 150 local rows, 3 twin(s) per fit" in out
    curve = [line for line in out.splitlines() if line.strip().split(" ")[0] in
             {"0", "0.05", "0.1", "0.2", "0.3", "0.5", "0.7", "1"}]
    assert len(curve) == 8 and sum("<- chosen" in line for line in curve) == 1
    assert "does joining help? " in out


def test_analyze_json_weight_object_by_default_is_the_adaptive_choice(workdir, capsys):
    # Execute
    code = main(_args(workdir, "--json", "--cv-replicates", "3", "--folds", "4"))
    doc = json.loads(capsys.readouterr().out)
    # Assert
    w = doc["weight"]
    assert code == 0 and w["mode"] == "auto" and w["selection"] == "best"
    assert {"chosen", "grid", "curve", "verdict", "folds"} <= set(w)
    assert w["folds"] == 4 and w["replicates"] == 3 and w["chosen"] in w["grid"]
    assert [c["weight"] for c in w["curve"]] == w["grid"]
    assert w["verdict"].split(":")[0] in ("yes", "no", "unclear")
    assert doc["pooling"]["weight"] == w["chosen"]


@pytest.mark.parametrize("weight", ["1", "0.3"])
def test_analyze_with_a_fixed_weight_uses_it_and_judges_it(workdir, capsys, weight):
    # Execute
    code = main(_args(workdir, "--json", "--weight", weight, "--cv-replicates", "2"))
    doc = json.loads(capsys.readouterr().out)
    # Assert
    w = doc["weight"]
    assert code == 0 and w["mode"] == "fixed" and w["chosen"] == float(weight)
    assert w["grid"] == [0.0, float(weight)] and doc["pooling"]["weight"] == float(weight)
    assert w["verdict"].split(":")[0] in ("yes", "no", "unclear")


def test_weight_one_reproduces_the_papers_plain_concatenation(workdir, capsys, small_schema):
    # Prepare: the paper's analysis by hand, every peer (screening off), λ = 1, reiter
    from twinnode.analysis.fit import AnalysisOptions, combined_fit
    from twinnode.data import read_table
    from twinnode.releasedir import load_release
    local = read_table(workdir / "local.csv", small_schema)
    peers = {f"hosp{i}": load_release(workdir / f"release-{i}", small_schema).twins
             for i in range(4)}
    plain = combined_fit(small_schema, local, peers, options=AnalysisOptions(rule="reiter"))
    # Execute
    main(_args(workdir, "--json", "--weight", "1", "--rule", "reiter", "--screen", "off",
               "--cv-replicates", "2", "--heterogeneity", "off"))
    doc = json.loads(capsys.readouterr().out)
    # Assert
    for term, est, se in zip(plain.terms, plain.estimate, plain.se):
        assert doc["coefficients"][term]["estimate"] == pytest.approx(est, rel=1e-10)
        assert doc["coefficients"][term]["se"] == pytest.approx(se, rel=1e-10)


@pytest.mark.parametrize("bad", ["half", "2"])
def test_a_weight_that_is_not_auto_or_in_zero_one_exits_with_the_analysis_code(
        workdir, capsys, bad):
    # Execute
    code = main(_args(workdir, "--weight", bad))
    # Assert
    assert code == 15 and "weight" in capsys.readouterr().err


def test_exclude_policy_leaves_the_flagged_peer_out_of_the_estimates(workdir, capsys):
    # Execute
    main(_args(workdir, "--json", "--screen", "exclude"))
    doc = json.loads(capsys.readouterr().out)
    # Assert
    assert doc["pooling"]["peers"] == ["hosp0", "hosp1", "hosp2"]
    excluded = doc["screening"]["without_flagged"]["coefficients"]["smoker"]["estimate"]
    assert doc["coefficients"]["smoker"]["estimate"] == pytest.approx(excluded)
    assert "ll_local" not in doc


def test_other_rule_and_covariates_are_passed_through(workdir, capsys):
    # Execute
    main(_args(workdir, "--json", "--rule", "rubin", "--covariates", "smoker,age",
               "--screen", "off"))
    doc = json.loads(capsys.readouterr().out)
    # Assert
    assert list(doc["coefficients"]) == ["Intercept", "smoker", "age"]
    assert doc["pooling"]["rule"] == "rubin" and doc["screening"]["status"] == "off"


def test_two_old_releases_are_too_few_to_screen_and_the_report_says_why(workdir, capsys):
    # Execute: two releases from before noise-aware twins (their receipts do not say)
    main(["analyze", "--schema", str(workdir / "schema.toml"), "--local",
          str(workdir / "local.csv"), "--twins", str(workdir / "release-0"),
          str(workdir / "release-3"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    # Assert: only the local rows are a reference, and they cannot judge old releases
    screening = doc["screening"]
    assert screening["status"] == "screened" and screening["references"] == ["local"]
    assert screening["flagged"] == [] and "2 not judged" in screening["message"]
    assert all(p["p_local"] is None and "not noise-aware" in p["reason"]
               for p in screening["peers"])


def test_the_text_report_shows_both_screening_p_values(workdir, capsys):
    # Execute
    main(_args(workdir))
    out = capsys.readouterr().out
    # Assert: four old releases: each judged against the consensus and the local rows
    assert "p local" in out and "p cons." in out
    assert "against the local rows and the consensus of the others" in out


def test_bad_covariate_exits_with_the_analysis_code(workdir, capsys):
    # Execute
    code = main(_args(workdir, "--covariates", "height"))
    # Assert
    assert code == 15 and "height" in capsys.readouterr().err


def test_a_directory_without_a_receipt_exits_with_the_data_code(workdir, tmp_path, capsys):
    # Prepare
    (tmp_path / "empty").mkdir()
    # Execute
    code = main(["analyze", "--schema", str(workdir / "schema.toml"), "--local",
                 str(workdir / "local.csv"), "--twins", str(tmp_path / "empty")])
    # Assert
    assert code == 5 and "receipt" in capsys.readouterr().err


def test_the_command_and_the_analysis_options_load_no_statistics_stack():
    # Prepare: a fresh interpreter, as `twinnode` starts (and a node reads its config)
    code = ("import sys, twinnode.analysis.options, twinnode.cli.analyze; "
            "print(sorted(m for m in ('numpy', 'pandas', 'scipy', 'statsmodels') "
            "if m in sys.modules))")
    # Execute
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    # Assert
    assert out.strip() == "[]"
