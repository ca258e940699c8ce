"""Theorem checks: they pass with honest constants, fail when L is understated, and say
"not-applicable" when an assumption is violated."""

import numpy as np
import pytest

import mlverify as mv
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


def test_theorem_4_2_needs_no_convexity_and_uses_the_given_box():
    # Ridge tuning (seed 5): F_1 is not convex for theta < ~0.9, so Theorem 4.1 does not
    # apply on [0.5, 3.5]; Theorem 4.2 needs only L-smoothness and applies.
    problem = zoo.ridge_bilevel(seed=5)[0]
    box = (0.5, 3.5)
    report41 = verify.theorem_4_1(problem, box=box, T=20)
    assert report41.verdict == "not-applicable"
    assert "not positive definite" in report41.reason
    report42 = verify.theorem_4_2(problem, box=box, T=30)
    assert report42.verdict == "pass", report42.reason
    assert report42.box == [[0.5], [3.5]] and report41.box == [[0.5], [3.5]]
    assert report42.constants["lambda_min"][0] < 0 < report42.constants["L"][0]
    for trace in report42.traces.values():
        assert np.all((trace.x1 >= 0.5) & (trace.x1 <= 3.5))


def test_theorem_4_2_says_not_applicable_when_a_run_leaves_the_box():
    # F_1 of the default problem has its minimiser near x1 = 0.6: a box [-2, -1.5] makes
    # the runs leave it, and L, F_1* were established only on the box.
    report = verify.theorem_4_2(zoo.default_problem(), box=(-2.0, -1.5), T=20)
    assert report.verdict == "not-applicable"
    assert "left the box" in report.reason


def test_compounding_family_rounds_grow_with_n_where_nonquadratic_do_not():
    grows = verify.rounds_to_epsilon(lambda n: zoo.compounding(n, seed=0), ns=(2, 3, 4))
    assert np.all(np.diff(grows["T_eps"]) > 0), grows["T_eps"]
    assert grows["growth_linear"] > 2  # rounds per level
    assert grows["problems"] == ["n=2, blocks (2, 2)", "n=3, blocks (2, 2, 2)",
                                 "n=4, blocks (2, 2, 2, 2)"]
    flat = verify.rounds_to_epsilon(lambda n: zoo.nonquadratic(n, seed=0), ns=(2, 3, 4))
    assert abs(flat["growth_linear"]) < 1


def test_compounding_hypergradient_matches_finite_differences():
    problem = zoo.compounding(3, seed=1)
    x1 = np.array([0.3, -0.4])
    exact = problem.hypergradient_at(x1)
    h = 1e-5
    fd = []
    for i in range(2):
        e = np.zeros(2)
        e[i] = h
        values = []
        for sign in (1, -1):
            lower = problem.solve_lower(x1 + sign * e)
            values.append(problem.numeric().objective(0, [x1 + sign * e, *lower.xs]))
        fd.append((values[0] - values[1]) / (2 * h))
    # central differences: O(h^2) truncation and O(eps/h) round-off, about 1e-9 here
    assert np.allclose(exact, fd, rtol=0, atol=1e-8)


def test_theorem_4_2_plot_shows_every_method_with_named_sides_and_error_term(tmp_path):
    report = verify.theorem_4_2(zoo.default_problem(), box=(-2, 2), T=15)
    labels = [label for label, *_ in report._curves()]
    for method in ("hierarchical", "itd"):
        mine = [label for label in labels if label.startswith(f"{method}: ")]
        assert [label.split(" $")[0] for label in mine] == [
            f"{method}: left side", f"{method}: right side", f"{method}: error term"]
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    plt.switch_backend("pdf")  # a user's backend other than Agg
    try:
        figures = plt.get_fignums()
        fig = report.plot(str(tmp_path / "r.png"))
        # drawn apart from pyplot: the user's backend and open figures are left alone
        assert matplotlib.get_backend() == "pdf" and plt.get_fignums() == figures
    finally:
        plt.switch_backend(before)
    assert (tmp_path / "r.png").stat().st_size > 10_000
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 6
    low, high = ax.get_ylim()
    drawn = np.concatenate([line.get_ydata() for line in ax.get_lines()])
    drawn = drawn[np.isfinite(drawn)]
    # the y-axis spans the drawn values, with no empty decade below or above them
    assert low <= drawn.min() and high >= drawn.max()
    assert drawn.min() / low < 10 and high / drawn.max() < 10


def test_rounds_to_epsilon_stops_before_a_member_predicted_past_its_budget():
    calls = []

    def family(n):
        calls.append(n)
        return zoo.quadratic(n, (1,) * n, seed=0).symbolic()

    full = verify.rounds_to_epsilon(family, ns=(2, 3), box=(-1, 1))
    assert full["n"] == [2, 3] and full["stopped"] is None
    assert len(full["seconds"]) == 2 and min(full["seconds"]) > 0
    calls.clear()
    cut = verify.rounds_to_epsilon(family, ns=(2, 3, 4), box=(-1, 1), time_budget=1e-9)
    assert cut["n"] == [2] and calls == [2]  # the first member always runs
    assert cut["stopped"].startswith("n = 3 and above not run: n = 3 is predicted to take")
    assert cut["T_eps"] == full["T_eps"][:1]


def test_the_prediction_follows_the_measured_growth():
    from mlverify.verify.theorems import _predicted_seconds

    assert _predicted_seconds([2.0]) == 2.0
    assert _predicted_seconds([1.0, 3.0]) == 9.0
    assert _predicted_seconds([3.0, 1.0]) == 1.0  # never predicted faster than the last


