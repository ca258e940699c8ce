"""Cross-checks of the exact hypergradient (Lemmas 2.1, 3.1, 3.2): against central finite
differences of $F_1$ with tightly solved lower levels, and against the JAX core.

Each computes the same number by another route, so they agree to the stated accuracy or
one of them is wrong.
"""

from __future__ import annotations

import numpy as np

#: The exact and finite-difference hypergradients must agree to this (relative): central
#: differences with step h carry an O(h^2) truncation and an O(eps/h) round-off error.
FD_AGREEMENT = 1e-6
#: Symbolic and JAX hypergradients compute the same formulas: they agree to round-off.
JAX_AGREEMENT = 1e-8
#: The JAX cross-check compiles nested implicit derivatives; above this many levels that
#: compile takes longer than the rest of a run, so `cross_check` runs it on request only.
JAX_CHECK_MAX_LEVELS = 3


def finite_difference(problem, x1, step=1e-5) -> np.ndarray:
    r"""Central differences of $F_1$ with tightly solved lower levels (symbolic solver)."""
    from ..optimize import as_numeric, exact_value_and_gradient

    num = as_numeric(problem, "implicit-exact")
    grad = np.zeros_like(x1)
    for i in range(x1.size):
        e = np.zeros_like(x1)
        e[i] = step * max(1.0, abs(x1[i]))
        plus = exact_value_and_gradient(num, x1 + e)[0]
        minus = exact_value_and_gradient(num, x1 - e)[0]
        grad[i] = (plus - minus) / (2 * e[i])
    return grad


def cross_check(problem, x1, jax_check: bool) -> dict:
    r"""The exact hypergradient at ``x1`` with its error estimate, and its relative
    disagreement with central finite differences of $F_1$ and, for a declared problem, with
    the JAX core's exact hypergradient (for at most ``JAX_CHECK_MAX_LEVELS`` levels unless
    ``jax_check``) and with the curvature-free approximation."""
    from ..optimize import as_numeric, exact_value_and_gradient
    from ..problem import MultilevelProblem

    declared = isinstance(problem, MultilevelProblem)
    num = as_numeric(problem, "implicit-exact")
    exact = np.asarray(exact_value_and_gradient(num, x1)[1], dtype=np.float64)
    fd = finite_difference(problem, x1)
    scale = max(1.0, float(np.max(np.abs(exact))))
    if declared:
        _, error = problem.hypergradient_at(x1, with_error=True)
    else:
        _, error = problem.hypergradient(np.asarray(x1, float), "exact", with_error=True)
    check = {
        "at_x1": x1.tolist(),
        "exact": exact.tolist(),
        # the a-posteriori bound on |exact - dF_1/dx_1| (lower solves and round-off)
        "error_estimate": np.asarray(error, dtype=np.float64).tolist(),
        "finite_difference": fd.tolist(),
        "exact_vs_fd": float(np.max(np.abs(exact - fd)) / scale),
    }
    if declared:
        no_curvature = np.asarray(problem.hypergradient_at(x1, curvature=False))
        check["no_curvature_error"] = float(np.max(np.abs(no_curvature - exact)) / scale)
        if problem.n <= JAX_CHECK_MAX_LEVELS or jax_check:
            from ..optimize import _lowered

            numeric = _lowered(problem)
            jax_exact = np.ravel(np.asarray(numeric.hypergradient(
                np.asarray(x1, float), "exact", solve_options={"tol": 1e-12})))
            check["jax_exact"] = jax_exact.tolist()
            check["symbolic_vs_jax"] = float(np.max(np.abs(exact - jax_exact)) / scale)
        else:
            check["symbolic_vs_jax"] = None
            check["jax_skipped"] = (f"{problem.n} levels: the JAX core's nested compile would "
                                    f"dominate the run; pass --jax-check to run it")
    return check
