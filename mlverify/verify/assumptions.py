r"""The assumptions every bound rests on, checked where a verdict claims them.

Theorems 4.1 and 4.2 assume that every lower level has a minimiser, unique and strongly
convex. A solve that converges proves a *local* minimiser only: a level may still fall
without bound elsewhere (for some $x_1$ of the box, or far from where the solve went). So
wherever a verdict says the assumptions hold, the bottom level is also probed here for
unboundedness, at each sampled $x_1$, along rays from its solution.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from ..checks import as_box
from ..errors import one_line

if TYPE_CHECKING:
    from ..errors import MlverifyError

#: A lower Hessian whose smallest eigenvalue is below this, relative to its largest, at a
#: sampled point makes the level "not strongly convex": the bounds do not apply. Relative to
#: the Hessian itself, so that scaling $f_k$ changes no verdict; a Hessian that is small in
#: every direction (a $1 \times 1$ block too) is caught by the lower solve's degeneracy test
#: (`mlverify.checks`), which compares it with the level's own curvature scale.
STRONG_CONVEXITY_FLOOR = 1e-6
#: Points of the box sampled by `check_assumptions` (``mlverify verify``'s step 2).
ASSUMPTION_SAMPLES = 9
#: Multistart starts per level at each sampled point (``solve_lower(x1, starts=...)``).
MULTISTARTS = 4
#: Distances of the probe points along a ray, in units of $1 + \lVert x_n^* \rVert$.
PROBE_DISTANCES = 10.0 ** np.arange(0, 9)
#: A ray counts as unbounded below when, from distance $10^4$ on, $f_n$ falls strictly and
#: ends more than this many times $1 + \lvert f_n(x_n^*) \rvert$ below $f_n(x_n^*)$.
PROBE_DROP = 1e6


def probe_directions(h: np.ndarray) -> list[np.ndarray]:
    r"""The rays probed from the solution: $\pm$ each coordinate axis of the block and
    $\pm$ the eigenvector of the smallest eigenvalue of the Hessian $h$ there."""
    d = h.shape[0]
    axes = list(np.eye(d))
    _, vectors = np.linalg.eigh(0.5 * (h + h.T))
    rays = axes + [vectors[:, 0]] if d > 1 else axes
    return [sign * u for u in rays for sign in (1.0, -1.0)]


def bottom_level_unbounded(num, x1, lower, hessian) -> str | None:
    r"""A description if the bottom level's objective $f_n$ is unbounded below for this
    $x_1$, along a ray of `probe_directions` from its solution (levels above at their
    solutions); None when no probed ray falls without bound.

    ``num`` is either backend (its ``objective_value``), ``lower`` the blocks
    $x_2^*, \dots, x_n^*$ (flat float64 arrays), ``hessian`` $D_{nn} f_n$ there. A ray
    counts when $f_n$ decreases strictly at distances $10^4, \dots, 10^8$ times
    $1 + \lVert x_n^* \rVert$ and ends more than ``PROBE_DROP`` times its scale below its
    value at the solution; a NaN or an overflow on a ray decides nothing.
    """
    n = len(lower) + 1
    blocks = [np.asarray(x1, dtype=np.float64)] + [np.asarray(b, dtype=np.float64)
                                                  for b in lower]
    base = float(num.objective_value(n - 1, blocks))
    if not np.isfinite(base):
        return None
    solution = blocks[-1]
    size = 1.0 + float(np.linalg.norm(solution))
    for direction in probe_directions(np.asarray(hessian, dtype=np.float64)):
        values = []
        with np.errstate(all="ignore"):
            for s in PROBE_DISTANCES:
                trial = list(blocks)
                trial[-1] = solution + s * size * direction
                values.append(float(num.objective_value(n - 1, trial)))
        values = np.asarray(values)
        tail = values[PROBE_DISTANCES >= 1e4]
        if (np.all(np.isfinite(tail)) and np.all(np.diff(tail) < 0)
                and tail[-1] < base - PROBE_DROP * (1.0 + abs(base))):
            where = np.round(np.ravel(x1), 6).tolist()
            return (f"level {n} is unbounded below at x1 = {where}: f_{n} falls from "
                    f"{base:.6g} at its local minimiser to {tail[-1]:.3g} at distance "
                    f"{PROBE_DISTANCES[-1] * size:.3g} along "
                    f"{np.round(direction, 3).tolist()} (the solve found a local minimiser only)")
    return None


def unbounded_along_negative_curvature(problem, level: int, x1) -> str | None:
    """For a declared problem: a description if level ``level``'s reduced objective falls
    without bound along the direction of most negative curvature from its start (levels
    above at their start, levels below re-solved); None when it does not, or when that
    cannot be decided here."""
    from ..problem import MultilevelProblem

    if not isinstance(problem, MultilevelProblem):
        return None
    evaluator = problem.numeric()
    k = level - 1
    blocks = [np.asarray(x1, dtype=np.float64)] + [np.array(x) for x in problem.inits[1:]]
    try:
        base = evaluator.reduced_value(k, blocks, 1e-10, 100)
        h = evaluator.gradient_hessian(k, blocks)[1]
        eigenvalues, vectors = np.linalg.eigh(0.5 * (h + h.T))
        if eigenvalues[0] >= 0:
            return None
        for sign in (1.0, -1.0):
            values = []
            for s in 10.0 ** np.arange(0, 9):
                trial = list(blocks)
                trial[k] = blocks[k] + sign * s * vectors[:, 0]
                values.append(evaluator.reduced_value(k, trial, 1e-10, 100))
            values = np.asarray(values)
            if np.all(np.isfinite(values)) and np.all(np.diff(values) < 0) and (
                values[-1] < base - 1e6
            ):
                return (f"level {level} is unbounded below: its objective falls to "
                        f"{values[-1]:.3g} at distance 1e8 along the direction of negative "
                        f"curvature (eigenvalue {eigenvalues[0]:.3g}) at x1 = "
                        f"{np.round(np.asarray(x1), 6).tolist()}")
    except (ArithmeticError, ValueError, RuntimeError, AttributeError):
        return None  # undecided here (AttributeError: the solver's internals changed)
    return None


def unbounded_from_start(problem, x1) -> str | None:
    r"""For a declared problem's bottom level (its reduced objective is $f_n$ itself): a
    description if $f_n$ falls without bound in $x_n$, decided exactly where $f_n$ is
    quadratic in $x_n$ with a negative Hessian eigenvalue, else by $f_n$ falling
    monotonically to below $f_n(0) - 10^6$ at distance $10^8$ along the direction of most
    negative curvature or a coordinate axis ($x_1$ given, the levels in between at 0); None
    otherwise."""
    import sympy as sp

    from ..problem import MultilevelProblem

    if not isinstance(problem, MultilevelProblem):
        return None
    n = problem.n
    block = problem.block(n)
    f = problem.objectives[n - 1]
    hessian = sp.hessian(f, list(block))
    if all(e.is_number for e in hessian):
        eigenvalues, vectors = np.linalg.eigh(np.array(hessian.evalf(), dtype=float))
        if eigenvalues[0] < 0:
            return (f"level {n} is unbounded below: f_{n} is quadratic in x_{n} with a constant "
                    f"Hessian whose eigenvalue {eigenvalues[0]:.6g} < 0, so f_{n} falls like "
                    f"-s^2 along its eigenvector, for every x1")
        return None
    values = dict(zip(problem.variables, np.zeros(len(problem.variables)), strict=True))
    values.update(dict(zip(problem.blocks[0], np.ravel(x1), strict=True)))
    h = np.array(hessian.subs(values).evalf(), dtype=float)
    eigenvalues, vectors = np.linalg.eigh(0.5 * (h + h.T))
    # directions: most negative curvature at the point, then each coordinate of x_n
    directions = [vectors[:, 0], *np.eye(len(block))]
    f_num = sp.lambdify(list(block), f.subs({v: values[v] for v in problem.variables
                                              if v not in block}), "math")
    for direction in directions:
        for sign in (1.0, -1.0):
            try:
                trail = [f_num(*(sign * s * direction)) for s in 10.0 ** np.arange(0, 9)]
            except (ArithmeticError, ValueError):
                continue
            if np.all(np.diff(trail) < 0) and trail[-1] < trail[0] - 1e6:
                return (f"level {n} is unbounded below: f_{n} falls to {trail[-1]:.3g} at "
                        f"distance 1e8 from x_{n} = 0 along "
                        f"{np.round(sign * direction, 3).tolist()}, at x1 = "
                        f"{np.round(np.ravel(x1), 6).tolist()}")
    return None


def classify_failure(problem, err, x1, symbolic: bool) -> tuple[str, str]:
    """(kind, reason) for an error a lower solve raised at ``x1``: "unbounded below" where
    that can be shown (the error itself, the exact quadratic case, or a ray on which the
    level's objective falls without bound), else "not unique", "degenerate or indefinite"
    or "solve failed". ``symbolic``: the error came from the derivation (step 1)."""
    from ..errors import HessianError, NonUniqueMinimiserError, UnboundedLevelError

    if isinstance(err, UnboundedLevelError):
        return "unbounded below", one_line(err)
    if isinstance(err, NonUniqueMinimiserError):
        return "not unique", one_line(err)
    level = getattr(err, "level", None)
    if level == problem.n:
        unbounded = unbounded_from_start(problem, x1)
        if unbounded is not None:
            return "unbounded below", unbounded
    elif level is not None:
        if symbolic and getattr(err, "everywhere", False) and \
                getattr(err, "min_eigenvalue", None) is not None and err.min_eigenvalue < 0:
            # The derivation decides definiteness only where D_kk F_k is a constant matrix:
            # then F_k is quadratic in x_k with a negative curvature direction.
            return "unbounded below", (f"level {level} is unbounded below: D_kk F_k is a "
                                       f"constant matrix with eigenvalue "
                                       f"{err.min_eigenvalue:.6g} < 0")
        unbounded = unbounded_along_negative_curvature(problem, level, x1)
        if unbounded is not None:
            return "unbounded below", unbounded
    if isinstance(err, HessianError):
        return "degenerate or indefinite", one_line(err)
    return "solve failed", one_line(err)


class Violation(str):
    """An assumption violation: its message (a ``str``, as reports show it), with the
    ``level`` at fault (None where none is named) and its ``kind`` ("degenerate or
    indefinite", "unbounded below", "solve failed", ...)."""

    level: int | None
    kind: str

    def __new__(cls, message: str, level: int | None = None, kind: str = "assumption"):
        obj = super().__new__(cls, message)
        obj.level, obj.kind = level, kind
        return obj

    def error(self, prefix: str = "") -> MlverifyError:
        """The error naming the level: UnboundedLevelError for a level unbounded below,
        else HessianError (level 2 where the violation names none).

        Args:
            prefix: Text put before the message (what the violation was found in).

        Returns:
            The error, to raise.
        """
        from ..errors import HessianError, UnboundedLevelError

        if self.kind == "unbounded below" and self.level is not None:
            return UnboundedLevelError(prefix + str(self), level=self.level)
        return HessianError(prefix + str(self), level=self.level or 2)


def lower_curvature_at(num, x1, lower):
    r"""The per-point assumptions every verdict rests on, at $x_1$ with the lower levels
    solved (``lower``: $x_2^*, \dots, x_n^*$): each $H_k = D_{kk} F_k$ strongly convex (its
    smallest eigenvalue above `STRONG_CONVEXITY_FLOOR` times its largest) and the bottom
    level bounded below (`bottom_level_unbounded`). One definition for the assumption scan
    and the theorem checks.

    Returns ``(mu, violation)``: the smallest eigenvalue of each $H_k$ by level (2-based
    keys), and None or ``(kind, level, message)`` with ``kind`` "degenerate or indefinite"
    or "unbounded below".
    """
    where = f"x1 = {np.round(np.asarray(x1), 6).tolist()}"
    hessians = num.lower_hessians([num.unflatten(0, np.asarray(x1)), *lower])
    mu = {}
    for k, h in enumerate(hessians, start=2):
        eig = np.linalg.eigvalsh(0.5 * (np.asarray(h) + np.asarray(h).T))
        mu[k] = float(eig[0])
        if eig[0] <= STRONG_CONVEXITY_FLOOR * abs(eig[-1]):
            return mu, (
                "degenerate or indefinite", k,
                f"level {k} is not strongly convex at {where}: min eigenvalue of D_kk F_k is "
                f"{eig[0]:.3g} (at most {STRONG_CONVEXITY_FLOOR:g} times the largest)")
    flat = [np.asarray(num.flatten(k, x)) for k, x in enumerate(lower, start=1)]
    unbounded = bottom_level_unbounded(num, x1, flat, np.asarray(hessians[-1]))
    if unbounded is not None:
        return mu, ("unbounded below", num.n, unbounded)
    return mu, None


def failure_reason(result: dict) -> str:
    """A failed `check_assumptions` result in one line: its kind, then the reason, which
    names the level.

    Args:
        result: What `check_assumptions` returned, with ``ok`` False.

    Returns:
        ``"<kind>: level <k>: <reason>"`` (the level not repeated where the reason names it).
    """
    reason = result["reason"]
    if f"level {result['level']}" not in reason:
        reason = f"level {result['level']}: {reason}"
    return f"{result['kind']}: {reason}"


def check_assumptions(problem, box, *, samples: int = ASSUMPTION_SAMPLES,
                      starts: int = MULTISTARTS, progress=None) -> dict:
    """The assumptions every check shares, on the box: at sampled x1, each lower level has a
    unique minimiser (by a seeded multistart of ``starts`` points), is bounded below, and is
    strongly convex there ($D_{kk} F_k$ positive definite and well conditioned), and the
    bottom level is probed for unboundedness (`bottom_level_unbounded`). ``progress(1)`` is
    called per point.

    Returns ``{"ok", "reason", "level", "kind", "points", "mu"}``; ``kind`` is one of
    "unbounded below", "not unique", "degenerate or indefinite", "solve failed" when not ok.
    """
    from ..errors import (
        ConvergenceError,
        HessianError,
        MlverifyError,
        NonUniqueMinimiserError,
        UnboundedLevelError,
    )
    from ..optimize import as_numeric

    num = as_numeric(problem, "implicit-exact")
    points = sample_points(*as_box(box, num.sizes[0]), samples, 0)
    mu = {}
    d_n = problem.sizes[-1]
    result = {"ok": True, "reason": None, "level": None, "kind": None,
              "points": len(points), "multistart": starts,
              "rays": 2 * d_n + (2 if d_n > 1 else 0)}

    def fail(kind, level, reason):
        result.update(ok=False, kind=kind, level=level, reason=reason)
        return result

    for x1 in points:
        if progress is not None:
            progress(1)
        where = f"x1 = {np.round(x1, 6).tolist()}"
        try:
            lower = problem.solve_lower(x1, starts=starts)
            at_point, violation = lower_curvature_at(num, x1, lower)
        except (UnboundedLevelError, NonUniqueMinimiserError, HessianError,
                ConvergenceError) as err:
            kind, reason = classify_failure(problem, err, x1, symbolic=False)
            return fail(kind, err.level,
                        reason if kind == "unbounded below" else f"at {where}: {reason}")
        except MlverifyError as err:
            return fail("solve failed", err.level, f"at {where}: {one_line(err)}")
        for k, value in at_point.items():
            mu[k] = min(mu.get(k, np.inf), value)
        if violation is not None:
            return fail(*violation)
    result["mu"] = mu
    return result


def sample_points(lo, hi, count, seed):
    """The points of the box ``[lo, hi]`` where the assumptions and constants are sampled: a
    grid of about ``count`` points, or ``count`` seeded uniform points where a grid would be
    more than four times as many."""
    d = lo.size
    per_axis = max(2, int(round(count ** (1.0 / d))))
    if per_axis**d <= 4 * count:
        grid = [np.linspace(lo[i], hi[i], per_axis) for i in range(d)]
        return [np.array(p) for p in itertools.product(*grid)]
    rng = np.random.default_rng(seed)
    return [lo + (hi - lo) * rng.random(d) for _ in range(count)]
