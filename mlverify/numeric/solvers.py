r"""Inner solvers: levels $n, \dots, 2$ solved nested, for the blocks above held fixed.

Each level $k$ runs damped Newton (or gradient descent) on its reduced objective $F_k$, whose
gradient and Hessian come from the implicit core at the current lower solutions; every
trial point re-solves the levels below it (warm-started from their last solution), so the
iterates are true best responses of the levels above. Newton's system is solved densely
for small blocks and by conjugate gradients on Hessian-vector products for large ones.

Two drivers run this one algorithm:

- `nested_newton` is pure JAX (nested ``lax.while_loop``s): one compiled call solves
  every level, with no Python between iterations. ``NumericProblem.solve_lower`` uses it.
- `nested_solve` drives the same steps from Python, one jitted step per iteration. It
  serves ``method="gd"``, and it re-runs a failed compiled solve eagerly so that the error
  names the level and the quantity at fault.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ConvergenceError, NonFiniteError
from ..symsolve import SINGULAR_CONDITION
from .implicit import DENSE_LIMIT, LinearSolve

_ARMIJO = 1e-4
#: Step halvings before a line search gives up (the Python driver allows 60; 2^-40 is
#: already below float64 resolution of any step that matters).
_HALVINGS = 40


def nested_newton(core):
    r"""A pure function ``(blocks, tol, max_iter) -> (blocks, status)`` that solves levels
    $2, \dots, n$ by nested damped Newton for $x_1$ = ``blocks[0]``, warm-started from
    ``blocks[1:]``.

    Per level $k$ (bottom-up inside): while $\lVert D_k F_k \rVert >$ ``tol`` and
    fewer than ``max_iter`` steps, the Newton direction $d = -H_k^{-1} D_k F_k$ (Cholesky for
    blocks up to ``DENSE_LIMIT``, else CG on Hessian-vector products; steepest descent
    scaled by $1/\lVert H_k \rVert_F$ where $H_k$ is not positive definite), then backtracking
    from the full step: a trial $x_k + a d$ re-solves levels $k+1, \dots, n$ and is accepted on
    Armijo's test $F_k(\text{trial}) \le F_k + 10^{-4} a\, D_k F_k \cdot d$, or, for the full
    step, when $\lVert D_k F_k \rVert$ drops (near the solution $F_k$ carries the lower solves'
    error and stops resolving the decrease). Lower levels are solved to the same ``tol`` at
    every trial.

    ``status``: ``residual`` ($\lVert D_k F_k \rVert$ at the end, levels $2, \dots, n$),
    ``converged`` ($n - 1$ booleans; a NaN residual is not converged) and ``iterations``
    (Newton steps over all levels and all nested solves). ``tol`` and ``max_iter`` are traced
    arguments: one compile per problem serves them all.
    """
    n = core.n
    solve = LinearSolve("auto")

    def run(blocks, tol, max_iter):
        blocks, count = solve_from(1, tuple(blocks), tol, max_iter)
        residual, hessian_ok = [], []
        for k in range(1, n):
            if core.sizes[k] <= DENSE_LIMIT:
                g, h = core.reduced_gradient_hessian(k, blocks, solve, True)
                hessian_ok.append(_surely_positive_definite(h))
            else:
                g = core.reduced_gradient_at(k, blocks, solve)
                hessian_ok.append(jnp.ones((), bool))
            residual.append(jnp.linalg.norm(g))
        residual = jnp.stack(residual)
        return blocks, {"residual": residual, "converged": residual <= tol,
                        "hessian_ok": jnp.stack(hessian_ok), "iterations": count}

    def solve_from(k, blocks, tol, max_iter):
        r"""(blocks with levels $k, \dots, n$ solved for ``blocks[:k]``, Newton steps taken)."""
        if k >= n:
            return blocks, jnp.zeros((), jnp.int32)

        def gradient(blocks):
            return core.reduced_gradient_at(k, blocks, solve)

        def direction(blocks):
            if core.sizes[k] <= DENSE_LIMIT:
                g, h = core.reduced_gradient_hessian(k, blocks, solve, True)
                h = 0.5 * (h + h.T)
                newton = -jax.scipy.linalg.cho_solve((jax.scipy.linalg.cho_factor(h)[0], False), g)
                fallback = -g / jnp.maximum(jnp.linalg.norm(h), 1e-300)
            else:
                g, hvp = core.reduced_gradient_hessian(k, blocks, solve, False)
                newton = jax.scipy.sparse.linalg.cg(hvp, -g, tol=1e-10, maxiter=10 * g.size)[0]
                fallback = -g
            descent = jnp.all(jnp.isfinite(newton)) & (jnp.vdot(g, newton) < 0)
            return g, jnp.where(descent, newton, fallback)

        def newton_step(state):
            blocks, residual, _, steps, count, fresh = state
            # The first pass only solves the levels below at the starting x_k (a zero step,
            # always accepted): one nested solve in the trace per level, not two.
            g, d = jax.lax.cond(fresh, lambda b: (jnp.zeros_like(b[k]),) * 2, direction, blocks)
            value, slope = core.fs[k](blocks), jnp.vdot(g, d)

            def search_body(search):
                alpha, _, _, count, _, tries = search
                trial, inner = solve_from(
                    k + 1, blocks[:k] + (blocks[k] + alpha * d,) + blocks[k + 1:], tol, max_iter
                )
                trial_value, trial_residual = core.fs[k](trial), jnp.linalg.norm(gradient(trial))
                accept = fresh | jnp.isfinite(trial_value) & (
                    (trial_value <= value + _ARMIJO * alpha * slope)
                    | ((tries == 0) & (trial_residual < residual))
                )
                return (0.5 * alpha, trial, trial_residual, count + inner, accept, tries + 1)

            search = (jnp.ones(()), blocks, residual, count, jnp.zeros((), bool),
                      jnp.zeros((), jnp.int32))
            _, trial, trial_residual, count, accepted, _ = jax.lax.while_loop(
                lambda s: ~s[4] & (s[5] < _HALVINGS), search_body, search
            )
            # A failed line search keeps the point it had and ends this level's loop.
            keep = jax.tree_util.tree_map(lambda a, b: jnp.where(accepted, a, b), trial, blocks)
            taken = (~fresh).astype(jnp.int32)
            return (keep, jnp.where(accepted, trial_residual, residual), ~accepted,
                    steps + taken, count + taken, jnp.zeros((), bool))

        def newton_cond(state):
            _, residual, stuck, steps, _, fresh = state
            return fresh | ((residual > tol) & ~stuck & (steps < max_iter))

        state = (blocks, jnp.asarray(jnp.inf, blocks[k].dtype), jnp.zeros((), bool),
                 jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), jnp.ones((), bool))
        blocks, _, _, _, count, _ = jax.lax.while_loop(newton_cond, newton_step, state)
        return blocks, count

    return run


def _surely_positive_definite(h):
    """True only if lambda_min(H) > ||H||_F / SINGULAR_CONDITION (a Cholesky factorisation of
    the shifted H succeeds), which implies ``check_lower_hessian`` passes; False leaves the
    verdict to that exact (eigenvalue) check."""
    h = 0.5 * (h + h.T)
    shift = jnp.linalg.norm(h) / SINGULAR_CONDITION
    factor = jax.scipy.linalg.cho_factor(h - shift * jnp.eye(h.shape[0]))[0]
    return jnp.all(jnp.isfinite(factor)) & (jnp.linalg.norm(h) > 0)


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
    """The Python-driven nested solve (``method`` ``"newton"`` or ``"gd"``); raises
    ConvergenceError / NonFiniteError naming the level where it fails."""
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
