r"""One definition of "solved", "degenerate" and "distinct minimisers", for both backends.

The symbolic evaluator (`mlverify.symsolve`) and the JAX core (`mlverify.numeric`) solve the
lower levels by the same damped Newton method and judge the result by the tests here, so a
declared problem and its lowered JAX twin stop at the same points and fail with the same
errors. Every test is invariant under scaling a lower objective $f_k$ by a positive
constant, which changes no lower solution and no hypergradient:

- **Solved.** Level $k$ is solved when Newton's step at the point, the estimated distance to
  the solution $\lVert H_k^{-1} D_k F_k \rVert$, is at most
  $\mathrm{tol}\,(1 + \lVert x_k \rVert)$. Near a non-degenerate minimiser Newton's step is
  the distance to it to second order; the gradient norm $\lVert D_k F_k \rVert$ is not (it
  scales with $f_k$, and it is tiny wherever $H_k$ is tiny). Both are reported.
- **Degenerate.** The smallest eigenvalue of $H_k$ is compared with the curvature scale the
  level itself sets: the largest of $\lambda_{\max}(H_k)$ at the point, the curvature
  $u^\top H_k u$ a short way along a fixed direction $u$ on either side (at distance
  `PROBE_RADIUS` $(1 + \lVert x_k \rVert)$), and the secant slope of the gradient there. A
  $1 \times 1$ block, or a Hessian that is uniformly small, is judged against how fast the
  level's curvature grows nearby, not against itself. $\lambda_{\min} \le$
  `DEGENERATE_RATIO` $\cdot$ scale is degenerate (singular to working accuracy); below minus
  that, indefinite.
- **Distinct minimisers** (multistart): two solutions of one level, for the same levels
  above, are distinct when they are further apart than a hundred times their estimated
  distances to the solution (and than `DISTINCT_RATIO` $(1 + \lVert x \rVert)$); the second
  one competes when its reduced objective is not above the first's by more than a relative
  `VALUE_RATIO` of the level's own value scale.
"""

from __future__ import annotations

import numpy as np

from .errors import (
    HessianError,
    MlverifyError,
    NonFiniteError,
    NonUniqueMinimiserError,
    UnboundedLevelError,
)

#: Default lower-solve tolerance on the estimated relative distance to the solution.
DEFAULT_TOL = 1e-12
#: $\lambda_{\min}(H_k)$ at most this times the level's curvature scale: degenerate.
DEGENERATE_RATIO = 1e-12
#: The curvature probes lie this far away, relative to $1 + \lVert x_k \rVert$.
PROBE_RADIUS = 0.1
#: Two minimisers closer than this, relative to $1 + \lVert x \rVert$, are one.
DISTINCT_RATIO = 1e-9
#: Relative value tolerance when comparing two minimisers' objectives.
VALUE_RATIO = 1e-8
#: A level whose iterate moved this far, relative to $1 + \lVert x^0_k \rVert$, while its
#: objective kept falling is reported as unbounded below.
UNBOUNDED_RATIO = 1e12
#: A non-Newton step shorter than this, relative to $1 + \lVert x_k \rVert$, is taken at a
#: stationary point: where $H_k$ has a negative eigenvalue, the solve leaves along it.
STATIONARY_RATIO = 1e-8
#: Round-off unit of float64.
EPS = float(np.finfo(np.float64).eps)


def probe_direction(size: int) -> np.ndarray:
    """The fixed unit direction $u$ of the curvature probes (seeded: both backends agree)."""
    u = np.random.default_rng(20241011).standard_normal(size) + 0.5
    return u / np.linalg.norm(u)


def probe_radius(x: np.ndarray) -> float:
    """How far the curvature probes lie from $x_k$."""
    return PROBE_RADIUS * (1.0 + float(np.linalg.norm(x)))


