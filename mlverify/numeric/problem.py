"""``NumericProblem``: an n-level problem as JAX callables, and its one numeric interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import cho_factor
from numpy.typing import ArrayLike

from .. import checks, nested
from ..checks import DEFAULT_TOL, check_lower_hessian
from ..errors import (
    ConvergenceError,
    CostError,
    DivergenceError,
    HessianError,
    MlverifyError,
    NonFiniteError,
    ProblemDefinitionError,
    UnknownOptionError,
)
from ..nested import LowerSolution
from . import cost, stacked
from .implicit import DENSE_LIMIT, ImplicitCore, LinearSolve
from .itd import itd_hypergradient_and_flags

#: The hypergradient methods of `NumericProblem.hypergradient` and `hypergradient_frozen`.
METHODS = ("exact", "no-curvature", "cg", "neumann", "itd", "fd")

#: XLA options for the core's compiled functions. The exact hypergradient's graph grows
#: steeply with $n$ and XLA's LLVM optimisation dominates its compile time; at $n = 5$, blocks
#: of 4, level 0 cut compile from ~29 s to ~11 s with run time unchanged (0.5 ms), since
#: the work is many small ops rather than tight loops (benchmarks/results/numeric.md).
#: XLA:CPU's fusion emitters off: the joint solve's step (blocks of 4) compiled in 1.2 /
#: 5.1 / 37 s instead of 2.6 / 8.9 / 65 s at 5 / 6 / 7 levels, peak memory 3.6 GB instead
#: of 5.2 at 7, the same values to the last bit and run time within noise.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                    "xla_cpu_use_fusion_emitters": False}
#: The depth from which a problem's solve programs compile with `COMPILER_OPTIONS` (at 3
#: levels the joint solve's step compiled in 0.22 s instead of 0.83, running 0.33 against
#: 0.26 ms; below, XLA's defaults).
DEEP_FROM = 3


def compiler_options(n: int) -> dict | None:
    """The compiler options of an ``n``-level solve program: `COMPILER_OPTIONS` from
    `DEEP_FROM` levels, else XLA's defaults (None)."""
    return COMPILER_OPTIONS if n >= DEEP_FROM else None

#: How often ITD's default inner steps are halved after its unrolled steps diverged.
ITD_HALVINGS = 10
#: Where a lower block is over the dense limit, up to this many levels
#: `solve_and_hypergradient` runs the nested solve and the hypergradient in one compiled call
#: (one dispatch per outer step); deeper, they compile apart: XLA's memory grows faster
#: than the program (6 levels, blocks of 4: a fused program exhausted 13 GB).
FUSED_MAX_LEVELS = 5


@dataclass(frozen=True)
class _Block:
    size: int
    unravel: Callable
    structure: object  # the pytree structure and leaf shapes of the declared block
    vector: bool  # declared as one 1-D array: its flat form is the block itself


