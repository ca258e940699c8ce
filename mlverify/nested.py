r"""The nested lower solve: one driver for both backends, and the one ``LowerSolution``.

Levels $n, \dots, 2$ are solved nested for the blocks above held fixed. Level $k$ runs
damped Newton on its reduced objective $F_k$, with gradient $D_k F_k$ and Hessian
$H_k = D_{kk} F_k$ from the best-response formulas (Lemmas 2.1, 3.1, 3.2) at the current
lower solutions. Every trial point re-solves the levels below it, warm-started from their
last solution, so each iterate is a true best response of the levels above. The stopping
test, the descent direction away from positive definite points, the unboundedness and
domain-edge verdicts are those of `mlverify.checks`, shared with the compiled solves.

A backend hands the driver its levels as a `Levels` object: the symbolic evaluator
(`mlverify.symsolve`, straight-line NumPy from the derivation) and the JAX core
(`mlverify.numeric`, one compiled step per level) both do, so a declared problem and its
JAX twin take the same steps, stop at the same points and fail with the same errors, which
name the level and the quantity at fault. The compiled solves of `mlverify.numeric.solvers`
(nested and joint) run the same mathematics inside XLA and fall back on this driver to name
a failure.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from . import checks
from .errors import ConvergenceError, MlverifyError, NonFiniteError

#: Armijo's sufficient-decrease constant of the line search.
ARMIJO = 1e-4
#: Step halvings before a level's line search gives up.
HALVINGS = 60


class LowerSolution(tuple):
    r"""The lower-level solutions $x_2^*, \dots, x_n^*$ for one $x_1$: a tuple of blocks
    (shaped as declared), with, per level, the gradient norm $\lVert D_k F_k \rVert$ reached
    (``residuals``; ``residual`` their max) and Newton's estimate of the distance to the
    solution $\lVert H_k^{-1} D_k F_k \rVert$ (``distances``; ``distance`` their max), which
    the stopping test bounds by $\mathrm{tol}\,(1 + \lVert x_k \rVert)$; ``iterations``: the
    Newton steps taken; ``x1``: the upper-level point, where the solver keeps it."""

    residuals: tuple[float, ...]
    residual: float
    distances: tuple[float, ...]
    distance: float
    iterations: int
    x1: np.ndarray | None

    def __new__(cls, blocks, residuals, iterations: int = 0, distances=(), x1=None):
        obj = super().__new__(cls, blocks)
        obj.residuals = tuple(float(r) for r in residuals)
        obj.residual = max(obj.residuals) if obj.residuals else 0.0
        obj.distances = tuple(float(d) for d in distances)
        obj.distance = max(obj.distances) if obj.distances else 0.0
        obj.iterations = int(iterations)
        obj.x1 = x1
        return obj

    @property
    def xs(self) -> tuple:
        r"""The blocks $x_2^*, \dots, x_n^*$ (the tuple itself)."""
        return tuple(self)

    def copy(self) -> LowerSolution:
        """The same solution with its own arrays (NumPy blocks)."""
        return LowerSolution(tuple(np.array(x, copy=True) for x in self), self.residuals,
                             self.iterations, self.distances,
                             None if self.x1 is None else np.array(self.x1, copy=True))


class Step(NamedTuple):
    """What a backend computes at level $k$ for one Newton step."""

    #: $D_k F_k$ at the blocks.
    gradient: np.ndarray
    #: The descent direction (Newton's where $H_k$ is positive definite).
    direction: np.ndarray
    #: Newton's distance estimate $\lVert H_k^{-1} D_k F_k \rVert$; inf where $H_k$ is not
    #: positive definite.
    distance: float
    #: The dense $H_k$, or None for a matrix-free level.
    hessian: np.ndarray | None


class Levels(Protocol):
    """A backend's lower levels, as the nested driver uses them (0-based level ``k``,
    ``blocks`` the list of all n flat float64 blocks)."""

    n: int

    def objective(self, k: int, blocks) -> float:
        """$f_k$ at the blocks (NaN or inf where it is not finite)."""

    def step(self, k: int, blocks, method: str) -> Step:
        """Level ``k``'s gradient and step at the blocks (levels below as they are)."""

    def check_level(self, k: int, blocks) -> None:
        """HessianError or NonFiniteError naming level k + 1 unless $H_k$ is positive
        definite and not degenerate (`mlverify.checks.check_lower_hessian`)."""

    def diagnose_below(self, k: int, blocks) -> None:
        """`check_level` for every level below k, the deepest first."""


def solve(levels: Levels, blocks: list, tol: float, max_iter: int, *, method: str = "newton",
          first: int = 1, strict: bool = True):
    """Solve the levels from ``first`` (0-based) down, in place in ``blocks``.

    ``method``: ``"newton"`` or ``"gd"`` (each backend's `Levels.step` makes the
    direction). Raises ConvergenceError, NonFiniteError, HessianError, DomainError or
    UnboundedLevelError naming the level where it fails; for a failure of level $k$ the
    levels below it are checked first (a degenerate lower level spoils every level above).
    ``strict=False`` takes at most ``max_iter`` steps per level and raises nothing for
    stopping short (a refinement sweep). Returns ``(residuals, distances, iterations)``,
    one entry per level from ``first`` on.
    """
    count = [0]
    record: dict = {}
    with np.errstate(all="ignore"):  # overflow in a trial is judged, not warned about
        _solve_from(levels, first, blocks, tol, max_iter, method, record, strict, count)
    levels_solved = range(first, levels.n)
    residuals = [record[k][0] for k in levels_solved] if strict else []
    distances = [record[k][1] for k in levels_solved] if strict else []
    return residuals, distances, count[0]


