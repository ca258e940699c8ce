"""Inner solvers: levels n..2 solved nested, for the blocks above held fixed.

Each level k runs damped Newton (or gradient descent) on its reduced objective F_k, whose
gradient and Hessian come from the implicit core at the current lower solutions; every
trial point re-solves the levels below it (warm-started from their last solution), so the
iterates are true best responses of the levels above. Newton's system is solved densely
for small blocks and by conjugate gradients on Hessian-vector products for large ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ConvergenceError, NonFiniteError
from .implicit import DENSE_LIMIT, LinearSolve

_ARMIJO = 1e-4


def _step_function(problem, k, method):
    core = problem.core
    dense = problem.sizes[k] <= DENSE_LIMIT

    def build():
        def step(blocks):
            if dense:
                g, h = core.reduced_gradient_hessian(k, blocks, LinearSolve("dense"), True)
                return g, h
            g, hvp = core.reduced_gradient_hessian(k, blocks, LinearSolve("cg"), False)
            if method == "gd":
                return g, -g
            direction, _ = jax.scipy.sparse.linalg.cg(hvp, -g, tol=1e-10, maxiter=10 * g.size)
            return g, direction

        return step

    return problem._jit(("solver_step", k, method), build)


def _value_function(problem, k):
    return problem._jit(("value", k), lambda: problem.core.fs[k])


def _direction(g, second, dense, method):
    """Newton's direction where H is positive definite, else steepest descent scaled by |H|."""
    if not dense:
        return np.asarray(second)
    h = np.asarray(second)
    eigenvalues = np.linalg.eigvalsh(0.5 * (h + h.T))
    scale = max(float(np.max(np.abs(eigenvalues))), 1e-300)
    if method == "newton" and eigenvalues[0] > scale * 1e-12:
        return -np.linalg.solve(0.5 * (h + h.T), g)
    return -g / scale


def nested_solve(problem, start, tol, max_iter, method):
    if method not in ("newton", "gd"):
        raise ValueError(f"unknown inner solver {method!r}: use 'newton' or 'gd'")
    n = problem.n
    blocks = [jnp.asarray(b) for b in start]
    residuals = [0.0] * (n - 1)
    iterations = [0]

    def value(k):
        solve_from(k + 1, record=False)
        v = float(_value_function(problem, k)(tuple(blocks)))
        if not np.isfinite(v):
            raise NonFiniteError(
                "F_k is NaN or inf during the lower solve",
                level=k + 1,
                quantity="reduced objective",
            )
        return v

    def solve_from(k, record):
        if k >= n:
            return
        dense = problem.sizes[k] <= DENSE_LIMIT
        step = _step_function(problem, k, method)
        current = value(k)
        residual = np.inf
        for _ in range(max_iter):
            iterations[0] += 1
            g, second = step(tuple(blocks))
            g = np.asarray(g)
            if not np.all(np.isfinite(g)):
                raise NonFiniteError(
                    "the reduced gradient D_k F_k is NaN or inf",
                    level=k + 1,
                    quantity="reduced gradient",
                )
            residual = float(np.linalg.norm(g))
            if residual <= tol:
                break
            direction = _direction(g, second, dense, method)
            slope = float(g @ direction)
            base = np.asarray(blocks[k])
            alpha, accepted = 1.0, False
            for _ in range(60):
                blocks[k] = jnp.asarray(base + alpha * direction)
                trial = value(k)
                # Near the solution F_k carries the noise of the lower solves (solved to tol),
                # larger than the decrease Armijo asks for: the full step is then also taken
                # when the gradient norm drops.
                if trial <= current + _ARMIJO * alpha * slope or (
                    alpha == 1.0
                    and float(np.linalg.norm(np.asarray(step(tuple(blocks))[0]))) < residual
                ):
                    current, accepted = trial, True
                    break
                alpha *= 0.5
            if not accepted:
                blocks[k] = jnp.asarray(base)
                solve_from(k + 1, record=False)
                break
        if residual > tol:
            g, _ = step(tuple(blocks))
            residual = float(np.linalg.norm(np.asarray(g)))
        if residual > tol:
            raise ConvergenceError(
                f"the lower solve stopped at gradient norm {residual:.3e} > tolerance {tol:.1e}",
                level=k + 1,
                residual=residual,
                tolerance=tol,
            )
        if record:
            residuals[k - 1] = residual
            solve_from(k + 1, record=True)

    solve_from(1, record=True)
    return blocks, residuals, iterations[0]
