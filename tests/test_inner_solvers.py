"""Inner solvers and ITD's step control, against closed forms and a second method.

* The compiled nested Newton (``solvers.nested_newton``, what ``solve_lower`` runs) against
  the NumPy closed form of the quadratic family (tests/numeric_helpers.py), against the
  Python-driven solver on non-quadratic problems, under vmap, and on the matrix-free path
  (blocks over 200).
* Step sizes from ``lower_lipschitz`` against the eigenvalues of the dense Hessians, and the
  single-loop algorithm on blocks over 200 against the closed-form optimum.
* ITD's divergence detection: the default step backtracks where curvature grows along the
  unrolled path; a given step that is too large raises ``DivergenceError`` naming the level.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numeric_helpers import quadratic, quadratic_closed_form, rel_err, stationary_maximum_start

import mlverify as mv
from mlverify import zoo
from mlverify.numeric import NumericProblem
from mlverify.numeric.implicit import LinearSolve
from mlverify.numeric.solvers import nested_newton
from mlverify.optimize import optimize

#: Lower solves to a gradient norm of 1e-12 on O(1) problems: the solution is then right to
#: ~1e-12 / lambda_min(H) ~ 1e-12 (the Hessians' eigenvalues are >= 1 here).
SOLVE_TOL = 1e-12
SOLUTION_TOL = 1e-10


def _numeric(problem: "quadratic") -> NumericProblem:
    return NumericProblem(problem.objectives(), problem.init())


SIZES = [(1, 1), (2, 3), (1, 1, 1), (2, 3, 2), (1, 2, 1, 2)]


def _ids(sizes) -> str:
    return "x".join(map(str, sizes))


@pytest.mark.parametrize("sizes", SIZES, ids=_ids)
@pytest.mark.parametrize("seed", [0, 1])
def test_compiled_newton_matches_the_closed_form(sizes, seed):
    problem = quadratic(sizes, seed)
    num = _numeric(problem)
    x1 = np.random.default_rng(seed).normal(size=sizes[0])
    want = quadratic_closed_form(problem, x1).lower
    got = num.solve_lower(x1, tol=SOLVE_TOL)
    assert got.residual <= SOLVE_TOL
    for k, (g, w) in enumerate(zip(got, want, strict=True), start=2):
        assert rel_err(g, w) < SOLUTION_TOL, f"level {k}"


@pytest.mark.parametrize("n", [2, 3])
def test_compiled_newton_matches_the_eager_solver_on_nonquadratic_problems(n):
    """Same algorithm, two drivers: one compiled call vs one jitted step per iteration.
    (n = 4 agrees too but compiles both drivers for ~35 s; the quadratic closed-form test
    above covers four levels.)"""
    num = zoo.nonquadratic(n, size=2, seed=n).lower()
    x1 = np.array([0.3, -0.4])
    compiled = num.solve_lower(x1, tol=SOLVE_TOL)
    eager = num.solve_lower(x1, tol=SOLVE_TOL, method="newton-eager")
    assert compiled.residual <= SOLVE_TOL and eager.residual <= SOLVE_TOL
    for a, b in zip(compiled, eager, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=SOLUTION_TOL)


def test_warm_start_takes_fewer_newton_steps():
    num = zoo.nonquadratic(3, size=2, seed=1).lower()
    x1 = np.array([0.3, -0.4])
    cold = num.solve_lower(x1, tol=1e-10)
    warm = num.solve_lower(x1 + 1e-3, tol=1e-10, init=cold)
    assert warm.iterations < cold.iterations


def test_compiled_newton_under_vmap_matches_one_by_one():
    problem = quadratic((2, 2, 3), seed=4)
    num = _numeric(problem)
    solver = jax.jit(jax.vmap(nested_newton(num.core), in_axes=(0, None, None)))
    x1s = np.random.default_rng(4).normal(size=(5, 2))
    starts = (jnp.asarray(x1s),) + tuple(jnp.zeros((5, d)) for d in problem.sizes[1:])
    blocks, status = solver(starts, 1e-12, 100)
    assert np.all(np.asarray(status["converged"])) and np.all(np.asarray(status["hessian_ok"]))
    for i, x1 in enumerate(x1s):
        want = quadratic_closed_form(problem, x1).lower
        for k, w in enumerate(want, start=1):
            assert rel_err(blocks[k][i], w) < SOLUTION_TOL


def test_failed_compiled_solve_reports_the_level_through_the_eager_run():
    """f_3 = (x_3 - 2)^4: Newton gains only a factor 2/3 per step on this degenerate
    minimum, so 3 steps per solve stop far short of 1e-12; the compiled solve reports that,
    and the eager re-run raises ConvergenceError naming level 3 with its residual."""

    def f1(xs):
        return jnp.sum(xs[0] ** 2 + xs[1] ** 2 + xs[2] ** 2)

    def f2(xs):
        return jnp.sum((xs[1] - xs[0]) ** 2)

    def f3(xs):
        return jnp.sum((xs[2] - 2.0) ** 4)

    num = NumericProblem([f1, f2, f3], [np.zeros(1)] * 3)
    solver = jax.jit(nested_newton(num.core))
    _, status = solver((jnp.ones(1), jnp.zeros(1), jnp.zeros(1)), 1e-12, 3)
    assert not bool(np.asarray(status["converged"])[1])
    with pytest.raises(mv.ConvergenceError) as info:
        num.solve_lower(np.ones(1), tol=1e-12, max_iter=3)
    assert info.value.level == 3 and info.value.residual > info.value.tolerance


# ----------------------------------------------------------------- solve + hypergradient
@pytest.mark.parametrize("sizes", [(1, 1), (2, 3, 2), (1, 2, 1, 2)], ids=_ids)
def test_solve_and_hypergradient_matches_the_closed_form_and_the_split_path(sizes):
    """The fused call (one compile: solve + exact hypergradient) against the NumPy closed
    form, and against solve_lower followed by hypergradient_frozen."""
    problem = quadratic(sizes, seed=7)
    num = _numeric(problem)
    x1 = np.random.default_rng(7).normal(size=sizes[0])
    want = quadratic_closed_form(problem, x1)
    g, lower = num.solve_and_hypergradient(x1, solve_options={"tol": SOLVE_TOL})
    assert lower.residual <= SOLVE_TOL
    assert rel_err(g, want.hypergradient) < SOLUTION_TOL
    for got, w in zip(lower, want.lower, strict=True):
        assert rel_err(got, w) < SOLUTION_TOL
    split = num.hypergradient_frozen((x1, *num.solve_lower(x1, tol=SOLVE_TOL)))
    assert rel_err(g, split) < 1e-12


@pytest.mark.parametrize("sizes", [(2, 3, 2), (1, 2, 1, 2)], ids=_ids)
def test_the_stacked_path_matches_the_closed_form_and_the_nested_formulas(sizes, monkeypatch):
    """Every lower block dense: the joint solve, its checks and the exact hypergradient run
    on the one stacked program (`numeric.stacked`); against the closed form, against the
    nested best-response formulas of `numeric.implicit` at the same solution, and with a
    multistart (which runs the Python-side solve: not skipped by the compiled path)."""
    problem = quadratic(sizes, seed=3)
    x1 = np.random.default_rng(3).normal(size=sizes[0])
    want = quadratic_closed_form(problem, x1)
    num = _numeric(problem)
    g, lower = num.solve_and_hypergradient(x1, solve_options={"tol": SOLVE_TOL})
    assert list(num._jit_cache) == [("stacked", 1)]  # one program for all of it
    assert rel_err(g, want.hypergradient) < SOLUTION_TOL
    for got, w in zip(lower, want.lower, strict=True):
        assert rel_err(got, w) < SOLUTION_TOL
    assert lower.iterations >= 1 and lower.distance <= SOLVE_TOL * 10
    flat = num._flat_all((x1, *lower))
    nested = num.core.hypergradient_frozen(flat, LinearSolve("auto"))
    assert rel_err(g, nested) < 1e-12
    calls = []
    original = NumericProblem._multistart
    monkeypatch.setattr(NumericProblem, "_multistart",
                        lambda self, *args: calls.append(1) or original(self, *args))
    again = _numeric(problem)
    g_multi, _ = again.solve_and_hypergradient(x1, solve_options={"tol": SOLVE_TOL,
                                                                  "starts": 3})
    assert calls and rel_err(g_multi, g) < 1e-12


def test_solve_and_hypergradient_leaves_a_stationary_maximum():
    """f_2 = -(x_2 - x_1)^2 + x_2^4/10 from x = 0: the start is a stationary maximum (zero
    gradient); the compiled solve leaves it along the negative curvature to x_2 = +sqrt(5),
    where dF_1/dx_1 = 2 x_1 + 2 y dy/dx_1 with dy/dx_1 = -2 / (1.2 y^2 - 2) = -1/2."""
    value = stationary_maximum_start().hypergradient(np.zeros(1))
    np.testing.assert_allclose(np.ravel(value), [-np.sqrt(5.0)], rtol=1e-10)


# ----------------------------------------------------------------- blocks over DENSE_LIMIT
@pytest.fixture(scope="module")
def large():
    """Trilevel, lower blocks of 250 and 230 (matrix-free Newton-CG), normalised spectra."""
    problem = quadratic((2, 250, 230), seed=3, normalise=True)
    return problem, _numeric(problem)


def test_matrix_free_solve_matches_the_closed_form(large):
    problem, num = large
    x1 = np.array([0.5, -1.0])
    got = num.solve_lower(x1, tol=1e-11)
    for g, w in zip(got, quadratic_closed_form(problem, x1).lower, strict=True):
        assert rel_err(g, w) < 1e-9


def test_lower_lipschitz_matches_the_dense_eigenvalue(large):
    """Lanczos on HVPs (blocks over 200) against eigvalsh of the dense Hessian: an upper bound
    by at most its 2 % safety factor (power iteration was 2.5 % low here)."""
    problem, num = large
    x1 = np.array([0.5, -1.0])
    xs = [x1, *quadratic_closed_form(problem, x1).lower]
    exact = [float(np.linalg.eigvalsh(h)[-1]) for h in num.lower_hessians(xs)]
    estimate = num.lower_lipschitz(xs)
    for k, (e, lam) in enumerate(zip(estimate, exact, strict=True), start=2):
        assert lam * (1 - 1e-6) <= e <= 1.02 * lam * (1 + 1e-9), f"level {k}: {e} vs {lam}"


def test_hierarchical_on_large_blocks_reaches_the_optimum():
    family = zoo.quadratic(3, (2, 210, 205), seed=1)
    lam = np.linalg.eigvalsh(family.hessian_F1())[-1]
    trace = optimize(family.numeric(), "hierarchical", steps=60, L=lam, inner_steps=20)
    np.testing.assert_allclose(trace.x1[-1], family.optimum(), atol=1e-8)


# ----------------------------------------------------------------- ITD's step control
def _growing_curvature(levels: int = 2):
    """f_k = 1/2 (x_k - 3 - x_{k-1})^2 + 1/8 x_k^4 from x = 0: curvature 1 at the start,
    ~1 + 3/2 x^2 ~ 10 near the solution, so the default step 1/(1.2 L(0)) diverges."""

    def top(xs):
        return 0.5 * jnp.sum((xs[0] - 1.0) ** 2) + 0.5 * sum(jnp.sum(x**2) for x in xs[1:])

    def level(k):
        def f(xs):
            return 0.5 * jnp.sum((xs[k] - 3.0 - xs[k - 1]) ** 2) + 0.125 * jnp.sum(xs[k] ** 4)

        return f

    objectives = [top] + [level(k) for k in range(1, levels)]
    return NumericProblem(objectives, [np.zeros(1)] * levels)


@pytest.mark.parametrize("levels", [2, 3])
def test_itd_default_step_backtracks_and_converges_to_the_exact_hypergradient(levels):
    """Unguarded, the default step gave 1e37 at K = 5 here; halved, ITD converges."""
    num = _growing_curvature(levels)
    x1 = np.array([0.5])
    exact = np.asarray(num.hypergradient(x1, "exact"))
    errors = [rel_err(num.hypergradient(x1, "itd", steps=K), exact) for K in (3, 6, 12)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6, errors
    # The unguarded default step (scale 1) is what diverged:
    run = num.hypergradient_function("itd", steps=10)
    flat = (jnp.asarray(x1),) + (jnp.zeros(1),) * (levels - 1)
    _, status = run(flat)
    assert bool(np.asarray(status["inner_rise"])[levels - 1])


@pytest.mark.parametrize("levels", [2, 3])
def test_itd_step_too_large_raises_naming_the_level(levels):
    num = _growing_curvature(levels)
    with pytest.raises(mv.DivergenceError) as info:
        num.hypergradient(np.array([0.5]), "itd", steps=20, inner_lr=0.8)
    # The bottom level diverges first; the levels above only see its garbage.
    assert info.value.level == levels and info.value.quantity == "inner step size"
    assert "inner_lr" in str(info.value)


def test_itd_flags_no_rise_on_a_well_conditioned_problem():
    """No false alarm: K up to 200 default steps on a quadratic raise no level's objective."""
    problem = quadratic((2, 3, 2), seed=0)
    num = _numeric(problem)
    run = jax.jit(num.hypergradient_function("itd", steps=200))
    _, status = run(tuple(jnp.asarray(b) for b in ([0.3, -0.2], *problem.init()[1:])))
    assert not np.any(np.asarray(status["inner_rise"]))


