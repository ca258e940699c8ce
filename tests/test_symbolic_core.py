"""Symbolic-core regressions that the reference suite does not pin down."""

import numpy as np
import pytest

from mlverify import nested, zoo


@pytest.mark.parametrize("n", [3, 4])
def test_no_curvature_hypergradient_is_evaluated_at_the_exact_lower_solution(n):
    # The curvature-free formula must be evaluated where the lower levels are truly solved;
    # for n >= 4 solving with curvature-free gradients lands elsewhere (a past bug).
    problem = zoo.nonquadratic(n)
    exact_solution = problem.solve_lower(0.4)
    frozen = problem.numeric(curvature=False).hypergradient_frozen(
        (np.array([0.4]), *exact_solution.xs))
    np.testing.assert_allclose(problem.hypergradient_at(0.4, curvature=False), frozen,
                               rtol=1e-12)
    jax_value = problem.lower().hypergradient(np.array([0.4]), "no-curvature")
    np.testing.assert_allclose(np.asarray(jax_value), frozen, rtol=1e-9)


def test_graph_stays_small_where_naive_differentiation_explodes():
    # Straight-line size of the n = 4 hypergradient: hundreds of operations; the expanded
    # tree of the same formula has tens of thousands (benchmarks/results/symbolic.md).
    problem = zoo.nonquadratic(4)
    derivation = problem.derivation()
    graph_ops = derivation.graph.size(list(derivation.gradients[0]))
    assert graph_ops < 1000
    import sympy as sp

    tree_ops = sp.count_ops(problem.hypergradient()[0], visual=False)
    assert tree_ops > 10 * graph_ops


@pytest.mark.parametrize(
    "problem",
    [zoo.default_problem(), zoo.nonquadratic(3, 2, seed=1), zoo.compounding(3, seed=0),
     zoo.quadratic(3, (2, 1, 2), seed=0).symbolic(), zoo.nonquadratic(4, 1, seed=2)],
    ids=["default", "nonquadratic-3x2", "compounding-3", "quadratic-212", "nonquadratic-4"],
)
def test_expanded_size_counts_the_written_out_formula_without_writing_it(problem):
    """The operation count of a formula written out, read off the shared graph: sympy's
    count on the expansion itself never exceeds it (sympy merges terms while substituting,
    numeric coefficients most); with transcendental couplings it is at least 2/3 of it."""
    import sympy as sp

    derivation = problem.derivation()
    graph = derivation.graph
    for matrix in [*derivation.jacobians.values(), derivation.gradients[0]]:
        predicted = graph.expanded_size(list(matrix))
        actual = sum(sp.count_ops(e) for e in graph.expand_matrix(matrix))
        assert actual <= predicted, (predicted, actual)
        if problem.objectives[-1].has(sp.Function):
            assert predicted <= 1.5 * actual + 2, (predicted, actual)


def test_expanded_size_of_a_huge_formula_is_exact_and_cheap():
    """Six nonquadratic levels: the hypergradient written out would have more than 1e6
    operations; its count is computed on the graph (no intermediate is expanded)."""
    problem = zoo.nonquadratic(6, 1, seed=0)
    derivation = problem.derivation()
    graph = derivation.graph
    size = graph.expanded_size(list(derivation.gradients[0]))
    assert isinstance(size, int) and size > 10**6
    assert not graph._expanded


def test_remembered_lower_solutions_are_copies():
    problem = zoo.nonquadratic(3, 2, seed=1)
    evaluator = problem.numeric()
    first = evaluator.solve_lower([0.3, -0.2])
    kept = [x.copy() for x in first.xs]
    first.xs[0][:] = 99.0  # a caller that writes into its result
    again = evaluator.solve_lower([0.3, -0.2])
    for a, b in zip(again.xs, kept, strict=True):
        np.testing.assert_array_equal(a, b)
    # a warm start or a multistart is solved anew, to the same solution
    warm = evaluator.solve_lower([0.3, -0.2], init=kept)
    for a, b in zip(warm.xs, kept, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)


# ------------------------------------------------------------------ the joint solve
def _nested(evaluator, x1):
    """The nested damped Newton solve alone (the reference for the joint one)."""
    blocks = [np.asarray(x1, dtype=np.float64)] + [np.zeros(d) for d in evaluator.sizes[1:]]
    nested.solve(evaluator, blocks, 1e-12, 100)
    return blocks