#: Safety factor on $L$, the one definition: on the proven upper bound of
#: $\lambda_{\max}$ (`mlverify.certify`), and on the sampled $\lambda_{\max}$ of the
#: Theorem 4.1 and 4.2 checks (`mlverify.verify`), where sampling can only under-estimate a
#: maximum; the same factor keeps the two comparable.
L_MARGIN = 1.01
#: Relative slack on "left $\le$ right" for float64 sums of up to $T$ terms.
ROUND_OFF = 1e-9


def bound_4_1(L, gap, t):
    r"""Theorem 4.1's right side $2L\,(F_1(x^0) - F_1^*)/T$ at each ``t`` ($T$), with
    ``gap`` $= F_1(x^0) - F_1^*$ (NumPy or JAX arrays; the checks and the batched check
    use it)."""
    return 2 * L * gap / t


def bound_4_2(alpha, gap, t, error_term):
    r"""Theorem 4.2's right side $2\,(F_1(x^0) - F_1^*)/(\alpha T) + \frac1T \sum_t
    \lVert e_t \rVert^2$ at each ``t``, with ``gap`` $= F_1(x^0) - F_1^*$ and ``error_term``
    the running mean of $\lVert e_t \rVert^2$."""
    return 2 * gap / (alpha * t) + error_term


def bound_holds(left, right):
    """``left <= right`` up to the round-off of float64 sums (`ROUND_OFF`), elementwise."""
    return left <= right * (1 + ROUND_OFF) + 1e-15


