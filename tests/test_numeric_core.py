"""The JAX numeric core (``mlverify.numeric``, ``mlverify.lower``) against independent answers.

References:
* sympy-declared problems (tests/reference.py): the symbolic core's ``solve_lower`` and
  ``hypergradient_at`` (validated separately in test_reference_hypergradients.py) and the
  30-digit mpmath nested solve ``mp_hypergradient``;
* JAX-native quadratic n-level problems (tests/numeric_helpers.py): closed forms from the
  definition with NumPy linear algebra, n = 2..6;
* the approximate methods against ``exact`` and against the contraction rates that their
  error analysis predicts (Neumann, ITD), computed here from the Hessians.

JAX compilation is the cost here: every NumericProblem is built once per test session
(``functools.cache``) so its compiled functions are shared between tests.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import sympy as sp

import mlverify as mv
from mlverify.lower import lower_formula
from mlverify.numeric import LinearSolve, NumericProblem

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from numeric_helpers import (  # noqa: E402
    quadratic,
    quadratic_closed_form,
    quadratic_reduced_objective,
    rel_err,
)
from reference import (  # noqa: E402
    mp_hypergradient,
    nonquadratic_problem,
    nonquadratic_vector_problem,
    quadratic_problem,
)

# ----------------------------------------------------------------------------- tolerances
#: lowered JAX core vs the symbolic core (both float64) on the same problem, max-norm
#: relative: both solve the lower levels to gradient norm <= 1e-10..1e-12 on O(1)-conditioned
#: levels, so the solutions differ by ~1e-11 and the hypergradients by ~1e-11 (observed
#: 6e-12 at n = 4); 1e-10 is the required agreement.
SYMBOLIC_RTOL = 1e-10
#: lower solutions (absolute, entries O(1)) when both cores solve to gradient norm 1e-12.
SOLVE_ATOL = 1e-10
#: the residual asked of solve_lower in the comparisons.
SOLVE_TOL = 1e-12
#: the same formula evaluated by two float64 programs at the same iterates (lower_formula,
#: the symbolic NumPy evaluator, the JAX core): only rounding separates them (observed
#: ~1e-15); 1e-10 catches any difference in the formula.
FORMULA_RTOL = 1e-10
#: exact vs the NumPy closed form of a quadratic problem (observed ~1e-16..1e-13; the lower
#: solve stops at gradient norm 1e-10 but Newton is exact on quadratics).
CLOSED_FORM_RTOL = 1e-10
#: exact vs the 30-digit mpmath reference: the required float64 accuracy (SPEC: 1e-8).
MP_RTOL = 1e-9
#: the curvature-dropped hypergradient must miss exact by more than this on the
#: non-quadratic families, whose dropped terms are O(1e-3..1e-1) at the test points.
CURVATURE_MIN_REL = 1e-4
#: truncated CG / Neumann / ITD at large K must reach this (relative to exact).
APPROX_CONVERGED = 1e-8
#: fourth-order finite differences (h = 1e-5) of F_1 with lower levels solved to 1e-13:
#: truncation ~h^4 ~ 1e-20, rounding ~1e-13/h ~ 1e-8 at worst; observed ~1e-11.
FD_RTOL = 1e-7
#: fitted log-error slopes vs the predicted log contraction factor (relative): the next
#: eigenmode contributes (rho_2/rho_1)^K < 1e-3 over the fitted range.
RATE_RTOL = 0.05
#: blocks of 300 on the matrix-free path: CG to relative residual 1e-12 per solve.
LARGE_RTOL = 1e-9


def _blocks(flat, sizes):
    return [
        np.asarray(b) for b in np.split(np.asarray(flat, dtype=np.float64), np.cumsum(sizes)[:-1])
    ]


# ============================================================================ 1. sympy -> JAX
#: (family, sizes or n, seed): quadratic and non-quadratic, n = 2, 3, 4, scalar and vector
SYMBOLIC_CASES = [
    ("quad", (1, 3), 0),
    ("quad", (2, 1, 2), 1),
    ("quad", (1, 2, 1, 1), 0),
    ("nonquad", 3, 0),
    ("nonquad", 3, 1),
    ("nonquad", 4, 0),
    ("vec", 3, 0),
]
SYMBOLIC_IDS = [
    f"{fam}-{'x'.join(map(str, s)) if isinstance(s, tuple) else f'n{s}'}-seed{seed}"
    for fam, s, seed in SYMBOLIC_CASES
]
#: x_1 points (entries cycled to the block size)
X1_VALUES = [(0.5, -0.75), (-0.75, 0.125), (1.5, 0.25)]


@functools.cache
def _symbolic(family, spec, seed):
    """(MultilevelProblem, blocks, objectives, lowered NumericProblem), built once."""
    if family == "quad":
        prob, blocks, objectives = quadratic_problem(len(spec), spec, seed)
    elif family == "nonquad":
        prob, blocks, objectives = nonquadratic_problem(spec, seed)
    else:
        prob, blocks, objectives = nonquadratic_vector_problem(seed)
    return prob, blocks, objectives, prob.lower()


def _x1(values, d):
    return np.array([values[i % len(values)] for i in range(d)], dtype=np.float64)


@pytest.mark.parametrize(("family", "spec", "seed"), SYMBOLIC_CASES, ids=SYMBOLIC_IDS)
def test_lowered_solve_lower_matches_symbolic(family, spec, seed):
    prob, _, _, num = _symbolic(family, spec, seed)
    for values in X1_VALUES[:2]:
        x1 = _x1(values, prob.sizes[0])
        got = num.solve_lower(x1, tol=SOLVE_TOL)
        want = prob.solve_lower(x1, tol=SOLVE_TOL)
        assert len(got) == prob.n - 1
        assert got.residual <= SOLVE_TOL
        for k, (g, w) in enumerate(zip(got, want.xs, strict=True), start=2):
            g = np.asarray(g)
            assert g.shape == (prob.sizes[k - 1],) and g.dtype == np.float64
            assert np.max(np.abs(g - w)) <= SOLVE_ATOL, (k, x1, g, w)


@pytest.mark.parametrize(("family", "spec", "seed"), SYMBOLIC_CASES, ids=SYMBOLIC_IDS)
def test_lowered_hypergradient_matches_symbolic(family, spec, seed):
    """hypergradient(x1) (default solve options) == the symbolic core's hypergradient_at."""
    prob, _, _, num = _symbolic(family, spec, seed)
    for values in X1_VALUES:
        x1 = _x1(values, prob.sizes[0])
        got = np.asarray(num.hypergradient(x1, method="exact"))
        want = prob.hypergradient_at(x1)
        assert got.shape == want.shape == (prob.sizes[0],)
        assert rel_err(got, want) <= SYMBOLIC_RTOL, (x1, got, want)