@pytest.mark.parametrize("case", ["quadratic (2, 12, 3, 1)", "quadratic (3, 1, 2, 2)",
                                  "quartic, 4 levels"])
def test_itd_default_steps_are_the_exact_reduced_curvature(case):
    """ITD's default steps 1/(1.2 L_k), L_k = lambda_max(D_kk F_k) at the start, taken from
    the stacked conditions past `LANCZOS_MAX_LEVELS` levels, against the nested
    best-response rules' dense reduced Hessians (an independent program), at a random
    iterate; blocks over ten, where a ten-step Lanczos estimate would differ, included."""

    from mlverify.numeric.itd import _learning_rates

    if case.startswith("quadratic"):
        sizes = tuple(int(d) for d in case[11:-1].split(","))
        num = _numeric(quadratic(sizes, seed=3))
    else:
        num = _growing_curvature(4)
    rng = np.random.default_rng(1)
    flat = tuple(jnp.asarray(rng.normal(size=d)) for d in num.sizes)
    rates = jax.jit(lambda blocks: _learning_rates(num.core, blocks, None)[1:])(flat)
    for k, rate in enumerate(rates, start=1):
        lam = float(num.core.reduced_hessian_lambda_max(k, flat))
        assert lam > 0
        np.testing.assert_allclose(float(rate), 1.0 / (1.2 * lam), rtol=1e-12)


