r"""Numbers from a declared problem: nested lower solves and the hypergradient, in float64.

The derivation graph (`mlverify.derive`) is printed once as straight-line NumPy code
per quantity: $f_k$, and $(g_k, H_k) = (D_k F_k, D_{kk} F_k)$ for each lower level. Levels
$n, \dots, 2$ are then solved by nested damped Newton on the reduced objectives $F_k$: every trial
point of level $k$ re-solves the levels below it, so each level's iterate is a true best
response of the levels above (the reduced objectives $F_k$, bottom-up), never a simultaneous root.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .codegen import compile_graph
from .errors import ConvergenceError, HessianError, NonFiniteError, ProblemDefinitionError

#: A lower Hessian with condition number above this is reported as singular.
SINGULAR_CONDITION = 1e12


@dataclass(frozen=True)
class LowerSolution:
    r"""$x_2^*, \dots, x_n^*$ for one $x_1$, with the largest gradient norm
    $\lVert D_k F_k \rVert$ reached."""

    x1: np.ndarray
    xs: tuple[np.ndarray, ...]
    residual: float
    residuals: tuple[float, ...]

    def __iter__(self):
        return iter(self.xs)

    def __len__(self):
        return len(self.xs)

    def __getitem__(self, item):
        return self.xs[item]


def as_block_value(value, size: int, level: int, name: str = "x") -> np.ndarray:
    """A float64 vector of the block's size, from a float, a sequence or an array."""
    try:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ProblemDefinitionError(
            f"{name}_{level} = {value!r} is not numeric", level=level, quantity=f"x_{level}"
        ) from exc
    if array.size != size:
        raise ProblemDefinitionError(
            f"{name}_{level} has {array.size} entries but the block has {size}",
            level=level,
            quantity=f"x_{level}",
        )
    if not np.all(np.isfinite(array)):
        raise NonFiniteError(f"{name}_{level} holds NaN or inf", level=level, quantity=f"x_{level}")
    return array


def check_lower_hessian(h: np.ndarray, level: int) -> None:
    """Raise HessianError unless H is symmetric positive definite and well conditioned."""
    if not np.all(np.isfinite(h)):
        raise NonFiniteError(
            "the Hessian D_kk F_k holds NaN or inf", level=level, quantity="Hessian"
        )
    eigenvalues = np.linalg.eigvalsh(0.5 * (h + h.T))
    lo, hi = float(eigenvalues[0]), float(eigenvalues[-1])
    scale = max(abs(lo), abs(hi))
    condition = float("inf") if lo == 0 else abs(hi / lo)
    if lo < 0:
        raise HessianError(
            f"the Hessian D_kk F_k is indefinite at the point: min eigenvalue {lo:.6g}, "
            f"max {hi:.6g}, condition number {condition:.3g}",
            level=level,
            min_eigenvalue=lo,
            condition_number=condition,
        )
    if scale == 0 or lo <= scale / SINGULAR_CONDITION:
        raise HessianError(
            f"the Hessian D_kk F_k is singular at the point: min eigenvalue {lo:.6g}, "
            f"condition number {condition:.3g} (limit {SINGULAR_CONDITION:.0e})",
            level=level,
            min_eigenvalue=lo,
            condition_number=condition,
        )