def _frozen_points(prob, num, count=4, seed=0):
    """Iterates at which to evaluate the formulas: one solution point and ``count`` seeded
    random points that are NOT lower-level solutions (frozen semantics)."""
    x1 = _x1(X1_VALUES[0], prob.sizes[0])
    solved = np.concatenate([x1, *[np.asarray(b) for b in num.solve_lower(x1, tol=SOLVE_TOL)]])
    rng = np.random.default_rng(seed)
    random = rng.uniform(-0.8, 0.8, size=(count, sum(prob.sizes)))
    return np.vstack([solved, random])


@pytest.mark.parametrize(("family", "spec", "seed"), SYMBOLIC_CASES, ids=SYMBOLIC_IDS)
def test_lower_formula_matches_frozen_exact_under_jit_and_vmap(family, spec, seed):
    """lower_formula (the symbolic formula lowered to JAX) == the numeric core's exact,
    frozen at the same iterates, solution or not; also == the symbolic NumPy evaluator."""
    prob, _, _, num = _symbolic(family, spec, seed)
    points = _frozen_points(prob, num)
    # the random points really are off the solution manifold
    solved = num.solve_lower(points[1, : prob.sizes[0]], tol=SOLVE_TOL)
    assert (
        np.max(np.abs(np.concatenate([np.asarray(b) for b in solved]) - points[1, prob.sizes[0] :]))
        > 1e-2
    )
    formula = lower_formula(prob)
    core = np.stack([np.asarray(num.hypergradient_frozen(_blocks(p, prob.sizes))) for p in points])
    symbolic = np.stack(
        [prob.numeric().hypergradient_frozen(_blocks(p, prob.sizes)) for p in points]
    )
    jitted = np.stack([np.asarray(formula(jnp.asarray(p))) for p in points])
    vmapped = np.asarray(jax.vmap(formula)(jnp.asarray(points)))
    jit_vmapped = np.asarray(jax.jit(jax.vmap(formula))(jnp.asarray(points)))
    assert vmapped.shape == (len(points), prob.sizes[0])
    for i in range(len(points)):
        for other in (symbolic, jitted, vmapped, jit_vmapped):
            assert rel_err(other[i], core[i]) <= FORMULA_RTOL, (i, points[i], other[i], core[i])


# ============================================================================ 2. closed forms
#: JAX-native quadratic problems (sizes, seed), n = 2..5 (n = 6 below, frozen only)
NATIVE_CASES = [
    pytest.param((1, 1), 0, id="n2-1x1"),
    pytest.param((3, 2), 1, id="n2-3x2"),
    pytest.param((1, 3, 2), 0, id="n3-1x3x2"),
    pytest.param((2, 2, 1), 3, id="n3-2x2x1"),
    pytest.param((2, 1, 3, 1), 0, id="n4-2x1x3x1"),
    pytest.param((1, 1, 2, 1, 1), 0, id="n5-1x1x2x1x1", marks=pytest.mark.slow),
]
NATIVE_X1 = [(0.5, -0.3, 0.9), (-1.2, 0.4, 0.0), (2.0, 1.5, -0.7)]


@functools.cache
def _native(sizes, seed):
    problem = quadratic(sizes, seed)
    return problem, NumericProblem(problem.objectives(), problem.init())


@pytest.mark.parametrize(
    ("sizes", "seed"),
    [((1, 1), 0), ((2, 3), 1), ((1, 2, 2), 0), ((2, 1, 3, 1), 0), ((1, 1, 1, 1, 1, 1), 0)],
)
def test_closed_form_helper_solves_the_nested_problem(sizes, seed):
    """The NumPy closed form itself (no mlverify): every level's reduced gradient vanishes at
    the closed-form solution and its second differences are positive (strict minima), and
    the hypergradient is the derivative of F_1 (central differences, exact for quadratics
    up to rounding)."""
    problem = quadratic(sizes, seed)
    x1 = _x1(NATIVE_X1[0], sizes[0])
    solution = quadratic_closed_form(problem, x1)
    z = np.concatenate([x1, *solution.lower])
    h = 1e-3
    for k in range(problem.n):
        upto = z[: problem.starts[k + 1]]
        for i in range(problem.starts[k], problem.starts[k + 1]):
            e = np.zeros_like(upto)
            e[i] = h
            plus = quadratic_reduced_objective(problem, k, upto + e)
            minus = quadratic_reduced_objective(problem, k, upto - e)
            centre = quadratic_reduced_objective(problem, k, upto)
            derivative = (plus - minus) / (2 * h)
            if k == 0:
                assert abs(derivative - solution.hypergradient[i]) <= 1e-8 * max(
                    1, abs(solution.hypergradient[i])
                )
            else:
                assert abs(derivative) <= 1e-8, (k, i, derivative)
                assert (plus - 2 * centre + minus) / h**2 > 0.1