def as_box(box, size: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The box $X$ of $x_1$ as float64 ``(lo, hi)`` of ``size`` entries each: ``box`` is
    ``(lo, hi)``, each side a number (every coordinate) or a sequence; the one reading of a
    box for the theorem checks, the batch checks and the certification.

    Raises:
        ValueError: A side of the wrong size, or ``lo < hi`` fails in some coordinate.
    """
    lo, hi = box
    try:
        lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (size,)).copy()
        hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (size,)).copy()
    except ValueError as err:
        raise ValueError(f"the box needs sides of {size} entries (x_1's size): {err}") from err
    if np.any(lo >= hi):
        raise ValueError(f"the box needs lo < hi, got {lo} and {hi}")
    return lo, hi


def tolerance(x, tol: float, xp=np):
    r"""The stopping test's limit $\mathrm{tol}\,(1 + \lVert x_k \rVert)$ on the estimated
    distance to the solution; ``xp`` is NumPy or ``jax.numpy`` (inside compiled solves)."""
    if xp is np:
        return tol * (1.0 + float(np.linalg.norm(np.asarray(x))))
    return tol * (1.0 + xp.linalg.norm(x))


def solved(distance, x, tol: float, xp=np):
    r"""The stopping test of every lower solve, on both backends: estimated distance (Newton's
    step) $\le \mathrm{tol}\,(1 + \lVert x_k \rVert)$ (`tolerance`). A bool for NumPy, a
    traced boolean under ``jax.numpy``."""
    result = distance <= tolerance(x, tol, xp)
    return bool(result) if xp is np else result


def newton_step(g: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, float]:
    r"""(Newton's step $-H^{-1} g$, $\lambda_{\min}(H)$); the step is NaN where $H$ is not
    positive definite or is singular relative to its own largest eigenvalue."""
    sym = 0.5 * (h + h.T)
    eigenvalues = np.linalg.eigvalsh(sym)
    lo, hi = float(eigenvalues[0]), float(eigenvalues[-1])
    if lo > 0 and lo > hi * DEGENERATE_RATIO:
        return -np.linalg.solve(sym, g), lo
    return np.full_like(g, np.nan), lo


def descent_direction(g: np.ndarray, h: np.ndarray, x=None) -> tuple[np.ndarray, float]:
    r"""Newton's direction where $H$ is positive definite, else steepest descent scaled by
    $1/\lVert H \rVert_2$ (scale-invariant: multiplying $f_k$ by $c$ changes neither); and
    $\lambda_{\min}(H)$.

    A non-Newton step is capped at length $1 + \lVert x \rVert$ (where $H$ is nearly zero,
    at an inflection point, the scaled gradient step would be unbounded); the line search
    shortens it further. At a stationary point with negative curvature (a maximum or a
    saddle, where that step vanishes) the step is `negative_curvature_step`: a start there
    is not a solution, so the solve leaves it; which minimiser it reaches is then judged by
    the multistart (``starts=K``), which names a second one."""
    step, lo = newton_step(g, h)
    if np.all(np.isfinite(step)):
        return step, lo
    scale = float(np.max(np.abs(np.linalg.eigvalsh(0.5 * (h + h.T)))))
    step = -g / max(scale, np.finfo(np.float64).tiny)
    size = 1.0 + (0.0 if x is None else float(np.linalg.norm(x)))
    length = float(np.linalg.norm(step))
    if not np.isfinite(length) or length > size:
        step = -g * (size / max(float(np.linalg.norm(g)), np.finfo(np.float64).tiny))
    elif lo < 0 and length <= STATIONARY_RATIO * size:
        step = negative_curvature_step(g, h, size)
    return step, lo


def negative_curvature_step(g, h, size, xp=np, vectors=None):
    r"""The step of length ``size`` along the eigenvector $u$ of the most negative eigenvalue
    of $H$, signed not to climb ($g \cdot u \le 0$); where $g \cdot u = 0$ (a stationary
    point), the sign that makes $u$'s largest entry positive, so both backends leave a
    maximum the same way. ``xp``: ``numpy`` or ``jax.numpy`` (one rule for both);
    ``vectors``: $H$'s eigenvectors (ascending eigenvalues) where the caller has them."""
    if vectors is None:
        _, vectors = xp.linalg.eigh(0.5 * (h + h.T))
    u = vectors[:, 0]
    u = u * xp.where(u[xp.argmax(xp.abs(u))] < 0, -1.0, 1.0)
    return u * size * xp.where(xp.vdot(g, u) > 0, -1.0, 1.0)


def distance_estimate(g: np.ndarray, h: np.ndarray) -> float:
    r"""$\lVert H^{-1} g \rVert$, Newton's estimate of the distance to the solution (inf
    where $H$ is not positive definite)."""
    step, _ = newton_step(g, h)
    return float(np.linalg.norm(step)) if np.all(np.isfinite(step)) else float("inf")


def curvature_scale(h: np.ndarray, probes=()) -> float:
    r"""The level's own curvature scale: $\lambda_{\max}(H)$ at the point, and the finite
    probe curvatures and secant slopes in ``probes``."""
    values = [float(np.max(np.abs(np.linalg.eigvalsh(0.5 * (h + h.T)))))]
    values += [abs(float(p)) for p in probes if np.isfinite(p)]
    return max(values)


def check_lower_hessian(h: np.ndarray, level: int, scale: float | None = None) -> None:
    r"""Raise HessianError unless $H_k$ is symmetric positive definite and non-degenerate
    against ``scale`` (the level's curvature scale; its own $\lambda_{\max}$ if not given)."""
    if not np.all(np.isfinite(h)):
        raise NonFiniteError(
            "the Hessian D_kk F_k holds NaN or inf", level=level, quantity="Hessian D_kk F_k"
        )
    eigenvalues = np.linalg.eigvalsh(0.5 * (h + h.T))
    lo, hi = float(eigenvalues[0]), float(eigenvalues[-1])
    own = max(abs(lo), abs(hi))
    scale = own if scale is None else max(float(scale), own)
    condition = float("inf") if lo == 0 else abs(hi / lo)
    threshold = DEGENERATE_RATIO * scale
    if lo < -threshold:
        raise HessianError(
            f"the Hessian D_kk F_k is indefinite at the point: min eigenvalue {lo:.6g}, "
            f"max {hi:.6g}, condition number {condition:.3g}",
            level=level,
            min_eigenvalue=lo,
            condition_number=condition,
        )
    if scale == 0 or lo <= threshold:
        raise HessianError(
            f"the Hessian D_kk F_k is singular at the point (degenerate to working accuracy): "
            f"min eigenvalue {lo:.3g} against the level's curvature scale {scale:.3g} "
            f"(ratio limit {DEGENERATE_RATIO:.0e}; condition number {condition:.3g}); the best "
            "response is not locally unique or not differentiable here",
            level=level,
            min_eigenvalue=lo,
            condition_number=condition,
        )


def distinct(a: np.ndarray, b: np.ndarray, distance_a: float, distance_b: float) -> bool:
    """Whether two solutions of one level are different points (see the module docstring)."""
    gap = float(np.linalg.norm(np.asarray(a) - np.asarray(b)))
    size = 1.0 + float(np.linalg.norm(a)) + float(np.linalg.norm(b))
    return gap > max(100.0 * (distance_a + distance_b), DISTINCT_RATIO * size)


def competes(value_ref: float, value_other: float, curvature: float, gap: float) -> bool:
    r"""Whether another minimiser's value is not meaningfully above the reference's: the
    level's argmin is then not unique (equal values) or the reference is not the global
    minimiser (a lower value). The value scale is $\lvert F \rvert$ and the curvature times
    the squared gap."""
    scale = max(abs(value_ref), abs(value_other), 0.5 * abs(curvature) * gap * gap)
    return bool(value_other <= value_ref + VALUE_RATIO * scale)


def start_points(center: np.ndarray, radius: float, count: int, seed: int) -> np.ndarray:
    """``count`` seeded starts, uniform in the box center +- radius (one row each)."""
    rng = np.random.default_rng(seed)
    center = np.asarray(center, dtype=np.float64).reshape(-1)
    return center + radius * rng.uniform(-1.0, 1.0, size=(count, center.size))


def start_radius(x: np.ndarray) -> float:
    r"""The default multistart half-width around a level's solution:
    $2\,(1 + \lVert x_k \rVert_\infty)$."""
    return 2.0 * (1.0 + float(np.max(np.abs(x))))


def raise_domain_edge(level: int, x, value: float, start_value: float) -> None:
    """UnboundedLevelError for a level whose reduced objective fell all the way to where it
    stops being finite (NaN or inf just beyond the iterate): its infimum lies on the edge of
    the domain, not at an interior minimiser."""
    raise UnboundedLevelError(
        f"the reduced objective F_k has no interior minimiser: it fell from {start_value:.6g} "
        f"to {value:.6g} towards x_{level} = {np.array2string(np.asarray(x), precision=6)}, "
        "beyond which it is NaN or infinite (its infimum is on the edge of its domain)",
        level=level,
        value=value,
    )


def check_bounded(level: int, x, start, value: float, start_value: float, final: bool) -> None:
    """UnboundedLevelError when a level's iterate ran off (``UNBOUNDED_RATIO`` times its
    start's scale during the solve, or a million times for a solve that stopped short) while
    its reduced objective kept falling: the level has no minimiser."""
    moved = float(np.linalg.norm(np.asarray(x) - np.asarray(start)))
    moved /= 1.0 + float(np.linalg.norm(start))
    limit = 1e6 if final else UNBOUNDED_RATIO
    if moved > limit and value < start_value:
        raise UnboundedLevelError(
            f"the reduced objective F_k is unbounded below: it fell from {start_value:.6g} to "
            f"{value:.6g} while x_{level} moved {moved:.3g} times its starting scale (the "
            "level has no minimiser)",
            level=level,
            value=value,
        )


def roundoff_floor(value, top_gradient, hessians) -> float:
    r"""$64\,\varepsilon\,(1 + \max_k \kappa(H_k))\,\max(\lvert \text{value} \rvert,
    \lvert \nabla f_1 \rvert)$: the round-off part of the hypergradient's error estimate
    (both backends; $\kappa$ the condition number)."""
    conditions = [1.0]
    for h in hessians:
        eigenvalues = np.abs(np.linalg.eigvalsh(0.5 * (h + h.T)))
        conditions.append(float(eigenvalues[-1] / max(eigenvalues[0], 1e-300)))
    magnitude = max(float(np.max(np.abs(value))), float(np.max(np.abs(top_gradient))))
    return 64.0 * EPS * (1.0 + max(conditions)) * magnitude


def non_unique_error(k, x1, reference, other_point, value, other, starts, half_width):
    """The NonUniqueMinimiserError of level $k + 1$ (0-based $k$), both backends: two
    minimisers of equal value (to ``VALUE_RATIO``), or a solve that reached a local
    minimiser while another one is lower (the message says which)."""
    where = np.array2string(np.asarray(x1), precision=6)
    first = f"{np.array2string(np.asarray(reference), precision=8)} (F_{k + 1} = {value:.10g})"
    second = f"{np.array2string(np.asarray(other_point), precision=8)} (F_{k + 1} = {other:.10g})"
    found = f"found by {starts} seeded starts in x_{k + 1}* +- {half_width:.3g}"
    scale = max(abs(value), abs(other))
    if other < value - VALUE_RATIO * scale:
        text = (f"x_{k + 1} has more than one minimiser at x_1 = {where}: the solve reached "
                f"the local minimiser {first}, and {second} is lower, {found}")
    else:
        text = (f"x_{k + 1} has two minimisers of equal value at x_1 = {where}: {first} and "
                f"{second}, {found}")
    return NonUniqueMinimiserError(
        text,
        level=k + 1,
        x1=np.array(x1),
        minimisers=(np.array(reference), np.array(other_point)),
        values=(value, other),
    )


def restart(blocks, sizes, starts: int, seed: int, radius, solve, error):
    r"""After a failed solve (a start at a stationary maximum, say): ``solve(trial)`` from
    ``starts`` seeded points uniform in the lower starting blocks $\pm$ ``radius`` (default
    `start_radius`), with ``trial[0]`` the fixed $x_1$; the first result that does not raise
    is returned and becomes the reference the multistart then tests. ``error`` is raised when
    every start fails (both backends)."""
    start = np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1) for b in blocks[1:]])
    half_width = start_radius(start) if radius is None else float(radius)
    splits = np.cumsum(sizes[1:])[:-1]
    for point in start_points(start, half_width, starts, seed):
        try:
            return solve([blocks[0], *np.split(point, splits)])
        except MlverifyError:
            continue
    raise error


