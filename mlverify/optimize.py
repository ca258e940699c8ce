r"""The outer algorithms and their traces.

All share the projected outer step $x_1 \leftarrow \Pi_X(x_1 - \alpha g_t)$; they differ in
$g_t$ (Theorem 4.1 bounds the exact case, Theorem 4.2 the inexact ones):

- ``implicit-exact``: levels $n, \dots, 2$ solved to tolerance (warm-started), $g_t$ the exact
  hypergradient there.
- ``aid-cg``, ``aid-neumann``, ``no-curvature``: lower levels solved, $g_t$ by truncated CG /
  Neumann solves (``iterations``) or without the curvature terms.
- ``hierarchical``: the single-loop scheme: per round, for $k = n, \dots, 2$, ``inner_steps``
  gradient steps $x_k \leftarrow x_k - \beta_k D_k F_k$ with $D_k F_k$ by the lemmas at the
  current iterates (no nested solve), then $g_t$ by the exact formula at the current iterates.
- ``itd``: ``inner_steps`` unrolled gradient steps per level from a fixed start, nested, and
  differentiated through (Sato et al. 2021).
"""

from __future__ import annotations

import json
import sys
import time
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from .errors import DivergenceError, HessianError, NonFiniteError
from .numeric import NumericProblem
from .numeric.implicit import DENSE_LIMIT

if TYPE_CHECKING:
    from .nested import LowerSolution
    from .problem import MultilevelProblem
    from .symsolve import SymbolicBackend

#: The outer algorithms `optimize` runs (see the Algorithms page of the documentation).
OUTER_METHODS = ("implicit-exact", "hierarchical", "itd", "aid-cg", "aid-neumann", "no-curvature")
#: Lower-solve tolerance (``solve_lower``'s ``tol``, on Newton's relative distance estimate)
#: of the solved methods, of the reference values and hypergradients a run tracks, and of
#: exact_value_and_gradient, on either backend: looser than both backends' default
#: (`mlverify.checks.DEFAULT_TOL`, 1e-12), which is not reachable in float64 at every point
#: a run visits.
REFERENCE_TOL = 1e-10
_HYPERGRADIENT_METHOD = {
    "implicit-exact": "exact",
    "aid-cg": "cg",
    "aid-neumann": "neumann",
    "no-curvature": "no-curvature",
}


@dataclass
class Trace:
    r"""One run. Per round $t < T$: the hypergradient used (``grad``), its norm, and when
    ``track_exact`` the exact hypergradient norm and the error
    $\lVert g_t - \nabla F_1(x_1^t) \rVert$; ``x1`` and ``F1`` have $T + 1$ rows ($F_1$ with
    lower levels solved when known, else $f_1$ at the iterates; ``F1_exact`` says which).
    ``time`` is cumulative wall time of the algorithm alone (tracking excluded); ``evals``
    counts hypergradient evaluations and inner iterations.

    Attributes:
        method: The outer method run (one of `OUTER_METHODS`).
        x1: The iterates $x_1^0, \dots, x_1^T$, shape $(T + 1, d_1)$.
        F1: $F_1$ at each iterate, $T + 1$ values (see ``F1_exact``).
        grad: The hypergradient $g_t$ each round used, shape $(T, d_1)$.
        grad_norm: $\lVert g_t \rVert$ per round.
        time: Cumulative wall time (s) of the algorithm alone after each round.
        evals: Cumulative hypergradient evaluations and inner iterations after each round.
        exact_grad_norm: $\lVert \nabla F_1(x_1^t) \rVert$ per round (``track_exact``),
            else None.
        error: $\lVert e_t \rVert = \lVert g_t - \nabla F_1(x_1^t) \rVert$ per round
            (``track_exact``), else None.
        F1_exact: True where ``F1`` is $F_1$ with the lower levels solved; False where it is
            $f_1$ at the single loop's lower iterates.
        options: The run's options (step size, inner steps, method options), as recorded.
    """

    method: str
    x1: np.ndarray
    F1: np.ndarray
    grad: np.ndarray
    grad_norm: np.ndarray
    time: np.ndarray
    evals: np.ndarray
    exact_grad_norm: np.ndarray | None = None
    error: np.ndarray | None = None
    F1_exact: bool = True
    options: dict = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        """The number of outer rounds $T$ run (one hypergradient per round)."""
        return len(self.grad_norm)

    def save(self, path: str) -> None:
        """Save as ``.npz`` or ``.json`` (by the file's suffix).

        JSON holds every field as plain lists and values; ``.npz`` holds the arrays, with the
        other fields (``method``, ``F1_exact``, ``options``) as JSON in its ``meta`` entry.
        Fields that are None are left out. `load` reads either back.

        Args:
            path: The file to write; a name ending in ``.json`` is written as JSON, any
                other as ``.npz`` (NumPy appends ``.npz`` to a name without that suffix).
        """
        data = {k: v for k, v in asdict(self).items() if v is not None}
        if str(path).endswith(".json"):
            serial = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in data.items()}
            with open(path, "w") as fh:
                json.dump(serial, fh)
        else:
            arrays = {k: v for k, v in data.items() if isinstance(v, np.ndarray)}
            meta = {k: v for k, v in data.items() if not isinstance(v, np.ndarray)}
            np.savez(path, meta=json.dumps(meta), **arrays)

    @classmethod
    def load(cls, path: str) -> Trace:
        """A trace saved by `save` (``.npz`` or ``.json``, by the file's suffix).

        Args:
            path: The file written by `save`; a name ending in ``.json`` is read as JSON,
                any other as ``.npz``.

        Returns:
            The `Trace`, its arrays as float64 NumPy arrays.
        """
        if str(path).endswith(".json"):
            with open(path) as fh:
                data = json.load(fh)
            meta = {k: data.pop(k) for k in ("method", "F1_exact", "options") if k in data}
            arrays = {k: np.asarray(v, dtype=np.float64) for k, v in data.items()}
        else:
            with np.load(path) as npz:
                meta = json.loads(str(npz["meta"]))
                arrays = {k: npz[k] for k in npz.files if k != "meta"}
        return cls(**meta, **arrays)