@pytest.mark.parametrize(("sizes", "seed"), NATIVE_CASES)
def test_exact_matches_quadratic_closed_form(sizes, seed):
    problem, num = _native(sizes, seed)
    for values in NATIVE_X1:
        x1 = _x1(values, sizes[0])
        want = quadratic_closed_form(problem, x1)
        lower = num.solve_lower(x1)
        for got, exact in zip(lower, want.lower, strict=True):
            assert np.max(np.abs(np.asarray(got) - exact)) <= SOLVE_ATOL
        got = np.asarray(num.hypergradient(x1, method="exact"))
        assert got.shape == (sizes[0],)
        assert rel_err(got, want.hypergradient) <= CLOSED_FORM_RTOL, (x1, got, want.hypergradient)


@pytest.mark.parametrize(("sizes", "seed"), NATIVE_CASES[:4])
def test_no_curvature_is_exact_on_quadratics(sizes, seed):
    """Affine best responses have no second derivatives: dropping them changes nothing."""
    problem, num = _native(sizes, seed)
    x1 = _x1(NATIVE_X1[1], sizes[0])
    want = quadratic_closed_form(problem, x1).hypergradient
    got = num.hypergradient(x1, method="no-curvature")
    assert rel_err(got, want) <= CLOSED_FORM_RTOL


# About 35 s of JAX compile on the 2-core machine: run by hand (n = 5 stays in the suite), so
# the whole suite keeps under its 10-minute budget.
@pytest.mark.manual
def test_exact_matches_closed_form_six_levels():
    """n = 6, scalar blocks: exact frozen at the closed-form lower solution (the lower solve
    is covered up to n = 5 above; at n = 6 compiling the exact formula alone takes ~50 s)."""
    problem, num = _native((1, 1, 1, 1, 1, 1), 0)
    for values in NATIVE_X1[:2]:
        x1 = _x1(values, 1)
        want = quadratic_closed_form(problem, x1)
        got = np.asarray(num.hypergradient_frozen([x1, *want.lower], method="exact"))
        assert rel_err(got, want.hypergradient) <= CLOSED_FORM_RTOL, (x1, got, want.hypergradient)


# ============================================================================ 3. high precision
MP_CASES = [("nonquad", 3, 0), ("nonquad", 3, 1), ("nonquad", 4, 0), ("vec", 3, 0)]
MP_IDS = ["n3-seed0", "n3-seed1", "n4-seed0", "vec-seed0"]
MP_POINTS = [sp.Rational(1, 2), sp.Rational(-3, 4), sp.Rational(3, 2)]


@functools.cache
def _mp_reference(family, spec, seed, x1):
    _, blocks, objectives, _ = _symbolic(family, spec, seed)
    return mp_hypergradient(blocks, objectives, [x1], dps=30)


@pytest.mark.parametrize(("family", "spec", "seed"), MP_CASES, ids=MP_IDS)
def test_nonquadratic_exact_matches_mpmath(family, spec, seed):
    _, _, _, num = _symbolic(family, spec, seed)
    for x1 in MP_POINTS:
        want = [float(v) for v in _mp_reference(family, spec, seed, x1)]
        got = np.asarray(num.hypergradient(np.array([float(x1)]), method="exact"))
        assert rel_err(got, want) <= MP_RTOL, (x1, got, [mpmath.nstr(v, 20) for v in want])


# ============================================================================ 4. approximations
@pytest.mark.parametrize(
    ("family", "spec", "seed"), [MP_CASES[0], MP_CASES[3]], ids=["n3-seed0", "vec-seed0"]
)
def test_no_curvature_error_is_visible_on_nonquadratics(family, spec, seed):
    _, _, _, num = _symbolic(family, spec, seed)
    for x1 in MP_POINTS[:2]:
        want = [float(v) for v in _mp_reference(family, spec, seed, x1)]
        point = np.array([float(x1)])
        approx = num.hypergradient(point, method="no-curvature")
        exact = num.hypergradient(point, method="exact")
        err = rel_err(approx, want)
        assert err > CURVATURE_MIN_REL, (x1, approx, want)
        assert rel_err(exact, want) < 1e-3 * err


@pytest.mark.parametrize(
    ("family", "spec", "seed"),
    [("nonquad", 3, 0), ("vec", 3, 0), ("quad", (2, 1, 2), 1)],
    ids=["n3-seed0", "vec-seed0", "quad-2x1x2"],
)
def test_finite_differences_match_exact(family, spec, seed):
    prob, _, _, num = _symbolic(family, spec, seed)
    x1 = _x1(X1_VALUES[0], prob.sizes[0])
    fd = num.hypergradient(x1, method="fd")
    exact = num.hypergradient(x1, method="exact")
    assert rel_err(fd, exact) <= FD_RTOL, (fd, exact)