class NumericProblem:
    """An n-level problem on the JAX core (float64; jit, vmap and grad compose).

    ``objectives[k](xs) -> scalar`` where ``xs`` is the tuple of all level variables (arrays
    or pytrees, shaped like ``init``); ``init[k]`` is each level's starting point and fixes
    its shape. Shapes and scalar outputs are checked here, before anything is traced.
    """

    def __init__(self, objectives: Sequence[Callable], init: Sequence, *, names=None):
        objectives = tuple(objectives)
        init = tuple(init)
        if len(objectives) < 2:
            raise ProblemDefinitionError(
                f"a multilevel problem needs at least 2 levels, got {len(objectives)}",
                quantity="level list",
            )
        if len(init) != len(objectives):
            raise ProblemDefinitionError(
                f"{len(objectives)} objectives but {len(init)} initial points", quantity="init"
            )
        blocks, flat_init = [], []
        for k, x0 in enumerate(init, start=1):
            flat, unravel = ravel_pytree(jax.tree_util.tree_map(_as_float64, x0))
            if flat.size == 0:
                raise ProblemDefinitionError(
                    "the variable block is empty", level=k, quantity="init"
                )
            if not bool(jnp.all(jnp.isfinite(flat))):
                raise NonFiniteError("the initial point holds NaN or inf", level=k, quantity="init")
            leaves = jax.tree_util.tree_leaves(x0)
            vector = len(leaves) == 1 and np.ndim(leaves[0]) == 1
            blocks.append(_Block(int(flat.size), unravel, _structure(x0), vector))
            flat_init.append(flat)
        self._blocks = tuple(blocks)
        self.sizes = tuple(b.size for b in blocks)
        self.n = len(objectives)
        self.objectives = objectives
        self.init = tuple(flat_init)
        self.names = (
            tuple(names) if names is not None else tuple(f"x{k}" for k in range(1, self.n + 1))
        )
        flat_fs = tuple(self._flat_objective(k) for k in range(self.n))
        for k, f in enumerate(flat_fs, start=1):
            out = jax.eval_shape(f, self.init)
            if out.shape != ():
                raise ProblemDefinitionError(
                    f"the objective must return a scalar, got shape {out.shape}",
                    level=k,
                    quantity="objective",
                )
        self.core = ImplicitCore(flat_fs, self.sizes)
        self._jit_cache: dict = {}

    # ------------------------------------------------------------------ blocks
    def _flat_objective(self, k):
        f = self.objectives[k]
        blocks = self._blocks

        def flat(xs):
            return jnp.asarray(f(tuple(b.unravel(x) for b, x in zip(blocks, xs, strict=True))))

        return flat

    def flatten(self, k: int, value) -> jax.Array:
        """Block k (0-based) as a flat float64 vector, shape-checked (level named 1-based)."""
        if _is_flat(value, self.sizes[k]):
            return value  # what the checks below would accept and return (hot path: warm starts)
        flat, _ = ravel_pytree(jax.tree_util.tree_map(_as_float64, value))
        if flat.shape != (self.sizes[k],):
            raise ProblemDefinitionError(
                f"x_{k + 1} has {flat.size} entries but the block has {self.sizes[k]}",
                level=k + 1,
                quantity=f"x_{k + 1}",
            )
        declared, given = self._blocks[k].structure, _structure(value)
        # A flat vector for a multi-dimensional block is accepted (that is what flatten gives).
        if given != declared and given != _structure(flat):
            raise ProblemDefinitionError(
                f"x_{k + 1} has shape {given} but the block was declared as {declared}",
                level=k + 1,
                quantity=f"x_{k + 1}",
            )
        return flat

    def unflatten(self, k: int, flat) -> object:
        """Block k shaped as declared, from its flat float64 vector."""
        block = self._blocks[k]
        if block.vector and _is_flat(flat, block.size):
            return flat  # unravel would return an equal copy
        return block.unravel(flat)

    def _flat_all(self, xs) -> tuple:
        if len(xs) != self.n:
            raise ProblemDefinitionError(
                f"expected {self.n} blocks (levels 1..{self.n}), got {len(xs)}", quantity="xs"
            )
        return tuple(self.flatten(k, x) for k, x in enumerate(xs))

    def _jit(self, key, build, options=COMPILER_OPTIONS, checked_levels: int | None = None,
             program: str = "stacked"):
        """``jax.jit(build())`` under ``key``, built once; with ``checked_levels``, a
        `cost.CheckedProgram` (its traced size checked before XLA compiles it; ``program``
        names what it computes in a refusal)."""
        if key not in self._jit_cache:
            jitted = jax.jit(build(), compiler_options=options)
            self._jit_cache[key] = (jitted if checked_levels is None
                                    else cost.CheckedProgram(jitted, checked_levels, program,
                                                             compiler_options=options))
        return self._jit_cache[key]

    # ------------------------------------------------------------------ hypergradients
    def hypergradient_frozen(self, xs, method: str = "exact", **options):
        """The hypergradient by ``method`` at the given iterates ``xs`` (all n blocks), no solve.

        Methods: ``exact`` (all curvature terms), ``no-curvature``, ``cg`` and ``neumann``
        (``iterations=K`` truncated solves), ``itd`` (``steps=K`` unrolled inner steps per
        level from these iterates, ``inner_lr``; without it the steps are $1/(1.2 L_k)$ at the
        start, halved while any level's unrolled steps raise its objective, up to
        ``ITD_HALVINGS`` times; a given ``inner_lr`` that diverges raises DivergenceError).
        Returns an array shaped like $x_1$.
        """
        _check_method(method)
        flat = self._flat_all(xs)
        value, status = self._frozen_flat(flat, method, options)
        if method == "itd" and options.get("inner_lr") is None:
            value, status = self._itd_backtrack(flat, options, value, status)
        self._check_status(status, method, flat)
        return self.unflatten(0, value)

    def _itd_backtrack(self, flat, options, value, status):
        """ITD's default steps (1/(1.2 L_k) at the start) can be too large where the
        curvature grows along the unrolled path; halve them until no level's unrolled steps
        raise its objective (at most ``ITD_HALVINGS`` times)."""
        scale = 1.0
        fn = self._frozen_fn("itd", options)
        for _ in range(ITD_HALVINGS):
            if not bool(np.any(np.asarray(status["inner_rise"]))):
                break
            scale *= 0.5
            value, status = fn(flat, np.float64(scale))
        status = dict(status, step_scale=scale)
        return value, status

    def hypergradient_function(self, method: str = "exact", **options):
        """A pure, jit- and vmap-able ``flat_blocks -> (value, status)`` for ``method``.

        ``flat_blocks`` is the tuple of all n blocks as flat float64 vectors (``flatten``).
        ``status`` holds JAX booleans: ``finite`` (the value has no NaN or inf); for dense
        lower blocks, ``cholesky_ok[k]`` ($H_k$ was positive definite at the iterates); for
        ``itd``, ``inner_rise`` ($n$ flags: level $k$'s unrolled steps raised $f_k$, so its step is
        too large; `hypergradient_frozen` halves the default step and retries, this
        pure function does not). Under your own jit or vmap, check them, or pass them to
        `check_status` outside.
        """
        _check_method(method, exclude=("fd",))
        return self._frozen_builder(method, dict(options))

    def check_status(self, status, method: str = "exact", xs=None) -> None:
        """Raise HessianError or NonFiniteError (naming the level) for a failed status;
        given the iterates ``xs`` (one instance), the error also reports eigenvalues."""
        flat = None if xs is None else self._flat_all(xs)
        self._check_status(jax.tree_util.tree_map(np.asarray, status), method, flat)

    def hypergradient(self, x1: ArrayLike, method: str = "exact", *,
                      solve_options: dict | None = None, with_error: bool = False,
                      **options: object) -> jax.Array | tuple[np.ndarray, np.ndarray]:
        r"""The hypergradient $\mathrm{d}F_1/\mathrm{d}x_1$ at $x_1$, the lower levels solved.

        Args:
            x1: The top-level block $x_1$ (shaped as declared).
            method: ``"exact"`` (Lemmas 3.1 and 3.2, every curvature term), ``"no-curvature"``,
                ``"cg"`` / ``"neumann"`` (truncated solves, ``iterations=K``), ``"itd"``
                (``steps=K`` unrolled inner steps from the declared start, ``inner_lr``) or
                ``"fd"`` (central finite differences of $F_1$ with tightly solved lower
                levels, ``step=h``); see ``hypergradient_frozen``.
            solve_options: Options of ``solve_lower`` (``tol``, ``max_iter``, ``init``,
                ``method``, ``starts``, ``seed``, ``radius``).
            with_error: Also return an error estimate (below).
            **options: The method's own options (``METHOD_OPTIONS`` lists them).

        Returns:
            The hypergradient, shaped like $x_1$; with ``with_error=True`` the pair
                ``(value, error_estimate)`` as NumPy arrays of shape ``(d_1,)``. For
                ``exact`` the estimate is a first-order a-posteriori bound per component
                from the lower levels' remaining distance to their solutions (twice the
                change of the hypergradient under one more nested Newton step at every
                level, which carries each level's Newton distance through the
                best-response Jacobians) plus the round-off term of
                ``checks.roundoff_floor``; for every other method it is
                $\lvert \text{value} - \text{exact} \rvert$ plus the exact value's
                estimate (the approximation's bias is the error).

        Raises:
            ValueError: An unknown ``method`` (the message lists the valid ones).
            UnknownOptionError: An option the method or the solve does not take.
            CostError: An exact program of this depth predicted not to fit in memory.
            MlverifyError: A lower solve or check failed; the error names the level
                (``ConvergenceError``, ``HessianError``, ``NonFiniteError``,
                ``NonUniqueMinimiserError``, ``UnboundedLevelError``).
        """
        _check_method(method)
        solve_options = dict(solve_options or {})
        _check_solve_options(solve_options)
        if method == "fd":
            _reject_unknown({k: v for k, v in options.items() if k != "step"}, method)
        if with_error:
            return self._with_error(x1, method, solve_options, options)
        if method == "fd":
            return self.unflatten(0, self._finite_difference(x1, solve_options, **options))
        if method == "itd":
            # ITD starts from its own fixed inner initial point, not from a solution.
            xs = (x1,) + tuple(self.unflatten(k, self.init[k]) for k in range(1, self.n))
            return self.hypergradient_frozen(xs, method, **options)
        return self.solve_and_hypergradient(x1, method, solve_options=solve_options,
                                            **options)[0]

    def solve_and_hypergradient(self, x1, method: str = "exact", *, solve_options=None,
                                **options):
        r"""``(hypergradient, LowerSolution)`` at $x_1$: levels $2, \dots, n$ solved by
        ``solve_lower`` with ``solve_options`` (``tol``, ``max_iter``, ``init``, ``method``) and the
        hypergradient by ``method`` and ``options`` (as ``hypergradient_frozen``) there.

        With the default ``newton`` solver: for ``exact`` with default options and every
        lower block dense, the joint solve, its checks and the hypergradient all run on one
        compiled program (`mlverify.numeric.stacked`), and the other methods take their
        hypergradient at that solve's solution; where a lower block is over the dense limit,
        up to `FUSED_MAX_LEVELS` levels, the nested solve and the hypergradient run in one
        compiled call.
        If anything fails (a level short of ``tol``, a Hessian not positive definite, a NaN),
        the two steps are re-run separately, and they raise the error naming the level.
        """
        _check_method(method)
        if method in ("itd", "fd"):
            raise ValueError(f"method {method!r} does not use solved lower levels here")
        solve_options = dict(solve_options or {})
        _check_solve_options(solve_options)
        tol = solve_options.setdefault("tol", DEFAULT_TOL)
        max_iter = solve_options.setdefault("max_iter", 100)
        if self._nested_rules(method, options):
            # built (and checked by the cost model) once, before the first solve: a program
            # that would not fit is refused before the solve, not after it
            self._frozen_fn(method, options)
        start = self._start(x1, solve_options.get("init"))
        # The compiled paths where nothing asks for the Python-side solve (a multistart, or
        # gradient descent).
        compiled = (solve_options.get("method", "newton") == "newton"
                    and not solve_options.get("starts"))
        if compiled and method == "exact" and not options and stacked.applicable(self.sizes):
            found = self._stacked_solve_and_exact(start, tol, max_iter)
            if found is not None:
                return found
        elif compiled and self.n <= FUSED_MAX_LEVELS and not stacked.applicable(self.sizes):
            key = ("solve+frozen", method, _options_key(options))
            fn = self._jit(key, lambda: self._solve_frozen_builder(method, dict(options)),
                           compiler_options(self.n))
            value, blocks, status = fn(tuple(start), np.float64(tol), np.int32(max_iter))
            status = jax.device_get(status)
            if _passed(status):
                return self.unflatten(0, value), self._lower_solution(blocks, status["solve"])
        lower = self.solve_lower(x1, **solve_options)
        return self.hypergradient_frozen((x1, *lower), method, **options), lower

    def _stacked_solve_and_exact(self, start, tol, max_iter):
        """Every lower block dense: the joint Newton solve, its final checks and the exact
        hypergradient from one compiled program (`mlverify.numeric.stacked`).
        ``(hypergradient, LowerSolution)``, or None where a check fails (the caller then
        solves apart, and the error names the level)."""
        blocks, evaluated, status = self._stacked_solve(start, tol, max_iter, 1)
        value = np.asarray(evaluated["gradient"])
        if stacked.passed(status) and np.all(np.isfinite(value)):
            return self.unflatten(0, jnp.asarray(value)), self._lower_solution(blocks, status)
        return None

    def _stacked_solve(self, start, tol, max_iter, first):
        """The joint solve of the levels below ``first`` on the stacked program
        (`stacked.solver`), and where a level fails its final checks, again by continuation
        over the levels (`stacked.newton_by_levels`): ``(blocks, evaluation there, final
        status with iterations)``."""
        blocks, evaluated, steps = self._stacked_newton(first)(start, tol, max_iter)
        evaluate = self._stacked_fn(first)
        status = stacked.final_status(evaluate, blocks, evaluated, first, tol)
        if not stacked.passed(status) and self.n - first >= 2:
            blocks, evaluated, more = stacked.newton_by_levels(self._stacked_newton, start,
                                                               first, tol, max_iter)
            status = stacked.final_status(evaluate, blocks, evaluated, first, tol)
            steps += more
        status["iterations"] = steps
        return blocks, evaluated, status

    def _stacked_newton(self, first: int):
        """The joint solve (`stacked.Newton`) of the levels below ``first`` (0-based; all
        lower blocks dense): ``(blocks, tol, max_iter) -> (blocks, evaluation there,
        steps)``, NumPy in and out, driven from Python around `_stacked_program`."""
        iterate, start = self._stacked_program(first)

        def newton(blocks, tol, max_iter):
            solution, packed, steps = jax.device_get(stacked.newton(
                iterate, start(stacked.flat_blocks(blocks)), np.float64(tol), np.int32(max_iter)))
            return (np.split(solution, np.cumsum(self.sizes)[:-1]),
                    stacked.unpack(packed, self.sizes, first), int(steps))

        return newton

    def _stacked_program(self, first: int):
        """The compiled step of the joint solve of the levels below ``first``
        (`stacked.Newton.iterate`: one evaluation of the stacked conditions and the update),
        and its start. One program per ``first``: the solve, its checks and the
        hypergradient all call it."""
        levels = self.n - first + 1

        def build():
            if levels >= 5:  # the depth alone rules out what the benchmark family cannot do
                cost.check_affordable(levels, "stacked")
            return stacked.Newton(self.core.fs, self.sizes, first).iterate

        # and the traced program, whatever its objectives, before XLA compiles it
        iterate = self._jit(("stacked", first), build, compiler_options(self.n),
                            checked_levels=levels)
        return iterate, stacked.compiled_start(tuple(self.sizes), first)

    def _stacked_fn(self, first: int):
        """`stacked.evaluation` of the levels below ``first`` at the given blocks, NumPy in
        and out (`_stacked_program`)."""
        iterate, start = self._stacked_program(first)
        return stacked.Evaluator(iterate, start, self.sizes, first)

    def _solve_frozen_builder(self, method, options):
        """Some lower block over the dense limit: the nested solve (`solvers.nested_newton`)
        and the hypergradient by ``method`` in one compiled call."""
        from .solvers import nested_newton

        self._check_affordable()
        solve, frozen = nested_newton(self.core), self._frozen_builder(method, options)

        def run(start, tol, max_iter):
            blocks, solve_status = solve(start, tol, max_iter)
            value, status = frozen(blocks)
            return value, blocks, {"solve": solve_status, "frozen": status}

        return run

    def _frozen_flat(self, flat, method, options):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if method == "fd":
            raise ValueError("'fd' needs solved lower levels: use hypergradient(x1, method='fd')")
        if method == "exact" and not options and stacked.applicable(self.sizes):
            evaluated = self._stacked_fn(1)(flat)
            value = np.asarray(evaluated["gradient"])
            ok = {k: stacked.positive_definite(h)
                  for k, h in enumerate(evaluated["hessians"], start=1)}
            return jnp.asarray(value), {"finite": bool(np.all(np.isfinite(value))),
                                        "cholesky_ok": ok}
        if method == "itd":  # one signature for every call (`_frozen_fn`)
            return self._frozen_fn(method, options)(flat, np.float64(1.0))
        return self._frozen_fn(method, options)(flat)

    def _frozen_fn(self, method, options):
        """The compiled ``_frozen_builder(method, options)``, cached per method and options;
        on the nested rules checked by `_check_affordable` before it is built. ITD's program
        (``(flat, step_scale)``; its first call grew about 7x per level) is a
        `cost.CheckedProgram`: measured before it compiles, refused where it would not fit,
        compiled in pieces where it is large."""
        key = ("frozen", method, _options_key(options))

        def build():
            return self._frozen_builder(method, dict(options))

        if method == "itd":
            return self._jit(key, build, checked_levels=self.n, program="itd")
        return self._jit(key, self._affordable(build) if self._nested_rules(method, options)
                         else build)

    def _nested_rules(self, method, options) -> bool:
        """Whether ``method`` with ``options`` builds its hypergradient on the nested
        best-response rules (`mlverify.numeric.implicit`): every method but ITD and finite
        differences, except the exact one with default options where every lower block is
        dense (the stacked program)."""
        return method not in ("itd", "fd") and not (
            method == "exact" and not options and stacked.applicable(self.sizes))

    def _check_affordable(self):
        """CostError, naming the depth and the cheaper methods, before a deep lower-solve
        program (the solve with its final checks, alone or with the hypergradient: the
        largest programs of a run) is built that is predicted not to fit in the memory this
        process may use (`mlverify.numeric.cost`; from 5 levels on). Called where such a
        program is built, once per program, not on every solve."""
        if self.n >= 5:
            cost.check_affordable(self.n, "nested")

    def _affordable(self, build):
        """``build``, for `_jit`, checked by `_check_affordable` when it is called."""

        def checked():
            self._check_affordable()
            return build()

        return checked

    def _frozen_builder(self, method, options):
        core = self.core
        if method == "exact" and not options and stacked.applicable(self.sizes):
            # The exact formula on the stacked conditions: the same program (pure, so it
            # composes with the caller's jit and vmap) as every other exact value.
            evaluate = stacked.evaluation(core.fs, self.sizes, 1)

            def run(flat):
                out = evaluate(tuple(flat))
                value = out["gradient"]
                ok = {k: jnp.all(jnp.isfinite(cho_factor(0.5 * (h + h.T))[0]))
                      for k, h in enumerate(out["hessians"], start=1)}
                return value, {"finite": jnp.all(jnp.isfinite(value)), "cholesky_ok": ok}

            return run
        if method == "itd":
            steps = int(options.pop("steps", 10))
            inner_lr = options.pop("inner_lr", None)
            _reject_unknown(options, method)

            def run(flat, lr_scale=1.0):
                value, rose = itd_hypergradient_and_flags(core, flat, steps, inner_lr, lr_scale)
                return value, {"finite": jnp.all(jnp.isfinite(value)), "inner_rise": rose}

            return run
        curvature = method != "no-curvature"
        if method in ("cg", "neumann"):
            solve = LinearSolve(
                method,
                iterations=int(options.pop("iterations", 10)),
                step=options.pop("step", None),
            )
        else:
            solve = LinearSolve(options.pop("linear_solver", "auto"), tol=options.pop("tol", 1e-12))
        _reject_unknown(options, method)

        # The status's level constants are the formula's own where every level is dense:
        # formed once.
        shared = curvature and (solve.kind == "dense" or (
            solve.kind == "auto" and all(d <= DENSE_LIMIT for d in self.sizes[1:])))

        def run(flat):
            consts = core.level_constants(tuple(flat), solve, curvature) if shared else None
            value = core.hypergradient_frozen(flat, solve, curvature, consts)
            return value, self._lower_status(flat, value, consts)

        return run

    def _lower_status(self, flat, value, consts=None):
        """Per-level Cholesky success (dense blocks) and finiteness; ``consts``: the level
        constants of a dense solve at ``flat``, if the caller has them."""
        status = {"finite": jnp.all(jnp.isfinite(value))}
        dense_levels = [k for k in range(1, self.n) if self.sizes[k] <= DENSE_LIMIT]
        if dense_levels:
            if consts is None:
                consts = self.core.level_constants(flat, LinearSolve("dense"), True)
            eig = {}
            for k in dense_levels:
                eig[k] = jnp.all(jnp.isfinite(consts[k]["chol"]))
            status["cholesky_ok"] = eig
        return status

    def _check_status(self, status, method, flat=None):
        # Bottom-up: a failure at level k spoils every level above it, so the deepest
        # failing level is where the problem is.
        if "inner_rise" in status and bool(np.any(status["inner_rise"])):
            level = int(np.flatnonzero(np.any(np.reshape(status["inner_rise"], (-1, self.n)),
                                              axis=0))[-1]) + 1
            scale = float(status.get("step_scale", 1.0))
            tried = (f" (the default steps were halved down to {scale:g} of 1/(1.2 L_k))"
                     if scale < 1 else "")
            raise DivergenceError(
                f"ITD's unrolled gradient steps raised f_{level}{tried}: the inner step is too "
                "large for the curvature along the unrolled path; pass a smaller inner_lr",
                level=level,
                step_scale=scale,
            )
        if "cholesky_ok" in status:
            for k in sorted(status["cholesky_ok"], reverse=True):
                if not bool(np.all(status["cholesky_ok"][k])):
                    self._raise_hessian_problem(k, flat)
        if not bool(np.all(status["finite"])):
            level, quantity = 1, "hypergradient"
            if flat is not None:
                level, quantity = self._locate_non_finite(flat)
            raise NonFiniteError(
                f"the hypergradient by '{method}' holds NaN or inf (first non-finite: {quantity})",
                level=level,
                quantity=quantity,
            )

    def objective_value(self, k: int, flat_blocks) -> float:
        """$f_k$ (0-based $k$) at the given flat blocks."""
        return float(self._jit(("value", k), lambda: self.core.fs[k])(tuple(flat_blocks)))

    def reduced_gradient_frozen(self, k: int, flat_blocks) -> jax.Array:
        r"""$D_k F_k$ (0-based $k \ge 1$) at the given flat iterates, levels below by the lemmas'
        formulas at those iterates (what the single-loop algorithm steps along)."""
        if stacked.applicable(self.sizes, k):
            return jnp.asarray(self._stacked_fn(k)(flat_blocks)["conditions"][0])
        return self._jit(
            ("reduced_gradient", k), lambda: lambda flat: self.core.reduced_gradient_at(k, flat)
        )(tuple(flat_blocks))

    def _locate_non_finite(self, flat):
        """The deepest level whose reduced gradient or Hessian is not finite at ``flat``."""
        for k in range(self.n - 1, 0, -1):
            if self.sizes[k] > DENSE_LIMIT:
                continue
            g, h = self._grad_hess(k)(tuple(flat))
            if not (np.all(np.isfinite(np.asarray(g))) and np.all(np.isfinite(np.asarray(h)))):
                return k + 1, "reduced gradient or Hessian D_k F_k"
        return 1, "hypergradient"

    # ------------------------------------------------------------------ diagnostics
    def lower_hessians(self, xs):
        r"""$D_{kk} F_k$ (dense, levels $2, \dots, n$) at the given iterates, lower levels by IFT.
        For a block of $d$ this forms $d \times d$; for step sizes use `lower_lipschitz`."""
        flat = self._flat_all(xs)
        if stacked.applicable(self.sizes):
            return [np.asarray(h) for h in self._stacked_fn(1)(flat)["hessians"]]
        return [np.asarray(self._grad_hess(k)(flat)[1]) for k in range(1, self.n)]

    def lower_lipschitz(self, xs) -> list[float]:
        r"""$\lambda_{\max}(D_{kk} F_k)$, levels $2, \dots, n$, at the given iterates (matrix-free
        for blocks over 200: Lanczos on Hessian-vector products, no $d \times d$ matrix)."""
        flat = self._flat_all(xs)
        if stacked.applicable(self.sizes):
            return [float(np.linalg.eigvalsh(stacked.symmetric(h))[-1])
                    for h in self._stacked_fn(1)(flat)["hessians"]]
        build = lambda: lambda flat: jnp.stack(  # noqa: E731
            [self.core.reduced_hessian_lambda_max(k, flat) for k in range(1, self.n)]
        )
        return [float(v) for v in np.asarray(self._jit(("lipschitz",), build)(flat))]

    def _raise_hessian_problem(self, k, flat=None):
        if flat is not None:
            self.diagnose_below(k, list(flat))
            self.check_level(k, list(flat))  # raises with eigenvalues and the scale
        raise HessianError(
            "the Hessian D_kk F_k is not positive definite at the point (its Cholesky "
            "factorisation failed)",
            level=k + 1,
        )

    def _grad_hess(self, k):
        """(D_k F_k, dense D_kk F_k) at flat blocks, compiled once per level (diagnostics)."""
        if stacked.applicable(self.sizes, k):
            evaluate = self._stacked_fn(k)

            def at(flat):
                evaluated = evaluate(flat)
                return evaluated["conditions"][0], evaluated["hessians"][0]

            return at
        return self._jit(
            ("grad_hess", k),
            lambda: lambda flat: self.core.reduced_gradient_hessian(k, flat, LinearSolve(), True),
        )

    def check_level(self, k: int, blocks) -> None:
        """HessianError (or NonFiniteError), naming level $k + 1$ (0-based $k$), unless $H_k$
        at the flat ``blocks`` is positive definite and not degenerate against the level's
        own curvature scale (`mlverify.checks`). Blocks over ``DENSE_LIMIT`` are not
        checked."""
        if self.sizes[k] > DENSE_LIMIT:
            return
        if stacked.applicable(self.sizes, k):
            evaluate = self._stacked_fn(k)
            evaluated = evaluate(blocks)
            h = np.asarray(evaluated["hessians"][0])
            scale = None
            if np.all(np.isfinite(h)):
                probe = stacked.probe_scale(evaluate, list(blocks), k, k,
                                            np.asarray(evaluated["conditions"][0]))
                scale = checks.curvature_scale(h, [probe])
            check_lower_hessian(h, k + 1, scale)
            return
        from .solvers import curvature_probe_scale

        def build():
            def check(flat):
                g, h = self.core.reduced_gradient_hessian(k, flat, LinearSolve(), True)
                return h, curvature_probe_scale(self.core, k, flat, g, LinearSolve())

            return check

        h, scale = self._jit(("check_level", k), build)(tuple(blocks))
        h = np.asarray(h)
        scale = checks.curvature_scale(h, [float(scale)]) if np.all(np.isfinite(h)) else None
        check_lower_hessian(h, k + 1, scale)

    def diagnose_below(self, k: int, blocks) -> None:
        """Raise for the deepest level below level $k + 1$ (0-based $k$) whose Hessian is not
        finite, indefinite or degenerate at ``blocks``: its failure spoils every level above
        it, so a failure of level $k + 1$ is blamed on it first."""
        for m in range(self.n - 1, k, -1):
            self.check_level(m, blocks)

    # ------------------------------------------------------------------ lower solves
    def solve_lower(
        self, x1, *, tol: float = DEFAULT_TOL, max_iter: int = 100, init=None,
        method: str = "newton", starts: int | None = None, seed: int = 0,
        radius: float | None = None,
    ):
        r"""Solve levels $2, \dots, n$ for $x_1$, warm-started from ``init`` (default: the
        declared initial points). Returns a ``LowerSolution``.

        Level $k$ stops when Newton's step, the estimated distance to its solution
        $\lVert H_k^{-1} D_k F_k \rVert$, is at most $\mathrm{tol}\,(1 + \lVert x_k \rVert)$:
        invariant under scaling $f_k$, unlike a gradient-norm test. Every $H_k$ (blocks up to
        ``DENSE_LIMIT``) is then checked: positive definite and not degenerate against the
        level's own curvature scale (`mlverify.checks`); a failure names the deepest failing
        level.

        ``newton``: where every lower block is dense, first the joint solve of every level
        at once on the stacked conditions (``stacked.Newton``; its steps do not multiply with
        the depth; where it stalls, again by continuation over the levels,
        ``stacked.newton_by_levels``), taken where every level passes the final checks; else
        nested damped Newton in one compiled call (``solvers.nested_newton``; dense Cholesky
        steps, or CG on Hessian-vector products for blocks over 200). If that stops short of
        ``tol`` (or its program is predicted not to fit in memory), the nested solve runs step
        by step from Python, which raises the error naming the level (or returns, if it
        converges).
        ``newton-eager`` / ``gd``: that Python-driven nested Newton / Armijo gradient descent.

        ``starts=K``: seeded multistart, bottom-up, as ``MultilevelProblem.solve_lower``
        ($K$ points uniform in $x_k^* \pm r$ per level, $r$ = ``radius``, by default
        $2\,(1 + \lVert x_k^* \rVert_\infty)$); raises NonUniqueMinimiserError naming the
        level, $x_1$, both minimisers and their values. Multistart finds second minimisers;
        it cannot prove there is none.
        """
        if method not in ("newton", "newton-eager", "gd"):
            raise ValueError(
                f"unknown inner solver {method!r}; the valid solvers are: newton, "
                "newton-eager, gd"
            )
        start = self._start(x1, init)
        try:
            blocks, status = self._solve_blocks(start, tol, max_iter, method, first=1)
        except MlverifyError as error:
            if not starts:
                raise
            blocks, status = checks.restart(
                start, self.sizes, int(starts), seed, radius,
                lambda trial: self._solve_blocks([jnp.asarray(b) for b in trial], tol, max_iter,
                                                 method, first=1),
                error)
        solution = self._lower_solution(blocks, status)
        if starts:
            self._multistart(blocks, status["distance"], tol, max_iter, method, int(starts),
                             seed, radius)
        return solution

    def _solve_blocks(self, start, tol, max_iter, method, first):
        """(flat blocks with levels first+1..n solved, status), every Hessian checked."""
        from .solvers import nested_newton, nested_solve

        blocks = None
        if method == "newton" and stacked.applicable(self.sizes, first):
            # The joint solve first: its steps do not multiply with the depth. Its result is
            # taken only where every level passes the nested solve's final checks.
            solved, _, status = self._stacked_solve(start, tol, max_iter, first)
            if stacked.passed(status):
                blocks, checked = [jnp.asarray(b) for b in solved], status["hessian_ok"]
        if blocks is None and method == "newton":
            # XLA's default optimisation here: the solve is loops and factorisations, whose
            # run time level 0 doubles (blocks of 100), not a deep derivative graph.
            try:
                solver = self._jit(("nested_newton", first),
                                   self._affordable(lambda: nested_newton(self.core, first)),
                                   None)
            except CostError:
                # The nested-rule program would not fit; where every level is dense the
                # eager nested solve below steps on the stacked program instead.
                if not stacked.applicable(self.sizes, first):
                    raise
                solver = None
            if solver is not None:
                solved, status = solver(tuple(start), np.float64(tol), np.int32(max_iter))
                status = jax.device_get(status)
                if bool(np.all(status["converged"])):
                    blocks, checked = list(solved), status["hessian_ok"]
        if blocks is None:
            eager = "gd" if method == "gd" else "newton"
            blocks, residuals, distances, iterations = nested_solve(
                self, start, tol, max_iter, eager, first)
            status = {"residual": residuals[first - 1:], "distance": distances[first - 1:],
                      "iterations": iterations}
            checked = np.zeros(self.n - first, bool)
        for k in range(self.n - 1, first - 1, -1):
            if not checked[k - first]:
                self.check_level(k, blocks)
        return blocks, status

    def _multistart(self, blocks, distances, tol, max_iter, method, starts, seed, radius):
        """Bottom-up multistart around the solution ``blocks`` (see `solve_lower`;
        `checks.search_second_minimiser`)."""
        lipschitz = self.lower_lipschitz([self.unflatten(m, b) for m, b in enumerate(blocks)])

        def solve_level(k, point):
            trial = list(blocks)
            trial[k] = jnp.asarray(point)
            solved, status = self._solve_blocks(trial, tol, max_iter, method, first=k)
            return solved, status["distance"][0]

        checks.search_second_minimiser(blocks, distances, starts, seed, radius,
                                       solve_level=solve_level, value=self.objective_value,
                                       curvature=lambda k: max(lipschitz[k - 1], 0.0))

    def _with_error(self, x1, method, solve_options, options):
        """(value, error estimate) for ``hypergradient(..., with_error=True)``."""
        exact, lower = self.solve_and_hypergradient(x1, "exact", solve_options=solve_options)
        flat = self._flat_all((x1, *lower))
        exact = np.asarray(self.flatten(0, exact))
        error = self.exact_error(flat, exact)
        if method == "exact":
            return exact, error
        value = np.asarray(self.flatten(0, self.hypergradient(
            x1, method, solve_options=solve_options, **options)))
        return value, error + np.abs(value - exact)

    def exact_error(self, flat, value) -> np.ndarray:
        """The a-posteriori error estimate of the exact hypergradient ``value`` at the solved
        flat blocks (see `hypergradient`): one more nested Newton step at every level (the
        one nested driver, `mlverify.nested.solve`, ``tol = 0``, one step, as the symbolic
        backend), the change it makes to the hypergradient, times 2, plus the round-off
        term."""
        from .solvers import _Levels

        refined = [np.array(b, dtype=np.float64) for b in flat]
        nested.solve(_Levels(self), refined, 0.0, 1, strict=False)
        again, status = self._frozen_flat(tuple(jnp.asarray(b) for b in refined), "exact", {})
        change = np.abs(np.asarray(again) - value)
        if not (np.all(np.isfinite(change)) and bool(status["finite"])):
            change = np.full_like(value, np.inf)
        top = self._jit(("top_gradient",), lambda: jax.grad(self.core.fs[0]))(tuple(flat))
        top = np.concatenate([np.asarray(t).reshape(-1) for t in top])
        hessians = [np.asarray(self._grad_hess(k)(tuple(flat))[1])
                    for k in range(1, self.n) if self.sizes[k] <= DENSE_LIMIT]
        return 2.0 * change + checks.roundoff_floor(value, top, hessians)

    def _lower_solution(self, blocks, status) -> LowerSolution:
        """The ``LowerSolution`` of flat ``blocks`` (all n) and a solve's ``residual`` (per
        level) and ``iterations``."""
        return LowerSolution(
            tuple(self.unflatten(k, blocks[k]) for k in range(1, self.n)),
            [float(r) for r in status["residual"]],
            int(status["iterations"]),
            [float(d) for d in status["distance"]],
            x1=self.unflatten(0, blocks[0]),
        )

    def _start(self, x1, init) -> list:
        """Flat blocks (x_1, then ``init`` or the declared initial points), shape-checked."""
        start = list(self.init)
        if init is not None:
            if len(init) != self.n - 1:
                raise ProblemDefinitionError(
                    f"init must hold {self.n - 1} blocks (levels 2..{self.n}), got {len(init)}",
                    quantity="init",
                )
            start[1:] = [self.flatten(k, x) for k, x in enumerate(init, start=1)]
        start[0] = self.flatten(0, x1)
        return start

    def reduced_objective(self, x1, **solve_options) -> float:
        r"""$F_1(x_1) = f_1(x_1, x_2^*, \dots, x_n^*)$, the lower levels solved."""
        lower = self.solve_lower(x1, **solve_options)
        flat = self._flat_all((x1, *lower))
        return float(self.core.fs[0](flat))

    def _finite_difference(self, x1, solve_options, step: float = 1e-5):
        flat1 = np.asarray(self.flatten(0, x1))
        solve_options.setdefault("tol", 1e-13)
        grad = np.zeros_like(flat1)
        for i in range(flat1.size):
            values = []
            for shift in (-2, -1, 1, 2):
                x = flat1.copy()
                x[i] += shift * step
                values.append(
                    self.reduced_objective(self.unflatten(0, jnp.asarray(x)), **solve_options)
                )
            # Fourth-order central difference.
            grad[i] = (values[0] - 8 * values[1] + 8 * values[2] - values[3]) / (12 * step)
        return jnp.asarray(grad)


