"""The stacked conditions (`mlverify.numeric.stacked`): the same lemmas as the nested
best responses of `mlverify.numeric.implicit`, one linearisation per level.

References: the nested best-response formulas at the same iterates (an independent
implementation of Lemmas 2.1, 3.1, 3.2: custom_jvp rules instead of linearised stacks), and
fourth-order finite differences of F_1 with tightly solved lower levels."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numeric_helpers import rel_err, stationary_maximum_start

from mlverify.numeric import NumericProblem, stacked
from mlverify.numeric.implicit import ImplicitCore, LinearSolve


def family(sizes, seed=0, scales=None):
    """A seeded non-quadratic family: quadratic, quartic and sine terms per level, tanh and
    cosine couplings to every other level."""
    rng = np.random.default_rng(seed)
    n = len(sizes)
    scales = scales or [1.0] * n
    weights = {(k, m): jnp.asarray(rng.normal(size=(sizes[m], sizes[k])) * 0.3)
               for k in range(n) for m in range(n) if m != k}
    targets = [jnp.asarray(rng.normal(size=s)) for s in sizes]

    def objective(k):
        def f(xs):
            x = xs[k]
            value = (0.5 * jnp.sum((x - targets[k]) ** 2) + jnp.sum(x**4) / 8
                     + 0.1 * jnp.sum(jnp.sin(x)))
            for m in range(n):
                if m != k:
                    value = (value + jnp.tanh(xs[m]) @ weights[(k, m)] @ x
                             + 0.05 * jnp.sum(xs[m] ** 2) * jnp.sum(jnp.cos(x)))
            return scales[k] * value
        return f

    return [objective(k) for k in range(n)]


SIZES = [(2, 3), (1, 1, 1), (3, 2, 1), (2, 1, 3, 2)]


@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_the_stacked_conditions_are_the_nested_formulas_at_any_iterate(sizes):
    """At random iterates (lower levels not solved): the top gradient, every level's D_k F_k
    and H_k = D_kk F_k equal the nested best responses' formulas, for every ``first``."""
    fs = family(sizes, seed=len(sizes))
    core = ImplicitCore(fs, sizes)
    rng = np.random.default_rng(1)
    xs = tuple(jnp.asarray(rng.normal(size=s) * 0.5) for s in sizes)
    for first, differentiable in itertools.product(range(1, len(sizes)), (True, False)):
        evaluate = stacked.evaluation(fs, sizes, first, differentiable=differentiable)
        evaluated = jax.jit(evaluate)(xs)
        top = core.reduced_gradient_at(first - 1, xs) if first > 1 else \
            core.hypergradient_frozen(xs, LinearSolve("auto"))
        assert rel_err(evaluated["gradient"], top) < 1e-13
        for i, k in enumerate(range(first, len(sizes))):
            g, h = core.reduced_gradient_hessian(k, xs, LinearSolve(), True)
            assert rel_err(evaluated["conditions"][i], g) < 1e-13
            assert rel_err(evaluated["hessians"][i], h) < 1e-13


@pytest.mark.parametrize("sizes", SIZES[1:3], ids=lambda s: "x".join(map(str, s)))
def test_the_differentiable_stacked_hypergradient_has_the_formulas_derivative(sizes):
    """The pure exact function (`evaluation`, differentiable) differentiated in every block
    at random iterates: the derivative of the nested best responses' formula there (its
    anchors moving with the iterates), to round-off."""
    fs = family(sizes, seed=3)
    core = ImplicitCore(fs, sizes)
    rng = np.random.default_rng(2)
    flat = jnp.asarray(rng.normal(size=sum(sizes)) * 0.5)
    split = np.cumsum(sizes)[:-1].tolist()
    evaluate = stacked.evaluation(fs, sizes, 1)

    def stacked_value(v):
        return evaluate(tuple(jnp.split(v, split)))["gradient"]

    def nested_value(v):
        return core.hypergradient_frozen(tuple(jnp.split(v, split)), LinearSolve("auto"))

    got = jax.jit(jax.jacfwd(stacked_value))(flat)
    want = jax.jit(jax.jacfwd(nested_value))(flat)
    assert np.all(np.isfinite(want)) and np.max(np.abs(want)) > 1e-3
    assert rel_err(got, want) < 1e-12