# ------------------------------------------------------------------ constants against the run
def _steep_bilevel():
    """F_1(x) = 5 x^2 + (x - 1)^2 / 2 exactly (the lower level returns y = x), so
    grad F_1 = 11 x - 1 and the true L is 11."""
    import sympy as sp

    import mlverify as mv

    x, y = sp.symbols("x y")
    return mv.MultilevelProblem([mv.Level(x, 5 * y**2 + (x - 1) ** 2 / 2),
                                 mv.Level(y, (y - x) ** 2 / 2)])


def test_a_secant_rate_above_L_contradicts_it():
    from mlverify.optimize import as_numeric
    from mlverify.verify.theorems import _contradicted_L

    num = as_numeric(_steep_bilevel(), "implicit-exact")
    xs = np.array([[0.0], [0.1], [0.15]])
    why = _contradicted_L(num, xs, 4.0, "hierarchical")
    assert why.startswith("the sampled L = 4 is contradicted by the hierarchical run's")
    assert "changes at rate 11, 2.75 times L" in why
    assert _contradicted_L(num, xs, 11.5, "hierarchical") is None


def test_a_run_that_contradicts_its_L_is_not_a_counterexample(monkeypatch):
    """With L sampled too small (6 for a true 11) the step 1/L overshoots at every round
    (x <- (1 - 5 x) / 6); the verdict is 'not-applicable', naming the round and the factor,
    never a counterexample to the theorem."""
    from mlverify.verify import theorems

    real = theorems.constants_4_2

    def too_small(problem, region, **kwargs):
        constants, violation = real(problem, region, **kwargs)
        constants["L"] = (6.0, "sampled (too small on purpose)")
        return constants, violation

    monkeypatch.setattr(theorems, "constants_4_2", too_small)
    report = verify.theorem_4_2(_steep_bilevel(), T=20, box=(-1, 1), x0=0.9,
                                methods=("hierarchical",))
    assert report.verdict == "not-applicable"
    assert "L = 6 is contradicted by the hierarchical run's own iterates" in report.reason
    assert "between rounds " in report.reason and "1.83 times L" in report.reason


def test_rounds_to_epsilon_records_a_member_whose_inner_steps_diverge():
    """Step 1/L with L from the start: where the lower curvature grows along the path the
    single loop's inner steps blow up; the member is recorded as diverged (T_eps = inf, the
    error naming the level), and the study goes on."""
    import sympy as sp

    x1, x2 = sp.symbols("x1 x2")

    def family(n):
        # H_2 = 3 x_2^2 + 1/100: L = 1/100 at the start x_2 = 0 (not stationary there), a
        # step of 100 to x_2 = 100, where the curvature is 3e4
        return mv.MultilevelProblem([mv.Level(x1, (x1 - 1) ** 2 + x2**2),
                                     mv.Level(x2, x2**4 / 4 + x2**2 / 200 - (x1 + 2) * x2)])

    growth = verify.rounds_to_epsilon(family, ns=(2,), box=(-1, 1))
    assert growth["T_eps"] == [np.inf]
    assert "level 2" in growth["diverged"][0] and "diverged" in growth["diverged"][0]


@pytest.mark.parametrize(("lower", "kind"), [
    # two minimisers x_2 = +-1 at every x_1 (the tilt keeps them apart, neither preferred
    # by more than the value tolerance at x_1 = 0)
    (lambda x1, x2: (x2**2 - 1) ** 2 + x1**2 * x2 / 100, "not unique"),
    # no minimiser: f_2 falls without bound
    (lambda x1, x2: -(x2**2) + x1 * x2, "unbounded below"),
])
def test_both_theorems_report_a_violated_shared_assumption_as_not_applicable(lower, kind):
    """Called directly (not through the CLI), each theorem check runs the shared assumption
    check first: a second minimiser or an unbounded lower level makes its verdict
    not applicable, naming the level and the kind."""
    import sympy as sp

    x1, x2 = sp.symbols("x1 x2")
    problem = mv.MultilevelProblem([mv.Level(x1, x1**2 + x2), mv.Level(x2, lower(x1, x2))])
    for report in (verify.theorem_4_1(problem, box=(-1, 1), T=5),
                   verify.theorem_4_2(problem, box=(-1, 1), T=5)):
        assert report.verdict == "not-applicable", report.reason
        assert kind in report.reason and "level 2" in report.reason


def test_rounds_to_epsilon_names_the_level_of_a_member_that_fails_the_assumptions():
    """A member whose level 3 is degenerate at its solution (f_3 = (x_3 - x_2)^4 / 4): the
    study stops with the error naming level 3 (not level 1) and the member's n."""
    import sympy as sp

    from mlverify.errors import HessianError

    def family(n):
        x = sp.symbols(f"x1:{n + 1}")
        levels = [mv.Level(x[0], (x[0] - 1) ** 2 + x[1] ** 2)]
        levels.append(mv.Level(x[1], (x[1] - x[0]) ** 2 + (x[2] ** 2 if n > 2 else 0)))
        if n > 2:
            levels.append(mv.Level(x[2], (x[2] - x[1]) ** 4 / 4))
        return mv.MultilevelProblem(levels)

    with pytest.raises(HessianError) as info:
        verify.rounds_to_epsilon(family, ns=(2, 3), box=(-1, 1))
    assert info.value.level == 3 and "n=3" in str(info.value)
