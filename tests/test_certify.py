"""Certified verification (mlverify.certify): enclosures checked against independent
references.

References: exact rationals from the closed-form nested solution of quadratic problems
(tests/reference.py, sympy linsolve), and mpmath at 50 digits (nested Newton with
mpmath.diff, tests/reference.py) for the non-quadratic ones; never mlverify's own float
path, which is only checked to lie inside the (padded) enclosure.
"""

from __future__ import annotations

import json
import re

import mpmath
import numpy as np
import pytest
import sympy as sp
from reference import (
    build_problem,
    mp_hypergradient,
    mp_lower_solution,
    nonquadratic_problem,
    nonquadratic_vector_problem,
    quadratic_closed_form_hypergradient,
    quadratic_problem,
)

import mlverify as mv
from mlverify import zoo
from mlverify.certify import CertificationError, certify_constants, symmetric_eigen_bounds

#: Digits of the mpmath references: far beyond float64, so a reference is a point.
DPS = 50
#: The proven interval at a point should be narrow (issue target: near 1e-10 relative).
RELATIVE_WIDTH = 1e-10


def _contains_mp(lower, upper, values):
    return all(mpmath.mpf(float(lo)) <= v <= mpmath.mpf(float(hi))
               for lo, hi, v in zip(lower, upper, values, strict=True))


def _contains_exact(lower, upper, values):
    return all(sp.Rational(float(lo)) <= v <= sp.Rational(float(hi))
               for lo, hi, v in zip(lower, upper, values, strict=True))


# ----------------------------------------------------------------------------- hypergradient


@pytest.mark.parametrize(
    ("n", "sizes", "seed", "x1"),
    [(2, (1, 1), 0, ["1/3"]), (3, (2, 1, 2), 1, ["1/2", "-1/4"]), (4, (1, 1, 1, 1), 2, ["-2/3"]),
     (2, (2, 2), 3, ["3/4", "1/5"])],
)
def test_hypergradient_enclosure_contains_exact_rational_value(n, sizes, seed, x1):
    prob, blocks, objectives = quadratic_problem(n, sizes, seed)
    closed = quadratic_closed_form_hypergradient(blocks, objectives)
    # x1 as the float nearest each rational; the exact value is taken at that float.
    point = [float(sp.Rational(v)) for v in x1]
    subs = {s: sp.Rational(v) for s, v in zip(blocks[0], point, strict=True)}
    exact = [e.xreplace(subs) for e in closed.hypergradient]
    enc = prob.hypergradient_enclosure(point)
    assert _contains_exact(enc.proven_lower, enc.proven_upper, exact)
    assert _contains_exact(enc.lower, enc.upper, exact)
    assert np.all(enc.width <= RELATIVE_WIDTH * np.maximum(1, np.abs(enc.lower)))
    assert enc.contains(prob.hypergradient_at(point))  # the float64 value lies inside
    # the lower solutions' enclosure holds the exact ones too
    lower_exact = [v for block in closed.lower_solution(list(subs.values())) for v in block]
    assert all(sp.Rational(lo) <= v <= sp.Rational(hi)
               for (lo, hi), v in zip(enc.lower_solutions, lower_exact, strict=True))


@pytest.mark.parametrize(
    ("make", "x1"),
    [(lambda: nonquadratic_problem(3, 0), [0.3]),
     (lambda: nonquadratic_problem(4, 1), [0.2]),
     (lambda: nonquadratic_vector_problem(0), [0.4]),
     (lambda: (zoo.default_problem(), None, None), [0.7])],
    ids=["nonquadratic-n3", "nonquadratic-n4", "vector-blocks-122", "default-trilevel"],
)
def test_hypergradient_enclosure_contains_mpmath_reference(make, x1):
    prob, blocks, objectives = make()
    if blocks is None:
        blocks = [tuple(b) for b in prob.blocks]
        objectives = list(prob.objectives)
    reference = mp_hypergradient(blocks, objectives, x1, dps=DPS)
    enc = prob.hypergradient_enclosure(x1)
    assert _contains_mp(enc.proven_lower, enc.proven_upper, reference)
    assert np.all(enc.width <= RELATIVE_WIDTH * np.maximum(1, np.abs(enc.lower)))
    assert enc.contains(prob.hypergradient_at(x1))
    solution, _ = mp_lower_solution(blocks, objectives, x1, dps=30)
    flat = [v for block in solution for v in block]
    assert _contains_mp([lo for lo, _ in enc.lower_solutions],
                        [hi for _, hi in enc.lower_solutions], flat)