def _passed(status) -> bool:
    """Whether a compiled solve + hypergradient can be taken as it is: every level
    converged with $H_k$ surely positive definite, the value finite, every Cholesky factor
    finite (else the steps re-run apart and the error names the level)."""
    solved, frozen = status["solve"], status["frozen"]
    return bool(np.all(solved["converged"]) and np.all(solved["hessian_ok"])
                and bool(frozen["finite"])
                and all(bool(ok) for ok in frozen.get("cholesky_ok", {}).values()))


def _structure(value):
    leaves, tree = jax.tree_util.tree_flatten(value)
    shapes = tuple(tuple(np.shape(leaf)) for leaf in leaves)
    if len(shapes) == 1 and len(shapes[0]) <= 1:
        return (max(1, int(np.prod(shapes[0]))),)  # scalars and vectors: their length
    return (str(tree), shapes)


def _is_flat(value, size: int) -> bool:
    """A float64 JAX vector of ``size`` entries: already a block's flat form."""
    return isinstance(value, jax.Array) and value.dtype == jnp.float64 and value.shape == (size,)


def _as_float64(x):
    return jnp.asarray(x, dtype=jnp.float64)


def _check_method(method, exclude=()):
    """ValueError naming the valid methods unless ``method`` is one of them."""
    valid = [m for m in METHODS if m not in exclude]
    if method not in valid:
        raise ValueError(
            f"unknown hypergradient method {method!r}; the valid methods are: {', '.join(valid)}"
        )