@functools.cache
def _ill_conditioned_bilevel():
    """x_1 in R^2, x_2 in R^6; f_2 quadratic (eigenvalues 1..31.6) plus a quartic, so the
    Hessian at the solution has condition number ~25; f_1 non-quadratic in x_2."""
    rng = np.random.default_rng(3)
    d1, d2 = 2, 6
    q, _ = np.linalg.qr(rng.normal(size=(d2, d2)))
    a = jnp.asarray((q * np.logspace(0.0, 1.5, d2)) @ q.T)
    b = jnp.asarray(rng.normal(size=(d2, d1)))
    t = jnp.asarray(rng.normal(size=d2))

    def f1(xs):
        x1, x2 = xs
        return 0.5 * jnp.sum((x2 - t) ** 2) + 0.5 * jnp.sum(x1**2) + jnp.sum(jnp.sin(x2))

    def f2(xs):
        x1, x2 = xs
        return 0.5 * x2 @ a @ x2 - x2 @ (b @ x1) + 0.05 * jnp.sum(x2**4)

    num = NumericProblem([f1, f2], [np.zeros(d1), np.zeros(d2)])
    x1 = np.array([0.7, -0.4])
    xs = [x1, *num.solve_lower(x1, tol=SOLVE_TOL)]
    exact = np.asarray(num.hypergradient_frozen(xs, method="exact"))
    # the lower Hessian at the solution, by plain JAX (bilevel: F_2 = f_2)
    hessian = np.asarray(jax.hessian(lambda v: f2((jnp.asarray(x1), v)))(jnp.asarray(xs[1])))
    return num, xs, exact, np.linalg.eigvalsh(hessian)


def test_truncated_cg_error_shrinks_with_iterations():
    num, xs, exact, eig = _ill_conditioned_bilevel()
    assert eig[-1] / eig[0] > 20  # ill-conditioned enough for truncation to show
    ks = [1, 2, 3, 4, 5, 30]
    errs = [rel_err(num.hypergradient_frozen(xs, method="cg", iterations=k), exact) for k in ks]
    assert errs[0] > 1e-2, errs
    for before, after in zip(errs, errs[1:], strict=False):
        assert after <= max(1.5 * before, APPROX_CONVERGED), (ks, errs)
    # CG is exact after d = 6 steps in exact arithmetic; by K = 30 only rounding is left
    assert errs[-1] <= APPROX_CONVERGED, (ks, errs)


def test_truncated_neumann_error_shrinks_at_the_predicted_rate():
    """Neumann series with step eta: the error of sum_{i<K} (I - eta H)^i eta decays like
    (1 - eta lambda_min)^K; with the default step (1/lambda_max) it decreases monotonically."""
    num, xs, exact, eig = _ill_conditioned_bilevel()
    ks = [1, 4, 16, 64, 256, 1024, 2048]
    errs = [
        rel_err(num.hypergradient_frozen(xs, method="neumann", iterations=k), exact) for k in ks
    ]
    assert errs[0] > 1e-2, errs
    assert all(after < before for before, after in zip(errs[:-2], errs[1:-1], strict=True)), errs
    assert errs[-1] <= APPROX_CONVERGED, (ks, errs)
    # rate with an explicit step
    eta = 1.0 / (1.1 * eig[-1])
    fit_ks = [100, 150, 200, 250, 300]
    fit_errs = [
        rel_err(num.hypergradient_frozen(xs, method="neumann", iterations=k, step=eta), exact)
        for k in fit_ks
    ]
    slope = np.polyfit(fit_ks, np.log(fit_errs), 1)[0]
    predicted = np.log(1.0 - eta * eig[0])
    assert abs(slope / predicted - 1.0) <= RATE_RTOL, (slope, predicted, fit_errs)


@functools.cache
def _itd_bilevel():
    """Quadratic bilevel with lower Hessian A of eigenvalues 1, 3, 5, 8 (x_2 in R^4)."""
    rng = np.random.default_rng(5)
    d1, d2 = 2, 4
    q, _ = np.linalg.qr(rng.normal(size=(d2, d2)))
    eig = np.array([1.0, 3.0, 5.0, 8.0])
    a = jnp.asarray((q * eig) @ q.T)
    b = jnp.asarray(rng.normal(size=(d2, d1)))
    t = jnp.asarray(rng.normal(size=d2))

    def f1(xs):
        x1, x2 = xs
        return 0.5 * jnp.sum((x2 - t) ** 2) + 0.5 * jnp.sum(x1**2)

    def f2(xs):
        x1, x2 = xs
        return 0.5 * x2 @ a @ x2 - x2 @ (b @ x1)

    return NumericProblem([f1, f2], [np.zeros(d1), np.zeros(d2)]), eig


def test_itd_error_decays_at_the_contraction_rate():
    """K gradient steps with rate lr from x_2 = 0: y_K - y* = (I - lr A)^K (0 - y*) and
    dy_K/dx_1 - dy*/dx_1 = -(I - lr A)^K A^{-1} B, so the hypergradient error decays like
    (1 - lr mu)^K, mu = lambda_min(A)."""
    num, eig = _itd_bilevel()
    x1 = np.array([0.7, -0.4])
    exact = np.asarray(num.hypergradient(x1, method="exact"))
    lr = 0.1
    ks = [30, 40, 50, 60, 70, 80]
    errs = [rel_err(num.hypergradient(x1, method="itd", steps=k, inner_lr=lr), exact) for k in ks]
    assert all(after < before for before, after in zip(errs, errs[1:], strict=False)), errs
    slope = np.polyfit(ks, np.log(errs), 1)[0]
    predicted = np.log(1.0 - lr * eig[0])
    assert slope < 0
    assert abs(slope / predicted - 1.0) <= RATE_RTOL, (slope, predicted, errs)
    converged = num.hypergradient(x1, method="itd", steps=400, inner_lr=lr)
    assert rel_err(converged, exact) <= APPROX_CONVERGED