def project(x: ArrayLike, box: tuple | None) -> ArrayLike:
    r"""$\Pi_X$ for a box $X = [\mathrm{lo}, \mathrm{hi}]$ (scalars or arrays); identity when
    ``box`` is None.

    Args:
        x: The point (or points: the box broadcasts against the last axis).
        box: ``(lo, hi)``, floats or arrays of the point's shape; None for no constraint.

    Returns:
        ``x`` clipped to the box componentwise (a new array), or ``x`` itself when ``box`` is
            None.
    """
    if box is None:
        return x
    lo, hi = box
    return np.clip(x, lo, hi)


def as_numeric(
    problem: MultilevelProblem | NumericProblem, method: str = "itd"
) -> NumericProblem | SymbolicBackend:
    """The numeric backend: a NumericProblem as given; a declared problem runs on its compiled
    symbolic formulas for the exact, no-curvature and hierarchical methods (no JAX compile)
    and is lowered to the JAX core for the others.

    Args:
        problem: A declared ``MultilevelProblem`` or a ``NumericProblem``.
        method: The outer method the backend serves (one of `OUTER_METHODS`; any other name
            gets the JAX core).

    Returns:
        ``problem`` itself when it is a NumericProblem; for a declared problem, a
            `mlverify.symsolve.SymbolicBackend` for ``"implicit-exact"``,
            ``"no-curvature"`` and ``"hierarchical"``, else its JAX lowering
            (`MultilevelProblem.lower`, made once per problem and kept while it lives).
    """
    if isinstance(problem, NumericProblem):
        return problem
    if method in ("implicit-exact", "no-curvature", "hierarchical"):
        from .symsolve import SymbolicBackend

        return SymbolicBackend(problem)
    return _lowered(problem)


#: One JAX lowering per declared problem, so each of its programs is compiled once per
#: process however many runs use it (the NumericProblem keeps its compiled functions).
_LOWERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _lowered(problem):
    try:
        return _LOWERED[problem]
    except KeyError:
        _LOWERED[problem] = numeric = problem.lower()
        return numeric
    except TypeError:  # not weakly referenceable or unhashable: lower it each time
        return problem.lower()


