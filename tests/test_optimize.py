"""Outer algorithms: convergence to closed-form optima, ITD's rate, reproducible traces."""

import numpy as np
import pytest

from mlverify import zoo
from mlverify.optimize import OUTER_METHODS, Trace, optimize

#: Iterates after 80 rounds at step 1/L on a strongly convex quadratic F_1 (condition <= 3).
OPTIMUM_TOL = 1e-9


@pytest.fixture(scope="module")
def family():
    return zoo.quadratic(3, (2, 1, 1), seed=2)


@pytest.mark.parametrize("method", OUTER_METHODS)
def test_every_method_reaches_the_closed_form_optimum(family, method):
    lam = np.linalg.eigvalsh(family.hessian_F1())
    trace = optimize(family.numeric(), method, steps=80, L=lam[-1], inner_steps=30, iterations=8)
    np.testing.assert_allclose(trace.x1[-1], family.optimum(), atol=OPTIMUM_TOL)
    assert trace.F1[-1] == pytest.approx(family.F1(family.optimum()), abs=1e-12)
    assert trace.x1.shape == (81, 2) and trace.grad_norm.shape == (80,)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_symbolic_backend_matches_closed_form(n):
    family = zoo.quadratic(n, seed=n)
    lam = np.linalg.eigvalsh(family.hessian_F1())[-1]
    for method in ("implicit-exact", "hierarchical"):
        trace = optimize(family.symbolic(), method, steps=60, L=lam, inner_steps=3)
        np.testing.assert_allclose(trace.x1[-1], family.optimum(), atol=OPTIMUM_TOL)


def test_itd_error_decays_geometrically_with_K():
    """Bilevel quadratic: K unrolled steps at rate 1/L_2 leave an error ~ (1 - mu/L)^K."""
    family = zoo.quadratic(2, (1, 3), seed=5, coupling=2)
    num = family.numeric()
    x1 = np.array([0.4])
    exact = family.hypergradient(x1)
    q2 = family.Q[1] / family.denominator
    eig = np.linalg.eigvalsh(q2[1:, 1:])
    rate = 1 - eig[0] / (1.2 * eig[-1])  # the ITD step is 1/(1.2 lambda_max), see itd.py
    ks = np.array([4, 8, 16, 32])
    errors = []
    for k in ks:
        g = num.hypergradient_frozen((x1, np.zeros(3)), "itd", steps=int(k))
        errors.append(abs(float(g[0]) - exact[0]))
    slope = np.polyfit(ks, np.log(errors), 1)[0]
    assert np.all(np.diff(errors) < 0)
    assert slope == pytest.approx(np.log(rate), rel=0.25)


def test_box_projection_and_trace_files(tmp_path, family):
    lo, hi = np.array([0.0, 0.0]), np.array([1.0, 1.0])
    trace = optimize(family.numeric(), "implicit-exact", steps=30, box=(lo, hi), track_exact=True)
    assert np.all(trace.x1 >= lo) and np.all(trace.x1 <= hi)
    np.testing.assert_allclose(trace.error, 0.0, atol=1e-10)
    for name in ("t.npz", "t.json"):
        trace.save(str(tmp_path / name))
        loaded = Trace.load(str(tmp_path / name))
        np.testing.assert_array_equal(loaded.x1, trace.x1)
        np.testing.assert_array_equal(loaded.F1, trace.F1)
        assert loaded.method == trace.method


def test_seeded_run_is_reproducible_bit_for_bit():
    problem = zoo.default_problem()
    a = optimize(problem, "hierarchical", steps=25, step_size=0.3, x0=[1.5])
    b = optimize(problem, "hierarchical", steps=25, step_size=0.3, x0=[1.5])
    assert np.array_equal(a.x1, b.x1) and np.array_equal(a.grad, b.grad)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method"):
        optimize(zoo.default_problem(), "newton-magic", steps=1)


@pytest.mark.parametrize("backend", ["symbolic", "jax"])
def test_the_single_loop_names_a_level_whose_hessian_is_indefinite_at_the_start(backend):
    """The single loop's steps 1/L_k take L_k at the start iterates; where the lemmas'
    D_kk F_k is not positive definite there (f_2 = (x_2^2 - 1)^2 at x_2 = 0: D_22 f_2 = -4),
    the run stops with the level and the eigenvalue, not with a NaN step."""
    import sympy as sp

    import mlverify as mv
    from mlverify.errors import HessianError

    x1, x2 = sp.symbols("x1 x2")
    problem = mv.MultilevelProblem([mv.Level(x1, (x1 - 1) ** 2 + x2**2),
                                    mv.Level(x2, (x2**2 - 1) ** 2 + x1 * x2 / 10)])
    target = problem if backend == "symbolic" else problem.lower()
    with pytest.raises(HessianError) as info:
        optimize(target, "hierarchical", steps=3, step_size=0.1)
    assert info.value.level == 2
    assert info.value.min_eigenvalue == pytest.approx(-4.0)
    assert "start iterates" in str(info.value)


@pytest.mark.parametrize("backend", ["symbolic", "jax"])
def test_the_single_loop_names_an_indefinite_level_whose_largest_eigenvalue_is_positive(backend):
    """Level 3's D_33 f_3 = diag(1, -1/2) at the start x_3 = 0 (lambda_max = 1 > 0, so a step
    1/L_3 exists): still not positive definite, and the run stops naming level 3 (the
    stacked formulas stay finite above an indefinite level, so this is checked, not left to
    a NaN)."""
    import sympy as sp

    import mlverify as mv
    from mlverify.errors import HessianError

    x1, x2, a, b = sp.symbols("x1 x2 a b")
    problem = mv.MultilevelProblem([
        mv.Level(x1, (x1 - 1) ** 2 + x2**2 + a**2),
        mv.Level(x2, (x2 - x1) ** 2 + x2 * a / 10),
        mv.Level([a, b], a**2 / 2 - b**2 / 4 + b**4 + x2 * a / 5),
    ])
    target = problem if backend == "symbolic" else problem.lower()
    with pytest.raises(HessianError) as info:
        optimize(target, "hierarchical", steps=3, step_size=0.1)
    assert info.value.level == 3
    assert info.value.min_eigenvalue == pytest.approx(-0.5)