def test_joint_solve_reaches_the_nested_solution():
    """The joint solve (every level stepped at once on the stacked conditions) against the
    nested solve, the reference: the same lower solution from the same cold start, in far
    fewer steps; the same from inside one compiled loop (`stacked.solver`)."""
    from mlverify.numeric import stacked

    num = zoo.nonquadratic(3, size=2, seed=1).lower()
    start = tuple(num._start(np.array([0.3, -0.4]), None))
    nested, nested_status = jax.jit(nested_newton(num.core))(start, 1e-12, 100)
    joint, evaluated, steps = num._stacked_newton(1)(start, 1e-12, 100)
    status = stacked.final_status(num._stacked_fn(1), joint, evaluated, 1, 1e-12)
    assert stacked.passed(status)
    for a, b in zip(joint[1:], nested[1:], strict=True):
        np.testing.assert_allclose(a, np.asarray(b), atol=SOLUTION_TOL)
    assert steps < int(nested_status["iterations"])
    flat = jnp.concatenate([jnp.asarray(b) for b in start])
    looped, out, looped_steps = jax.jit(stacked.solver(num.core.fs, num.sizes))(
        flat, 1e-12, 100)
    assert int(looped_steps) == steps
    np.testing.assert_allclose(np.asarray(looped), np.concatenate(joint), rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.asarray(out["gradient"]), evaluated["gradient"], atol=1e-15)


def test_joint_solve_converges_quadratically_every_two_steps():
    """From a warm start every two steps of the joint solve square the distance to the
    solution (up to a constant): the block step is Newton's step except that a lower
    level's error reaches the levels above one step late (measured: 5e-4, 1e-5, 3e-9, 1e-12,
    3e-17), so the order is two over two steps, not over each."""
    num = zoo.nonquadratic(3, size=2, seed=0).lower()
    solution = num.solve_lower(np.array([0.1, 0.1]), tol=1e-13)
    start = (np.array([0.25, 0.25]),) + tuple(np.asarray(num.flatten(k, x))
                                              for k, x in enumerate(solution, 1))
    reference = jax.jit(nested_newton(num.core))(start, 0.0, 100)[0]
    solve = num._stacked_newton(1)
    errors = []
    for steps in range(1, 6):
        blocks, _, taken = solve(start, 0.0, steps)
        assert taken == steps  # every full step accepted
        errors.append(max(float(np.max(np.abs(a - np.asarray(b))))
                          for a, b in zip(blocks[1:], reference[1:], strict=True)))
    assert errors[0] < 1e-2
    for k in range(3):
        assert errors[k + 2] <= max(10 * errors[k] ** 2, 1e-13)
