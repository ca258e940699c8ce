"""Theorem checks: they pass with honest constants, fail when L is understated, and say
"not-applicable" when an assumption is violated."""

import numpy as np
import pytest

from mlverify import verify, zoo


def test_theorem_4_1_passes_on_quadratic_with_closed_form_constants():
    family = zoo.quadratic(3, (2, 1, 1), seed=1)
    report = verify.theorem_4_1(family.symbolic(), box=(-2, 2), T=60)
    assert report.verdict == "pass"
    exact_L = np.linalg.eigvalsh(family.hessian_F1())[-1]
    # Sampling may not undershoot the exact lambda_max (F_1 is quadratic: constant Hessian).
    assert report.constants["L"][0] == pytest.approx(1.01 * exact_L, rel=1e-6)
    assert report.worst_ratio <= 1.0
    assert np.all(report.table["ok"])


def test_theorem_4_1_passes_on_the_default_nonquadratic_problem():
    report = verify.theorem_4_1(zoo.default_problem(), box=(-2, 2), T=80)
    assert report.verdict == "pass"
    assert report.fitted_slope == pytest.approx(-1.0, abs=0.1)
    assert report.constants["lambda_min"][0] > 0


def test_theorem_4_1_fails_when_L_is_understated():
    family = zoo.quadratic(2, (2, 1), seed=0)
    exact_L = np.linalg.eigvalsh(family.hessian_F1())[-1]
    report = verify.theorem_4_1(family.symbolic(), box=(-3, 3), T=60, L=0.3 * exact_L)
    assert report.verdict == "fail"
    assert report.constants["L"][1] == "given"
    assert report.worst_ratio > 1


def test_indefinite_lower_level_is_not_applicable():
    report = verify.theorem_4_1(zoo.indefinite_problem(), box=(-1, 1), T=20)
    assert report.verdict == "not-applicable"
    assert report.reason.startswith("assumption violated: bound not applicable")


def test_theorem_4_2_holds_along_single_loop_and_itd():
    report = verify.theorem_4_2(zoo.default_problem(), T=40)
    assert report.verdict == "pass"
    for table in report.extra["methods"].values():
        assert np.all(table["left_mean"] <= table["right"] * (1 + 1e-9))


def test_report_round_trip(tmp_path):
    report = verify.theorem_4_1(zoo.quadratic(2, seed=3).symbolic(), box=(-1, 1), T=20)
    report.save(str(tmp_path / "r.json"))
    report.plot(str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert "Theorem 4.1" in str(report)
