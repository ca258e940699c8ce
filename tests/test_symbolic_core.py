"""Symbolic-core regressions that the reference suite does not pin down."""

import numpy as np
import pytest

from mlverify import zoo


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
