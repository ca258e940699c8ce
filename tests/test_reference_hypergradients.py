"""mlverify's hypergradients and best-response Jacobians against independent references.

References (see tests/reference.py, which uses none of mlverify's derivation code):
* quadratic n-level problems, n = 2..5, scalar and vector blocks: the nested argmins solved
  exactly with sympy, bottom-up, and F_1(x_1) differentiated: exact rational answers;
* non-quadratic trilevel / 4-level / vector-block trilevel problems (tanh, sin, exp
  couplings, quartic own terms): a nested Newton solve in mpmath with mpmath.diff for the
  reduced gradients and the hypergradient (about 40 correct digits).
"""

from __future__ import annotations

import functools
import os
import sys

import mpmath
import numpy as np
import pytest
import sympy as sp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference import (  # noqa: E402
    MPNested,
    mp_best_response_jacobian,
    mp_hypergradient,
    mp_lower_solution,
    nonquadratic_problem,
    nonquadratic_vector_problem,
    quadratic_closed_form_hypergradient,
    quadratic_problem,
)

# ----------------------------------------------------------------------------- tolerances
#: float64 hypergradient_at vs the exact quadratic answer, relative to max(1, |exact|):
#: the lower solves stop at residual <= 1e-12 on well-conditioned quadratics (observed
#: errors are ~1e-16), so 1e-12 leaves room for round-off but catches any formula slip.
QUAD_NUMERIC_RTOL = 1e-12
#: solve_lower vs the exact quadratic lower solution (absolute, entries are O(1..100)).
QUAD_SOLVE_ATOL = 1e-10
#: the residual solve_lower promises by default (its ``tol``).
RESIDUAL_MAX = 1e-12
#: float64 hypergradient_at vs the 40-digit mpmath reference (relative, max-norm): a
#: residual of 1e-12 in each nested float64 solve, amplified by the lower-level condition
#: numbers, gives up to ~1e-12 absolute; 1e-9 is the required float64 accuracy.
MP_RTOL = 1e-9
#: solve_lower vs the mpmath nested solution (absolute).
MP_SOLVE_ATOL = 1e-10
#: the curvature-dropped hypergradient must miss the reference by more than this (relative):
#: the families are built with curved best responses and non-zero f_z, so the dropped terms
#: are O(1e-3..1e-1) at the test points; 1e-4 is far above the float64 error (MP_RTOL).
CURVATURE_MIN_REL = 1e-4
#: self-consistency of the mpmath reference: dps 30 against dps 45 (relative). Both should
#: be correct to ~30 digits; 1e-25 shows the nested finite differences lost nothing.
MP_SELF_RTOL = 1e-25
#: mlverify's *symbolic* formulas (exact) evaluated in mpmath at 40 digits at the reference
#: solution, against the 40-digit reference: only rounding separates them.
SYMBOLIC_MP_RTOL = 1e-25
#: mpmath working precision of the references in this file.
DPS = 40


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (max-norm relative error); a float64, b float64 or mpf."""
    a = [mpmath.mpf(float(x)) for x in np.asarray(a, dtype=np.float64).reshape(-1)]
    b = [mpmath.mpf(y) for y in b]
    diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
    return float(diff / max(abs(y) for y in b))


def mp_rel_err(a, b) -> mpmath.mpf:
    """Max-norm relative error between two mpf sequences, in mpmath."""
    a, b = list(a), list(b)
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) / max(abs(y) for y in b)


# ============================================================================ quadratic
QUADRATIC_CASES = [
    ((1, 1), 0),
    ((1, 1), 1),
    ((1, 1), 2),
    ((2, 1), 0),
    ((1, 3), 0),
    ((2, 2), 1),
    ((1, 1, 1), 0),
    ((1, 1, 1), 1),
    ((2, 1, 2), 0),
    ((2, 1, 2), 1),
    ((2, 2, 2), 0),
    ((1, 1, 1, 1), 0),
    ((1, 1, 1, 1), 1),
    ((1, 2, 1, 1), 0),
    ((1, 2, 1, 1), 1),
    ((1, 1, 1, 1, 1), 0),
    ((1, 1, 1, 1, 1), 1),
    ((1, 1, 1, 1, 1), 2),
    ((2, 1, 1, 1, 1), 0),
    ((1, 1, 2, 1, 2), 0),
]
QUAD_IDS = [f"n{len(s)}-{'x'.join(map(str, s))}-seed{seed}" for s, seed in QUADRATIC_CASES]

#: rational x_1 points (entries cycled to the block size); dyadic, so exact in float64
QUAD_POINTS = [
    (sp.Rational(1, 2), sp.Rational(-3, 4)),
    (sp.Rational(-5, 4), sp.Rational(1, 8)),
    (sp.Rational(3, 2), sp.Rational(2)),
]


def _point(values, d):
    return [values[i % len(values)] for i in range(d)]


@functools.cache
def _quadratic(sizes, seed):
    prob, blocks, objectives = quadratic_problem(len(sizes), sizes, seed)
    closed = quadratic_closed_form_hypergradient(blocks, objectives)
    return prob, blocks, objectives, closed


@pytest.mark.parametrize(("sizes", "seed"), QUADRATIC_CASES, ids=QUAD_IDS)
def test_quadratic_reference_is_nontrivial(sizes, seed):
    """Sanity of the reference: the lower levels matter, and each argmin is a strict minimum."""
    prob, blocks, objectives, closed = _quadratic(sizes, seed)
    x1 = sp.Matrix(blocks[0])
    partial_only = sp.Matrix([sp.diff(objectives[0], s) for s in blocks[0]])
    partial_only = partial_only.xreplace(closed.manifolds[2])
    assert not (partial_only - closed.hypergradient).applyfunc(sp.expand).is_zero_matrix
    assert closed.hypergradient.free_symbols <= set(x1)
    for k in range(2, len(sizes) + 1):
        # the Hessian of the reduced objective F_k in x_k (constant for quadratics)
        below = closed.manifolds[k + 1] if k < len(sizes) else {}
        fk = objectives[k - 1].xreplace(below)
        hess = sp.hessian(fk, blocks[k - 1])
        assert hess.free_symbols == set()
        assert all(ev > 0 for ev in hess.eigenvals()), (k, hess)


@pytest.mark.parametrize(("sizes", "seed"), QUADRATIC_CASES, ids=QUAD_IDS)
def test_quadratic_hypergradient_exact(sizes, seed):
    """hypergradient() on the solution manifold == d/dx_1 of the closed-form F_1, exactly."""
    prob, blocks, _, closed = _quadratic(sizes, seed)
    hg = prob.hypergradient()
    assert hg.shape == (sizes[0], 1)
    on_manifold = hg.xreplace(closed.manifolds[2])
    difference = (on_manifold - closed.hypergradient).applyfunc(sp.cancel)
    assert difference.is_zero_matrix, difference
    # and exact rational equality at rational points, with the exact lower solutions
    for values in QUAD_POINTS:
        x1 = _point(values, sizes[0])
        lower = closed.lower_solution(x1)
        sub = dict(zip(blocks[0], x1, strict=True))
        for block, value in zip(blocks[1:], lower, strict=True):
            sub.update(zip(block, value, strict=True))
        got = hg.xreplace(sub)
        want = closed.hypergradient.xreplace(sub)
        assert all(g.is_Rational for g in got), got
        assert got == want, (x1, got, want)


@pytest.mark.parametrize(("sizes", "seed"), QUADRATIC_CASES, ids=QUAD_IDS)
def test_quadratic_curvature_free_is_exact(sizes, seed):
    """Affine best responses have no curvature: curvature=False is exact on quadratics."""
    prob, _, _, closed = _quadratic(sizes, seed)
    hg = prob.hypergradient(curvature=False).xreplace(closed.manifolds[2])
    assert (hg - closed.hypergradient).applyfunc(sp.cancel).is_zero_matrix


@pytest.mark.parametrize(("sizes", "seed"), QUADRATIC_CASES, ids=QUAD_IDS)
def test_quadratic_best_response_jacobians_exact(sizes, seed):
    """best_response_jacobian(k, j) == the partial D_j of the closed-form y_k(x_<k), all k > j."""
    prob, _, _, closed = _quadratic(sizes, seed)
    n = len(sizes)
    for k in range(2, n + 1):
        for j in range(1, k):
            jac = prob.best_response_jacobian(k, j)
            assert jac.shape == (sizes[k - 1], sizes[j - 1])
            want = closed.jacobian(k, j)
            difference = (jac.xreplace(closed.manifolds[k]) - want).applyfunc(sp.cancel)
            assert difference.is_zero_matrix, (k, j, jac, want)


@pytest.mark.parametrize(("sizes", "seed"), QUADRATIC_CASES, ids=QUAD_IDS)
def test_quadratic_hypergradient_at_matches_closed_form(sizes, seed):
    prob, blocks, _, closed = _quadratic(sizes, seed)
    for values in QUAD_POINTS:
        x1 = _point(values, sizes[0])
        got = prob.hypergradient_at(np.array([float(v) for v in x1]))
        sub = dict(zip(blocks[0], x1, strict=True))
        want = np.array([float(e.xreplace(sub)) for e in closed.hypergradient])
        assert got.shape == (sizes[0],) and got.dtype == np.float64
        err = np.max(np.abs(got - want)) / max(1.0, np.max(np.abs(want)))
        assert err <= QUAD_NUMERIC_RTOL, (x1, got, want, err)
        got_free = prob.hypergradient_at(np.array([float(v) for v in x1]), curvature=False)
        err_free = np.max(np.abs(got_free - want)) / max(1.0, np.max(np.abs(want)))
        assert err_free <= QUAD_NUMERIC_RTOL, (x1, got_free, want, err_free)


@pytest.mark.parametrize(("sizes", "seed"), QUADRATIC_CASES, ids=QUAD_IDS)
def test_quadratic_solve_lower_matches_closed_form(sizes, seed):
    prob, _, _, closed = _quadratic(sizes, seed)
    for values in QUAD_POINTS:
        x1 = _point(values, sizes[0])
        solution = prob.solve_lower(np.array([float(v) for v in x1]))
        assert solution.residual <= RESIDUAL_MAX
        exact = closed.lower_solution(x1)
        assert len(solution.xs) == len(sizes) - 1
        for k, (got, want) in enumerate(zip(solution.xs, exact, strict=True), start=2):
            got = np.asarray(got)
            assert got.shape == (sizes[k - 1],) and got.dtype == np.float64
            want = np.array([float(v) for v in want])
            assert np.max(np.abs(got - want)) <= QUAD_SOLVE_ATOL, (k, x1, got, want)


@pytest.mark.parametrize(("sizes", "seed"), [((1, 1, 1), 0), ((2, 1, 2), 1)],
                         ids=["n3-1x1x1-seed0", "n3-2x1x2-seed1"])
def test_mp_reference_agrees_with_exact_quadratic(sizes, seed):
    """The two references are independent: the mpmath nested solve reproduces the exact one."""
    _, blocks, objectives, closed = _quadratic(sizes, seed)
    x1 = _point(QUAD_POINTS[0], sizes[0])
    got = mp_hypergradient(blocks, objectives, x1, dps=DPS)
    sub = dict(zip(blocks[0], x1, strict=True))
    with mpmath.workdps(DPS):
        want = [mpmath.mpf(e.xreplace(sub).p) / e.xreplace(sub).q for e in closed.hypergradient]
        assert mp_rel_err(got, want) <= mpmath.mpf(MP_SELF_RTOL)
    prefix = [x1] + [[sp.Rational(1, 3)] * d for d in sizes[1:-1]]
    jac, _ = mp_best_response_jacobian(blocks, objectives, len(sizes), 1, prefix, dps=DPS)
    exact = closed.jacobian(len(sizes), 1)
    with mpmath.workdps(DPS):
        for r in range(exact.rows):
            for c in range(exact.cols):
                value = mpmath.mpf(exact[r, c].p) / exact[r, c].q
                assert abs(jac[r, c] - value) <= mpmath.mpf(MP_SELF_RTOL) * max(1, abs(value))


# ============================================================================ non-quadratic
NONQUAD_CASES = [("n3", 0), ("n3", 1), ("n4", 0), ("n4", 1), ("vec", 0), ("vec", 1)]
NONQUAD_IDS = [f"{family}-seed{seed}" for family, seed in NONQUAD_CASES]
NONQUAD_POINTS = [sp.Rational(1, 2), sp.Rational(-3, 4), sp.Rational(3, 2)]


@functools.cache
def _nonquadratic(family, seed):
    if family == "n3":
        return nonquadratic_problem(3, seed)
    if family == "n4":
        return nonquadratic_problem(4, seed)
    return nonquadratic_vector_problem(seed)


@functools.cache
def _mp_reference(family, seed, x1, dps=DPS):
    """(hypergradient, lower solution, min eigenvalues) from mpmath, cached."""
    _, blocks, objectives = _nonquadratic(family, seed)
    hg = mp_hypergradient(blocks, objectives, [x1], dps=dps)
    solution, eigen = mp_lower_solution(blocks, objectives, [x1], dps=dps)
    return hg, solution, eigen


def _variables(blocks):
    return [s for b in blocks for s in b]


@pytest.mark.parametrize(("family", "seed"), NONQUAD_CASES, ids=NONQUAD_IDS)
def test_mp_reference_self_consistent(family, seed):
    """The mpmath reference at 30 and 45 digits agrees to 1e-25; the lower argmins are strict
    minima (reduced Hessians positive definite) at every test point."""
    _, blocks, objectives = _nonquadratic(family, seed)
    x1 = NONQUAD_POINTS[0]
    low = mp_hypergradient(blocks, objectives, [x1], dps=30)
    high = mp_hypergradient(blocks, objectives, [x1], dps=45)
    with mpmath.workdps(45):
        assert mp_rel_err(low, high) <= mpmath.mpf(MP_SELF_RTOL), (low, high)
    for point in NONQUAD_POINTS:
        _, _, eigen = _mp_reference(family, seed, point)
        assert all(e > mpmath.mpf("0.5") for e in eigen), (point, eigen)


@pytest.mark.parametrize(("family", "seed"), NONQUAD_CASES, ids=NONQUAD_IDS)
def test_nonquadratic_hypergradient_at_matches_mp(family, seed):
    prob, blocks, _ = _nonquadratic(family, seed)
    for x1 in NONQUAD_POINTS:
        want, _, _ = _mp_reference(family, seed, x1)
        got = prob.hypergradient_at(float(x1))
        assert got.shape == (len(blocks[0]),) and got.dtype == np.float64
        err = rel_err(got, want)
        assert err <= MP_RTOL, (family, seed, x1, got, [mpmath.nstr(w, 20) for w in want], err)


@pytest.mark.parametrize(("family", "seed"), NONQUAD_CASES, ids=NONQUAD_IDS)
def test_curvature_free_hypergradient_differs_measurably(family, seed):
    """Dropping the curvature terms of Lemma 3.2 is an approximation here, and a visible one."""
    prob, _, _ = _nonquadratic(family, seed)
    for x1 in NONQUAD_POINTS:
        want, _, _ = _mp_reference(family, seed, x1)
        exact = prob.hypergradient_at(float(x1))
        approx = prob.hypergradient_at(float(x1), curvature=False)
        err = rel_err(approx, want)
        assert err > CURVATURE_MIN_REL, (family, seed, x1, approx, want, err)
        # and the exact one is much closer than the approximation
        assert rel_err(exact, want) < 1e-3 * err


@pytest.mark.parametrize(("family", "seed"), NONQUAD_CASES, ids=NONQUAD_IDS)
def test_nonquadratic_solve_lower_matches_mp(family, seed):
    prob, blocks, _ = _nonquadratic(family, seed)
    for x1 in NONQUAD_POINTS:
        _, want, _ = _mp_reference(family, seed, x1)
        solution = prob.solve_lower(float(x1))
        assert solution.residual <= RESIDUAL_MAX
        for k, (got, ref) in enumerate(zip(solution.xs, want, strict=True), start=2):
            assert np.asarray(got).shape == (len(blocks[k - 1]),)
            err = max(abs(float(g) - float(r)) for g, r in zip(got, ref, strict=True))
            assert err <= MP_SOLVE_ATOL, (family, seed, x1, k, got, ref)


@pytest.mark.parametrize(("family", "seed"), NONQUAD_CASES, ids=NONQUAD_IDS)
def test_symbolic_hypergradient_matches_mp_to_40_digits(family, seed):
    """hypergradient() (exact formula) evaluated in mpmath at the 40-digit lower solution."""
    prob, blocks, _ = _nonquadratic(family, seed)
    hg = prob.hypergradient()
    assert hg.free_symbols <= set(_variables(blocks))
    evaluate = sp.lambdify(_variables(blocks), list(hg), modules="mpmath", cse=True)
    for x1 in NONQUAD_POINTS:
        want, solution, _ = _mp_reference(family, seed, x1)
        with mpmath.workdps(DPS):
            got = evaluate(mpmath.mpf(x1.p) / x1.q, *[c for b in solution for c in b])
            assert mp_rel_err(got, want) <= mpmath.mpf(SYMBOLIC_MP_RTOL), (x1, got, want)


#: x_<k points for the Jacobian checks: arbitrary (not on any upper manifold)
JAC_PREFIX_VALUES = [sp.Rational(1, 3), sp.Rational(-1, 2), sp.Rational(3, 4), sp.Rational(-1, 5)]


def _prefix(blocks, k):
    values = iter(JAC_PREFIX_VALUES * 3)
    return [[next(values) for _ in block] for block in blocks[: k - 1]]


def _check_jacobian_against_mp(prob, blocks, objectives, k, j):
    prefix = _prefix(blocks, k)
    want, solution = mp_best_response_jacobian(blocks, objectives, k, j, prefix, dps=DPS)
    jac = prob.best_response_jacobian(k, j)
    assert jac.shape == (len(blocks[k - 1]), len(blocks[j - 1]))
    evaluate = sp.lambdify(_variables(blocks), list(jac), modules="mpmath", cse=True)
    with mpmath.workdps(DPS):
        args = [mpmath.mpf(v.p) / v.q for b in prefix for v in b]
        args += [c for b in solution for c in b]
        got = evaluate(*args)
        flat_want = [want[r, c] for r in range(want.rows) for c in range(want.cols)]
        assert mp_rel_err(got, flat_want) <= mpmath.mpf(SYMBOLIC_MP_RTOL), (k, j, got, want)
    if k < prob.n:
        # the curvature terms of Lemma 3.2 enter D_j y_k here: dropping them is visible
        free = prob.best_response_jacobian(k, j, curvature=False)
        evaluate_free = sp.lambdify(_variables(blocks), list(free), modules="mpmath", cse=True)
        with mpmath.workdps(DPS):
            err_free = mp_rel_err(evaluate_free(*args), flat_want)
        assert err_free > CURVATURE_MIN_REL, (k, j, err_free)
    # and the float64 evaluator agrees to the float64 tolerance
    numeric = prob.numeric().jacobian_frozen(
        k, j, [np.array([float(v) for v in b]) for b in prefix]
        + [np.array([float(c) for c in b]) for b in solution])
    assert rel_err(numeric.reshape(-1), flat_want) <= MP_RTOL


@pytest.mark.parametrize(("family", "seed"), NONQUAD_CASES, ids=NONQUAD_IDS)
def test_bottom_best_response_jacobian_matches_mp_finite_differences(family, seed):
    """Lemma 3.1 / 2.1: D_j y_n against mpmath.diff of the 40-digit bottom-level solve."""
    prob, blocks, objectives = _nonquadratic(family, seed)
    n = prob.n
    for j in range(1, n):
        _check_jacobian_against_mp(prob, blocks, objectives, n, j)


@pytest.mark.parametrize(("family", "seed"), NONQUAD_CASES, ids=NONQUAD_IDS)
def test_intermediate_best_response_jacobians_match_mp_finite_differences(family, seed):
    """Lemma 3.2 (levels with lower best responses inside): D_j y_k for 2 <= k < n against
    mpmath.diff of the nested solve y_k(x_<k)."""
    prob, blocks, objectives = _nonquadratic(family, seed)
    for k in range(2, prob.n):
        for j in range(1, k):
            _check_jacobian_against_mp(prob, blocks, objectives, k, j)


def test_mp_nested_reduced_gradient_vanishes_at_solution():
    """The reference's own stationarity: D_k F_k(x*) = 0 at every level, to ~dps digits."""
    _, blocks, objectives = _nonquadratic("n4", 0)
    with mpmath.workdps(30):
        ref = MPNested(blocks, objectives)
        x1 = [mpmath.mpf(1) / 2]
        full = [x1] + ref.solve_from(2, [x1])
        for k in range(2, ref.n + 1):
            g = ref.reduced_gradient(k, full[:k])
            assert max(abs(c) for c in g) <= mpmath.mpf(10) ** -25, (k, g)
