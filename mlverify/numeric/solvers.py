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

from .. import checks
from ..errors import ConvergenceError, MlverifyError, NonFiniteError
from .implicit import DENSE_LIMIT, LinearSolve

_ARMIJO = 1e-4
#: Step halvings before a line search gives up (the Python driver allows 60; 2^-40 is
#: already below float64 resolution of any step that matters).
_HALVINGS = 40


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
        residual, distance, hessian_ok = [], [], []
        for k in range(first, n):
            g, d, ok = _final_check(core, k, blocks, solve)
            residual.append(jnp.linalg.norm(g))
            distance.append(d)
            hessian_ok.append(ok)
        distance = jnp.stack(distance)
        scale = jnp.stack([1.0 + jnp.linalg.norm(blocks[k]) for k in range(first, n)])
        return blocks, {"residual": jnp.stack(residual), "distance": distance,
                        "converged": distance <= tol * scale,
                        "hessian_ok": jnp.stack(hessian_ok), "iterations": count}

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
            last = ~fresh & (distance <= tol * (1.0 + jnp.linalg.norm(blocks[k])))
            value, slope, residual = core.fs[k](blocks), jnp.vdot(g, d), jnp.linalg.norm(g)

            def search_body(search):
                alpha, _, count, _, tries = search
                trial, inner = solve_from(
                    k + 1, blocks[:k] + (blocks[k] + alpha * d,) + blocks[k + 1:], tol, max_iter
                )
                trial_value, trial_residual = core.fs[k](trial), jnp.linalg.norm(gradient(trial))
                accept = fresh | jnp.isfinite(trial_value) & (
                    (trial_value <= value + _ARMIJO * alpha * slope)
                    | ((tries == 0) & (trial_residual < residual))
                )
                return (0.5 * alpha, trial, count + inner, accept, tries + 1)

            search = (jnp.ones(()), blocks, count, jnp.zeros((), bool), jnp.zeros((), jnp.int32))
            _, trial, count, accepted, _ = jax.lax.while_loop(
                lambda s: ~s[3] & (s[4] < _HALVINGS), search_body, search
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


def _final_check(core, k, blocks, solve):
    """(D_k F_k, Newton's distance estimate, H_k surely fine) at the solved ``blocks``."""
    if core.sizes[k] > DENSE_LIMIT:
        g, hvp = core.reduced_gradient_hessian(k, blocks, solve, False)
        step = jax.scipy.sparse.linalg.cg(hvp, g, tol=1e-10, maxiter=10 * g.size)[0]
        return g, jnp.linalg.norm(step), jnp.ones((), bool)
    g, h = core.reduced_gradient_hessian(k, blocks, solve, True)
    h = 0.5 * (h + h.T)
    factor = jax.scipy.linalg.cho_factor(h)[0]
    step = jax.scipy.linalg.cho_solve((factor, False), g)
    distance = jnp.where(jnp.all(jnp.isfinite(step)), jnp.linalg.norm(step), jnp.inf)
    scale = jnp.maximum(jnp.linalg.norm(h), curvature_probe_scale(core, k, blocks, g, solve))
    return g, distance, _surely_positive_definite(h, scale)


def curvature_probe_scale(core, k, blocks, g0, solve):
    r"""The largest finite probe of the curvature scale of `mlverify.checks`:
    $u^\top H_k u$ and the secant slope $\lVert D_k F_k(x + r u) - D_k F_k(x) \rVert / r$ at
    $x_k \pm r u$ (levels below frozen)."""
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


def _value_function(problem, k):
    return problem._jit(("value", k), lambda: problem.core.fs[k])


def _direction(g, second, dense, method, x=None):
    r"""(direction, Newton's distance estimate or inf). Newton's direction where $H$ is
    positive definite (``checks.descent_direction``), else steepest descent scaled by
    $1/\lVert H \rVert$; ``gd`` steps along the scaled (dense) or plain (matrix-free) negative
    gradient but stops on the same Newton distance. For matrix-free blocks ``second`` is
    already Newton's direction (CG)."""
    if not dense:
        newton = np.asarray(second)
        ok = np.all(np.isfinite(newton)) and g @ newton < 0
        distance = float(np.linalg.norm(newton)) if ok else float("inf")
        return (-g if method == "gd" else newton), distance
    h = np.asarray(second)
    direction, lowest = checks.descent_direction(g, h, x)
    distance = float(np.linalg.norm(direction)) if lowest > 0 else float("inf")
    if method == "gd":
        scale = float(np.max(np.abs(np.linalg.eigvalsh(0.5 * (h + h.T)))))
        return -g / max(scale, 1e-300), checks.distance_estimate(g, h)
    return direction, distance


def nested_solve(problem, start, tol, max_iter, method, first=1):
    """The Python-driven nested solve (``method`` ``"newton"`` or ``"gd"``) of the levels
    below level ``first``; raises ConvergenceError, NonFiniteError, HessianError or
    UnboundedLevelError naming the level where it fails (for a failure of level $k$, the
    levels below it are checked first: a degenerate lower level spoils every level above).
    Returns ``(blocks, residuals, distances, iterations)``."""
    n = problem.n
    blocks = [jnp.asarray(b) for b in start]
    residuals, distances = [0.0] * (n - 1), [0.0] * (n - 1)
    iterations = [0]

    def value(k):
        solve_from(k + 1, record=False)
        return float(_value_function(problem, k)(tuple(blocks)))

    def trial_value(k):
        """F_k at a line-search trial; inf where the levels below fail there."""
        try:
            v = value(k)
        except MlverifyError:
            return float("inf")
        return v if np.isfinite(v) else float("inf")

    def fail(k, error):
        problem.diagnose_below(k, blocks)
        raise error

    def solve_from(k, record):
        if k >= n:
            return
        dense = problem.sizes[k] <= DENSE_LIMIT
        step = _step_function(problem, k, method)
        first_point = np.asarray(blocks[k])
        current = value(k)
        start_value = current
        distance = np.inf
        for _ in range(max_iter):
            iterations[0] += 1
            g, second = step(tuple(blocks))
            g = np.asarray(g)
            if not (np.all(np.isfinite(g)) and np.isfinite(current)):
                fail(k, NonFiniteError(
                    "NaN or inf in the reduced objective F_k or its gradient D_k F_k during "
                    "the lower solve", level=k + 1, quantity="reduced gradient"))
            direction, distance = _direction(g, second, dense, method, np.asarray(blocks[k]))
            # The last Newton step is still taken; the test is judged again after the loop.
            last = checks.solved(distance, np.asarray(blocks[k]), tol)
            residual = float(np.linalg.norm(g))
            slope = float(g @ direction)
            base = np.asarray(blocks[k])
            alpha, accepted, off_domain = 1.0, False, False
            for _ in range(60):
                blocks[k] = jnp.asarray(base + alpha * direction)
                trial = trial_value(k)
                off_domain |= not np.isfinite(trial)
                # Near the solution F_k carries the noise of the lower solves (solved to tol),
                # larger than the decrease Armijo asks for: the full step is then also taken
                # when the gradient norm drops.
                if np.isfinite(trial) and (trial <= current + _ARMIJO * alpha * slope or (
                    alpha == 1.0
                    and float(np.linalg.norm(np.asarray(step(tuple(blocks))[0]))) < residual
                )):
                    current, accepted = trial, True
                    break
                alpha *= 0.5
            if not accepted:
                blocks[k] = jnp.asarray(base)
                solve_from(k + 1, record=False)
                if off_domain and current < start_value and not np.isfinite(distance):
                    problem.diagnose_below(k, blocks)
                    checks.raise_domain_edge(k + 1, blocks[k], current, start_value)
                break
            checks.check_bounded(k + 1, blocks[k], first_point, current, start_value, False)
            if last:
                break
        g, second = step(tuple(blocks))
        g = np.asarray(g)
        direction, distance = _direction(g, second, dense, method)
        residual = float(np.linalg.norm(g))
        if not checks.solved(distance, np.asarray(blocks[k]), tol):
            problem.diagnose_below(k, blocks)
            checks.check_bounded(k + 1, blocks[k], first_point, current, start_value, True)
            if dense and np.all(np.isfinite(np.asarray(second))):
                problem.check_level(k, blocks)
            limit = tol * (1.0 + float(np.linalg.norm(np.asarray(blocks[k]))))
            raise ConvergenceError(
                f"the lower solve stopped at an estimated distance {distance:.3e} to the "
                f"solution (Newton's step; gradient norm {residual:.3e}) > tolerance "
                f"{limit:.1e}",
                level=k + 1,
                residual=distance,
                tolerance=limit,
            )
        if record:
            residuals[k - 1], distances[k - 1] = residual, distance
            solve_from(k + 1, record=True)

    with np.errstate(all="ignore"):  # overflow in a trial is judged, not warned about
        solve_from(first, record=True)
    return blocks, residuals, distances, iterations[0]
