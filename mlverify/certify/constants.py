r"""Certified constants of Theorem 4.1 on a box of $x_1$, by bisection.

Over each sub-box $B$ of $X$ the lower solutions are enclosed (Krawczyk test on the stacked
stationarity system, [`mlverify.certify.system`][mlverify.certify.system]), then every lower
Hessian $H_k$ and the Hessian of $F_1$ is enclosed over $B \times$ (the enclosure) and
bounded by [`symmetric_eigen_bounds`][mlverify.certify.bounds.symmetric_eigen_bounds].
Proven on success, for every $x_1 \in X$: each lower level's stationarity system has exactly
one zero in the enclosure, each $H_k$ is positive definite there with
$\lambda_{\min}(H_k) \ge \mu_k$, and the Hessian of $F_1$ satisfies $m \le \lambda_{\min}$,
$\lambda_{\max} \le \lambda_{\max}^{\mathrm{upper}}$. Boxes are bisected while an
assumption is not yet proven or a bound is looser than `rtol`, until the budget
(`max_boxes`, `time_limit`) is spent.

An assumption can also be proven to *fail*: at some $x_1 \in X$, a zero of the stationarity
system where a lower $H_k$ or the Hessian of $F_1$ has a proven negative eigenvalue, or two
disjoint enclosures of zeros with every $H_k$ positive definite (two strict local solutions:
a lower level is not strongly convex). Such a point makes Theorem 4.1 not applicable.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..checks import L_MARGIN, as_box
from ..errors import MlverifyError
from .bounds import float_down, float_up, symmetric_eigen_bounds
from .hypergradient import CENTRE_TOL, certified_system, precision
from .system import krawczyk

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ..problem import MultilevelProblem
    from .system import CertifiedSystem

#: Working precision (bits) over boxes: the widths come from the boxes, not the rounding.
BOX_PRECISION = 64


@dataclass
class BoxCertificate:
    """What certification proved on a box (see the module docstring).

    ``status``: "certified" (every assumption proven and the constants bounded),
    "violated" (an assumption proven to fail; ``reason`` says where) or "failed" (neither
    could be proven within the budget; ``reason`` names the level and the cause).
    Intervals are (lower, upper) float64 pairs rounded outward.
    """

    status: str
    reason: str
    box: tuple
    boxes: int
    seconds: float
    lambda_max: tuple | None = None  # max over X of lambda_max(Hessian of F_1)
    lambda_min: tuple | None = None  # min over X of lambda_min(Hessian of F_1)
    mu: dict = field(default_factory=dict)  # level -> min over X of lambda_min(H_k)
    violation: dict | None = None

    @property
    def certified(self) -> bool:
        """Whether every assumption of Theorem 4.1 and the constants are proven."""
        return self.status == "certified"

    @property
    def L(self) -> float | None:
        r"""$L_{\mathrm{cert}}$ = `L_MARGIN` $\times$ the proven upper bound of $\lambda_{\max}$
    (None unless certified)."""
        if self.lambda_max is None:
            return None
        return float(np.nextafter(L_MARGIN * self.lambda_max[1], np.inf))

    def as_dict(self) -> dict:
        """Plain values for the JSON report."""
        method = ("Krawczyk enclosure of the lower solutions and ball-arithmetic eigenvalue "
                  "bounds (Weyl + interval Cholesky) on bisected boxes, python-flint arb")
        common = {"method": method, "boxes": self.boxes, "seconds": self.seconds}
        out = {"status": self.status, "reason": self.reason,
               "box": [list(map(float, self.box[0])), list(map(float, self.box[1]))],
               "boxes": self.boxes, "seconds": self.seconds, "constants": {}}
        if self.lambda_max is not None:
            out["constants"]["lambda_max"] = {"interval": list(self.lambda_max), **common}
            out["constants"]["L"] = {
                "interval": [self.lambda_max[1], self.L],
                "value": self.L, **common,
                "method": f"{L_MARGIN} x the proven upper bound of lambda_max ({method})"}
        if self.lambda_min is not None:
            out["constants"]["lambda_min"] = {"interval": list(self.lambda_min), **common}
        for k, interval in self.mu.items():
            out["constants"][f"mu_{k}"] = {"interval": list(interval), **common}
        if self.violation is not None:
            out["violation"] = self.violation
        return out


def _x1_balls(lo, hi):
    from flint import arb

    return [arb(float(a)).union(arb(float(b))) for a, b in zip(lo, hi, strict=True)]


def _thin(x):
    from flint import arb

    return [arb(float(v)) for v in x]


def _describe(z, names):
    return ", ".join(f"{name} in [{float_down(v):.6g}, {float_up(v):.6g}]"
                     for name, v in zip(names, z, strict=True))


def _centre(problem, system, x1, parent):
    r"""A float64 zero of $G(x_1, \cdot)$ (the lower solutions, every $H_k$ checked), or a
    message saying why not: the lower solve of `MultilevelProblem.solve_lower`,
    warm-started from the parent box's centre, which keeps it on the parent's branch."""
    init = None
    if parent is not None:
        splits = np.cumsum(system.sizes[1:])[:-1]
        init = np.split(np.asarray(parent), splits)
    try:
        with np.errstate(all="ignore"):  # non-finite values raise NonFiniteError instead
            solution = problem.solve_lower(x1, init=init, tol=CENTRE_TOL)
    except MlverifyError as err:
        return f"the float lower solve failed at x1 = {x1.tolist()}: {err}"
    return np.concatenate([np.reshape(x, -1) for x in solution.xs])


def _point(system, x1, center):
    """Enclosure at a thin $x_1$ and the eigenvalue bounds of every Hessian there, or None."""
    enclosure = krawczyk(system, _thin(x1), center)
    if not enclosure.ok:
        return None
    bounds = [symmetric_eigen_bounds(h) for h in system.hessian_blocks(_thin(x1), enclosure.z)]
    return enclosure.z, bounds


def _violation_at(system, x1, z, bounds) -> dict | None:
    """A proven violation at a point whose zero ``z`` is enclosed, or None."""
    where = f"x1 = {np.round(np.asarray(x1), 6).tolist()}"
    if any(b is None for b in bounds):
        return None
    n = system.n
    for k in range(n, 1, -1):  # the deepest level first: the levels below it are proven PD
        b = bounds[k - 2]
        if b.min_upper < 0:
            return {"x1": list(map(float, x1)), "level": k, "kind": "indefinite lower Hessian",
                    "message": (
                        f"level {k}: at {where} the stationarity system has a zero "
                        f"({_describe(z, system.names)}) where D_kk F_k has a negative "
                        f"eigenvalue (lambda_min <= {b.min_upper:.4g}): the level's objective is "
                        f"not convex in its own variable, so it is not strongly convex")}
        if not b.min_lower > 0:
            return None
    b = bounds[-1]
    if b.min_upper < 0:
        return {"x1": list(map(float, x1)), "level": 1, "kind": "indefinite Hessian of F_1",
                "message": (f"the Hessian of F_1 has a negative eigenvalue at {where} "
                            f"(lambda_min <= {b.min_upper:.4g}): F_1 is not convex on the box")}
    return None


def search_violation(system: CertifiedSystem, x1: ArrayLike, hint: ArrayLike | None = None, *,
                     seed: int = 0) -> dict | None:
    """Look for a proven violation at ``x1``: Newton on the stationarity system from several
    starts, each zero found enclosed and its Hessians bounded (untrusted search, proven
    findings).

    The starts are ``hint``, 0, and 12 seeded Gaussian perturbations of ``hint`` (3 at
    each scale 0.5, 1, 2 and 4). A zero is a violation when, at it, a lower $H_k$ (the
    deepest first) or the Hessian of $F_1$ has a proven negative eigenvalue, or when two
    disjoint enclosures of zeros have every $H_k$ proven positive definite (two strict
    local lower solutions). Finding none proves nothing.

    Args:
        system: The problem's `CertifiedSystem`.
        x1: The point $x_1$, $d_1$ floats.
        hint: Where to centre the starts, the stacked lower blocks (``dim`` floats); None
            for 0.
        seed: The seed of the perturbed starts.

    Returns:
        None when no violation was proven; else a dict with ``x1``, ``level`` (1-based;
            1 for the Hessian of $F_1$, None for two lower solutions), ``kind``
            (``"indefinite lower Hessian"``, ``"indefinite Hessian of F_1"`` or ``"two lower
            solutions"``) and ``message``.
    """
    rng = np.random.default_rng(seed)
    base = np.zeros(system.dim) if hint is None else np.asarray(hint, dtype=np.float64)
    starts = [base, np.zeros(system.dim)]
    for scale in (0.5, 1.0, 2.0, 4.0):
        starts += [base + scale * rng.standard_normal(system.dim) for _ in range(3)]
    zeros = []
    for start in starts:
        z = system.newton(x1, start)
        if z is not None and all(np.linalg.norm(z - other) > 1e-6 * (1 + np.linalg.norm(z))
                                 for other in zeros):
            zeros.append(z)
    minima = []
    for z in zeros:
        found = _point(system, x1, z)
        if found is None:
            continue
        enclosure, bounds = found
        violation = _violation_at(system, x1, enclosure, bounds)
        if violation is not None:
            return violation
        if all(b is not None and b.min_lower > 0 for b in bounds[:-1]):
            for other in minima:
                if any(not a.overlaps(b) for a, b in zip(enclosure, other, strict=True)):
                    where = f"x1 = {np.round(np.asarray(x1), 6).tolist()}"
                    return {"x1": list(map(float, x1)), "level": None,
                            "kind": "two lower solutions",
                            "message": (
                                f"at {where} the lower levels have two distinct solutions with "
                                f"positive definite Hessians ({_describe(other, system.names)}; "
                                f"{_describe(enclosure, system.names)}): a lower level is not "
                                f"strongly convex, so its minimiser is not unique")}
            minima.append(enclosure)
    return None


def certify_constants(problem: MultilevelProblem, box: tuple, *, max_boxes: int = 4000,
                      time_limit: float = 120.0, rtol: float = 0.02, min_width: float = 1e-9,
                      bits: int = BOX_PRECISION) -> BoxCertificate:
    r"""Certify the assumptions and constants of Theorem 4.1 on the box
    $X = [\mathrm{lo}, \mathrm{hi}]$.

    Bisects $X$ (widest side first) until, on every sub-box, the lower solutions are
    enclosed, every $H_k$ and the Hessian of $F_1$ are proven positive definite, and the
    bounds on $\lambda_{\max}$ / $\lambda_{\min}$ of the Hessian of $F_1$ are within `rtol` of
    values attained at box centres; or until an assumption is proven to fail; or until
    `max_boxes` boxes or `time_limit` seconds are spent (then status "failed" with the
    reason, unless every remaining box already had valid, merely loose, bounds).

    Args:
        problem: A declared ``MultilevelProblem``.
        box: ``(lo, hi)``, the box $X$ for $x_1$ (floats or arrays of length $d_1$).
        max_boxes: The most sub-boxes processed.
        time_limit: The most wall-clock seconds spent (checked before each sub-box).
        rtol: Relative tolerance of the bounds on the extreme eigenvalues of the Hessian of
            $F_1$ against the values attained at box centres; a looser box is bisected.
        min_width: The narrowest sub-box (relative width $w_i / (1 + \lvert m_i \rvert)$,
            $m$ its centre) that is still bisected; one not certified below it makes the
            status "failed".
        bits: Working precision of the ball arithmetic, in bits.

    Returns:
        A `BoxCertificate`: status "certified" with the proven intervals of
            $\lambda_{\max}$ and $\lambda_{\min}$ of the Hessian of $F_1$ and of each
            $\mu_k$ (and $L_{\mathrm{cert}}$), "violated" with the proven violation, or
            "failed" with the reason; with the number of boxes processed and the time.

    Raises:
        ProblemDefinitionError: ``problem`` is not a declared (sympy) problem, or an
            objective has no rigorous enclosure (see `certified_system`).
        ValueError: ``lo < hi`` fails in some coordinate.
    """
    start_time = time.perf_counter()
    system = certified_system(problem)  # ProblemDefinitionError for a NumericProblem
    lo, hi = as_box(box, system.d1)
    n = system.n
    # (lo, hi, the parent's centre or None, bounds valid on the parent)
    queue = deque([(lo, hi, None, None)])
    leaves: list = []
    attained = {"max": -np.inf, "min": np.inf}
    processed = 0
    last_failure = ""

    def result(status, reason, violation=None):
        seconds = time.perf_counter() - start_time
        cert = BoxCertificate(status, reason, (lo, hi), processed, seconds, violation=violation)
        if status == "certified":
            cert.lambda_max = (attained["max_lower"], max(b[-1].max_upper for b in leaves))
            cert.lambda_min = (min(b[-1].min_lower for b in leaves), attained["min_upper"])
            for k in range(2, n + 1):
                cert.mu[k] = (min(b[k - 2].min_lower for b in leaves), attained[f"mu_{k}"])
        return cert

    attained.update({"max_lower": -np.inf, "min_upper": np.inf})
    attained.update({f"mu_{k}": np.inf for k in range(2, n + 1)})
    with precision(bits):
        while queue:
            if processed >= max_boxes or time.perf_counter() - start_time > time_limit:
                if all(item[3] is not None for item in queue):
                    leaves.extend(item[3] for item in queue)
                    queue.clear()
                    break
                pending = next(item for item in queue if item[3] is None)
                spent = (f"{processed} boxes" if processed >= max_boxes
                         else f"{time.perf_counter() - start_time:.1f} s")
                return result("failed", (
                    f"budget spent ({spent}); {len(queue)} sub-boxes not certified, e.g. "
                    f"x1 in [{pending[0].tolist()}, {pending[1].tolist()}]"
                    + (f"; last failure: {last_failure}" if last_failure else "")))
            b_lo, b_hi, parent, _ = queue.popleft()
            processed += 1
            mid = 0.5 * (b_lo + b_hi)
            where = f" on x1 in [{b_lo.tolist()}, {b_hi.tolist()}]"
            center = _centre(problem, system, mid, parent)
            if isinstance(center, str):
                center, last_failure = None, center
            bounds, proven, point = None, False, None
            if center is not None:
                x1_box = _x1_balls(b_lo, b_hi)
                enclosure = krawczyk(system, x1_box, center, where=where)
                if enclosure.ok:
                    bounds = [symmetric_eigen_bounds(h) for h in
                              system.hessian_blocks(x1_box, enclosure.z)]
                    if any(b is None for b in bounds):
                        bounds, last_failure = None, f"a Hessian enclosure is not finite{where}"
                    else:
                        bad = [k for k in range(2, n + 1) if not bounds[k - 2].min_lower > 0]
                        if bad:
                            last_failure = (f"level {bad[0]}: D_kk F_k is not proven positive "
                                            f"definite{where}")
                        elif not bounds[-1].min_lower > 0:
                            last_failure = (f"level 1: the Hessian of F_1 is not proven "
                                            f"positive definite{where}")
                        else:
                            proven = True
                else:
                    last_failure = enclosure.reason
                # values proven at the centre: what the bounds' tightness is measured against
                point = _point(system, mid, center)
            if point is not None:
                z_point, point_bounds = point
                violation = _violation_at(system, mid, z_point, point_bounds)
                if violation is not None:
                    return result("violated", violation["message"], violation)
                if all(b is not None for b in point_bounds):
                    attained["max_lower"] = max(attained["max_lower"], point_bounds[-1].max_lower)
                    attained["min_upper"] = min(attained["min_upper"], point_bounds[-1].min_upper)
                    for k in range(2, n + 1):
                        attained[f"mu_{k}"] = min(attained[f"mu_{k}"],
                                                  point_bounds[k - 2].min_upper)
            if not proven:
                violation = search_violation(system, mid, center)
                if violation is not None:
                    return result("violated", violation["message"], violation)
            loose = proven and (
                bounds[-1].max_upper > attained["max_lower"] * (1 + rtol)
                or bounds[-1].min_lower < attained["min_upper"] - rtol * abs(attained["min_upper"])
            )
            width = b_hi - b_lo
            if proven and not loose:
                leaves.append(bounds)
                continue
            if np.max(width / (1.0 + np.abs(mid))) < min_width:
                if proven:
                    leaves.append(bounds)
                    continue
                return result("failed", f"{last_failure} (the sub-box is narrower than "
                                        f"{min_width:g} and still not certified)")
            axis = int(np.argmax(width))
            left_hi, right_lo = b_hi.copy(), b_lo.copy()
            left_hi[axis] = right_lo[axis] = mid[axis]
            hint = None if center is None else center
            carried = bounds if proven else None
            queue.append((b_lo, left_hi, hint, carried))
            queue.append((right_lo, b_hi, hint, carried))
    if not np.isfinite(attained["max_lower"]):
        return result("failed", "no box centre could be certified")
    return result("certified", "")
