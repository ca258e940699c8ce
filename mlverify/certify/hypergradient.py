r"""A certified hypergradient at a point: an interval proven to contain
$\mathrm{d}F_1/\mathrm{d}x_1$."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import HessianError, MlverifyError, ProblemDefinitionError
from ..symsolve import as_block_value
from .bounds import float_down, float_up, symmetric_eigen_bounds
from .programs import _as_arb
from .system import CertifiedSystem, Enclosure, _inside, _operator, krawczyk

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ..problem import MultilevelProblem

#: Working precision (bits) of the ball arithmetic at a single point.
POINT_PRECISION = 128
#: Tolerance of the float64 lower solve that gives the centre: the proof needs only an
#: approximate centre (Newton steps in ball arithmetic sharpen it), so a loose one is kept.
CENTRE_TOL = 1e-9
#: Default relative padding of the returned float64 interval (see `HypergradientEnclosure`).
DEFAULT_PAD = 1e-12


class CertificationError(MlverifyError, ArithmeticError):
    """A certification that could not succeed (an enclosure that did not contract, a
    Hessian not proven positive definite); the message names the level and the cause. Not
    a `ProblemDefinitionError`: the problem may be well posed and the proof merely not
    closed at this precision or on this box."""


@contextlib.contextmanager
def precision(bits: int):
    """Run the ball arithmetic at ``bits`` of working precision (restored afterwards).

    Args:
        bits: The working precision of python-flint's ball arithmetic, in bits.
    """
    from flint import ctx

    saved = ctx.prec
    ctx.prec = int(bits)
    try:
        yield
    finally:
        ctx.prec = saved


#: Each problem's `CertifiedSystem`, kept here (not in the problem) while the problem lives.
_SYSTEMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def certified_system(problem: MultilevelProblem) -> CertifiedSystem:
    """The problem's `CertifiedSystem`, compiled once and kept while the problem lives.

    Args:
        problem: A declared ``MultilevelProblem`` (its derivation is what is compiled).

    Returns:
        The problem's `CertifiedSystem`, in ball arithmetic (python-flint).

    Raises:
        ProblemDefinitionError: ``problem`` is not a declared (sympy) problem (a
            ``NumericProblem``'s JAX callables have no straight-line programs to enclose),
            or an objective uses a function that has no rigorous enclosure in ball
            arithmetic.
        HessianError: A reduced Hessian is a constant matrix that is not positive definite
            (from the derivation).
    """
    if not hasattr(problem, "derivation"):  # a MultilevelProblem (no import: no cycle)
        raise ProblemDefinitionError(
            f"certification needs a declared (sympy) MultilevelProblem, whose lemmas are "
            f"straight-line programs; got {type(problem).__name__}", quantity="problem")
    if problem not in _SYSTEMS:
        _SYSTEMS[problem] = CertifiedSystem(problem)
    return _SYSTEMS[problem]


@dataclass(frozen=True)
class HypergradientEnclosure:
    r"""$\mathrm{d}F_1/\mathrm{d}x_1$ at one $x_1$, enclosed (the exact hypergradient of
    Lemmas 2.1, 3.1 and 3.2).

    Proven: `proven_lower` $\le \mathrm{d}F_1/\mathrm{d}x_1 \le$ `proven_upper` componentwise
    (ball arithmetic, endpoints rounded outward to float64), where the lower solutions are
    the unique zero of the stationarity system inside `lower_solutions` (a list of (lower,
    upper) float64 pairs, levels $k = 2, \dots, n$ in order), at which every $H_k$ is proven
    positive definite. `lower`/`upper` widen the proven interval to a half-width of at least
    `pad` times the scale of the gradient (the largest of
    $\lvert \mathrm{d}F_1/\mathrm{d}x_1 \rvert$ and the partials of $f_1$, the chain rule's
    terms), so that float64 evaluations, whose lower solves and rounding errors are far below
    it, lie inside; both intervals are proven enclosures.
    """

    x1: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    proven_lower: np.ndarray
    proven_upper: np.ndarray
    lower_solutions: tuple
    min_eigenvalues: tuple  # proven lower bounds of lambda_min(H_k), k = 2..n

    @property
    def width(self) -> np.ndarray:
        """Width of the proven interval."""
        return self.proven_upper - self.proven_lower

    def contains(self, value: ArrayLike) -> bool:
        """Whether ``value`` lies in [lower, upper] componentwise.

        Args:
            value: A hypergradient to test, flattened to length $d_1$ (a number for a
                scalar block).

        Returns:
            True when every component lies in the padded interval ``[lower, upper]``
                (bounds included).
        """
        v = np.asarray(value, dtype=np.float64).reshape(-1)
        return bool(np.all(self.lower <= v) and np.all(v <= self.upper))


def point_enclosure(problem: MultilevelProblem, x1: ArrayLike, *,
                    init: Sequence[ArrayLike] | None = None, bits: int = POINT_PRECISION):
    r"""(system, `x1` balls, enclosure of $z$) at one point, or raise `CertificationError`.

    Args:
        problem: A declared ``MultilevelProblem``.
        x1: The top-level block $x_1$ (a number for a scalar block).
        init: Starting blocks $x_2, \dots, x_n$ of the float64 lower solve that gives the
            centre (default: the declared starts).
        bits: Working precision of the ball arithmetic, in bits.
    """
    from flint import arb

    system = certified_system(problem)
    x1 = as_block_value(x1, system.d1, level=1)
    try:
        with np.errstate(all="ignore"):  # non-finite values raise NonFiniteError instead
            solution = problem.solve_lower(x1, init=init, tol=CENTRE_TOL)
    except HessianError as err:
        # A singular or indefinite H_k at the float solution: no proof can start there.
        raise CertificationError(
            f"the lower solutions at x1 = {x1.tolist()} could not be enclosed: "
            f"{str(err).split(': ', 1)[-1]}",
            level=err.level,
            quantity="lower solution enclosure",
        ) from err
    center = np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1) for b in solution.xs])
    with precision(bits):
        balls = [arb(float(v)) for v in x1]
        # A few Newton corrections at the working precision sharpen the centre.
        center_balls = [arb(float(v)) for v in center]
        for _ in range(3):
            jac = np.array([float(_as_arb(v).mid()) for v in
                            system.jacobian([*balls, *center_balls])]).reshape(system.dim, -1)
            g = [_as_arb(v).mid() for v in system.residual([*balls, *center_balls])]
            y = np.linalg.inv(jac)
            center_balls = [
                (center_balls[r] - sum((arb(float(y[r, s])) * g[s] for s in range(system.dim)),
                                       arb(0))).mid()
                for r in range(system.dim)
            ]
        enclosure = _krawczyk_at(system, balls, center_balls)
    if not enclosure.ok:
        raise CertificationError(
            f"the lower solutions at x1 = {x1.tolist()} could not be enclosed: "
            f"{enclosure.reason.split(': ', 1)[-1]}",
            level=enclosure.level,
            quantity="lower solution enclosure",
        )
    return system, balls, enclosure.z


def _krawczyk_at(system, x1_balls, center_balls):
    """Krawczyk around an arb centre (the float64 centre would cap the accuracy at 1e-16)."""
    from flint import arb

    dim = system.dim
    c = center_balls
    jac = np.array([float(_as_arb(v).mid()) for v in
                    system.jacobian([*x1_balls, *c])]).reshape(dim, dim)
    if not np.all(np.isfinite(jac)) or np.linalg.cond(jac) > 1e14:
        return krawczyk(system, x1_balls, [float(v) for v in c])
    y = np.linalg.inv(jac)
    y_arb = [[arb(float(y[r, s])) for s in range(dim)] for r in range(dim)]
    g_c = [_as_arb(v) for v in system.residual([*x1_balls, *c])]
    yg = [sum((y_arb[r][s] * g_c[s] for s in range(dim)), arb(0)) for r in range(dim)]
    radius = [2 * abs(v).upper() + arb(2) ** -100 * (1 + abs(cv).upper())
              for v, cv in zip(yg, c, strict=True)]
    for _ in range(6):
        z = [cv + arb(0, r) for cv, r in zip(c, radius, strict=True)]
        k, _, _ = _operator(system, x1_balls, c, z, y_arb, yg)
        if k is not None and all(_inside(kv, zv) for kv, zv in zip(k, z, strict=True)):
            return Enclosure(True, [kv.intersection(zv) for kv, zv in zip(k, z, strict=True)])
        if k is None:
            break
        radius = [r * 16 for r in radius]
    return krawczyk(system, x1_balls, [float(v) for v in c])


def hypergradient_enclosure(problem: MultilevelProblem, x1: ArrayLike, *,
                            init: Sequence[ArrayLike] | None = None, pad: float = DEFAULT_PAD,
                            bits: int = POINT_PRECISION) -> HypergradientEnclosure:
    r"""Enclose $\mathrm{d}F_1/\mathrm{d}x_1$ at `x1` (Lemmas 2.1, 3.1, 3.2), with a proof.

    The lower solutions are enclosed by the Krawczyk test on the stacked stationarity
    system (unique zero in the enclosure), every $H_k$ is proven positive definite there (so
    the zero is the local nested solution the lemmas differentiate), and the hypergradient
    formula is evaluated in ball arithmetic over the enclosure. Raises `CertificationError`
    (naming the level) when a step cannot be proven.

    Args:
        problem: A declared ``MultilevelProblem``.
        x1: The top-level block $x_1$ (a number for a scalar block).
        init: Starting blocks $x_2, \dots, x_n$ of the float64 lower solve that gives the
            centre of the enclosure (default: the declared starts).
        pad: Relative padding of ``lower``/``upper`` (see `HypergradientEnclosure`).
        bits: Working precision of the ball arithmetic, in bits.

    Returns:
        The `HypergradientEnclosure` at ``x1``.

    Raises:
        CertificationError: The lower solutions could not be enclosed (a singular or
            indefinite $H_k$ at the float solution, or the Krawczyk test failed), an $H_k$
            is not proven positive definite over the enclosure, or the enclosure of the
            hypergradient is not finite; the error names the level.
        ProblemDefinitionError: ``x1`` is not numeric or not of the block's size, or an
            objective has no rigorous enclosure (see `certified_system`).
        MlverifyError: The float lower solve failed otherwise (for example
            ``ConvergenceError`` or ``NonFiniteError``), naming the level.
    """
    x1 = as_block_value(x1, problem.sizes[0], level=1)
    system, balls, z = point_enclosure(problem, x1, init=init, bits=bits)
    with precision(bits):
        hessians = system.hessian_blocks(balls, z)
        mins = []
        for k, h in enumerate(hessians[:-1], start=2):
            bounds = symmetric_eigen_bounds(h)
            if bounds is None or not bounds.min_lower > 0:
                raise CertificationError(
                    "D_kk F_k is not proven positive definite at the enclosed lower solution",
                    level=k, quantity="Hessian D_kk F_k")
            mins.append(bounds.min_lower)
        values = [_as_arb(v) for v in system.hypergradient([*balls, *z])]
        terms = [_as_arb(v) for v in system.upper_gradient([*balls, *z])]
    lower = np.array([float_down(v) for v in values])
    upper = np.array([float_up(v) for v in values])
    if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))):
        raise CertificationError("the hypergradient enclosure is not finite", level=1,
                                 quantity="hypergradient")
    # The scale of the chain rule's terms, so that a hypergradient near 0 (at a stationary
    # point of F_1) is padded relative to what it is computed from.
    scale = max(float(np.max(np.abs(0.5 * (lower + upper)))),
                max(abs(float(v.mid())) for v in terms), np.finfo(float).tiny)
    half = pad * scale
    padded_lower = np.minimum(lower, np.nextafter(0.5 * (lower + upper) - half, -np.inf))
    padded_upper = np.maximum(upper, np.nextafter(0.5 * (lower + upper) + half, np.inf))
    solutions = tuple((float_down(v), float_up(v)) for v in z)
    return HypergradientEnclosure(
        x1.copy(), padded_lower, padded_upper,
        lower, upper, solutions, tuple(mins))