@functools.cache
def _strongly_coupled_trilevel():
    """f_3 = (x_3 - x_2)^2 (so y_3 = x_2), f_2 = x_2^2/2 + 10 x_3^2 - x_1 x_2: the partial
    Hessian D_22 f_2 = 1, but the reduced F_2(x_2) = 10.5 x_2^2 - x_1 x_2 has curvature 21."""

    def f1(xs):
        return jnp.sum((xs[1] - 1.0) ** 2 + xs[2] ** 2 + 0.5 * xs[0] ** 2)

    def f2(xs):
        return jnp.sum(0.5 * xs[1] ** 2 + 10.0 * xs[2] ** 2 - xs[0] * xs[1])

    def f3(xs):
        return jnp.sum((xs[2] - xs[1]) ** 2)

    return NumericProblem([f1, f2, f3], [np.zeros(1)] * 3)


def test_itd_with_default_inner_steps_converges_as_steps_grow():
    """ITD's default inner step must be stable: the error shrinks as K grows. Closed form:
    y_2 = x_1/21, y_3 = y_2, F_1 = (x_1/21 - 1)^2 + (x_1/21)^2 + x_1^2/2."""
    num = _strongly_coupled_trilevel()
    x1 = np.array([0.8])
    closed = 2 * (x1 / 21 - 1) / 21 + 2 * (x1 / 21) / 21 + x1
    assert rel_err(num.hypergradient(x1, method="exact"), closed) <= CLOSED_FORM_RTOL
    errs = [rel_err(num.hypergradient(x1, method="itd", steps=k), closed) for k in (5, 20, 80)]
    assert errs[1] < errs[0] and errs[2] < errs[1], errs
    assert errs[2] <= 1e-6, errs


# ============================================================================ 5. large blocks
LARGE = 300  # > DENSE_LIMIT (200): matrix-free CG in the lower solves and the formulas


@functools.cache
def _large(quartic: float):
    """Trilevel, blocks of 300: the normalised quadratic family plus quartic own terms
    ``quartic * sum x_k^4 / 4`` at levels 2 and 3 (0: purely quadratic)."""
    problem = quadratic((LARGE, LARGE, LARGE), 7, normalise=True)
    f1, f2, f3 = problem.objectives()

    def g2(xs):
        return f2(xs) + quartic * 0.25 * jnp.sum(xs[1] ** 4)

    def g3(xs):
        return f3(xs) + quartic * 0.25 * jnp.sum(xs[2] ** 4)

    num = NumericProblem([f1, g2, g3], problem.init())
    x1 = np.linspace(-1.0, 1.0, LARGE)
    return problem, num, x1


def test_large_quadratic_exact_frozen_matches_closed_form():
    """The matrix-free exact formula at the closed-form lower solution (no lower solve)."""
    problem, num, x1 = _large(0.0)
    want = quadratic_closed_form(problem, x1)
    got = np.asarray(num.hypergradient_frozen([x1, *want.lower], method="exact"))
    assert got.shape == (LARGE,)
    assert rel_err(got, want.hypergradient) <= LARGE_RTOL


@pytest.mark.slow
def test_large_quadratic_exact_with_solve_matches_closed_form():
    problem, num, x1 = _large(0.0)
    want = quadratic_closed_form(problem, x1)
    lower = num.solve_lower(x1)
    for got, exact in zip(lower, want.lower, strict=True):
        assert np.max(np.abs(np.asarray(got) - exact)) <= 1e-8
    got = np.asarray(num.hypergradient(x1, method="exact"))
    assert rel_err(got, want.hypergradient) <= LARGE_RTOL


#: Truncated CG steps per solve of the "long" reference: on these problems 16 steps already
#: agree with the exact formula to 1.5e-13 (12 steps: 8e-12, 8 steps: 2e-8), so 40 is well
#: past convergence (each step multiplies the nested solves' cost: 150 steps took 7.7 s).
LONG_CG = 40


def _exact_and_cg(num, xs):
    exact = np.asarray(num.hypergradient_frozen(xs, method="exact"))
    long_cg = np.asarray(num.hypergradient_frozen(xs, method="cg", iterations=LONG_CG))
    return exact, long_cg


@pytest.mark.slow
def test_large_quartic_exact_frozen_matches_long_cg():
    """Quadratic plus quartic, frozen at iterates that are not its solution (the quadratic
    part's closed-form solution): exact (CG to 1e-12 per solve) == `LONG_CG`-step truncated CG;
    2 CG steps are visibly off."""
    problem, num, x1 = _large(0.1)
    xs = [x1, *quadratic_closed_form(problem, x1).lower]
    exact, long_cg = _exact_and_cg(num, xs)
    assert rel_err(long_cg, exact) <= LARGE_RTOL
    short_cg = np.asarray(num.hypergradient_frozen(xs, method="cg", iterations=2))
    assert rel_err(short_cg, exact) > 1e-4


@pytest.mark.slow
def test_large_quartic_exact_with_solve_matches_long_cg():
    """The same with the lower levels solved (matrix-free Newton-CG)."""
    _, num, x1 = _large(0.1)
    lower = num.solve_lower(x1)
    assert lower.residual <= 1e-10
    exact, long_cg = _exact_and_cg(num, [x1, *lower])
    assert rel_err(long_cg, exact) <= LARGE_RTOL
    assert rel_err(num.hypergradient(x1, method="exact"), exact) <= LARGE_RTOL


# ============================================================================ 6. bad input
class _Counting:
    """Objectives that count how often they are traced or called."""

    def __init__(self):
        self.calls = 0

    def problem(self):
        def f1(xs):
            self.calls += 1
            return jnp.sum((xs[1] - 1.0) ** 2) + jnp.sum(xs[0] ** 2)

        def f2(xs):
            self.calls += 1
            return jnp.sum((xs[1] - xs[0][:, :2]) ** 2) + 0.1 * jnp.sum(xs[1] ** 4)

        return NumericProblem([f1, f2], [np.zeros((3, 2)), np.zeros((3, 2))])


