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