def exact_value_and_gradient(
    num: NumericProblem | SymbolicBackend,
    x1: ArrayLike,
    init: Sequence[ArrayLike] | None = None,
) -> tuple[float, np.ndarray, LowerSolution]:
    r"""$(F_1, \nabla F_1, \text{lower solution})$ at $x_1$, lower levels solved, on either
    backend.

    The lower levels are solved to `REFERENCE_TOL`; the gradient is the exact hypergradient
    (with the curvature terms of Lemma 3.2) at that solution.

    Args:
        num: The backend, as `as_numeric` gives it.
        x1: The top-level block $x_1$ as a flat vector of length $d_1$.
        init: Starting blocks $x_2, \dots, x_n$ of the lower solve (default: the problem's
            initial point).

    Returns:
        The triple ``(value, gradient, lower)``: $F_1(x_1)$ as a float, $\nabla F_1(x_1)$ as
            a flat float64 array of length $d_1$, and the lower solution (a
            `mlverify.nested.LowerSolution`).

    Raises:
        MlverifyError: The lower solve or its checks failed; the error names the level
            (for example ``ConvergenceError`` or ``HessianError``).
    """
    options = {"tol": REFERENCE_TOL} if init is None else {"tol": REFERENCE_TOL, "init": init}
    lower = num.solve_lower(num.unflatten(0, jnp.asarray(x1)), **options)
    flat = [jnp.asarray(x1)] + [num.flatten(k, x) for k, x in enumerate(lower, 1)]
    value = num.objective_value(0, flat)
    grad = np.asarray(
        num.flatten(
            0, num.hypergradient_frozen([num.unflatten(k, x) for k, x in enumerate(flat)], "exact")
        )
    )
    return value, grad, lower


def hessian_F1(
    num: NumericProblem | SymbolicBackend, x1: ArrayLike, step: float = 1e-5
) -> np.ndarray:
    r"""Hessian of $F_1$ at $x_1$: central differences of the exact hypergradient (symmetrised).

    Each column costs two lower solves (`exact_value_and_gradient`, from the problem's
    initial point).

    Args:
        num: The backend, as `as_numeric` gives it.
        x1: The top-level block $x_1$ as a flat vector of length $d_1$.
        step: The difference step $h$ in each coordinate: column $i$ is
            $(\nabla F_1(x_1 + h e_i) - \nabla F_1(x_1 - h e_i)) / (2h)$.

    Returns:
        The symmetrised $d_1 \times d_1$ float64 matrix $(H + H^\top)/2$.

    Raises:
        MlverifyError: A lower solve failed; the error names the level.
    """
    x1 = np.asarray(x1, dtype=np.float64)
    columns = []
    for i in range(x1.size):
        e = np.zeros_like(x1)
        e[i] = step
        plus = exact_value_and_gradient(num, x1 + e)[1]
        minus = exact_value_and_gradient(num, x1 - e)[1]
        columns.append((plus - minus) / (2 * step))
    h = np.array(columns).T
    return 0.5 * (h + h.T)


def estimate_lipschitz(num: NumericProblem | SymbolicBackend, x1: ArrayLike) -> float:
    r"""$\lambda_{\max}$ of the Hessian of $F_1$ at $x_1$ (a local estimate of $L$).

    Args:
        num: The backend, as `as_numeric` gives it.
        x1: The top-level block $x_1$ (shaped as declared, or flat).

    Returns:
        The largest eigenvalue of `hessian_F1` at ``x1`` (signed: negative where $F_1$ is
            concave there).

    Raises:
        MlverifyError: A lower solve failed; the error names the level.
    """
    return float(np.linalg.eigvalsh(hessian_F1(num, np.asarray(num.flatten(0, x1))))[-1])