class SymbolicEvaluator:
    """Compiled float64 evaluators of one derivation, and the nested lower solver."""

    def __init__(self, problem, derivation):
        self.problem = problem
        self.derivation = derivation
        graph = derivation.graph
        self.sizes = problem.sizes
        self.n = problem.n
        self._splits = np.cumsum(self.sizes)[:-1]
        self._objective = [compile_graph(graph, [graph.partial(k, ())]) for k in range(self.n)]
        self._gradient_hessian = [None] + [
            compile_graph(graph, list(derivation.gradients[k]) + list(derivation.hessians[k]))
            for k in range(1, self.n)
        ]
        self._hypergradient = compile_graph(graph, list(derivation.gradients[0]))
        self._jacobians = {
            key: compile_graph(graph, list(matrix)) for key, matrix in derivation.jacobians.items()
        }

    # ------------------------------------------------------------------ evaluation
    def _flat(self, blocks) -> np.ndarray:
        return np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1) for b in blocks])

    def objective(self, k: int, blocks) -> float:
        """$f_k$ at the given blocks (0-based $k$)."""
        return float(self._objective[k](*self._flat(blocks))[0])

    def gradient_hessian(self, k: int, blocks) -> tuple[np.ndarray, np.ndarray]:
        r"""$(D_k F_k, D_{kk} F_k)$ for 0-based $k \ge 1$, valid where levels $> k$ are solved."""
        d = self.sizes[k]
        values = np.asarray(self._gradient_hessian[k](*self._flat(blocks)), dtype=np.float64)
        return values[:d], values[d:].reshape(d, d)

    def hypergradient_frozen(self, blocks) -> np.ndarray:
        """The hypergradient formula evaluated at the given blocks, without any solve."""
        return np.asarray(self._hypergradient(*self._flat(blocks)), dtype=np.float64)

    def jacobian_frozen(self, k: int, j: int, blocks) -> np.ndarray:
        """$D_j y_k$ (1-based levels) at the given blocks, without any solve."""
        values = self._jacobians[(k - 1, j - 1)](*self._flat(blocks))
        return np.asarray(values, dtype=np.float64).reshape(self.sizes[k - 1], self.sizes[j - 1])

    # ------------------------------------------------------------------ solving
    def solve_lower(self, x1_value, *, tol=1e-12, init=None, max_iter=100) -> LowerSolution:
        r"""Solve levels $n, \dots, 2$ for $x_1$ = ``x1_value`` by nested damped Newton.

        Each level's gradient and Hessian are the reduced $D_k F_k$, $D_{kk} F_k$ of the
        lemmas at the current lower solutions; ``tol`` bounds each level's residual.
        """
        x1 = as_block_value(x1_value, self.sizes[0], level=1)
        blocks = [x1] + [np.zeros(d) for d in self.sizes[1:]]
        if init is not None:
            if len(init) != self.n - 1:
                raise ProblemDefinitionError(
                    f"init must hold {self.n - 1} blocks (levels 2..{self.n}), got {len(init)}",
                    quantity="init",
                )
            for k, value in enumerate(init, start=1):
                blocks[k] = as_block_value(value, self.sizes[k], level=k + 1, name="init x")
        residuals = [0.0] * self.n
        self._solve_from(1, blocks, tol, max_iter, residuals)
        for k in range(1, self.n):
            check_lower_hessian(self.gradient_hessian(k, blocks)[1], level=k + 1)
        return LowerSolution(x1, tuple(blocks[1:]), max(residuals[1:]), tuple(residuals[1:]))

    def _reduced_value(self, k, blocks, tol, max_iter) -> float:
        """F_k at blocks[k] (levels below re-solved in place)."""
        self._solve_from(k + 1, blocks, tol, max_iter, None)
        return self.objective(k, blocks)

    def _solve_from(self, k, blocks, tol, max_iter, residuals) -> None:
        """Solve levels k..n-1 (0-based) in place, for the blocks above fixed."""
        if k >= self.n:
            return
        level = k + 1
        value = self._reduced_value(k, blocks, tol, max_iter)
        for _ in range(max_iter):
            g, h = self.gradient_hessian(k, blocks)
            if not (np.all(np.isfinite(g)) and np.all(np.isfinite(h)) and np.isfinite(value)):
                raise NonFiniteError(
                    "NaN or inf in the reduced objective, gradient or Hessian during the lower "
                    "solve",
                    level=level,
                    quantity="lower solve iterate",
                )
            residual = float(np.linalg.norm(g))
            if residual <= tol:
                if residuals is not None:
                    residuals[k] = residual
                return
            step, last_min_eigenvalue = _descent_step(g, h)
            slope = float(g @ step)
            start = blocks[k].copy()
            accepted = False
            alpha = 1.0
            for _ in range(60):
                blocks[k] = start + alpha * step
                trial = self._reduced_value(k, blocks, tol, max_iter)
                # Near the solution F stops resolving the decrease (round-off), so the full
                # Newton step is also taken when the gradient shrinks.
                if np.isfinite(trial) and (
                    trial <= value + 1e-4 * alpha * slope
                    or (
                        alpha == 1.0
                        and last_min_eigenvalue > 0
                        and np.linalg.norm(self.gradient_hessian(k, blocks)[0]) < residual
                    )
                ):
                    accepted = True
                    value = trial
                    break
                alpha *= 0.5
            if not accepted:
                blocks[k] = start
                self._solve_from(k + 1, blocks, tol, max_iter, None)
                break
        g, h = self.gradient_hessian(k, blocks)
        residual = float(np.linalg.norm(g))
        if residual <= tol:
            if residuals is not None:
                residuals[k] = residual
            return
        check_lower_hessian(h, level)
        raise ConvergenceError(
            f"the lower solve stopped at gradient norm {residual:.3e} > tolerance {tol:.1e} "
            f"after {max_iter} iterations",
            level=level,
            residual=residual,
            tolerance=tol,
        )