def _options_key(options) -> tuple:
    """A hashable cache key for method options (array values, e.g. ``inner_lr``, as tuples)."""
    def hashable(value):
        if isinstance(value, (jax.Array, np.ndarray, list, tuple)):
            return tuple(float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1))
        return value

    return tuple(sorted((name, hashable(value)) for name, value in options.items()))


#: The options each hypergradient method takes (``hypergradient(x1, method, **options)``).
METHOD_OPTIONS = {
    "exact": ("linear_solver", "tol"),
    "no-curvature": ("linear_solver", "tol"),
    "cg": ("iterations", "step"),
    "neumann": ("iterations", "step"),
    "itd": ("steps", "inner_lr"),
    "fd": ("step",),
}
#: The keys ``solve_options`` takes (the keywords of ``NumericProblem.solve_lower``).
SOLVE_OPTIONS = ("tol", "max_iter", "init", "method", "starts", "seed", "radius")


def _reject_unknown(options, method):
    if options:
        valid = METHOD_OPTIONS.get(method, ())
        raise UnknownOptionError(
            f"method '{method}' got unknown option(s) {', '.join(sorted(options))}; it takes "
            + (", ".join(valid) if valid else "no options"))


def _check_solve_options(solve_options) -> None:
    unknown = sorted(set(solve_options) - set(SOLVE_OPTIONS))
    if unknown:
        raise UnknownOptionError(
            f"solve_options got unknown key(s) {', '.join(unknown)}; the valid keys are "
            f"{', '.join(SOLVE_OPTIONS)}")


__all__ = ["NumericProblem", "LowerSolution", "METHODS", "METHOD_OPTIONS", "ConvergenceError"]