BAD_BLOCKS = [
    pytest.param([np.zeros((3, 2)), np.zeros((3, 3))], 2, id="x2-too-many-entries"),
    pytest.param([np.zeros(5), np.zeros((3, 2))], 1, id="x1-too-few-entries"),
    pytest.param([np.zeros((3, 2)), np.zeros((2, 3))], 2, id="x2-transposed"),
    pytest.param([np.zeros((2, 3)), np.zeros((3, 2))], 1, id="x1-transposed"),
]


@pytest.mark.parametrize(("xs", "level"), BAD_BLOCKS)
def test_mismatched_block_shapes_raise_before_tracing(xs, level):
    counting = _Counting()
    num = counting.problem()
    counting.calls = 0
    with pytest.raises(mv.ProblemDefinitionError) as info:
        num.hypergradient_frozen(xs)
    assert info.value.level == level
    if level == 1:
        with pytest.raises(mv.ProblemDefinitionError) as info:
            num.solve_lower(xs[0])
        assert info.value.level == 1
    else:
        with pytest.raises(mv.ProblemDefinitionError) as info:
            num.solve_lower(np.zeros((3, 2)), init=[xs[1]])
        assert info.value.level == 2
    assert counting.calls == 0, "the objectives were traced before the shapes were checked"


def test_wrong_block_count_raises():
    num = _Counting().problem()
    with pytest.raises(mv.ProblemDefinitionError):
        num.hypergradient_frozen([np.zeros((3, 2))])
    with pytest.raises(mv.ProblemDefinitionError):
        num.solve_lower(np.zeros((3, 2)), init=[np.zeros((3, 2)), np.zeros((3, 2))])


@pytest.mark.parametrize("level", [1, 2])
def test_non_scalar_objective_raises_at_construction(level):
    def scalar(xs):
        return jnp.sum(xs[0] ** 2) + jnp.sum((xs[1] - xs[0]) ** 2)

    def vector(xs):
        return (xs[1] - xs[0]) ** 2

    objectives = [scalar, scalar]
    objectives[level - 1] = vector
    with pytest.raises(mv.ProblemDefinitionError) as info:
        NumericProblem(objectives, [np.zeros(2), np.zeros(2)])
    assert info.value.level == level


def _indefinite_bilevel():
    """f_2 = -(x_2 - x_1)^2 + 0.1 x_2^4: D_22 f_2 = -2 + 1.2 x_2^2 < 0 near x_2 = x_1 = 0."""
    return NumericProblem(
        [
            lambda xs: jnp.sum(xs[0] ** 2 + xs[1] ** 2),
            lambda xs: jnp.sum(-((xs[1] - xs[0]) ** 2) + 0.1 * xs[1] ** 4),
        ],
        [np.zeros(1), np.zeros(1)],
    )


def _indefinite_bottom_trilevel():
    """Level 3 indefinite at 0 (f_3 as f_2 above, one level down); level 2 fine."""
    return NumericProblem(
        [
            lambda xs: jnp.sum(xs[0] ** 2 + xs[1] ** 2 + xs[2] ** 2),
            lambda xs: jnp.sum((xs[1] - xs[0]) ** 2 + xs[1] * xs[2]),
            lambda xs: jnp.sum(-((xs[2] - xs[1]) ** 2) + 0.1 * xs[2] ** 4),
        ],
        [np.zeros(1)] * 3,
    )


def _indefinite_middle_trilevel():
    """D_22 f_2 = 1 > 0 but, with y_3 = x_2, F_2 = -1.5 x_2^2 - x_1 x_2: reduced Hessian -3."""
    return NumericProblem(
        [
            lambda xs: jnp.sum(xs[0] ** 2 + xs[1] ** 2 + xs[2] ** 2),
            lambda xs: jnp.sum(0.5 * xs[1] ** 2 - 2.0 * xs[2] ** 2 - xs[0] * xs[1]),
            lambda xs: jnp.sum((xs[2] - xs[1]) ** 2),
        ],
        [np.zeros(1)] * 3,
    )


INDEFINITE = [
    pytest.param(_indefinite_bilevel, 2, id="bilevel-level2"),
    pytest.param(_indefinite_bottom_trilevel, 3, id="trilevel-level3"),
    pytest.param(_indefinite_middle_trilevel, 2, id="trilevel-reduced-level2"),
]


@pytest.mark.parametrize(("make", "level"), INDEFINITE)
@pytest.mark.parametrize("method", ["exact", "no-curvature", "cg"])
def test_indefinite_lower_hessian_raises_hessian_error(make, level, method):
    num = make()
    xs = [np.zeros(1)] * num.n
    options = {"iterations": 3} if method == "cg" else {}
    with pytest.raises(mv.HessianError) as info:
        num.hypergradient_frozen(xs, method=method, **options)
    assert info.value.level == level, str(info.value)


def test_frozen_hessian_error_reports_the_eigenvalue():
    """SPEC section 6: the min eigenvalue and condition number are in the error."""
    with pytest.raises(mv.HessianError) as info:
        _indefinite_bilevel().hypergradient_frozen([np.zeros(1), np.zeros(1)])
    assert info.value.min_eigenvalue is not None and info.value.min_eigenvalue < 0
    assert "eigenvalue" in str(info.value) and "-2" in str(info.value)