def test_rational_constants_enter_exactly():
    """F_1 = (x1 - 1/3)^2 / 2: at the float nearest 1/3 the exact hypergradient is
    float(1/3) - 1/3 = -1.85e-17, which a rounded constant would turn into 0."""
    x1, x2 = sp.symbols("x1 x2")
    third = sp.Rational(1, 3)
    prob = mv.MultilevelProblem([mv.Level(x1, (x1 - third) ** 2 / 2 + x2**2 / 1000),
                                 mv.Level(x2, (x2 - x1 + third) ** 2 / 2)])
    point = float(third)
    exact = sp.Rational(point) - third + (sp.Rational(point) - third) / 500
    enc = prob.hypergradient_enclosure([point])
    assert exact < 0
    assert _contains_exact(enc.proven_lower, enc.proven_upper, [exact])
    assert enc.proven_upper[0] < 0  # proven negative: 0 is excluded


def test_outward_rounding_of_float_endpoints():
    from flint import arb

    from mlverify.certify import float_down, float_up
    from mlverify.certify.hypergradient import precision

    with precision(200):
        third = arb(1) / 3  # a ball of radius ~1e-60 around 1/3
        down, up = float_down(third), float_up(third)
        assert arb(down) <= third.lower() and third.upper() <= arb(up)
    assert down < 1 / 3 < up or down <= 1 / 3 <= up
    assert np.nextafter(down, np.inf) == up  # one ulp apart: as tight as float64 allows
    assert float_up(arb(0.5)) == 0.5 == float_down(arb(0.5))


def test_point_certification_failure_names_the_level():
    """A degenerate lower level (D_22 f_2 = 3 (x2 - x1)^2 vanishes at its solution): the
    float solve stops near it, the proof cannot be completed, and the error says where."""
    x1, x2 = sp.symbols("x1 x2")
    prob = mv.MultilevelProblem([mv.Level(x1, x1**2 + x2**2),
                                 mv.Level(x2, (x2 - x1) ** 4 / 4)])
    with pytest.raises(CertificationError, match="level 2: .*(not contracting|singular)") as err:
        prob.hypergradient_enclosure([0.5])
    assert err.value.level == 2


def test_a_jax_problem_is_refused_by_name_not_by_attribute_error():
    """A NumericProblem (JAX callables) has no straight-line programs to enclose."""
    from mlverify.certify import certify_constants, hypergradient_enclosure
    from mlverify.errors import ProblemDefinitionError

    numeric = zoo.default_problem().lower()
    for call in (lambda: hypergradient_enclosure(numeric, [0.5]),
                 lambda: certify_constants(numeric, (np.array([-1.0]), np.array([1.0])))):
        with pytest.raises(ProblemDefinitionError, match="declared .*MultilevelProblem"):
            call()


# ----------------------------------------------------------------------------- eigenvalues


def test_symmetric_eigen_bounds_enclose_every_member():
    from flint import arb

    rng = np.random.default_rng(0)
    for d in (1, 2, 4):
        a = rng.standard_normal((d, d))
        a = a + a.T
        radius = 1e-3
        balls = [[arb(float(a[i, j]), radius) for j in range(d)] for i in range(d)]
        bounds = symmetric_eigen_bounds(balls)
        for _ in range(50):
            e = rng.uniform(-radius, radius, (d, d))
            eig = np.linalg.eigvalsh(a + 0.5 * (e + e.T))
            assert bounds.min_lower <= eig[0] and eig[-1] <= bounds.max_upper
        eig0 = np.linalg.eigvalsh(a)
        assert bounds.min_lower <= eig0[0] <= bounds.min_upper
        assert bounds.max_lower <= eig0[-1] <= bounds.max_upper
        assert bounds.max_upper - bounds.max_lower < 4 * d * radius + 1e-12


# ----------------------------------------------------------------------------- constants


@pytest.mark.parametrize(("n", "sizes", "seed"), [(2, (1, 1), 4), (3, (1, 2, 1), 5),
                                                  (4, (1, 1, 1, 1), 6), (3, (2, 1, 1), 7)])
