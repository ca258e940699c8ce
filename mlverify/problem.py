r"""Declaring an n-level problem in sympy, and validating it.

$$
\begin{aligned}
& \min_{x_1} f_1(x_1, x_2^*, \dots, x_n^*), \\
& x_k^* = \operatorname*{arg\,min}_{x_k} f_k(x_1, \dots, x_k, x_{k+1}^*, \dots, x_n^*),
  \quad k = 2, \dots, n.
\end{aligned}
$$

Level 1 is the top. Each level owns a block of variables (one sympy Symbol, or a column of
them) and a scalar objective in the symbols of all blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import sympy as sp
from numpy.typing import ArrayLike

from .checks import DEFAULT_TOL
from .errors import NonFiniteError, ProblemDefinitionError

if TYPE_CHECKING:
    from .certify import HypergradientEnclosure
    from .derive import Derivation
    from .nested import LowerSolution
    from .numeric import NumericProblem
    from .symsolve import SymbolicEvaluator


def _as_block(var: Any, level: int) -> tuple[sp.Symbol, ...]:
    """The scalar symbols of a block, in order."""
    if isinstance(var, sp.Symbol):
        return (var,)
    if isinstance(var, sp.MatrixBase):
        if min(var.shape) != 1:
            raise ProblemDefinitionError(
                f"the variable block must be a symbol or a column of symbols, got a "
                f"{var.shape[0]}x{var.shape[1]} matrix",
                level=level,
                quantity="variable",
            )
        entries = tuple(var)
    elif isinstance(var, Sequence) and not isinstance(var, str):
        entries = tuple(var)
    else:
        raise ProblemDefinitionError(
            f"the variable block must be a sympy Symbol, a Matrix of Symbols or a sequence of "
            f"Symbols, got {type(var).__name__}",
            level=level,
            quantity="variable",
        )
    if not entries:
        raise ProblemDefinitionError(
            "the variable block is empty", level=level, quantity="variable"
        )
    for entry in entries:
        if not isinstance(entry, sp.Symbol):
            raise ProblemDefinitionError(
                f"the variable block holds {entry!r}, which is not a plain sympy Symbol",
                level=level,
                quantity="variable",
            )
    return entries


def _as_scalar(objective: Any, level: int) -> sp.Expr:
    if isinstance(objective, sp.MatrixBase):
        if objective.shape != (1, 1):
            raise ProblemDefinitionError(
                f"the objective must be scalar, got a {objective.shape[0]}x{objective.shape[1]} "
                "matrix",
                level=level,
                quantity="objective",
            )
        objective = objective[0, 0]
    if isinstance(objective, (list, tuple, np.ndarray)):
        raise ProblemDefinitionError(
            f"the objective must be scalar, got a {type(objective).__name__}",
            level=level,
            quantity="objective",
        )
    try:
        expr = sp.sympify(objective)
    except (sp.SympifyError, TypeError) as exc:
        raise ProblemDefinitionError(
            f"the objective {objective!r} is not a sympy expression",
            level=level,
            quantity="objective",
        ) from exc
    if not isinstance(expr, sp.Expr) or isinstance(expr, sp.MatrixBase):
        raise ProblemDefinitionError(
            f"the objective must be a scalar sympy expression, got {type(expr).__name__}",
            level=level,
            quantity="objective",
        )
    if not expr.is_commutative or expr.has(sp.I):
        raise ProblemDefinitionError(
            "the objective must be real-valued", level=level, quantity="objective"
        )
    return expr


@dataclass(frozen=True)
class Level:
    """One level: its variable block and its objective.

    ``var`` is a sympy Symbol (a scalar block) or a Matrix / sequence of Symbols (a vector
    block); ``objective`` is a scalar sympy expression in the variables of any levels.
    ``init`` (optional) is where the lower solves start this level: a number or a sequence
    of the block's size (default 0).
    """

    var: Any
    objective: Any
    init: Any = None


@dataclass(frozen=True, eq=False)
class MultilevelProblem:
    """An n-level problem, top level first, validated on construction.

    The derivations (Lemmas 2.1, 3.1, 3.2) are computed on first use and kept: the object is
    immutable, so they never go stale.

    Args:
        levels: The levels, top first ($f_1$ first): at least two `Level` objects.

    Raises:
        ProblemDefinitionError: Fewer than two levels, an entry that is not a `Level`, or a
            malformed level: a variable block that is not one or more plain Symbols, or a
            Symbol declared twice; an objective that is not a real scalar expression, uses
            undeclared symbols or, at a lower level, does not depend on the level's own
            variables; a constant top objective; an ``init`` of the wrong size or not
            numeric.
        NonFiniteError: An ``init`` holds NaN or inf.
    """

    levels: tuple[Level, ...]
    blocks: tuple[tuple[sp.Symbol, ...], ...] = field(init=False, repr=False)
    objectives: tuple[sp.Expr, ...] = field(init=False, repr=False)
    #: Each level's start for the lower solves (float64 arrays; zeros unless declared).
    inits: tuple[np.ndarray, ...] = field(init=False, repr=False)
    _cache: dict = field(init=False, repr=False, compare=False)

    def __init__(self, levels: Sequence[Level]):
        levels = tuple(levels)
        if len(levels) < 2:
            raise ProblemDefinitionError(
                f"a multilevel problem needs at least 2 levels, got {len(levels)}",
                quantity="level list",
            )
        for k, level in enumerate(levels, start=1):
            if not isinstance(level, Level):
                raise ProblemDefinitionError(
                    f"expected mlverify.Level, got {type(level).__name__}",
                    level=k,
                    quantity="level",
                )
        blocks = tuple(_as_block(level.var, k) for k, level in enumerate(levels, start=1))
        objectives = tuple(
            _as_scalar(level.objective, k) for k, level in enumerate(levels, start=1)
        )
        _check_variables(blocks, objectives)
        inits = tuple(_as_init(level.init, len(block), k) for k, (level, block)
                      in enumerate(zip(levels, blocks, strict=True), start=1))
        object.__setattr__(self, "inits", inits)
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "objectives", objectives)
        object.__setattr__(self, "_cache", {})

    # ------------------------------------------------------------------ structure
    @property
    def n(self) -> int:
        """Number of levels."""
        return len(self.levels)

    @property
    def sizes(self) -> tuple[int, ...]:
        r"""Block sizes $d_1, \dots, d_n$."""
        return tuple(len(b) for b in self.blocks)

    @property
    def variables(self) -> tuple[sp.Symbol, ...]:
        """All scalar variables, level 1 first."""
        return tuple(v for block in self.blocks for v in block)

    def block(self, k: int) -> sp.Matrix:
        r"""The variable block $x_k$ as a column Matrix ($k$ is 1-based).

        Args:
            k: The level, 1-based: $1 \le k \le n$.

        Returns:
            The level's symbols as a $d_k \times 1$ sympy Matrix, in declaration order.

        Raises:
            ProblemDefinitionError: ``k`` is not an integer in $1, \dots, n$.
        """
        self._check_level(k, lowest=1)
        return sp.Matrix(self.blocks[k - 1])

    def _check_level(self, k: int, lowest: int) -> None:
        if not isinstance(k, (int, np.integer)) or not lowest <= k <= self.n:
            raise ProblemDefinitionError(
                f"level index {k!r} is out of range {lowest}..{self.n}", quantity="level index"
            )

    # ------------------------------------------------------------------ derivations
    def derivation(self, curvature: bool = True) -> Derivation:
        r"""The memoised derivation graph of the lemmas (see `mlverify.derive`).

        Computed on first use for each value of ``curvature`` and kept.

        Args:
            curvature: False derives without the second derivatives of the lower best
                responses (the curvature terms $\sum_i (f_z)_i\, D^2 g_i$ of Lemma 3.2), at
                every level.

        Returns:
            A `mlverify.derive.Derivation`: every best-response Jacobian, reduced gradient
                and reduced Hessian of Lemmas 2.1, 3.1 and 3.2 as matrices of graph atoms,
                keyed by 0-based level indices.

        Raises:
            HessianError: A reduced Hessian $H_k$ is a constant matrix that is not positive
                definite (decided exactly), or is exactly singular in the elimination.
        """
        key = ("derivation", bool(curvature))
        if key not in self._cache:
            from .derive import derive

            self._cache[key] = derive(self.blocks, self.objectives, curvature=curvature)
        return self._cache[key]

    def best_response_jacobian(self, k: int, j: int, curvature: bool = True) -> sp.Matrix:
        r"""$D_j y_k = -H_k^{-1} D_{kj} F_k$ (implicit function theorem), a $(d_k, d_j)$ sympy
        Matrix.

        Exact, in terms of $x_1, \dots, x_n$, valid where $x_k, \dots, x_n$ are the lower-level
        solutions. Lemma 2.1 for $n = 2$, Lemma 3.1 (a)(b) for the bottom of a trilevel
        problem, Lemma 3.2 above it. Levels are 1-based: $2 \le k \le n$, $1 \le j < k$.

        Args:
            k: The lower level whose best response $y_k$ is differentiated, 1-based:
                $2 \le k \le n$.
            j: The level differentiated in, 1-based: $1 \le j < k$.
            curvature: False drops the curvature terms of Lemma 3.2 (the second derivatives
                of the best responses below level $k$).

        Returns:
            $D_j y_k$ as a $d_k \times d_j$ sympy Matrix in the symbols of all levels.

        Raises:
            ProblemDefinitionError: ``k`` or ``j`` is out of range.
            HessianError: A reduced Hessian is a constant matrix that is not positive
                definite (see `derivation`).
        """
        self._check_level(k, lowest=2)
        if not isinstance(j, (int, np.integer)) or not 1 <= j < k:
            raise ProblemDefinitionError(
                f"D_j y_k needs 1 <= j < k; got j={j!r}", level=k, quantity="level index"
            )
        d = self.derivation(curvature)
        return d.graph.expand_matrix(d.jacobians[(k - 1, j - 1)])

    def reduced_gradient(self, k: int, curvature: bool = True) -> sp.Matrix:
        r"""$D_k F_k$: the gradient of the reduced objective of level $k$ in $x_k$
        ($d_k \times 1$).

        Args:
            k: The level, 1-based: $1 \le k \le n$ ($k = 1$ gives the hypergradient, as
                `hypergradient`).
            curvature: False drops the curvature terms of Lemma 3.2.

        Returns:
            $D_k F_k$ as a $d_k \times 1$ sympy Matrix in the symbols of all levels, valid
                where the levels below $k$ are at their solutions.

        Raises:
            ProblemDefinitionError: ``k`` is not an integer in $1, \dots, n$.
            HessianError: A reduced Hessian is a constant matrix that is not positive
                definite (see `derivation`).
        """
        self._check_level(k, lowest=1)
        d = self.derivation(curvature)
        return d.graph.expand_matrix(d.gradients[k - 1])

    def reduced_hessian(self, k: int, curvature: bool = True) -> sp.Matrix:
        r"""$H_k = D_{kk} F_k$, the matrix each lemma inverts ($d_k \times d_k$), for $k \ge 2$.

        Args:
            k: The lower level, 1-based: $2 \le k \le n$.
            curvature: False drops the curvature terms of Lemma 3.2.

        Returns:
            $H_k$ as a $d_k \times d_k$ sympy Matrix in the symbols of all levels.

        Raises:
            ProblemDefinitionError: ``k`` is not an integer in $2, \dots, n$.
            HessianError: A reduced Hessian is a constant matrix that is not positive
                definite (see `derivation`).
        """
        self._check_level(k, lowest=2)
        d = self.derivation(curvature)
        return d.graph.expand_matrix(d.hessians[k - 1])

    def hypergradient(self, curvature: bool = True) -> sp.Matrix:
        r"""The exact hypergradient $\mathrm{d}F_1/\mathrm{d}x_1$ ($d_1 \times 1$) in terms of
        $x_1, \dots, x_n$.

        Valid where $x_2, \dots, x_n$ are the lower solutions. ``curvature=False`` drops the
        second derivatives of the lower best responses, the terms $\sum_i (f_z)_i\, D^2 g_i$
        of Lemma 3.2, at every level: the approximation most libraries compute.

        Args:
            curvature: False drops the curvature terms (above).

        Returns:
            $\mathrm{d}F_1/\mathrm{d}x_1$ as a $d_1 \times 1$ sympy Matrix.

        Raises:
            HessianError: A reduced Hessian is a constant matrix that is not positive
                definite (see `derivation`).
        """
        d = self.derivation(curvature)
        return d.graph.expand_matrix(d.gradients[0])

    # ------------------------------------------------------------------ numbers
    def numeric(self, curvature: bool = True) -> SymbolicEvaluator:
        r"""Compiled float64 NumPy evaluators of the derivation (see `mlverify.symsolve`).

        Compiled on first use for each value of ``curvature`` and kept.

        Args:
            curvature: False compiles the derivation without the curvature terms of
                Lemma 3.2 (see `derivation`).

        Returns:
            The `mlverify.symsolve.SymbolicEvaluator` of `derivation(curvature)`: the
                nested lower solve and the formulas at float64 points.

        Raises:
            HessianError: A reduced Hessian is a constant matrix that is not positive
                definite (see `derivation`).
        """
        key = ("numeric", bool(curvature))
        if key not in self._cache:
            from .symsolve import SymbolicEvaluator

            self._cache[key] = SymbolicEvaluator(self, self.derivation(curvature))
        return self._cache[key]

    def solve_lower(self, x1_value: ArrayLike, *, tol: float = DEFAULT_TOL,
                    init: Sequence[ArrayLike] | None = None, max_iter: int = 100,
                    starts: int | None = None, seed: int = 0,
                    radius: float | None = None) -> LowerSolution:
        r"""Solve levels $2, \dots, n$ for the given $x_1$.

        Level $k$ stops when Newton's step, the estimated distance to its solution
        $\lVert H_k^{-1} D_k F_k \rVert$, is at most $\mathrm{tol}\,(1 + \lVert x_k \rVert)$
        (a test that does not change when $f_k$ is scaled); then every $H_k$ is checked:
        positive definite and not degenerate against the level's own curvature scale
        (`mlverify.checks`).

        Args:
            x1_value: The top-level block $x_1$ (a number for a scalar block).
            tol: The stopping test's tolerance (above).
            init: Starting blocks $x_2, \dots, x_n$ (default: each level's declared
                ``Level(..., init=...)``, else 0).
            max_iter: Newton steps per level at most.
            starts: ``K`` adds a seeded multistart, bottom-up: each level $k = n, \dots, 2$
                is re-solved from $K$ points uniform in $x_k^* \pm r$ with the levels above
                held at the solution; a distinct minimiser whose $F_k$ is not above the
                solution's raises NonUniqueMinimiserError. Multistart can find a second
                minimiser, never prove there is none.
            seed: The multistart's seed.
            radius: The multistart's $r$ (default $2\,(1 + \lVert x_k^* \rVert_\infty)$).

        Returns:
            A `mlverify.nested.LowerSolution`: ``xs`` ($x_2^*, \dots, x_n^*$ as float64
                arrays), ``residuals`` (gradient norms) and ``distances`` (Newton's distance
                estimates) per level.

        Raises:
            ConvergenceError: A level stopped above its tolerance (with the distance
                reached).
            HessianError: Indefinite or degenerate, at the deepest such level.
            NonUniqueMinimiserError: Multistart found a second minimiser (level, $x_1$, both
                minimisers and their values).
            UnboundedLevelError: A level's objective decreases without bound.
            NonFiniteError: NaN or inf in a level's objective or gradient.
        """
        return self.numeric().solve_lower(x1_value, tol=tol, init=init, max_iter=max_iter,
                                          starts=starts, seed=seed, radius=radius)

    def hypergradient_at(self, x1_value: ArrayLike, *, curvature: bool = True,
                         tol: float = DEFAULT_TOL, init: Sequence[ArrayLike] | None = None,
                         with_error: bool = False, starts: int | None = None,
                         seed: int = 0) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        r"""The hypergradient $\mathrm{d}F_1/\mathrm{d}x_1$ at $x_1$ by the derived formulas
        (Lemmas 2.1, 3.1 and 3.2), the lower levels solved.

        Args:
            x1_value: The top-level block $x_1$ (a number for a scalar block).
            curvature: False drops the curvature terms of Lemma 3.2 (the approximation most
                libraries compute).
            tol: The lower solves' tolerance on Newton's distance (see `solve_lower`).
            init: Starting blocks $x_2, \dots, x_n$ of the lower solve.
            with_error: Also return an error estimate (below).
            starts: Seeded multistart points per level, to search for a second minimiser
                (see `solve_lower`).
            seed: The multistart's seed.

        Returns:
            The hypergradient as a float64 array of shape ``(d_1,)``; with
                ``with_error=True`` the pair ``(value, error_estimate)``: a first-order
                a-posteriori bound on $\lvert \text{value} - \text{exact} \rvert$ per
                component, from the lower levels' remaining distance to their solutions (one
                more nested Newton step, carried through the best-response Jacobians of
                Lemmas 3.1-3.2) plus round-off. With ``curvature=False`` the estimate is
                against the exact hypergradient: $\lvert \text{value} - \text{exact}
                \rvert$ plus the exact value's estimate.

        Raises:
            NonFiniteError: The hypergradient holds NaN or inf (level 1).
            MlverifyError: A lower solve or check failed; the error names the level
                (``ConvergenceError``, ``HessianError``, ``NonUniqueMinimiserError``,
                ``UnboundedLevelError``).
        """
        exact = self.numeric()
        solution = exact.solve_lower(x1_value, tol=tol, init=init, starts=starts, seed=seed)
        blocks = (solution.x1, *solution.xs)
        value = self.numeric(curvature).hypergradient_frozen(blocks)
        if not np.all(np.isfinite(value)):
            raise NonFiniteError("the hypergradient holds NaN or inf", level=1,
                                 quantity="hypergradient")
        if not with_error:
            return value
        error = exact.hypergradient_error(blocks)
        if not curvature:
            error = error + np.abs(value - exact.hypergradient_frozen(blocks))
        return value, error

    def lower(self, **options: Any) -> NumericProblem:
        r"""This problem as a `mlverify.numeric.NumericProblem` on the JAX core.

        Each objective $f_k$ is lowered to a JAX function of the tuple of blocks
        (`mlverify.lower.lower_problem`); a new NumericProblem on every call.

        Args:
            **options: Passed to `mlverify.lower.lower_problem`: ``init``, the start of each
                level (default: the declared starts, `inits`).

        Returns:
            The lowered `mlverify.numeric.NumericProblem`, its blocks named after the
                problem's symbols.

        Raises:
            TypeError: An option other than ``init``.
        """
        from .lower import lower_problem

        return lower_problem(self, **options)

    # ------------------------------------------------------------------ display
    def latex_jacobian(self, k: int, j: int, abstract: bool = True) -> str:
        r"""LaTeX of $D_j y_k$, in the lemmas' notation when ``abstract``
        (see `mlverify.latex`).

        Args:
            k: The lower level of the best response $y_k$, 1-based: $2 \le k \le n$.
            j: The level differentiated in, 1-based: $1 \le j < k$.
            abstract: True gives the formula of the lemma that applies at level $k$
                (Lemma 2.1, 3.1 or 3.2), written with the problem's level indices; False
                gives the derived matrix `best_response_jacobian(k, j)`.

        Returns:
            A LaTeX string ``D_{j} y_{k} = ...`` (no math delimiters).

        Raises:
            ProblemDefinitionError: ``k`` or ``j`` is out of range.
        """
        from .latex import latex_best_response_jacobian

        self._check_level(k, lowest=2)
        if not isinstance(j, (int, np.integer)) or not 1 <= j < k:
            raise ProblemDefinitionError(
                f"D_j y_k needs 1 <= j < k; got j={j!r}", level=k, quantity="level index"
            )
        return latex_best_response_jacobian(self, k, j, abstract=abstract)

    def __repr__(self) -> str:
        sizes = ", ".join(str(s) for s in self.sizes)
        return f"MultilevelProblem(n={self.n}, block sizes=({sizes}))"

    def hypergradient_enclosure(self, x1: ArrayLike, **options: Any) -> HypergradientEnclosure:
        r"""An interval proven to contain $\mathrm{d}F_1/\mathrm{d}x_1$ at ``x1`` (Lemmas 2.1,
        3.1, 3.2), in ball arithmetic: $\text{enc.lower} \le \mathrm{d}F_1/\mathrm{d}x_1 \le
        \text{enc.upper}$ componentwise (float64, rounded outward).

        See [`hypergradient_enclosure`][mlverify.certify.hypergradient.hypergradient_enclosure]
        in `mlverify.certify` for what is proven.

        Args:
            x1: The top-level block $x_1$ (a number for a scalar block).
            **options: Passed to that function: ``init`` (starting blocks of the float lower
                solve that gives the centre), ``pad`` (relative padding of
                ``lower``/``upper``) and ``bits`` (working precision of the ball arithmetic).

        Returns:
            A `mlverify.certify.HypergradientEnclosure`: ``proven_lower``/``proven_upper``
                (the proven interval), ``lower``/``upper`` (the same, padded), the
                enclosures of the lower solutions and proven lower bounds of
                $\lambda_{\min}(H_k)$.

        Raises:
            CertificationError: The proof could not be completed (the lower solutions not
                enclosed, an $H_k$ not proven positive definite, or a non-finite
                enclosure); the error names the level.
            ProblemDefinitionError: ``x1`` is not numeric or not of the block's size.
            MlverifyError: The float lower solve that gives the centre failed otherwise (for
                example ``ConvergenceError``), naming the level.
        """
        from .certify import hypergradient_enclosure

        return hypergradient_enclosure(self, x1, **options)


def _as_init(value, size: int, level: int) -> np.ndarray:
    """A level's declared start as a float64 vector of its block's size (zeros if None)."""
    if value is None:
        return np.zeros(size)
    try:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ProblemDefinitionError(f"init = {value!r} is not numeric", level=level,
                                     quantity="init") from exc
    if array.size == 1 and size > 1:
        array = np.full(size, array[0])
    if array.size != size:
        raise ProblemDefinitionError(f"init has {array.size} entries but the block has {size}",
                                     level=level, quantity="init")
    if not np.all(np.isfinite(array)):
        raise NonFiniteError("init holds NaN or inf", level=level, quantity="init")
    return array


def _check_variables(blocks, objectives) -> None:
    owner: dict[sp.Symbol, int] = {}
    for k, block in enumerate(blocks, start=1):
        for v in block:
            if v in owner:
                where = "twice in this level" if owner[v] == k else f"also in level {owner[v]}"
                raise ProblemDefinitionError(
                    f"variable {v} is declared {where}", level=k, quantity="variable"
                )
            owner[v] = k
    for k, (block, objective) in enumerate(zip(blocks, objectives, strict=True), start=1):
        undeclared = sorted(objective.free_symbols - owner.keys(), key=str)
        if undeclared:
            names = ", ".join(str(s) for s in undeclared)
            raise ProblemDefinitionError(
                f"the objective uses undeclared symbol(s) {names}; declare them as a level's "
                "variables or substitute numbers for them",
                level=k,
                quantity="objective",
            )
        if k >= 2 and not (objective.free_symbols & set(block)):
            raise ProblemDefinitionError(
                f"the objective does not depend on the level's own variable(s) "
                f"{', '.join(map(str, block))}, so its argmin is not unique",
                level=k,
                quantity="objective",
            )
        if k == 1 and not objective.free_symbols:
            raise ProblemDefinitionError(
                "the upper objective is constant", level=k, quantity="objective"
            )