def _descent_step(g: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, float]:
    """Newton's step where H is positive definite, else steepest descent scaled by |H|."""
    sym = 0.5 * (h + h.T)
    eigenvalues = np.linalg.eigvalsh(sym)
    lo = float(eigenvalues[0])
    if lo > 0 and lo > eigenvalues[-1] / SINGULAR_CONDITION:
        return -np.linalg.solve(sym, g), lo
    scale = max(1.0, float(np.max(np.abs(eigenvalues))))
    return -g / scale, lo


class SymbolicBackend:
    """The slice of NumericProblem's interface that the outer algorithms use, served by the
    compiled symbolic formulas (NumPy) instead of the JAX core: no JAX compile, so declared
    problems of many levels run at once. Methods: ``exact``, ``no-curvature``."""

    METHODS = ("exact", "no-curvature")

    def __init__(self, problem):
        self.problem = problem
        self.n = problem.n
        self.sizes = problem.sizes
        self.init = tuple(np.zeros(d) for d in self.sizes)

    def flatten(self, k, value):
        """Level ``k``'s value (0-based) as a flat float64 array, checked against its size."""
        return as_block_value(value, self.sizes[k], level=k + 1)

    def unflatten(self, k, flat):
        """The inverse of `flatten` (blocks are flat arrays here)."""
        return np.asarray(flat, dtype=np.float64)

    def solve_lower(self, x1, *, tol=1e-12, init=None, max_iter=100):
        r"""The lower solutions $x_2^*, \dots, x_n^*$ at ``x1`` (nested damped Newton)."""
        solution = self.problem.numeric().solve_lower(x1, tol=tol, init=init, max_iter=max_iter)
        return _Solved(solution.xs, solution.residuals)

    def hypergradient_frozen(self, xs, method="exact", **options):
        """The hypergradient formula at the blocks ``xs``, no solve (``exact``: with the
        curvature terms of Lemma 3.2; ``no-curvature``: without them)."""
        if method not in self.METHODS or options:
            raise ValueError(f"the symbolic backend serves {self.METHODS} without options")
        curvature = method == "exact"
        blocks = [self.flatten(k, x) for k, x in enumerate(xs)]
        return self.problem.numeric(curvature).hypergradient_frozen(blocks)

    def solve_and_hypergradient(self, x1, method="exact", *, solve_options=None, **options):
        """``(hypergradient, lower solutions)`` at ``x1``, the lower levels solved first."""
        lower = self.solve_lower(x1, **(solve_options or {}))
        return self.hypergradient_frozen((x1, *lower), method, **options), lower

    def reduced_gradient_frozen(self, k, flat_blocks):
        r"""The reduced gradient $D_k F_k$ (0-based $k \ge 1$) at the blocks, no solve."""
        return self.problem.numeric().gradient_hessian(k, flat_blocks)[0]

    def lower_hessians(self, xs):
        r"""The reduced Hessians $H_k = D_{kk} F_k$ of levels $2, \dots, n$ at the blocks."""
        evaluator = self.problem.numeric()
        return [evaluator.gradient_hessian(k, xs)[1] for k in range(1, self.n)]

    def lower_lipschitz(self, xs):
        r"""$\lambda_{\max}(H_k)$ for levels $2, \dots, n$ at the blocks (inner steps' $L$)."""
        return [float(np.linalg.eigvalsh(0.5 * (h + h.T))[-1]) for h in self.lower_hessians(xs)]

    def objective_value(self, k, flat_blocks):
        """The objective $f_k$ (0-based ``k``) at the blocks."""
        return self.problem.numeric().objective(k, flat_blocks)


class _Solved(tuple):
    def __new__(cls, blocks, residuals):
        obj = super().__new__(cls, blocks)
        obj.residuals = tuple(residuals)
        obj.residual = max(residuals)
        obj.iterations = 1
        return obj
