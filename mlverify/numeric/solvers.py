r"""Inner solvers on the nested best-response rules: the lower levels solved for the blocks
above held fixed, compiled. Where every lower block is dense the lower solve is the joint
solve of `mlverify.numeric.stacked` (every level stepped at once); these serve the levels
it does not (a block over ``DENSE_LIMIT``), its fallback, and the eager steps.

- `nested_newton` is the nested solve (`mlverify.nested`) as pure JAX (nested
  ``lax.while_loop``s): level $k$ runs damped Newton on $F_k$, and every trial point
  re-solves the levels below it. Newton's system is solved densely for small blocks and by
  conjugate gradients on Hessian-vector products for large ones.
- `nested_solve` runs the one Python driver of `mlverify.nested` on this core's compiled
  steps. It serves ``method="gd"``, and it re-runs a failed compiled solve so that the
  error names the level and the quantity at fault.

All of them stop on `mlverify.checks.solved` and judge the final point by the same per-level
checks (`mlverify.checks`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import checks, nested
from . import stacked
from .implicit import DENSE_LIMIT, LinearSolve


def nested_newton(core, first: int = 1):
    r"""A pure function ``(blocks, tol, max_iter) -> (blocks, status)`` that solves the
    levels below level ``first`` (1-based; all lower levels by default) by nested damped
    Newton for the blocks above held fixed, warm-started from ``blocks``.

    Per level $k$ (bottom-up inside): until Newton's step, the estimated distance to the
    solution $\lVert H_k^{-1} D_k F_k \rVert$, is at most $\mathrm{tol}\,(1 + \lVert x_k
    \rVert)$ (`mlverify.checks`; that last step is still taken) or ``max_iter`` steps, the
    Newton direction $d = -H_k^{-1} D_k F_k$ (Cholesky for blocks up to ``DENSE_LIMIT``, else
    CG on Hessian-vector products; steepest descent scaled by $1/\lVert H_k \rVert_F$ where
    $H_k$ is not positive definite), then backtracking from the full step: a trial
    $x_k + a d$ re-solves the levels below and is accepted on Armijo's test
    $F_k(\text{trial}) \le F_k + 10^{-4} a\, D_k F_k \cdot d$, or, for the full step, when
    $\lVert D_k F_k \rVert$ drops (near the solution $F_k$ carries the lower solves' error
    and stops resolving the decrease). Lower levels are solved to the same ``tol`` at every
    trial.

    ``status`` per level solved: ``residual`` ($\lVert D_k F_k \rVert$ at the end),
    ``distance`` (Newton's step there), ``converged`` (the stopping test holds; NaN fails
    it), ``hessian_ok`` ($H_k$ surely positive definite and not degenerate against the
    level's curvature scale; False leaves the verdict to the exact check) and ``iterations``
    (Newton steps over all levels and all nested solves). ``tol`` and ``max_iter`` are
    traced: one compile per problem serves them all.
    """
    n = core.n
    solve = LinearSolve("auto")

    def run(blocks, tol, max_iter):
        blocks, count = solve_from(first, tuple(blocks), tol, max_iter)
        return blocks, _status(core, first, blocks, tol, solve, count)

    def solve_from(k, blocks, tol, max_iter):
        r"""(blocks with levels $k, \dots, n$ solved for ``blocks[:k]``, Newton steps taken)."""
        if k >= n:
            return blocks, jnp.zeros((), jnp.int32)

        def gradient(blocks):
            return core.reduced_gradient_at(k, blocks, solve)

        def direction(blocks):
            """(g, descent direction, Newton's distance estimate: inf where not Newton)."""
            if core.sizes[k] <= DENSE_LIMIT:
                g, h = core.reduced_gradient_hessian(k, blocks, solve, True)
                h = 0.5 * (h + h.T)
                newton = -jax.scipy.linalg.cho_solve((jax.scipy.linalg.cho_factor(h)[0], False), g)
                # one eigendecomposition per step: the scale and the curvature escape
                eigenvalues, vectors = jnp.linalg.eigh(h)
                # steepest descent scaled by 1/||H_k||_2, as checks.descent_direction
                fallback = -g / jnp.maximum(jnp.max(jnp.abs(eigenvalues)), 1e-300)
                # Capped at 1 + ||x_k|| (checks.descent_direction): at an inflection point
                # H_k ~ 0 and the scaled step is unbounded.
                size = 1.0 + jnp.linalg.norm(blocks[k])
                cap = size / jnp.maximum(jnp.linalg.norm(fallback), 1e-300)
                fallback = jnp.where(jnp.isfinite(cap) & (cap < 1.0),
                                     -g * size / jnp.maximum(jnp.linalg.norm(g), 1e-300),
                                     fallback)
                # At a stationary maximum or saddle, leave along the negative curvature
                # (checks.descent_direction, the same rule).
                stationary = (eigenvalues[0] < 0) & (
                    jnp.linalg.norm(fallback) <= checks.STATIONARY_RATIO * size)
                fallback = jnp.where(stationary,
                                     checks.negative_curvature_step(g, h, size, jnp, vectors),
                                     fallback)
            else:
                g, hvp = core.reduced_gradient_hessian(k, blocks, solve, False)
                newton = jax.scipy.sparse.linalg.cg(hvp, -g, tol=1e-10, maxiter=10 * g.size)[0]
                fallback = -g
            descent = jnp.all(jnp.isfinite(newton)) & (jnp.vdot(g, newton) < 0)
            distance = jnp.where(descent, jnp.linalg.norm(newton), jnp.inf)
            return g, jnp.where(descent, newton, fallback), distance

        def newton_step(state):
            blocks, _, steps, count, fresh = state
            # The first pass only solves the levels below at the starting x_k (a zero step,
            # always accepted): one nested solve in the trace per level, not two.
            g, d, distance = jax.lax.cond(
                fresh,
                lambda b: (jnp.zeros_like(b[k]), jnp.zeros_like(b[k]), jnp.asarray(jnp.inf)),
                direction, blocks)
            # The last Newton step is still taken (quadratically closer for one trial); the
            # stopping test is judged again at the final point in ``run``.
            last = ~fresh & checks.solved(distance, blocks[k], tol, jnp)
            value, slope, residual = core.fs[k](blocks), jnp.vdot(g, d), jnp.linalg.norm(g)

            def search_body(search):
                alpha, _, count, _, tries = search
                trial, inner = solve_from(
                    k + 1, blocks[:k] + (blocks[k] + alpha * d,) + blocks[k + 1:], tol, max_iter
                )
                trial_value, trial_residual = core.fs[k](trial), jnp.linalg.norm(gradient(trial))
                accept = fresh | jnp.isfinite(trial_value) & (
                    (trial_value <= value + nested.ARMIJO * alpha * slope)
                    | ((tries == 0) & (trial_residual < residual))
                )
                return (0.5 * alpha, trial, count + inner, accept, tries + 1)

            search = (jnp.ones(()), blocks, count, jnp.zeros((), bool), jnp.zeros((), jnp.int32))
            _, trial, count, accepted, _ = jax.lax.while_loop(
                lambda s: ~s[3] & (s[4] < nested.HALVINGS), search_body, search
            )
            # A failed line search keeps the point it had and ends this level's loop.
            keep = jax.tree_util.tree_map(lambda a, b: jnp.where(accepted, a, b), trial, blocks)
            taken = (~fresh).astype(jnp.int32)
            return (keep, last | ~accepted, steps + taken, count + taken, jnp.zeros((), bool))

        def newton_cond(state):
            _, finished, steps, _, fresh = state
            return fresh | (~finished & (steps < max_iter))

        state = (blocks, jnp.zeros((), bool), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                 jnp.ones((), bool))
        blocks, _, _, count, _ = jax.lax.while_loop(newton_cond, newton_step, state)
        return blocks, count

    return run


def _status(core, first, blocks, tol, solve, count):
    """The per-level status of a solve (see `nested_newton`), judged at the final ``blocks``:
    one set of level constants (each dense Hessian formed once) serves every level."""
    blocks = tuple(blocks)
    hessians, gradients = {}, {}
    core.level_constants(blocks, solve, below=first - 1, hessians=hessians,
                         gradients=gradients)
    residual, distance, hessian_ok = [], [], []
    for k in range(first, core.n):
        g, d, ok = _final_check(core, k, blocks, solve, gradients.get(k), hessians.get(k))
        residual.append(jnp.linalg.norm(g))
        distance.append(d)
        hessian_ok.append(ok)
    converged = jnp.stack([checks.solved(d, blocks[k], tol, jnp)
                           for d, k in zip(distance, range(first, core.n), strict=True)])
    status = {"residual": jnp.stack(residual), "distance": jnp.stack(distance),
              "converged": converged,
              "hessian_ok": jnp.stack(hessian_ok), "iterations": count}
    return status


def _final_check(core, k, blocks, solve, gradient, hessian):
    """(D_k F_k, Newton's distance estimate, H_k surely fine) at the solved ``blocks``, given
    D_k F_k and H_k there (None for a matrix-free level)."""
    if core.sizes[k] > DENSE_LIMIT:
        g, hvp = core.reduced_gradient_hessian(k, blocks, solve, False)
        step = jax.scipy.sparse.linalg.cg(hvp, g, tol=1e-10, maxiter=10 * g.size)[0]
        return g, jnp.linalg.norm(step), jnp.ones((), bool)
    g = gradient
    h = 0.5 * (hessian + hessian.T)
    factor = jax.scipy.linalg.cho_factor(h)[0]
    step = jax.scipy.linalg.cho_solve((factor, False), g)
    distance = jnp.where(jnp.all(jnp.isfinite(step)), jnp.linalg.norm(step), jnp.inf)
    scale = jnp.maximum(jnp.linalg.norm(h), curvature_probe_scale(core, k, blocks, g, solve))
    return g, distance, _surely_positive_definite(h, scale)


def curvature_probe_scale(core, k, blocks, g0, solve):
    r"""The largest finite probe of the curvature scale of `mlverify.checks`:
    $u^\top H_k u$ and the secant slope $\lVert D_k F_k(x + r u) - D_k F_k(x) \rVert / r$ at
    $x_k \pm r u$ (levels below frozen). Each side re-forms the level constants of every
    level below at its point: at depth the largest part of the final checks (batching the
    two sides with ``vmap`` made the program larger, not smaller)."""
    x = blocks[k]
    u = jnp.asarray(checks.probe_direction(x.shape[0]))
    r = checks.PROBE_RADIUS * (1.0 + jnp.linalg.norm(x))
    probes = []
    for sign in (1.0, -1.0):
        moved = blocks[:k] + (x + sign * r * u,) + blocks[k + 1:]
        g, hvp = core.reduced_gradient_hessian(k, moved, solve, False)
        probes += [jnp.abs(jnp.vdot(u, hvp(u))), jnp.linalg.norm(g - g0) / r]
    probes = jnp.stack(probes)
    return jnp.max(jnp.where(jnp.isfinite(probes), probes, 0.0))


def _surely_positive_definite(h, scale):
    """True only if lambda_min(H) > DEGENERATE_RATIO * scale (a Cholesky factorisation of
    the shifted H succeeds), which implies ``checks.check_lower_hessian`` passes with that
    scale; False leaves the verdict to that exact (eigenvalue) check."""
    shift = checks.DEGENERATE_RATIO * scale
    factor = jax.scipy.linalg.cho_factor(h - shift * jnp.eye(h.shape[0]))[0]
    return jnp.all(jnp.isfinite(factor)) & (scale > 0)


def _step_function(problem, k, method):
    core = problem.core
    dense = problem.sizes[k] <= DENSE_LIMIT
    if dense and stacked.applicable(problem.sizes, k):
        return problem._grad_hess(k)  # (D_k F_k, H_k) from the stacked program

    def build():
        def step(blocks):
            if dense:
                g, h = core.reduced_gradient_hessian(k, blocks, LinearSolve("dense"), True)
                return g, h
            g, hvp = core.reduced_gradient_hessian(k, blocks, LinearSolve("cg"), False)
            direction, _ = jax.scipy.sparse.linalg.cg(hvp, -g, tol=1e-10, maxiter=10 * g.size)
            return g, direction

        return step

    return problem._jit(("solver_step", k, method), build)


class _Levels:
    """A NumericProblem's lower levels for the nested driver (`mlverify.nested.Levels`):
    one jitted step (gradient and dense Hessian, or the Newton-CG direction of a
    matrix-free level) and one jitted objective per level."""

    def __init__(self, problem):
        self.problem, self.n = problem, problem.n

    def objective(self, k, blocks):
        return self.problem.objective_value(k, blocks)

    def step(self, k, blocks, method):
        g, second = _step_function(self.problem, k, method)(tuple(blocks))
        g = np.asarray(g)
        if self.problem.sizes[k] <= DENSE_LIMIT:
            return nested.newton_step(g, second, blocks[k], method)
        newton = np.asarray(second)  # CG's Newton direction
        ok = np.all(np.isfinite(newton)) and g @ newton < 0
        distance = float(np.linalg.norm(newton)) if ok else float("inf")
        return nested.Step(g, -g if method == "gd" else newton, distance, None)

    def check_level(self, k, blocks):
        self.problem.check_level(k, blocks)

    def diagnose_below(self, k, blocks):
        self.problem.diagnose_below(k, blocks)


def nested_solve(problem, start, tol, max_iter, method, first=1):
    r"""The Python-driven nested solve (``method`` ``"newton"`` or ``"gd"``) of the levels
    below level ``first``: `mlverify.nested.solve` on the problem's compiled steps. Raises
    ConvergenceError, NonFiniteError, HessianError or UnboundedLevelError naming the level
    where it fails. Returns ``(blocks, residuals, distances, iterations)``, residuals and
    distances for levels $2, \dots, n$ (zero above ``first``)."""
    blocks = [np.asarray(b, dtype=np.float64) for b in start]
    residuals, distances, iterations = nested.solve(
        _Levels(problem), blocks, tol, max_iter, method=method, first=first)
    pad = [0.0] * (first - 1)
    return blocks, pad + residuals, pad + distances, iterations