def test_schur_hessians_are_the_reduced_curvature_of_a_quadratic():
    """For quadratics f_k = x^T A_k x / 2 the stacked Jacobian is constant and H_k the Schur
    complement: compare with the closed-form reduced Hessian of a bilevel block system."""
    rng = np.random.default_rng(4)
    m = rng.normal(size=(5, 5))
    jac = m @ m.T + 5 * np.eye(5)
    h = stacked.schur_hessians(jac, (2, 3))
    want = jac[:2, :2] - jac[:2, 2:] @ np.linalg.inv(jac[2:, 2:]) @ jac[2:, :2]
    np.testing.assert_allclose(h[0], want, rtol=1e-13)
    np.testing.assert_allclose(h[1], jac[2:, 2:], rtol=0)


@pytest.mark.parametrize("sizes", [(2, 1, 2, 1, 2), (1, 1, 1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_deep_exact_hypergradient_matches_finite_differences(sizes):
    """Four and five levels, scalar and vector blocks, from a cold start: the exact
    hypergradient against fourth-order central differences of F_1 (lower levels solved to
    1e-13; truncation ~1e-20, round-off ~1e-11 at h = 1e-5)."""
    num = NumericProblem(family(sizes, seed=11), [np.zeros(s) for s in sizes])
    x1 = np.linspace(-0.4, 0.6, sizes[0])
    g, lower = num.solve_and_hypergradient(x1)
    assert list(num._jit_cache) == [("stacked", 1)]
    assert max(lower.distances) <= 1e-12
    fd = num.hypergradient(x1, "fd")
    np.testing.assert_allclose(np.ravel(g), np.ravel(fd), atol=1e-9, rtol=0)


def test_the_answer_does_not_change_when_lower_objectives_are_scaled():
    """f_2 times 1e8 and f_3 times 1e-8: the same lower solution and hypergradient (the
    stopping test and the step sizes are scale-free)."""
    sizes = (2, 2, 1)
    x1 = np.array([0.3, -0.2])
    plain = NumericProblem(family(sizes, seed=5), [np.zeros(s) for s in sizes])
    scaled = NumericProblem(family(sizes, seed=5, scales=[1.0, 1e8, 1e-8]),
                            [np.zeros(s) for s in sizes])
    g, lower = plain.solve_and_hypergradient(x1)
    g_scaled, lower_scaled = scaled.solve_and_hypergradient(x1)
    assert rel_err(g_scaled, g) < 1e-10
    for a, b in zip(lower, lower_scaled, strict=True):
        assert rel_err(b, a) < 1e-10


def test_a_cold_start_far_out_converges_by_the_watchdog(monkeypatch):
    """The benchmark's 5-level family (blocks of 4, ``benchmarks/bench_deep_jax.py``; copied
    here on purpose, so that retuning the benchmark cannot move this case) from x_1 = -1:
    the strict monotonicity test stalls there; with the watchdog the joint solve converges
    and every level passes."""
    n, d = 5, 4
    rng = np.random.default_rng(0)
    targets = [jnp.asarray(rng.integers(-3, 4, size=d) / 4.0) for _ in range(n)]
    weights = {(k, m): jnp.asarray(rng.integers(-2, 3, size=(d, d)) / 2.0)
               for k in range(n) for m in range(n) if m != k}

    def objective(k):
        def f(xs):
            x = xs[k]
            value = 0.5 * jnp.sum((x - targets[k]) ** 2) + jnp.sum(x**4) / 8
            for m in range(n):
                if m != k:
                    value = value + 0.3 * jnp.tanh(xs[m]) @ weights[(k, m)] @ x
                if m > k:
                    value = value + 0.15 * jnp.sum(jnp.sin(xs[m])) * jnp.sum(x) / d
            return value
        return f

    num = NumericProblem([objective(k) for k in range(n)], [np.zeros(d)] * n)
    evaluate = num._stacked_fn(1)
    start = num._start(-np.ones(d), None)
    blocks, evaluated, steps = num._stacked_newton(1)(start, 1e-12, 100)
    status = stacked.final_status(evaluate, blocks, evaluated, 1, 1e-12)
    assert np.all(status["converged"]) and np.all(status["hessian_ok"]) and steps <= 30
    monkeypatch.setattr(stacked, "RELAXED_STEPS", 0)  # read when the program is traced
    strict = NumericProblem(num.objectives, [np.zeros(d)] * n)
    blocks, evaluated, _ = strict._stacked_newton(1)(start, 1e-12, 100)
    assert not np.all(stacked.final_status(evaluate, blocks, evaluated, 1, 1e-12)["converged"])


def test_where_the_nested_program_would_not_fit_the_eager_nested_solve_takes_over(monkeypatch):
    """From a stationary maximum of level 2 the joint solve stops there (zero step) and its
    check fails (H_2 < 0); the compiled nested solve is refused by the cost check (as past
    6 levels), so the eager nested solve, stepping on the stacked program, leaves along the
    negative curvature: x_2 = sqrt(5) and dF_1/dx_1 = -sqrt(5) at x_1 = 0 (as in
    test_inner_solvers' stationary-maximum test)."""
    from mlverify.numeric import cost

    def refuse(self):
        raise cost.CostError("refused for the test", levels=self.n, predicted_gb=1.0,
                             limit_gb=0.0)

    monkeypatch.setattr(NumericProblem, "_check_affordable", refuse)
    num = stationary_maximum_start()
    value = num.hypergradient(np.zeros(1))
    np.testing.assert_allclose(np.ravel(value), [-np.sqrt(5.0)], rtol=1e-10)
    # only the stacked program and f_2's value (the nested driver's line search) compiled
    assert set(num._jit_cache) == {("stacked", 1), ("value", 1)}


def test_the_pure_exact_function_is_the_stacked_formula_under_jit_and_vmap():
    """``hypergradient_function("exact")`` (pure; the caller's jit and vmap) is the stacked
    formula: against the nested best-response formulas at a batch of random iterates, and
    its status flags a level whose H_k is not positive definite."""
    sizes = (2, 1, 2)
    fs = family(sizes, seed=9)
    num = NumericProblem(fs, [np.zeros(s) for s in sizes])
    fn = jax.jit(jax.vmap(num.hypergradient_function("exact")))
    rng = np.random.default_rng(2)
    batch = tuple(jnp.asarray(rng.normal(size=(5, s)) * 0.4) for s in sizes)
    values, status = fn(batch)
    core = ImplicitCore(fs, sizes)
    for i in range(5):
        point = tuple(b[i] for b in batch)
        want = core.hypergradient_frozen(point, LinearSolve("auto"))
        assert rel_err(values[i], want) < 1e-13
    assert bool(np.all(status["finite"])) and all(bool(np.all(ok))
                                                  for ok in status["cholesky_ok"].values())
    # level 3 concave at the iterates: its Cholesky flag says so
    concave = NumericProblem(fs[:2] + [lambda xs: -jnp.sum(xs[2] ** 2) + xs[1] @ xs[2][:1]],
                             [np.zeros(s) for s in sizes])
    _, flags = concave.hypergradient_function("exact")(tuple(b[0] for b in batch))
    assert not bool(flags["cholesky_ok"][2])


def test_where_the_joint_solve_stalls_the_continuation_over_levels_converges():
    """A strongly coupled 4-level family (blocks (2, 1, 2, 1); log-cosh, exp and sine
    terms, couplings of size 1) from x_1 = 1: the joint solve from the declared start
    stalls; solving the bottom level alone, then the two lowest, ... converges, every
    level passes its checks, and only stacked programs were compiled. The value is the
    nested formulas' at that solution."""
    sizes = (2, 1, 2, 1)
    n = len(sizes)
    rng = np.random.default_rng(3)
    weights = {(k, m): jnp.asarray(rng.normal(size=(sizes[m], sizes[k])))
               for k in range(n) for m in range(n) if m != k}
    targets = [jnp.asarray(rng.normal(size=s)) for s in sizes]

    def objective(k):
        def f(xs):
            x = xs[k]
            value = (0.5 * jnp.sum((x - targets[k]) ** 2)
                     + 0.1 * jnp.sum(jnp.log(jnp.cosh(2 * x)))
                     + 0.05 * jnp.sum(jnp.exp(0.3 * x)))
            for m in range(n):
                if m != k:
                    value = (value + jnp.sin(xs[m]) @ weights[(k, m)] @ x
                             + 0.02 * jnp.sum(xs[m] ** 2) * jnp.sum(x**2))
            return value
        return f

    fs = [objective(k) for k in range(n)]
    num = NumericProblem(fs, [np.zeros(s) for s in sizes])
    x1 = np.ones(2)
    evaluate = num._stacked_fn(1)
    start = num._start(x1, None)
    blocks, evaluated, _ = num._stacked_newton(1)(start, 1e-12, 100)
    assert not stacked.passed(stacked.final_status(evaluate, blocks, evaluated, 1, 1e-12))
    g, lower = num.solve_and_hypergradient(x1)
    assert all(key[0] == "stacked" for key in num._jit_cache)
    assert max(lower.distances) <= 1e-12
    flat = num._flat_all((x1, *lower))
    want = ImplicitCore(fs, sizes).hypergradient_frozen(flat, LinearSolve("auto"))
    assert rel_err(g, want) < 1e-12