def optimize(
    problem: MultilevelProblem | NumericProblem,
    method: str = "implicit-exact",
    steps: int = 100,
    *,
    step_size: float | str | None = None,
    L: float | None = None,
    box: tuple | None = None,
    x0: ArrayLike | None = None,
    inner_steps: int = 10,
    inner_lr: float | Sequence[float] | None = None,
    iterations: int = 10,
    track_exact: bool = False,
    progress: bool = False,
    solve_options: dict | None = None,
    lower_init: Sequence[ArrayLike] | None = None,
) -> Trace:
    r"""Run ``method`` for ``steps`` rounds on a MultilevelProblem or NumericProblem.

    Every method takes the projected step $x_1 \leftarrow \Pi_X(x_1 - \alpha g_t)$ and
    differs in $g_t$ (the module's list; Theorem 4.1 bounds the exact case, Theorem 4.2 the
    single-loop one).

    Args:
        problem: A declared ``MultilevelProblem`` (its compiled formulas are used) or a
            ``NumericProblem``.
        method: One of `OUTER_METHODS`: ``"implicit-exact"``, ``"hierarchical"``,
            ``"itd"``, ``"aid-cg"``, ``"aid-neumann"`` or ``"no-curvature"``.
        steps: The number of outer rounds $T$.
        step_size: A float $\alpha$, or ``None`` / ``"1/L"`` for $1/L$ with ``L`` given or
            estimated at $x^0$ ($\lambda_{\max}$ of the Hessian of $F_1$).
        L: The smoothness constant behind ``step_size="1/L"``; estimated when ``None``.
        box: ``(lo, hi)``, the box $X$ that $x_1$ is projected onto (floats or arrays of
            $x_1$'s shape); ``None`` for no constraint.
        x0: The start $x_1^0$; the problem's declared initial point when ``None``.
        inner_steps: Inner gradient steps per lower level and round, for ``"hierarchical"``
            (steps on the iterates) and ``"itd"`` (unrolled steps, differentiated through).
        inner_lr: ITD's inner step size, a float or one per lower level. For a declared
            problem the default is $1/(1.2 \max_k L_k)$ at the start for the whole run
            ($L_k$ the largest eigenvalue of $D_{kk} F_k$ by the lemmas), so its program
            holds no nested implicit derivative and compiles once.
        iterations: Truncation of the approximate linear solves: CG iterations for
            ``"aid-cg"``, Neumann terms for ``"aid-neumann"``.
        track_exact: Also record, every round, the exact hypergradient's norm and the error
            $\lVert g_t - \nabla F_1(x_1^t) \rVert$ (outside the timed part).
        progress: True prints a line every tenth of the run on stderr; a callable is called
            as ``progress(rounds_done, steps)`` after every round (e.g. to drive a progress
            bar).
        solve_options: Options of the lower solves (``tol``, ``max_iter``, ``method``, ...;
            see ``solve_lower``); the solved methods warm-start every round from the last
            solution.
        lower_init: Blocks $x_2, \dots, x_n$ where the single-loop iterates start and where
            ITD's unrolled steps start every round (default: the problem's initial point).

    Returns:
        The run's `Trace`: per round the iterate, $F_1$, the hypergradient used and its
        norm, the cumulative time and evaluation count, and with ``track_exact`` the exact
        norm and the error.

    Raises:
        ValueError: An unknown ``method`` or ``step_size`` string.
        UnknownOptionError: A misspelled key in ``solve_options``.
        NonFiniteError: The run produced NaN or inf (it names the round and the quantity).
        MlverifyError: A lower solve failed; the error names the level (for example
            ``ConvergenceError`` or ``HessianError``).
    """
    if method not in OUTER_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(OUTER_METHODS)}")
    num = as_numeric(problem, method)
    # Values, L and the tracked exact hypergradient come from the exact backend: for a
    # declared problem its compiled symbolic formulas, so ITD compiles only its own program.
    reference = as_numeric(problem, "implicit-exact")
    solve_options = dict(solve_options or {})
    x1 = np.asarray(num.flatten(0, num.init[0] if x0 is None else x0), dtype=np.float64)
    x1 = project(x1, box)
    if isinstance(step_size, str) and step_size != "1/L":
        raise ValueError(f"unknown step_size {step_size!r}; give a float, None or '1/L'")
    if step_size is None or step_size == "1/L":
        L = L if L is not None else estimate_lipschitz(
            reference, reference.unflatten(0, jnp.asarray(x1))
        )
        alpha = 1.0 / L
    else:
        alpha = float(step_size)
    if lower_init is not None:
        lower_init = [np.asarray(num.flatten(k, x), dtype=np.float64)
                      for k, x in enumerate(lower_init, 1)]
    if method == "itd" and inner_lr is None and reference is not num:
        # The same step rule as the JAX core's default, evaluated once by the exact backend:
        # the unrolled program then holds no nested implicit derivative to compile.
        start = lower_init if lower_init is not None else list(reference.init[1:])
        lipschitz = reference.lower_lipschitz([x1, *start])
        # one step for every level (the JAX core takes a scalar or per-level steps; a
        # scalar keeps the compiled-program cache key hashable and the JAX call warning-free)
        inner_lr = float(1.0 / max(1.2 * max(lipschitz), 1e-12))
    runner = _Runner(num, method, inner_steps, inner_lr, iterations, solve_options, reference,
                     lower_init)
    xs_hist, f_hist, g_hist, times, evals = [x1.copy()], [], [], [], []
    exact_norms, errors = [], []
    elapsed = 0.0
    for t in range(steps):
        start = time.perf_counter()
        g = runner.step(x1)
        previous, x1 = x1, project(x1 - alpha * g, box)
        elapsed += time.perf_counter() - start
        value = runner.value(previous)
        if not (np.all(np.isfinite(g)) and np.all(np.isfinite(x1))):
            raise NonFiniteError(
                f"round {t}: NaN or inf in the hypergradient or the iterate",
                level=1,
                quantity="outer iterate",
            )
        f_hist.append(value)
        g_hist.append(g)
        xs_hist.append(x1.copy())
        times.append(elapsed)
        evals.append(runner.evals)
        if track_exact:
            exact = runner.exact_hypergradient(xs_hist[-2])
            exact_norms.append(float(np.linalg.norm(exact)))
            errors.append(float(np.linalg.norm(g - exact)))
        if callable(progress):
            progress(t + 1, steps)
        elif progress and (t + 1) % max(1, steps // 10) == 0:
            print(
                f"  {method}: round {t + 1}/{steps}, |g| = {np.linalg.norm(g):.3e}",
                file=sys.stderr,
                flush=True,
            )
    f_hist.append(runner.final_value(x1))
    return Trace(
        method=method,
        x1=np.array(xs_hist),
        F1=np.array(f_hist),
        grad=np.array(g_hist),
        grad_norm=np.linalg.norm(np.array(g_hist), axis=1),
        time=np.array(times),
        evals=np.array(evals, dtype=np.float64),
        exact_grad_norm=np.array(exact_norms) if track_exact else None,
        error=np.array(errors) if track_exact else None,
        F1_exact=runner.reports_F1,
        options={
            "alpha": alpha,
            "inner_steps": inner_steps,
            "iterations": iterations,
            "box": None if box is None else [np.asarray(b).tolist() for b in box],
        },
    )


class _Runner:
    """Per-method state between rounds (warm starts, single-loop iterates)."""

    def __init__(self, num, method, inner_steps, inner_lr, iterations, solve_options,
                 reference=None, lower_init=None):
        self.num, self.method = num, method
        self.reference = num if reference is None else reference
        self.inner_steps, self.inner_lr, self.iterations = inner_steps, inner_lr, iterations
        self.solve_options = solve_options
        self.solves_lower = method in _HYPERGRADIENT_METHOD
        self.reports_F1 = method != "hierarchical"
        self.lower = None
        self.lower_init = (list(lower_init) if lower_init is not None
                           else [num.init[k] for k in range(1, num.n)])
        self.iterates = list(self.lower_init)
        self.evals = 0
        self._betas = None

    def _solve_options(self):
        options = {"tol": REFERENCE_TOL, **self.solve_options}
        if self.lower is not None:
            options.setdefault("init", self.lower)
        return options

    def _solve(self, x1):
        self.lower = self.num.solve_lower(
            self.num.unflatten(0, jnp.asarray(x1)), **self._solve_options()
        )
        self.evals += self.lower.iterations
        return self.lower

    def _frozen(self, x1, lower, method, **options):
        xs = (self.num.unflatten(0, jnp.asarray(x1)), *lower)
        return np.asarray(self.num.flatten(0, self.num.hypergradient_frozen(xs, method, **options)))

    def step(self, x1):
        """$g_t$ at $x_1^t$ (what the timer measures)."""
        num = self.num
        self.evals += 1
        if self.solves_lower:
            # One compiled call: lower solve (warm-started) and hypergradient at its result.
            options = (
                {"iterations": self.iterations} if self.method in ("aid-cg", "aid-neumann") else {}
            )
            g, self.lower = num.solve_and_hypergradient(
                num.unflatten(0, jnp.asarray(x1)), _HYPERGRADIENT_METHOD[self.method],
                solve_options=self._solve_options(), **options,
            )
            self.evals += self.lower.iterations
            return np.asarray(num.flatten(0, g))
        if self.method == "itd":
            start = [num.unflatten(k, x) for k, x in enumerate(self.lower_init, 1)]
            options = {"steps": self.inner_steps}
            if self.inner_lr is not None:
                options["inner_lr"] = self.inner_lr
            return self._frozen(x1, start, "itd", **options)
        # hierarchical single loop
        flat = [jnp.asarray(x1)] + [num.flatten(k, x) for k, x in enumerate(self.iterates, 1)]
        betas = self._step_sizes(flat)
        for k in range(num.n - 1, 0, -1):
            for _ in range(self.inner_steps):
                gk = num.reduced_gradient_frozen(k, tuple(flat))
                flat[k] = flat[k] - betas[k] * gk
                self.evals += 1
            if not np.all(np.isfinite(np.asarray(flat[k]))):
                raise DivergenceError(
                    f"the single-loop inner steps on level {k + 1} diverged to NaN or inf: the "
                    f"step 1/L = {betas[k]:.3g} (L = lambda_max of D_kk F_k at the start) is "
                    "too large for the curvature the iterates met; pass a smaller inner_lr",
                    level=k + 1)
        self.iterates = flat[1:]
        xs = [num.unflatten(k, x) for k, x in enumerate(flat)]
        return np.asarray(num.flatten(0, num.hypergradient_frozen(xs, "exact")))

    def value(self, x1):
        """$F_1$ at $x_1$ (lower levels solved; for ITD solved outside the timer), or $f_1$ at
        the single-loop iterates for ``hierarchical``."""
        if self.solves_lower:
            return self._f1(x1, self.lower)
        if self.method == "itd":
            ref = self.reference
            lower = ref.solve_lower(ref.unflatten(0, jnp.asarray(x1)), **self._reference_options())
            flat = (jnp.asarray(x1),) + tuple(ref.flatten(k, x) for k, x in enumerate(lower, 1))
            return float(ref.objective_value(0, flat))
        flat = (jnp.asarray(x1),) + tuple(self.iterates)
        return float(self.num.objective_value(0, flat))

    def _step_sizes(self, flat):
        if self._betas is None:
            if self.inner_lr is not None:
                self._betas = [None] + [float(self.inner_lr)] * (self.num.n - 1)
            else:
                xs = [self.num.unflatten(k, x) for k, x in enumerate(flat)]
                lipschitz = self.num.lower_lipschitz(xs)
                finite = all(np.isfinite(lam) and lam > 0 for lam in lipschitz)
                # Every D_kk F_k positive definite at the start, not only lambda_max > 0: the
                # dense (stacked) formulas stay finite above an indefinite level. Matrix-free
                # levels (blocks over DENSE_LIMIT) are checked only where L_k already failed,
                # as their Hessians are not formed otherwise.
                if not finite or max(self.num.sizes[1:]) <= DENSE_LIMIT:
                    self._check_start_hessians(xs)
                if not finite:
                    raise HessianError("the single loop's inner step 1/L is not finite at the "
                                       "start iterates; give inner_lr", level=2)
                self._betas = [None] + [1.0 / lam for lam in lipschitz]
        return self._betas

    def _check_start_hessians(self, xs):
        """HessianError for the deepest level whose $D_{kk} F_k$ (the lemmas' formulas at the
        start iterates) is not positive definite: the single loop's steps $1/L_k$ need it."""
        hessians = self.num.lower_hessians(xs)
        for k in range(len(hessians), 0, -1):
            h = np.asarray(hessians[k - 1], dtype=np.float64)
            lowest = (float(np.linalg.eigvalsh(0.5 * (h + h.T))[0]) if np.all(np.isfinite(h))
                      else float("nan"))
            if not lowest > 0:
                what = ("not finite" if not np.isfinite(lowest)
                        else f"not positive definite (min eigenvalue {lowest:.3g})")
                raise HessianError(
                    f"the single loop's inner step 1/L needs D_kk F_k positive definite at the "
                    f"start iterates, and at level {k + 1} it is {what} there (the formulas are "
                    "evaluated at the unsolved lower iterates): start the lower levels nearer "
                    "their solutions (lower_init=...) or give inner_lr",
                    level=k + 1, min_eigenvalue=lowest if np.isfinite(lowest) else None)

    def _f1(self, x1, lower):
        flat = (jnp.asarray(x1),) + tuple(self.num.flatten(k, x) for k, x in enumerate(lower, 1))
        return float(self.num.objective_value(0, flat))

    def _reference_options(self):
        # the JAX core's default tolerance, also when the reference is the symbolic solver
        return {"tol": REFERENCE_TOL, **self.solve_options}

    def exact_hypergradient(self, x1):
        ref = self.reference
        lower = ref.solve_lower(ref.unflatten(0, jnp.asarray(x1)), **self._reference_options())
        xs = (ref.unflatten(0, jnp.asarray(x1)), *lower)
        return np.asarray(ref.flatten(0, ref.hypergradient_frozen(xs, "exact")))

    def final_value(self, x1):
        if self.solves_lower:
            self._solve(x1)
        return self.value(x1)