def search_second_minimiser(blocks, distances, starts: int, seed: int, radius, *,
                            solve_level, value, curvature) -> None:
    r"""Seeded multistart, bottom-up (both backends): for each level $k = n, \dots, 2$, with
    the levels above held at the solution ``blocks``, ``solve_level(k, point)`` re-solves
    level $k$ (and those below it) from ``starts`` points uniform in $x_k^* \pm r$ ($r$ =
    ``radius``, default `start_radius`) and returns ``(blocks, distance)``. A distinct
    minimiser whose $F_k$ (``value(k, blocks)``) is not above the solution's, against the
    level's ``curvature(k)`` scale, raises NonUniqueMinimiserError. Starts that fail (no
    convergence, NaN, a degenerate point) are skipped. ``distances`` are the solution's
    Newton distance estimates, levels $2, \dots, n$. Multistart can find a second
    minimiser; it cannot prove there is none."""
    for k in range(len(blocks) - 1, 0, -1):
        reference = np.asarray(blocks[k], dtype=np.float64)
        reference_value, scale = value(k, blocks), curvature(k)
        half_width = start_radius(reference) if radius is None else float(radius)
        for point in start_points(reference, half_width, starts, seed + k):
            try:
                solved, distance = solve_level(k, point)
            except MlverifyError:
                continue
            other_point = np.asarray(solved[k], dtype=np.float64)
            if not distinct(reference, other_point, float(distances[k - 1]), float(distance)):
                continue
            other = value(k, solved)
            gap = float(np.linalg.norm(other_point - reference))
            if competes(reference_value, other, scale, gap):
                raise non_unique_error(k, np.asarray(blocks[0]), reference, other_point,
                                       reference_value, other, starts, half_width)