def test_a_start_at_a_stationary_maximum_is_left_then_judged():
    """x_2 = 0 is a stationary maximum of f_2 = -(x_2 - x_1)^2 + 0.1 x_2^4 at x_1 = 0 (H = -2):
    the solve leaves it along the negative curvature to the minimiser +sqrt(5) (the sign
    that makes the eigenvector's largest entry positive), and the multistart names the equal
    minimiser -sqrt(5) at level 2."""
    problem = _indefinite_bilevel()
    solution = problem.solve_lower(np.zeros(1))
    np.testing.assert_allclose(np.ravel(solution.xs[0]), [np.sqrt(5.0)], rtol=1e-12)
    with pytest.raises(mv.NonUniqueMinimiserError) as info:
        problem.solve_lower(np.zeros(1), starts=4)
    assert info.value.level == 2 and "two minimisers of equal value" in str(info.value)


def _nan_problem(where):
    """sqrt of a negative x_1 = -1 in one place: NaN in that level's derivatives."""
    root = jnp.sqrt

    def f1(xs):
        extra = jnp.sum(root(xs[0])) if where == "f1" else 0.0
        return (
            jnp.sum(xs[0] ** 2)
            + jnp.sum((xs[1] - 1.0) ** 2)
            + extra
            + (jnp.sum(xs[2] ** 2) if len(xs) == 3 else 0.0)
        )

    def f2(xs):
        if where == "f2-jacobian":
            return jnp.sum((xs[1] - root(xs[0])) ** 2)
        factor = 1.0 + root(xs[0]) if where == "f2-hessian" else 1.0
        coupling = jnp.sum(xs[1] * xs[2]) if len(xs) == 3 else 0.0
        return jnp.sum(factor * (xs[1] - xs[0]) ** 2) + coupling

    def f3(xs):
        factor = 1.0 + root(xs[0]) if where == "f3-hessian" else 1.0
        return jnp.sum(factor * (xs[2] - xs[1]) ** 2)

    objectives = [f1, f2, f3] if where.startswith("f3") else [f1, f2]
    return NumericProblem(objectives, [np.ones(1)] * len(objectives))


NAN_CASES = [
    pytest.param("f1", 1, id="f1-gradient"),
    pytest.param("f2-hessian", 2, id="f2-hessian"),
    pytest.param("f2-jacobian", 2, id="f2-mixed-partial"),
    pytest.param("f3-hessian", 3, id="f3-hessian"),
]


@pytest.mark.parametrize(("where", "level"), NAN_CASES)
def test_nan_in_frozen_hypergradient_names_the_level(where, level):
    num = _nan_problem(where)
    xs = [-np.ones(1)] + [np.zeros(1)] * (num.n - 1)
    with pytest.raises((mv.NonFiniteError, mv.HessianError)) as info:
        num.hypergradient_frozen(xs)
    assert info.value.level == level, str(info.value)


@pytest.mark.parametrize(("where", "level"), NAN_CASES[1:])
def test_nan_in_solve_lower_names_the_level(where, level):
    num = _nan_problem(where)
    with pytest.raises((mv.NonFiniteError, mv.HessianError)) as info:
        num.solve_lower(-np.ones(1))
    assert info.value.level == level, str(info.value)


# ============================================================================ 7. transformations
def _transform_case():
    prob, _, _, num = _symbolic("vec", 3, 0)
    return prob, num


def test_jit_of_core_hypergradient_frozen():
    prob, num = _transform_case()
    points = _frozen_points(prob, num, count=3, seed=1)

    @jax.jit
    def hypergradient(flat_blocks):
        return num.core.hypergradient_frozen(flat_blocks, LinearSolve("dense"))

    for p in points:
        blocks = _blocks(p, prob.sizes)
        got = hypergradient(tuple(jnp.asarray(b) for b in blocks))
        want = num.hypergradient_frozen(blocks)
        assert rel_err(got, want) <= FORMULA_RTOL


def test_vmap_over_x1_equals_a_python_loop():
    prob, num = _transform_case()
    lower = [np.asarray(b) for b in num.solve_lower(_x1(X1_VALUES[0], 1), tol=SOLVE_TOL)]
    x1s = np.linspace(-1.0, 1.5, 6).reshape(6, 1)

    def hypergradient(x1):
        blocks = (x1,) + tuple(jnp.asarray(b) for b in lower)
        return num.core.hypergradient_frozen(blocks, LinearSolve("dense"))

    batched = np.asarray(jax.jit(jax.vmap(hypergradient))(jnp.asarray(x1s)))
    loop = np.stack([np.asarray(num.hypergradient_frozen([x1, *lower])) for x1 in x1s])
    assert batched.shape == loop.shape == (6, 1)
    assert rel_err(batched, loop) <= FORMULA_RTOL


def test_vmap_of_hypergradient_function_with_status():
    """The pure function form: vmapped over whole iterates, values and status per point."""
    prob, num = _transform_case()
    points = _frozen_points(prob, num, count=3, seed=2)
    fn = num.hypergradient_function("exact")
    batch = tuple(jnp.asarray(b) for b in np.split(points, np.cumsum(prob.sizes)[:-1], axis=1))
    values, status = jax.jit(jax.vmap(fn))(batch)
    num.check_status(status)
    loop = np.stack([np.asarray(num.hypergradient_frozen(_blocks(p, prob.sizes))) for p in points])
    assert rel_err(values, loop) <= FORMULA_RTOL


