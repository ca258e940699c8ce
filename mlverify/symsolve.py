r"""Numbers from a declared problem: nested lower solves and the hypergradient, in float64.

The derivation graph (`mlverify.derive`) is printed once as straight-line NumPy code
per quantity: $f_k$, and $(g_k, H_k) = (D_k F_k, D_{kk} F_k)$ for each lower level. Levels
$n, \dots, 2$ are then solved by nested damped Newton on the reduced objectives $F_k$: every trial
point of level $k$ re-solves the levels below it, so each level's iterate is a true best
response of the levels above (the reduced objectives $F_k$, bottom-up), never a simultaneous root.
"""

from __future__ import annotations

import numpy as np

from . import checks, nested
from .checks import DEFAULT_TOL, check_lower_hessian
from .codegen import compile_graph
from .errors import (
    MlverifyError,
    NonFiniteError,
    ProblemDefinitionError,
)
from .nested import LowerSolution

#: Step halvings of the joint Newton solve before it gives way to the nested solve.
JOINT_BACKTRACKS = 30
#: Lower solutions from the default start kept per problem (a solve is a pure function of
#: x1, tol and max_iter there); the oldest is dropped first.
SOLUTION_MEMORY = 4096


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
        self._top_partials = None
        self._solutions: dict = {}  # (x1, tol, max_iter) -> LowerSolution, oldest first
        self._joint = None  # compiled on first use (`joint_system`)

    # ------------------------------------------------------------------ evaluation
    # The straight-line code may meet log(-1) or 0/0 at a trial point: it returns NaN or
    # inf there (without a RuntimeWarning), and the solver judges and names it.
    def _flat(self, blocks) -> np.ndarray:
        return np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1) for b in blocks])

    def objective(self, k: int, blocks) -> float:
        """$f_k$ at the given blocks (0-based $k$)."""
        with np.errstate(all="ignore"):
            return float(self._objective[k](*self._flat(blocks))[0])

    def gradient_hessian(self, k: int, blocks) -> tuple[np.ndarray, np.ndarray]:
        r"""$(D_k F_k, D_{kk} F_k)$ for 0-based $k \ge 1$, valid where levels $> k$ are solved."""
        d = self.sizes[k]
        with np.errstate(all="ignore"):
            values = np.asarray(self._gradient_hessian[k](*self._flat(blocks)), dtype=np.float64)
        return values[:d], values[d:].reshape(d, d)

    def joint_system(self, blocks):
        r"""The stationarity system of levels $2, \dots, n$ at the given blocks, no solve:
        ``(G, J, [(g_k, H_k)])`` with $G$ the stacked reduced gradients $D_k F_k$ by the
        lemmas at the iterates, $J$ its Jacobian in $(x_2, \dots, x_n)$ (all partial
        derivatives, the iterates as independent variables), and each level's gradient and
        reduced Hessian $H_k$ (0-based list, level 2 first).

        $G$ vanishes exactly at the nested solution: at the bottom $D_n F_n = D_n f_n$, so
        where it vanishes the best-response formulas of level $n - 1$ are exact, so its
        $D_{n-1} F_{n-1}$ is the true gradient of its reduced objective, and so on up.
        """
        if self._joint is None:
            derivation = self.derivation
            graph = derivation.graph
            lower = [i for block in derivation.blocks[1:] for i in block]
            stacked = [e for k in range(1, self.n) for e in derivation.gradients[k]]
            jacobian = [graph.define(graph.diff(e, i)) for e in stacked for i in lower]
            hessians = [e for k in range(1, self.n) for e in derivation.hessians[k]]
            self._joint = compile_graph(graph, stacked + jacobian + hessians)
        m = sum(self.sizes[1:])
        with np.errstate(all="ignore"):
            values = np.asarray(self._joint(*self._flat(blocks)), dtype=np.float64)
        G, J = values[:m], values[m:m + m * m].reshape(m, m)
        levels, offset, position = [], m + m * m, 0
        for d in self.sizes[1:]:
            h = values[offset:offset + d * d].reshape(d, d)
            levels.append((G[position:position + d], h))
            offset += d * d
            position += d
        return G, J, levels

    def hypergradient_frozen(self, blocks) -> np.ndarray:
        """The hypergradient formula evaluated at the given blocks, without any solve."""
        with np.errstate(all="ignore"):
            return np.asarray(self._hypergradient(*self._flat(blocks)), dtype=np.float64)

    def jacobian_frozen(self, k: int, j: int, blocks) -> np.ndarray:
        """$D_j y_k$ (1-based levels) at the given blocks, without any solve."""
        with np.errstate(all="ignore"):
            values = self._jacobians[(k - 1, j - 1)](*self._flat(blocks))
        return np.asarray(values, dtype=np.float64).reshape(self.sizes[k - 1], self.sizes[j - 1])

    def top_gradient(self, blocks) -> np.ndarray:
        """All partial derivatives of $f_1$ (a scale for the hypergradient's round-off)."""
        if self._top_partials is None:
            graph = self.derivation.graph
            outputs = [graph.partial(0, (i,)) for i in range(sum(self.sizes))]
            self._top_partials = compile_graph(graph, outputs)
        with np.errstate(all="ignore"):
            return np.asarray(self._top_partials(*self._flat(blocks)), dtype=np.float64)

    # ------------------------------------------------------------------ checks
    def curvature_probes(self, k: int, blocks) -> list[float]:
        r"""The curvature $u^\top H_k u$ and the secant slope
        $\lVert D_k F_k(x + r u) - D_k F_k(x) \rVert / r$ on either side of $x_k$ (levels below
        frozen), $r$ = ``checks.probe_radius`` of $x_k$."""
        x = np.asarray(blocks[k], dtype=np.float64)
        u, r = checks.probe_direction(x.size), checks.probe_radius(x)
        g0, _ = self.gradient_hessian(k, blocks)
        probes = []
        for sign in (1.0, -1.0):
            moved = list(blocks)
            moved[k] = x + sign * r * u
            g, h = self.gradient_hessian(k, moved)
            probes += [float(u @ h @ u), float(np.linalg.norm(g - g0)) / r]
        return probes

    def check_level(self, k: int, blocks) -> None:
        """HessianError (naming level $k + 1$) unless $H_k$ is positive definite and not
        degenerate against the level's own curvature scale (``mlverify.checks``)."""
        _, h = self.gradient_hessian(k, blocks)
        scale = None
        if np.all(np.isfinite(h)):
            scale = checks.curvature_scale(h, self.curvature_probes(k, blocks))
        check_lower_hessian(h, level=k + 1, scale=scale)

    def diagnose_below(self, k: int, blocks) -> None:
        """Before blaming level k + 1: raise for the deepest level below it whose Hessian is
        not finite, indefinite or degenerate at the current blocks (its failure spoils every
        level above it)."""
        for m in range(self.n - 1, k, -1):
            self.check_level(m, blocks)

    # ------------------------------------------------------------------ solving
    def solve_lower(self, x1_value, *, tol=DEFAULT_TOL, init=None, max_iter=100, starts=None,
                    seed=0, radius=None) -> LowerSolution:
        r"""Levels $2, \dots, n$ solved nested for $x_1$; see ``MultilevelProblem.solve_lower``."""
        x1 = as_block_value(x1_value, self.sizes[0], level=1)
        # A solve from the default start is a function of (x1, tol, max_iter): the checks
        # of Theorems 4.1 and 4.2 ask for it at the same points many times (the same grid
        # points, finite-difference stencils, L-BFGS-B paths), so it is kept.
        key = None if (init is not None or starts) else (x1.tobytes(), float(tol), max_iter)
        if key is not None and key in self._solutions:
            return self._solutions[key].copy()
        blocks = [x1] + [np.array(x, dtype=np.float64) for x in self.problem.inits[1:]]
        if init is not None:
            if len(init) != self.n - 1:
                raise ProblemDefinitionError(
                    f"init must hold {self.n - 1} blocks (levels 2..{self.n}), got {len(init)}",
                    quantity="init",
                )
            for k, value in enumerate(init, start=1):
                blocks[k] = as_block_value(value, self.sizes[k], level=k + 1, name="init x")
        try:
            blocks, record = self._solve_checked(blocks, tol, max_iter)
        except MlverifyError as error:
            if not starts:
                raise
            blocks, record = checks.restart(
                blocks, self.sizes, int(starts), seed, radius,
                lambda trial: self._solve_checked(trial, tol, max_iter), error)
        distances = record["distances"]
        solution = LowerSolution(tuple(blocks[1:]), record["residuals"], record["iterations"],
                                 distances, x1=x1)
        if starts:
            self.multistart(blocks, distances, tol, max_iter, int(starts), seed, radius)
        if key is not None:
            if len(self._solutions) >= SOLUTION_MEMORY:
                self._solutions.pop(next(iter(self._solutions)))
            self._solutions[key] = solution.copy()
        return solution

    def step(self, k: int, blocks, method: str = "newton") -> nested.Step:
        """Level ``k``'s Newton step at the blocks (`mlverify.nested.Levels`)."""
        g, h = self.gradient_hessian(k, blocks)
        return nested.newton_step(g, h, blocks[k], method)

    def reduced_value(self, k: int, blocks, tol: float, max_iter: int) -> float:
        """$F_k$ at ``blocks[k]`` (0-based $k$; the levels below re-solved in place)."""
        return nested.reduced_value(self, k, blocks, tol, max_iter)

    # ------------------------------------------------------------------ uniqueness
    def _solve_checked(self, blocks, tol, max_iter):
        """(blocks, record): levels 2..n solved from ``blocks`` and every $H_k$ checked.

        The joint Newton solve (`_solve_joint`) runs first; where it does not reach a point
        that passes every level's stopping test and Hessian check, the nested solve runs
        from the same start, and its result, or its error naming the level, is the answer.
        """
        start = [np.array(b, dtype=np.float64) for b in blocks]
        joint = self._solve_joint(start, tol, max_iter)
        if joint is not None:
            try:
                for k in range(self.n - 1, 0, -1):
                    self.check_level(k, joint[0])
            except MlverifyError:
                joint = None
        if joint is not None:
            return joint
        blocks = [b.copy() for b in start]
        residuals, distances, iterations = nested.solve(self, blocks, tol, max_iter)
        for k in range(self.n - 1, 0, -1):
            self.check_level(k, blocks)
        return blocks, {"residuals": residuals, "distances": distances,
                        "iterations": iterations}

    def _solve_joint(self, blocks, tol, max_iter):
        r"""Newton's method on the stacked stationarity system (`joint_system`) from
        ``blocks``, damped by backtracking on $\lVert G \rVert^2$: ``(blocks, record)``
        once every level passes the nested solve's own stopping test (Newton's distance
        estimate $\lVert H_k^{-1} D_k F_k \rVert \le \mathrm{tol}\,(1 + \lVert x_k
        \rVert)$, levels below as they are), after one more step as the nested solve
        takes; None where it fails (a non-finite value, a singular system, no decrease,
        ``max_iter`` steps), and the caller falls back to the nested solve.

        Its iterations do not multiply with depth: one evaluation of the system per step,
        where the nested solve re-solves every level below for each trial of the level
        above.
        """
        blocks = [b.copy() for b in blocks]
        splits = np.cumsum(self.sizes[1:])[:-1]

        def evaluate(z):
            trial = [blocks[0], *np.split(z, splits)]
            return trial, self.joint_system(trial)

        steps = 0

        def passed(trial, levels):
            record = {"residuals": [], "distances": [], "iterations": steps}
            for k, (g, h) in enumerate(levels, start=1):
                distance = checks.distance_estimate(g, h)
                if not checks.solved(distance, trial[k], tol):
                    return None
                record["residuals"].append(float(np.linalg.norm(g)))
                record["distances"].append(distance)
            return record

        z = np.concatenate(blocks[1:])
        trial, (G, J, levels) = evaluate(z)
        finished = None
        for _ in range(max_iter + 1):
            if not (np.all(np.isfinite(G)) and np.all(np.isfinite(J))):
                return finished
            record = passed(trial, levels)
            if finished is not None:  # after the extra step: keep it if it still passes
                return (trial, record) if record is not None else finished
            try:
                step = np.linalg.solve(J, -G)
            except np.linalg.LinAlgError:
                return None if record is None else (trial, record)
            if not np.all(np.isfinite(step)):
                return None if record is None else (trial, record)
            if record is not None:
                finished = (trial, record)
                z = z + step
                steps += 1
                trial, (G, J, levels) = evaluate(z)
                continue
            merit = float(G @ G)
            if merit == 0.0 or float(np.linalg.norm(step)) == 0.0:
                return None  # stationary but not a solution (a maximum or a saddle)
            alpha = 1.0
            for _ in range(JOINT_BACKTRACKS):
                moved, system = evaluate(z + alpha * step)
                G_new = system[0]
                if np.all(np.isfinite(G_new)) and G_new @ G_new <= (1 - 1e-4 * alpha) * merit:
                    break
                alpha *= 0.5
            else:
                return None
            z = z + alpha * step
            steps += 1
            trial, (G, J, levels) = moved, system
        return None

    def multistart(self, blocks, distances, tol, max_iter, starts, seed=0, radius=None) -> None:
        r"""Seeded multistart, bottom-up, around the solution ``blocks``
        (`checks.search_second_minimiser`): raises NonUniqueMinimiserError naming the level
        where a second minimiser is found."""

        def solve_level(k, point):
            trial = [np.array(b, dtype=np.float64) for b in blocks]
            trial[k] = point
            _, distances, _ = nested.solve(self, trial, tol, max_iter, first=k)
            self.check_level(k, trial)
            return trial, distances[0]

        def curvature(k):
            _, h = self.gradient_hessian(k, blocks)
            return float(np.max(np.abs(np.linalg.eigvalsh(0.5 * (h + h.T)))))

        checks.search_second_minimiser(blocks, distances, starts, seed, radius,
                                       solve_level=solve_level, value=self.objective,
                                       curvature=curvature)

    # ------------------------------------------------------------------ error estimate
    def hypergradient_error(self, blocks) -> np.ndarray:
        """A first-order a-posteriori estimate of the hypergradient's error at solved
        ``blocks``: twice the change of the hypergradient under one more nested Newton step
        at every level (which removes the lower levels' remaining distance to their
        solutions to first order, carried through the best-response Jacobians), plus the
        round-off term of ``checks.roundoff_floor``."""
        blocks = [np.array(b, dtype=np.float64) for b in blocks]
        value = self.hypergradient_frozen(blocks)
        refined = [b.copy() for b in blocks]
        nested.solve(self, refined, 0.0, 1, strict=False)
        change = np.abs(self.hypergradient_frozen(refined) - value)
        if not np.all(np.isfinite(change)):
            change = np.full_like(value, np.inf)
        hessians = [self.gradient_hessian(k, blocks)[1] for k in range(1, self.n)]
        return 2.0 * change + checks.roundoff_floor(value, self.top_gradient(blocks), hessians)


class SymbolicBackend:
    """The slice of NumericProblem's interface that the outer algorithms use, served by the
    compiled symbolic formulas (NumPy) instead of the JAX core: no JAX compile, so declared
    problems of many levels run at once. Methods: ``exact``, ``no-curvature``."""

    METHODS = ("exact", "no-curvature")

    def __init__(self, problem):
        self.problem = problem
        self.n = problem.n
        self.sizes = problem.sizes
        self.init = tuple(np.array(x, dtype=np.float64) for x in problem.inits)

    def flatten(self, k, value):
        """Level ``k``'s value (0-based) as a flat float64 array, checked against its size."""
        return as_block_value(value, self.sizes[k], level=k + 1)

    def unflatten(self, k, flat):
        """The inverse of `flatten` (blocks are flat arrays here)."""
        return np.asarray(flat, dtype=np.float64)

    def solve_lower(self, x1, *, tol=DEFAULT_TOL, init=None, max_iter=100):
        """The lower solutions at ``x1`` (``MultilevelProblem.solve_lower``), with residuals."""
        return self.problem.numeric().solve_lower(x1, tol=tol, init=init, max_iter=max_iter)

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