@pytest.mark.parametrize(
    ("n", "size", "seed"), [(2, 1, 0), (3, 2, 1), (4, 1, 2), (4, 2, 3), (5, 1, 4)]
)
def test_joint_solve_reaches_the_nested_solution(n, size, seed):
    """Newton on the stacked stationarity system lands where the nested solve does (the
    same stopping test per level), at seeded points of seeded non-quadratic families."""
    problem = zoo.nonquadratic(n, size, seed=seed)
    evaluator = problem.numeric()
    rng = np.random.default_rng(seed)
    for _ in range(3):
        x1 = rng.uniform(-1, 1, size)
        start = [x1] + [np.zeros(d) for d in problem.sizes[1:]]
        joint = evaluator._solve_joint(start, 1e-12, 100)
        assert joint is not None
        blocks, record = joint
        reference = _nested(evaluator, x1)
        for k in range(1, n):
            np.testing.assert_allclose(blocks[k], reference[k], rtol=1e-12, atol=1e-13)
            assert record["distances"][k - 1] <= 1e-12 * (1 + np.linalg.norm(blocks[k]))


def test_joint_system_vanishes_at_the_solution_and_its_jacobian_is_its_derivative():
    problem = zoo.nonquadratic(4, 2, seed=5)
    evaluator = problem.numeric()
    x1 = np.array([0.3, -0.4])
    solved = _nested(evaluator, x1)
    G, _, levels = evaluator.joint_system(solved)
    assert np.max(np.abs(G)) < 1e-10
    for k, (g, h) in enumerate(levels, start=1):
        # the same formulas, printed in another straight-line program: equal to round-off
        np.testing.assert_allclose(g, evaluator.gradient_hessian(k, solved)[0], atol=1e-14)
        np.testing.assert_allclose(h, evaluator.gradient_hessian(k, solved)[1], rtol=1e-13)
    # J against central differences of G, away from the solution
    rng = np.random.default_rng(0)
    point = [x1] + [b + 0.1 * rng.standard_normal(b.size) for b in solved[1:]]
    _, J, _ = evaluator.joint_system(point)
    flat = np.concatenate(point[1:])
    splits = np.cumsum(problem.sizes[1:])[:-1]
    step = 1e-6
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = step
        plus = evaluator.joint_system([x1, *np.split(flat + e, splits)])[0]
        minus = evaluator.joint_system([x1, *np.split(flat - e, splits)])[0]
        np.testing.assert_allclose(J[:, i], (plus - minus) / (2 * step), rtol=1e-6, atol=1e-8)


def test_a_start_at_a_stationary_maximum_falls_back_to_the_nested_solve():
    """x_2 = 0 is a stationary maximum of (x_2^2 - 1 - x_1^2)^2 / 4 + x_2^3 / 10 for every
    x_1: the joint Newton solve, a root finder, gives up there (a root that is no minimum)
    and the nested solve leaves it along the negative curvature to a minimiser."""
    import sympy as sp

    import mlverify as mv

    x1, x2 = sp.symbols("x1 x2")
    f2 = (x2**2 - 1 - x1**2) ** 2 / 4 + x2**3 / 10
    problem = mv.MultilevelProblem([mv.Level(x1, (x1 - 1) ** 2 + x2**2), mv.Level(x2, f2)])
    evaluator = problem.numeric()
    x = np.array([0.5])
    assert evaluator._solve_joint([x, np.zeros(1)], 1e-12, 100) is None
    solution = problem.solve_lower(x)
    np.testing.assert_allclose(solution.xs[0], _nested(evaluator, x)[1], rtol=1e-12)
    g, h = evaluator.gradient_hessian(1, [x, solution.xs[0]])
    assert h[0, 0] > 0 and abs(g[0]) < 1e-10 and abs(solution.xs[0][0]) > 0.5


def test_a_lower_second_minimiser_is_named_as_lower():
    """A tilted double well: from x_2 = 0.8 the solve reaches the local minimiser near +1;
    the multistart finds the lower one near -1 and the error says which is lower."""
    import sympy as sp

    import mlverify as mv
    from mlverify.errors import NonUniqueMinimiserError

    x1, x2 = sp.symbols("x1 x2")
    f2 = (x2**2 - 1) ** 2 + x2 * (3 + x1) / 10
    problem = mv.MultilevelProblem([mv.Level(x1, (x1 - 1) ** 2 + x2**2), mv.Level(x2, f2)])
    with pytest.raises(NonUniqueMinimiserError) as caught:
        problem.solve_lower([0.0], init=[np.array([0.8])], starts=8)
    error = caught.value
    assert error.level == 2
    assert "the solve reached the local minimiser" in str(error) and "is lower" in str(error)
    reached, lower = error.minimisers
    assert reached[0] > 0 > lower[0] and error.values[1] < error.values[0]