def test_pytree_blocks_keep_their_shape():
    """Matrix-shaped blocks: the hypergradient comes back shaped like x_1."""
    w = jnp.arange(6.0).reshape(2, 3) / 6.0

    def f1(xs):
        return jnp.sum(xs[0] ** 2) + jnp.sum(xs[1] * w) + jnp.sum(jnp.sin(xs[1]))

    def f2(xs):
        return jnp.sum((xs[1] - xs[0]) ** 2) + 0.1 * jnp.sum(xs[1] ** 4)

    num = NumericProblem([f1, f2], [np.zeros((2, 3)), np.zeros((2, 3))])
    x1 = np.arange(6.0).reshape(2, 3) / 10.0
    lower = num.solve_lower(x1, tol=SOLVE_TOL)
    assert np.asarray(lower[0]).shape == (2, 3)
    got = np.asarray(num.hypergradient(x1, solve_options={"tol": SOLVE_TOL}))
    assert got.shape == (2, 3)
    # elementwise problem: y = argmin (y - x)^2 + 0.1 y^4, y'(x) = 2 / (2 + 1.2 y^2)
    y = np.asarray(lower[0])
    want = 2 * x1 + (np.asarray(w) + np.cos(y)) * 2.0 / (2.0 + 1.2 * y**2)
    assert rel_err(got, want) <= CLOSED_FORM_RTOL


def test_itd_written_out_equals_its_loop(monkeypatch):
    """Few unrolled steps are straight-line code, more a fori_loop: the same hypergradient."""
    from mlverify import zoo
    from mlverify.numeric import itd

    steps = 2
    problem = zoo.nonquadratic(3, 1, seed=0).lower()
    x1 = np.array([0.3])
    written_out = np.asarray(problem.hypergradient(x1, method="itd", steps=steps))
    monkeypatch.setattr(itd, "UNROLL_STEPS", 0)
    fresh = zoo.nonquadratic(3, 1, seed=0).lower()  # its own compiled programs
    looped = np.asarray(fresh.hypergradient(x1, method="itd", steps=steps))
    np.testing.assert_allclose(written_out, looped, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("sizes", [(2, 3, 230), (2, 230, 3)], ids=["big-bottom", "big-middle"])
def test_a_cg_level_beside_dense_levels_keeps_its_own_solve(sizes):
    """Blocks over the dense limit resolve to CG and the others to Cholesky, each level its
    own: a trilevel problem with one large block gives the exact hypergradient (the same as
    with every level dense, to its error estimate) and the no-curvature and cg methods."""
    from mlverify.numeric.implicit import DENSE_LIMIT

    d1, d2, d3 = sizes
    assert max(sizes) > DENSE_LIMIT
    rng = np.random.default_rng(7)
    big = max(d2, d3)
    q, _ = np.linalg.qr(rng.normal(size=(big, big)))
    a = jnp.asarray((q * np.logspace(-1, 1, big)) @ q.T)
    b = jnp.asarray(rng.normal(size=(d3, d2)) / np.sqrt(d2))
    c = jnp.asarray(rng.normal(size=(d2, d1)))

    def f1(xs):
        x1, x2, x3 = xs
        return 0.5 * jnp.sum((x1 - 1) ** 2) + 0.5 * jnp.sum(x2**2) + 0.5 * jnp.sum(x3**2)

    def f2(xs):
        x1, x2, x3 = xs
        quad = 0.5 * x2 @ a @ x2 if d2 == big else 0.5 * jnp.sum(x2**2)
        return quad - x2 @ jnp.tanh(c @ x1) + 0.05 * jnp.sum(x2**4) + 0.1 * x2[0] * jnp.sum(x3)

    def f3(xs):
        x1, x2, x3 = xs
        quad = 0.5 * x3 @ a @ x3 if d3 == big else 0.5 * jnp.sum(x3**2)
        return quad - x3 @ (b @ x2) + 0.05 * jnp.sum(jnp.cos(x3))

    problem = NumericProblem([f1, f2, f3], [np.zeros(d1), np.zeros(d2), np.zeros(d3)])
    x1 = np.array([0.3, -0.2])
    value, error = problem.hypergradient(x1, "exact", with_error=True)
    dense, dense_error = problem.hypergradient(x1, "exact", linear_solver="dense",
                                               with_error=True)
    # two computations of one number: they differ by at most both error estimates
    gap = np.abs(np.asarray(value) - np.asarray(dense))
    assert np.all(gap <= np.asarray(error) + np.asarray(dense_error))
    assert np.all(np.asarray(error) < 1e-6 * (1 + np.abs(np.asarray(value))))
    loose = problem.hypergradient(x1, "no-curvature")
    assert np.all(np.isfinite(np.asarray(loose)))
    cg_value, cg_error = problem.hypergradient(x1, "cg", with_error=True)
    assert np.all(np.isfinite(np.asarray(cg_value))) and np.all(np.isfinite(cg_error))


def test_unknown_options_are_value_errors_listing_the_valid_ones():
    from mlverify import zoo
    from mlverify.errors import UnknownOptionError

    problem = zoo.nonquadratic(2, 1, seed=0).lower()
    x1 = np.array([0.3])
    with pytest.raises(ValueError, match="it takes linear_solver, tol"):
        problem.hypergradient(x1, "exact", foo=1)
    with pytest.raises(ValueError, match="it takes steps, inner_lr"):
        problem.hypergradient(x1, "itd", lr=0.1)
    with pytest.raises(UnknownOptionError, match="the valid keys are tol, max_iter"):
        problem.hypergradient(x1, "exact", solve_options={"tol": 1e-10, "bogus": 2})
    with pytest.raises(TypeError):  # also a TypeError, as for an unknown keyword
        problem.hypergradient(x1, "fd", steps=2)


def test_lower_solution_has_xs_on_both_backends():
    from mlverify import zoo

    declared = zoo.nonquadratic(3, 1, seed=0)
    numeric = declared.lower().solve_lower(np.array([0.3]))
    symbolic = declared.solve_lower(np.array([0.3]))
    assert isinstance(numeric.xs, tuple) and len(numeric.xs) == 2
    for a, b in zip(numeric.xs, symbolic.xs, strict=True):
        np.testing.assert_allclose(np.ravel(a), b, rtol=1e-10)