def test_certified_constants_contain_exact_quadratic_eigenvalues(n, sizes, seed):
    prob, blocks, objectives = quadratic_problem(n, sizes, seed)
    closed = quadratic_closed_form_hypergradient(blocks, objectives)
    hess = closed.hypergradient.jacobian(sp.Matrix(blocks[0]))  # constant, exact
    eigs = sorted(float(sp.re(sp.N(e, 30))) for e in hess.eigenvals(multiple=True))
    d1 = sizes[0]
    cert = certify_constants(prob, ([-1.0] * d1, [1.0] * d1))
    assert cert.certified
    assert cert.lambda_max[0] <= eigs[-1] <= cert.lambda_max[1]
    assert cert.lambda_min[0] <= eigs[0] <= cert.lambda_min[1]
    assert cert.lambda_max[1] - cert.lambda_max[0] <= 1e-9 * eigs[-1]


@pytest.mark.parametrize(
    "make",
    [lambda: (zoo.default_problem(), (-2.0, 2.0)),
     lambda: (zoo.quadratic(3, seed=2).symbolic(), (-1.0, 1.0)),
     lambda: (zoo.nonquadratic(4, seed=1), (-1.0, 1.0)),
     lambda: (zoo.nonquadratic(2, size=2, seed=3), ([-0.5, -0.5], [0.5, 0.5]))],
    ids=["default", "quadratic-n3", "nonquadratic-n4", "nonquadratic-2x2"],
)
def test_theorem_4_1_certified_pass_and_L_cert_above_sampled(make, tmp_path):
    prob, box = make()
    sampled = mv.verify.theorem_4_1(prob, box=box, T=30)
    rep = mv.verify.theorem_4_1(prob, box=box, T=30, certify=True)
    assert rep.verdict == sampled.verdict == "pass"
    assert rep.certified and not sampled.certified
    assert rep.label == "pass (certified)"
    assert rep.constants["L"][0] >= sampled.constants["L"][0]
    cert = rep.certificate["constants"]
    lo, hi = cert["lambda_max"]["interval"]
    assert lo <= hi <= rep.constants["L"][0]
    assert cert["L"]["boxes"] >= 1 and cert["L"]["seconds"] >= 0 and cert["L"]["method"]
    assert "PASS (CERTIFIED)" in rep.summary()
    path = tmp_path / "report.json"
    rep.save(str(path))
    saved = json.loads(path.read_text())
    assert saved["certified"] is True
    assert saved["certificate"]["constants"]["L"]["interval"][0] == hi


def test_lambda_max_bound_holds_at_mpmath_hessians():
    """Second differences of the 50-digit reference hypergradient at points of the box."""
    prob = zoo.default_problem()
    cert = certify_constants(prob, (-2.0, 2.0))
    blocks, objectives = [tuple(b) for b in prob.blocks], list(prob.objectives)
    for x in ("-1.5", "0.25", "1.75"):
        with mpmath.workdps(30):
            h = mpmath.mpf("1e-8")
            plus = mp_hypergradient(blocks, objectives, [mpmath.mpf(x) + h], dps=30)[0]
            minus = mp_hypergradient(blocks, objectives, [mpmath.mpf(x) - h], dps=30)[0]
            second = (plus - minus) / (2 * h)
        assert cert.lambda_min[0] <= second <= cert.lambda_max[1]


def test_indefinite_lower_level_is_not_applicable_certified():
    rep = mv.verify.theorem_4_1(zoo.indefinite_problem(), box=(-1.0, 1.0), T=20, certify=True)
    assert rep.verdict == "not-applicable"
    assert rep.certified
    assert rep.label == "not applicable (certified)"
    assert "not strongly convex" in rep.reason
    assert rep.certificate["violation"]["x1"][0] < 0  # where x1 < 0: two minimisers


def test_indefinite_problem_certified_where_the_lower_solution_is_exact():
    """On x1 in [1/2, 1] the lower solution is exactly x2 = 1, so the Krawczyk box of x2 is
    centred at 1 and x2 - 1 is a ball centred at exactly 0: its powers must stay finite
    (Arb's pow is NaN there). H_2 = x1 + 3 (x2 - 1)^2 = x1 at the solution, so mu_2 = 1/2;
    F_1(x1) = (x1 - 1/2)^2 / 2 + 1/2, so the Hessian of F_1 is 1."""
    cert = certify_constants(zoo.indefinite_problem(), (0.5, 1.0))
    assert cert.certified, cert.reason
    assert cert.mu[2][0] <= 0.5 <= cert.mu[2][1]
    assert cert.lambda_min[0] <= 1.0 <= cert.lambda_min[1]
    assert cert.lambda_max[0] <= 1.0 <= cert.lambda_max[1]