def reduced_value(levels: Levels, k: int, blocks: list, tol: float, max_iter: int,
                  method: str = "newton") -> float:
    """$F_k$ at ``blocks[k]``: the levels below re-solved in place, then $f_k$."""
    with np.errstate(all="ignore"):
        _solve_from(levels, k + 1, blocks, tol, max_iter, method, None, True, [0])
        return float(levels.objective(k, blocks))


def _solve_from(levels, k, blocks, tol, max_iter, method, record, strict, count) -> None:
    if k < levels.n:
        _solve_level(levels, k, blocks, tol, max_iter, method, record, strict, count)


def _solve_level(levels, k, blocks, tol, max_iter, method, record, strict, count) -> None:
    level = k + 1

    def value_below_solved():
        _solve_from(levels, k + 1, blocks, tol, max_iter, method, None, strict, count)
        return float(levels.objective(k, blocks))

    def trial_value():
        """F_k at a line-search trial; inf where the levels below fail there (the search
        then backtracks towards the last good point)."""
        try:
            value = value_below_solved()
        except MlverifyError:
            return float("inf")
        return value if np.isfinite(value) else float("inf")

    start = np.array(blocks[k], dtype=np.float64)
    value = value_below_solved()
    start_value = value
    taken = 0
    for _ in range(max_iter):
        step = levels.step(k, blocks, method)
        finite = (np.all(np.isfinite(step.gradient)) and np.isfinite(value)
                  and (step.hessian is None or np.all(np.isfinite(step.hessian))))
        if not finite:
            if not strict:
                return
            levels.diagnose_below(k, blocks)
            raise NonFiniteError(
                "NaN or inf in the reduced objective F_k, its gradient D_k F_k or its Hessian "
                f"at x_{level} = {np.array2string(np.asarray(blocks[k]), precision=6)} during "
                "the lower solve",
                level=level,
                quantity="lower solve iterate",
            )
        count[0] += 1
        taken += 1
        # The last Newton step is still taken (it costs one trial and leaves the point
        # quadratically closer); the test is judged again at the final point below.
        last = checks.solved(step.distance, blocks[k], tol)
        residual = float(np.linalg.norm(step.gradient))
        slope = float(step.gradient @ step.direction)
        base = np.array(blocks[k], dtype=np.float64)
        alpha, accepted, off_domain = 1.0, False, False
        for _ in range(HALVINGS):
            blocks[k] = base + alpha * step.direction
            trial = trial_value() if strict else value_below_solved()
            off_domain |= not np.isfinite(trial)
            # Near the solution F_k carries the round-off of the levels below, larger than
            # the decrease Armijo asks for: a full Newton step is also taken when the
            # gradient norm drops.
            if np.isfinite(trial) and (
                trial <= value + ARMIJO * alpha * slope
                or (alpha == 1.0 and np.isfinite(step.distance) and float(np.linalg.norm(
                    levels.step(k, blocks, method).gradient)) < residual)
            ):
                accepted, value = True, trial
                break
            alpha *= 0.5
        if not accepted:
            blocks[k] = base
            _solve_from(levels, k + 1, blocks, tol, max_iter, method, None, strict, count)
            if strict and off_domain and value < start_value and not np.isfinite(step.distance):
                levels.diagnose_below(k, blocks)
                checks.raise_domain_edge(level, blocks[k], value, start_value)
            break
        if strict:
            checks.check_bounded(level, blocks[k], start, value, start_value, False)
        if last:
            break
    if not strict:
        return
    step = levels.step(k, blocks, method)
    distance, residual = step.distance, float(np.linalg.norm(step.gradient))
    if checks.solved(distance, blocks[k], tol):
        if record is not None:
            record[k] = (residual, distance)
            _solve_from(levels, k + 1, blocks, tol, max_iter, method, record, strict, count)
        return
    levels.diagnose_below(k, blocks)
    checks.check_bounded(level, blocks[k], start, value, start_value, True)
    if step.hessian is not None and np.all(np.isfinite(step.hessian)):
        levels.check_level(k, blocks)
    limit = checks.tolerance(blocks[k], tol)
    raise ConvergenceError(
        f"the lower solve stopped at an estimated distance {distance:.3e} to the solution "
        f"(Newton's step; gradient norm {residual:.3e}) > tolerance {limit:.1e} after "
        f"{taken} steps (max_iter {max_iter})",
        level=level,
        residual=distance,
        tolerance=limit,
    )


def newton_step(g: np.ndarray, h: np.ndarray, x, method: str = "newton") -> Step:
    r"""The `Step` of a dense level from $D_k F_k$ and $H_k$: Newton's direction where $H_k$
    is positive definite, else `mlverify.checks.descent_direction`'s; ``"gd"`` steps along
    $-D_k F_k / \lVert H_k \rVert$ and stops on the same Newton distance."""
    g, h = np.asarray(g, dtype=np.float64), np.asarray(h, dtype=np.float64)
    if method == "gd":
        scale = float(np.max(np.abs(np.linalg.eigvalsh(0.5 * (h + h.T))))) if np.all(
            np.isfinite(h)) else float("nan")
        return Step(g, -g / max(scale, 1e-300), checks.distance_estimate(g, h), h)
    if not np.all(np.isfinite(h)):
        return Step(g, np.full_like(g, np.nan), float("inf"), h)
    direction, lowest = checks.descent_direction(g, h, np.asarray(x))
    distance = float(np.linalg.norm(direction)) if lowest > 0 else float("inf")
    return Step(g, direction, distance, h)