def test_indefinite_lower_hessian_at_a_stationary_point_is_a_proven_violation():
    """f_2 = (x2^2 - x1)^2 / 4: for x1 > 0 the zero x2 = 0 of the stationarity system has
    D_22 f_2 = -x1 < 0 (and two minimisers +-sqrt(x1) beside it)."""
    x1, x2 = sp.symbols("x1 x2")
    prob = mv.MultilevelProblem([mv.Level(x1, (x1 - 1) ** 2 / 2 + x2**2 / 2),
                                 mv.Level(x2, (x2**2 - x1) ** 2 / 4)])
    cert = certify_constants(prob, (0.5, 1.5))
    assert cert.status == "violated"
    assert cert.violation["kind"] in ("indefinite lower Hessian", "two lower solutions")
    assert not cert.certified


def test_understated_L_is_never_certified():
    prob = zoo.default_problem()
    rep = mv.verify.theorem_4_1(prob, box=(-2.0, 2.0), T=30, L=1.0, certify=True)
    assert not rep.certified
    assert rep.constants["L"] == (1.0, "given")
    assert any("below the proven lambda_max" in note for note in rep.certificate["notes"])
    assert "(certified)" not in rep.label


def test_budget_spent_is_not_certified_and_says_why():
    prob = zoo.default_problem()
    rep = mv.verify.theorem_4_1(prob, box=(-2.0, 2.0), T=30, certify=True,
                                certify_options={"max_boxes": 3})
    assert not rep.certified
    assert rep.verdict == "pass" and rep.label == "pass (sampled)"
    how = rep.constants["L"][1]
    assert "sampled" in how and "cert" not in how  # the sampled L, named as such
    assert "budget spent" in rep.certificate["reason"]


def test_box_too_wide_for_the_enclosure_fails_with_the_level():
    """H_3 = 3 (x3 - x2)^2 + x1^2 / 4 degenerates at x1 = 0: boxes around it never contract;
    the budget ends the bisection and the reason names the level and the cause."""
    x1, x2, x3 = sp.symbols("x1 x2 x3")
    prob = build_problem([(x1,), (x2,), (x3,)], [x1**2 + x2**2 + x3**2,
                                                 (x2 - x1) ** 2 / 2 + x3**2 / 2,
                                                 (x3 - x2) ** 4 / 4 + x3**2 * x1**2 / 8])
    cert = certify_constants(prob, (-1.0, 1.0), max_boxes=20)
    assert cert.status == "failed" and not cert.certified
    assert "budget spent (20 boxes)" in cert.reason
    assert re.search(r"level \d: (the Krawczyk image|not contracting|the Jacobian)", cert.reason)
    assert cert.lambda_max is None and cert.L is None  # nothing sampled is passed off


def test_F_star_bounds_contain_the_exact_minimum():
    from mlverify.certify.theorem import F_star_bounds

    prob, blocks, objectives = quadratic_problem(3, (1, 1, 1), 8)
    closed = quadratic_closed_form_hypergradient(blocks, objectives)
    x = blocks[0][0]
    stationary = sp.solve(closed.hypergradient[0], x)[0]
    box = (-1.0, 1.0)
    best = min([closed.F1.subs(x, v) for v in (-1, 1)]
               + ([closed.F1.subs(x, stationary)] if -1 <= stationary <= 1 else []))
    cert = certify_constants(prob, box)
    low, high = F_star_bounds(prob, (np.array([-1.0]), np.array([1.0])), np.array([0.0]),
                              cert.lambda_min[0])
    assert sp.Rational(low) <= best <= sp.Rational(high)


def test_a_certified_fail_is_flagged_only_when_the_proven_bounds_confirm_it():
    """The flagging logic of theorem_4_1(certify=True) on a fail (the theorem holds, so a
    genuine fail cannot be produced; the left side is set by hand)."""
    from mlverify.certify import theorem as cert

    prob = zoo.quadratic(2, seed=0).symbolic()
    box = (np.array([-1.0]), np.array([1.0]))
    certificate = certify_constants(prob, box)
    t = np.arange(1, 6)
    f_lo, _ = cert.F_star_bounds(prob, box, np.array([0.0]), certificate.lambda_min[0])
    f0 = float(cert.F1_enclosure(prob, box[0])[0].upper())
    right = 2 * certificate.L * (f0 - f_lo) / t
    common = dict(box=box, verdict="fail", L_value=certificate.L, L_given=None,
                  x_hat=np.array([0.0]), x_start=box[0], t=t)
    certified, record = cert.finish(prob, certificate, left_mean=2 * right, **common)
    assert certified and record["label"] == cert.COUNTEREXAMPLE
    certified, record = cert.finish(prob, certificate, left_mean=0.999 * right, **common)
    assert certified and record["label"] == "fail (certified)"
    assert "not a counterexample" in record["notes"][-1]


def test_certification_needs_a_declared_problem():
    with pytest.raises(mv.ProblemDefinitionError, match="declared"):
        certify_constants(zoo.quadratic(2, seed=0).numeric(), (-1.0, 1.0))


def test_a_krawczyk_failure_on_values_that_are_not_finite_names_their_level():
    """Level 3 carries sqrt(x1 + 1): over x1 in [-1.25, -0.75] its stationarity residual is
    not finite, and at x1 = -1.5 its Jacobian is not finite at the centre. Both failures
    name level 3 (they used to name the first lower level, or none)."""
    from flint import arb

    from mlverify.certify.system import CertifiedSystem, krawczyk

    x1, x2, x3 = sp.symbols("x1 x2 x3")
    prob = build_problem([(x1,), (x2,), (x3,)], [
        x1**2 + x2**2 + x3**2,
        (x2 - x1) ** 2 / 2 + x3**2 / 2,
        (x3 - x2) ** 2 / 2 + x3**2 * sp.sqrt(x1 + 1) / 2])
    system = CertifiedSystem(prob)
    # the lower solution at x1 = -1: x2 = x1, x3 = x2 / (1 + sqrt(x1 + 1))
    across = krawczyk(system, [arb(-1.0, 0.25)], [-1.0, -1.0])
    assert not across.ok and across.level == 3
    assert across.reason.startswith("level 3: the stationarity residual is not finite")
    below = krawczyk(system, [arb(-1.5)], [-1.5, -1.5])
    assert not below.ok and below.level == 3
    assert "level 3: the Jacobian of the stationarity system is not finite" in below.reason
    # where everything is finite the same system proves the zero
    inside = krawczyk(system, [arb(0.0)], [0.0, 0.0])
    assert inside.ok


def test_the_mpmath_arithmetic_serves_the_hessians_and_the_krawczyk_test():
    """mpmath's interval arithmetic takes flint balls as the intervals of their end points
    (they used to enter as their midpoints, or fail): its Hessian enclosures over a box hold
    the float Hessians at points of the box, and its Krawczyk enclosure holds the lower
    solution the flint one holds. A misspelled arithmetic is named."""
    from flint import arb

    from mlverify.certify.system import CertifiedSystem, krawczyk

    x1, x2 = sp.symbols("x1 x2")
    f2 = (x2 - x1) ** 2 + sp.sin(x2) / 10 + sp.Rational(1, 3) * x2**4
    prob = mv.MultilevelProblem([mv.Level(x1, x1**2 + x2**2), mv.Level(x2, f2)])
    system = CertifiedSystem(prob, arithmetic="mpmath")
    box_x1, box_x2 = arb(0.5, 0.1), arb(0.45, 0.1)
    h22 = system.hessian_blocks([box_x1], [box_x2])[0][0][0]
    d22 = sp.lambdify((x1, x2), sp.diff(f2, x2, 2))
    for a in np.linspace(0.4, 0.6, 5):
        for b in np.linspace(0.35, 0.55, 5):
            assert h22.contains(arb(float(d22(a, b))))
    proven = krawczyk(system, [arb(0.5, 0.01)], [0.45])
    reference = krawczyk(CertifiedSystem(prob), [arb(0.5, 0.01)], [0.45])
    assert proven.ok and reference.ok
    solution = np.ravel(prob.solve_lower([0.5])[0])[0]
    assert proven.z[0].contains(arb(float(solution))) and reference.z[0].contains(
        arb(float(solution)))
    with pytest.raises(ValueError, match="unknown arithmetic 'flnt'.*flint, mpmath"):
        CertifiedSystem(prob, arithmetic="flnt")
