"""Theorem 4.1 and 4.2 as checkable statements."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import scipy.optimize
from numpy.typing import ArrayLike

from ..checks import L_MARGIN, as_box, bound_4_1, bound_4_2, bound_holds
from ..errors import (
    ConvergenceError,
    DivergenceError,
    HessianError,
    MlverifyError,
    NonFiniteError,
)
from ..optimize import as_numeric, hessian_F1, optimize, project
from ..optimize import exact_value_and_gradient as _exact
from .assumptions import (
    Violation,
    check_assumptions,
    failure_reason,
    lower_curvature_at,
    sample_points,
)
from .report import Report

if TYPE_CHECKING:
    from ..numeric import NumericProblem
    from ..problem import MultilevelProblem



def _shared_assumptions(problem, region, assumptions) -> str | None:
    """Why the shared assumptions fail on the region (`check_assumptions`: a unique,
    bounded, strongly convex minimiser at every lower level), or None: ``assumptions`` is
    True (run the check), the dict `check_assumptions` returned (a caller that ran it), or
    False (not checked here)."""
    if assumptions is False:
        return None
    if assumptions is True:
        assumptions = check_assumptions(problem, region)
    return None if assumptions["ok"] else failure_reason(assumptions)


def _scan_box(num, lo, hi, samples, seed):
    """Lower Hessians and the Hessian of F_1 at sampled points of the box.

    Returns ``(scan, violation)``: scan holds the points, the eigenvalues of the Hessian of
    F_1 at each, and the per-level smallest eigenvalue of D_kk F_k at the lower solutions;
    violation names the level and the point where a lower level is not strongly convex or
    a lower solve fails (None when every sampled point passed).
    """
    points = sample_points(lo, hi, samples, seed)
    mu = np.full(num.n, np.inf)  # per-level strong convexity: min eigenvalue of H_k
    eigs = []
    for x in points:
        where = f"x1 = {np.round(x, 6).tolist()}"
        try:
            lower = _exact(num, x)[2]
            at_point, violation = lower_curvature_at(num, x, lower)
            for k, value in at_point.items():
                mu[k - 1] = min(mu[k - 1], value)
            if violation is not None:
                return None, Violation(violation[2], violation[1], violation[0])
            eigs.append(np.linalg.eigvalsh(hessian_F1(num, x)))
        except (HessianError, ConvergenceError) as err:
            kind = "degenerate or indefinite" if isinstance(err, HessianError) else "solve failed"
            return None, Violation(f"at {where}: {err}", err.level, kind)
    return {"points": points, "eigs": eigs, "mu": mu}, None


def _refine(num, lo, hi, start, curvature):
    """max over the box of ``curvature(eigenvalues of the Hessian of F_1)``: L-BFGS-B from
    the best sample (sampling can only under-estimate a maximum)."""
    refined = scipy.optimize.minimize(
        lambda x: -curvature(np.linalg.eigvalsh(hessian_F1(num, x))),
        start,
        method="L-BFGS-B",
        bounds=list(zip(lo, hi, strict=True)),
        options={"maxiter": 15},
    )
    return -float(refined.fun)


def _lower_constants(scan, n):
    count = len(scan["points"])
    return {
        f"mu_{k}": (float(scan["mu"][k - 1]), f"min eigenvalue of D_kk F_k at the lower "
                                              f"solutions, over {count} points")
        for k in range(2, n + 1)
    }


def constants_4_1(
    problem: MultilevelProblem | NumericProblem, box: tuple, *, samples: int = 25, seed: int = 0
) -> tuple[dict, str | None]:
    r"""Check Theorem 4.1's assumptions on $X$ and estimate $L = \max \lambda_{\max}(\nabla^2 F_1)$.

    The assumptions: every lower level strongly convex at its solution (so $F_1$ is defined
    and smooth), and the Hessian of $F_1$ positive definite on $X$ with $\lambda_{\max} \le L$.
    Returns ``(constants, violation)``: constants as name -> (value, how obtained), and a
    violation message (None when every assumption held at every sampled point). Method:
    a grid (or seeded random points in high dimension) plus L-BFGS-B maximisation of
    $\lambda_{\max}$ from the best sample; the lower solves check every lower Hessian there.

    Args:
        problem: A declared ``MultilevelProblem`` or a ``NumericProblem``.
        box: ``(lo, hi)``, the box $X$ for $x_1$ (floats or arrays of $x_1$'s size).
        samples: About how many points of $X$ are sampled: a grid, or that many seeded
            uniform points where a grid would have more than four times as many.
        seed: The seed of the uniform points (unused for a grid).

    Returns:
        The pair ``(constants, violation)``. ``constants`` maps ``"L"`` (`L_MARGIN` times
            the largest $\lambda_{\max}$ found), ``"lambda_min"`` (the least
            $\lambda_{\min}$ of the Hessian of $F_1$ over the samples) and ``"mu_k"`` for
            $k = 2, \dots, n$ (the least $\lambda_{\min}(H_k)$ at the lower solutions) to
            ``(value, how obtained)``; it is empty when ``violation``, the message saying
            where an assumption failed (the point, and the level for a lower level), is not
            None.

    Raises:
        ValueError: ``lo < hi`` fails in some coordinate.
        MlverifyError: A lower solve failed other than by a degenerate Hessian or
            non-convergence (which are reported as a violation), for example
            ``NonFiniteError``.
    """
    num = as_numeric(problem, "implicit-exact")
    lo, hi = as_box(box, num.sizes[0])
    scan, violation = _scan_box(num, lo, hi, samples, seed)
    if violation is not None:
        return {}, violation
    lam_min = min(float(e[0]) for e in scan["eigs"])
    if lam_min <= 0:
        worst = int(np.argmin([e[0] for e in scan["eigs"]]))
        return {}, (
            f"the Hessian of F_1 is not positive definite at x1 = "
            f"{np.round(scan['points'][worst], 6).tolist()} (min eigenvalue {lam_min:.4g})"
        )
    best = int(np.argmax([e[-1] for e in scan["eigs"]]))
    lam_max = float(scan["eigs"][best][-1])
    try:
        lam_max = max(lam_max, _refine(num, lo, hi, scan["points"][best], lambda e: e[-1]))
    except MlverifyError as err:
        return {}, f"during the local maximisation of lambda_max: {err}"
    count = len(scan["points"])
    constants = {
        "L": (L_MARGIN * lam_max,
              f"max lambda_max over {count} sampled points + L-BFGS-B refinement, x{L_MARGIN}"),
        "lambda_min": (lam_min, f"min over {count} sampled points (> 0: positive definite)"),
    }
    constants.update(_lower_constants(scan, num.n))
    return constants, None


def constants_4_2(
    problem: MultilevelProblem | NumericProblem, box: tuple, *, samples: int = 9, seed: int = 0
) -> tuple[dict, str | None]:
    r"""Check Theorem 4.2's assumptions on $X$ and estimate its $L$.

    Theorem 4.2 needs $F_1$ $L$-smooth and bounded below, and $\alpha \le 1/L$; it does not
    need a positive-definite Hessian. $L$ is the largest $\lvert\text{eigenvalue}\rvert$ of the
    Hessian of $F_1$ over the sampled points (refined by L-BFGS-B, times the margin); every
    lower level must be strongly convex at its solution (so that $F_1$ is defined and
    smooth). $F_1$ bounded below on $X$ is checked by its minimum over $X$ (see
    [`theorem_4_2`][mlverify.verify.theorems.theorem_4_2]).
    Returns ``(constants, violation)`` as
    [`constants_4_1`][mlverify.verify.theorems.constants_4_1].

    Args:
        problem: A declared ``MultilevelProblem`` or a ``NumericProblem``.
        box: ``(lo, hi)``, the region $X$ for $x_1$ (floats or arrays of $x_1$'s size).
        samples: About how many points of $X$ are sampled (as in `constants_4_1`).
        seed: The seed of the uniform points (unused for a grid).

    Returns:
        The pair ``(constants, violation)``. ``constants`` maps ``"L"`` (`L_MARGIN` times
            the largest $\lvert\text{eigenvalue}\rvert$ found), ``"lambda_min"`` (the least
            eigenvalue of the Hessian of $F_1$ over the samples, of any sign) and ``"mu_k"``
            for $k = 2, \dots, n$ to ``(value, how obtained)``; it is empty when
            ``violation``, the message saying where an assumption failed, is not None.

    Raises:
        ValueError: ``lo < hi`` fails in some coordinate.
        MlverifyError: A lower solve failed other than by a degenerate Hessian or
            non-convergence (which are reported as a violation), for example
            ``NonFiniteError``.
    """
    num = as_numeric(problem, "implicit-exact")
    lo, hi = as_box(box, num.sizes[0])
    scan, violation = _scan_box(num, lo, hi, samples, seed)
    if violation is not None:
        return {}, violation
    spectral = [float(np.max(np.abs(e))) for e in scan["eigs"]]
    best = int(np.argmax(spectral))
    L_value = spectral[best]
    try:
        L_value = max(L_value, _refine(num, lo, hi, scan["points"][best],
                                       lambda e: float(np.max(np.abs(e)))))
    except MlverifyError as err:
        return {}, f"during the local maximisation of |lambda|: {err}"
    count = len(scan["points"])
    constants = {
        "L": (L_MARGIN * L_value, f"max |eigenvalue| of the Hessian of F_1 over {count} sampled "
                                  f"points + L-BFGS-B refinement, x{L_MARGIN} (L-smoothness)"),
        "lambda_min": (min(float(e[0]) for e in scan["eigs"]),
                       f"min over {count} sampled points (any sign: 4.2 needs no convexity)"),
    }
    constants.update(_lower_constants(scan, num.n))
    return constants, None


def _minimum(num, lo, hi, x0):
    """F_1* on the box: L-BFGS-B on F_1 with the exact hypergradient."""

    def fun(x):
        value, grad, _ = _exact(num, x)
        return value, grad

    result = scipy.optimize.minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=list(zip(lo, hi, strict=True)),
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 500},
    )
    return float(result.fun), np.asarray(result.x)


def _fit_slope(t, values):
    keep = (t >= max(2, t[-1] // 10)) & (values > 0)
    if keep.sum() < 3:
        return None
    return float(np.polyfit(np.log(t[keep]), np.log(values[keep]), 1)[0])


def theorem_4_1(
    problem: MultilevelProblem | NumericProblem,
    box: tuple,
    *,
    T: int = 200,
    L: float | None = None,
    F_star: float | None = None,
    x0: ArrayLike | None = None,
    samples: int = 25,
    seed: int = 0,
    progress: bool = False,
    certify: bool = False,
    certify_options: dict | None = None,
    assumptions: bool | dict = True,
) -> Report:
    r"""Check Theorem 4.1's bound for every $T$:

    $$
    \min_{t<T} \lVert G(x^t) \rVert^2 \le \frac1T \sum_{t<T} \lVert G(x^t) \rVert^2
    \le \frac{2L\,(F_1(x^0) - F_1^*)}{T} .
    $$

    Projected gradient descent with the exact hypergradient and step $1/L$ on the box $X$;
    $G(x) = L\bigl(x - \Pi_X(x - \nabla F_1(x)/L)\bigr)$ is the gradient mapping.
    ``L`` and ``F_star`` are estimated honestly unless given (a given value is reported as "given").

    ``certify=True`` (declared problems) first proves the assumptions and bounds $L$ on $X$ in
    ball arithmetic (`mlverify.certify.certify_constants`, options such as ``max_boxes`` and
    ``time_limit`` in ``certify_options``): then ``constants["L"]`` is $L_{\text{cert}}$,
    ``report.certified`` says whether everything was proven, and ``report.label`` reads
    "pass (certified)", "pass (sampled)" or "not applicable (certified)".

    Args:
        problem: A declared ``MultilevelProblem`` or a ``NumericProblem``.
        box: ``(lo, hi)``, the box $X$ for $x_1$ (floats or arrays of $x_1$'s size).
        T: The number of rounds run (the bound is checked at every $T$ up to it).
        L: The smoothness constant; estimated on $X$ when None (sampled points plus an
            L-BFGS-B refinement, times 1.01).
        F_star: $\min_X F_1$; estimated when None (L-BFGS-B with the exact hypergradient).
        x0: The start $x^0$; the box's lower corner when None.
        samples: Sampled points of $X$ for the assumptions and $L$.
        seed: The sampling's seed.
        progress: Print progress on stderr.
        certify: Prove the assumptions and $L$ in ball arithmetic first (above).
        certify_options: Options of `mlverify.certify.certify_constants`.
        assumptions: Check first that every lower level has a unique, bounded, strongly
            convex minimiser at sampled points of $X$ (`check_assumptions`, with a seeded
            multistart); a violated one makes the verdict "not-applicable". True runs the
            check, a dict is its result from the caller, False skips it (the per-point
            strong convexity of the scan for $L$ is always checked).

    Returns:
        A `Report`: the verdict ("pass", "fail" or "not-applicable", with the reason and
            the level where an assumption fails), the constants with how each was
            obtained, and the table of both sides against $T$.
    """
    num = as_numeric(problem, "implicit-exact")
    lo, hi = as_box(box, num.sizes[0])
    certificate = None
    if certify:
        from ..certify import theorem as cert

        certificate = cert.certify_constants(problem, (lo, hi), **(certify_options or {}))
        if certificate.status == "violated":
            return Report("4.1", "not-applicable", {}, {},
                          reason=f"assumption violated: bound not applicable "
                                 f"({certificate.reason})", certified=True,
                          certificate=cert.record(certificate, certified=True,
                                                  label="not applicable (certified)"),
                          box=_box_list((lo, hi)))
    shared = _shared_assumptions(problem, (lo, hi), assumptions)
    if shared is not None:
        return Report("4.1", "not-applicable", {}, {},
                      reason=f"assumption violated: bound not applicable ({shared})",
                      box=_box_list((lo, hi)))
    constants, violation = constants_4_1(problem, (lo, hi), samples=samples, seed=seed)
    if certificate is not None and certificate.certified:
        constants, violation = cert.merge_constants(constants, certificate), None
    if violation is not None:
        return Report(
            "4.1",
            "not-applicable",
            constants,
            {},
            reason=f"assumption violated: bound not applicable ({violation})",
            certificate={} if certificate is None else cert.record(
                certificate, certified=False, label="not applicable (sampled)",
                notes=[f"certification did not succeed: {certificate.reason}"]),
            box=_box_list((lo, hi)),
        )
    if L is not None:
        constants["L"] = (float(L), "given")
    L_value = constants["L"][0]
    x_start = lo.copy() if x0 is None else project(np.asarray(x0, dtype=np.float64), (lo, hi))
    F_star_given = F_star is not None
    if F_star is None:
        F_star, x_star = _minimum(num, lo, hi, (lo + hi) / 2)
        constants["F_star"] = (F_star, "L-BFGS-B on F_1 with the exact hypergradient, in the box")
    else:
        constants["F_star"] = (float(F_star), "given")
    constants["alpha"] = (1.0 / L_value, "1/L")
    trace = optimize(
        problem,
        "implicit-exact",
        steps=T,
        step_size=1.0 / L_value,
        box=(lo, hi),
        x0=x_start,
        progress=progress,
    )
    F_star = min(F_star, float(np.min(trace.F1)))  # a lower value seen on the run is kept
    constants["F_star"] = (F_star, constants["F_star"][1])
    x = trace.x1[:-1]
    mapping = L_value * (x - project(x - trace.grad / L_value, (lo, hi)))
    squared = np.sum(mapping**2, axis=1)
    t = np.arange(1, T + 1)
    left_mean = np.cumsum(squared) / t
    left_min = np.minimum.accumulate(squared)
    right = bound_4_1(L_value, trace.F1[0] - F_star, t)
    ok = bound_holds(left_mean, right)
    table = {"T": t, "left_min": left_min, "left_mean": left_mean, "right": right, "ok": ok}
    ratio = np.where(right > 0, left_mean / np.maximum(right, 1e-300), np.inf)
    verdict = "pass" if bool(np.all(ok)) else "fail"
    reason = (
        ""
        if verdict == "pass"
        else (
            f"the bound fails at {int(np.sum(~ok))} of {T} values of T "
            f"(first at T = {int(t[~ok][0])})"
        )
    )
    certified, certificate_dict = False, {}
    if certificate is not None:
        certified, certificate_dict = cert.finish(
            problem, certificate, box=(lo, hi), verdict=verdict, L_value=L_value, L_given=L,
            x_hat=trace.x1[-1] if F_star_given else x_star, x_start=x_start,
            left_mean=left_mean, t=t)
    report = Report(
        "4.1",
        verdict,
        constants,
        table,
        worst_ratio=float(np.max(ratio)),
        fitted_slope=_fit_slope(t, left_mean),
        reason=reason,
        extra={"x_final": trace.x1[-1], "F1_x0": float(trace.F1[0])},
        certified=certified,
        certificate=certificate_dict,
        box=_box_list((lo, hi)),
    )
    report.traces = {"implicit-exact": trace}  # the run itself (not part of the JSON)
    return report


def theorem_4_2(
    problem: MultilevelProblem | NumericProblem,
    *,
    T: int = 100,
    methods: tuple[str, ...] = ("hierarchical", "itd"),
    inner_steps: int = 1,
    alpha: float | None = None,
    box: tuple | None = None,
    F_star: float | None = None,
    x0: ArrayLike | None = None,
    samples: int = 9,
    seed: int = 0,
    progress: bool = False,
    assumptions: bool | dict = True,
) -> Report:
    r"""Check Theorem 4.2's bound along each method's run ($X = \mathbb{R}^d$):

    $$
    \frac1T \sum_t \lVert \nabla F_1(x^t) \rVert^2
    \le \frac{2\,(F_1(x^0) - F_1^*)}{\alpha T} + \frac1T \sum_t \lVert e_t \rVert^2 ,
    $$

    with $e_t$ measured against the exact hypergradient.

    The assumptions are the theorem's: $F_1$ $L$-smooth and bounded below on the region the
    run stays in, $\alpha \le 1/L$ (no convexity). ``box`` is that region, ``(lo, hi)`` with
    scalars or sequences of length $d_1$ (default $x^0 \pm 2$): $L$ (the largest
    $\lvert\text{eigenvalue}\rvert$ of the Hessian of $F_1$) is sampled there, $F_1^*$ is the
    minimum of $F_1$ there, and the runs start at ``x0`` (default: the problem's initial
    $x_1$), projected into the box, with the lower iterates (single loop) and ITD's inner
    starts at the lower solution there. A run that leaves the box, or diverges, makes the
    verdict "not-applicable": $L$ and $F_1^*$ hold only on the box.

    Args:
        problem: A declared ``MultilevelProblem`` or a ``NumericProblem``.
        T: The number of rounds of each run.
        methods: The outer methods run (any of `mlverify.optimize.OUTER_METHODS`).
        inner_steps: Inner steps per level and round of the single-loop scheme and of ITD.
        alpha: The outer step; $1/L$ when None.
        box: The region ``(lo, hi)`` (above; default $x^0 \pm 2$).
        F_star: $\min F_1$ on the box; estimated when None.
        x0: The start $x^0$ (default: the problem's initial $x_1$).
        samples: Sampled points of the box for $L$ and the assumptions.
        seed: The sampling's seed.
        progress: Print progress on stderr.
        assumptions: Check first that every lower level has a unique, bounded, strongly
            convex minimiser at sampled points of the box (`check_assumptions`); as in
            `theorem_4_1`: True, the caller's result, or False.

    Returns:
        A `Report`: the verdict ("pass", "fail" or "not-applicable", with the reason),
            the constants with how each was obtained, and per method the table of both
            sides and the error term against $T$.
    """
    num = as_numeric(problem, "implicit-exact")
    d = num.sizes[0]
    if box is None:
        x_start = np.asarray(num.flatten(0, num.init[0] if x0 is None else x0), dtype=np.float64)
        region = as_box((x_start - 2, x_start + 2), d)
    else:
        region = as_box(box, d)
        x_start = project(np.asarray(num.flatten(0, num.init[0] if x0 is None else x0),
                                     dtype=np.float64), region)
    shared = _shared_assumptions(problem, region, assumptions)
    constants, violation = ({}, shared) if shared is not None else constants_4_2(
        problem, region, samples=samples, seed=seed)

    def not_applicable(why):
        return Report("4.2", "not-applicable", constants, {},
                      reason=f"assumption violated: bound not applicable ({why})",
                      box=_box_list(region))

    if violation is not None:
        return not_applicable(violation)
    if alpha is None:
        alpha = 1.0 / constants["L"][0]
        constants["alpha"] = (alpha, "1/L")
    else:
        constants["alpha"] = (float(alpha), "given")
    if F_star is None:
        F_star, _ = _minimum(num, *region, x_start)
        constants["F_star"] = (F_star, "L-BFGS-B on F_1 with the exact hypergradient, in the box")
    else:
        constants["F_star"] = (float(F_star), "given")
    F0, _, solved = _exact(num, x_start)
    # The single-loop iterates and ITD's inner starts begin at the lower solution for x^0:
    # e_t then measures the error the method makes as x_1 moves, not a cold start.
    lower_init = [np.asarray(num.flatten(k, x), dtype=np.float64)
                  for k, x in enumerate(solved, 1)]
    tables, verdict, reasons, traces = {}, "pass", [], {}
    for method in methods:
        try:
            trace = optimize(
                problem,
                method,
                steps=T,
                step_size=alpha,
                x0=x_start,
                inner_steps=inner_steps,
                track_exact=True,
                progress=progress,
                lower_init=lower_init,
            )
        except (NonFiniteError, DivergenceError) as err:
            return not_applicable(f"the {method} run diverged: {err}")
        traces[method] = trace
        outside = np.nonzero(np.any((trace.x1 < region[0]) | (trace.x1 > region[1]), axis=1))[0]
        if outside.size:
            t_out = int(outside[0])
            return not_applicable(
                f"the {method} run left the box at round {t_out} (x1 = "
                f"{np.round(trace.x1[t_out], 6).tolist()}), where L and F_1* were not "
                f"established; give a larger box"
            )
        t = np.arange(1, T + 1)
        left = np.cumsum(trace.exact_grad_norm**2) / t
        error_term = np.cumsum(trace.error**2) / t
        right = bound_4_2(alpha, F0 - F_star, t, error_term)
        ok = bound_holds(left, right)
        tables[method] = {
            "T": t,
            "left_mean": left,
            "right": right,
            "error_term": error_term,
            "mean_error": np.cumsum(trace.error) / t,
            "ok": ok,
        }
        contradiction = _contradicted_L(num, trace.x1, constants["L"][0], method)
        if contradiction is not None:
            report = not_applicable(contradiction)
            report.traces = traces
            return report
        if not np.all(ok):
            verdict = "fail"
            reasons.append(f"{method}: fails at {int(np.sum(~ok))} of {T} values of T")
    main = tables[methods[0]]
    ratio = float(max(np.max(tab["left_mean"] / tab["right"]) for tab in tables.values()))
    report = Report(
        "4.2",
        verdict,
        constants,
        main,
        worst_ratio=ratio,
        fitted_slope=_fit_slope(main["T"], main["left_mean"]),
        reason="; ".join(reasons),
        extra={"methods": {m: tables[m] for m in methods}, "inner_steps": inner_steps,
               "x0": x_start},
        box=_box_list(region),
    )
    report.traces = traces  # the runs themselves (not part of the JSON)
    return report


#: A secant rate of the gradient of $F_1$ above $L$ by more than this (relative) contradicts
#: the sampled $L$ (which already carries ``L_MARGIN``).
L_CONTRADICTION = 1e-2


def _contradicted_L(num, xs, L, method):
    r"""Why the run's own iterates contradict the sampled $L$, or None.

    Between consecutive iterates the secant rate
    $\lVert \nabla F_1(x^{t+1}) - \nabla F_1(x^t) \rVert / \lVert x^{t+1} - x^t \rVert$ is
    at most the largest $\lvert\text{eigenvalue}\rvert$ of the Hessian on the segment (the
    mean-value theorem), so a rate above $L$ proves that $L$ is too small there: the step
    $1/L$ may be too long and the bound's assumption $\alpha \le 1/L$ fails. Rates over
    steps too short to resolve them (the exact gradients carry about $10^{-8}$ relative
    error) are not counted.
    """
    grads = [np.asarray(_exact(num, x)[1], dtype=np.float64) for x in xs]
    worst = None
    for t in range(len(xs) - 1):
        step = float(np.linalg.norm(xs[t + 1] - xs[t]))
        if step <= 1e-9 * (1.0 + float(np.linalg.norm(xs[t]))):
            continue
        rate = float(np.linalg.norm(grads[t + 1] - grads[t])) / step
        noise = 1e-8 * (float(np.linalg.norm(grads[t])) + float(np.linalg.norm(grads[t + 1])))
        if rate > L * (1 + L_CONTRADICTION) + noise / step and (
                worst is None or rate > worst[0]):
            worst = (rate, t)
    if worst is None:
        return None
    rate, t = worst
    return (f"the sampled L = {L:.6g} is contradicted by the {method} run's own iterates: "
            f"between rounds {t} and {t + 1} the gradient of F_1 changes at rate {rate:.6g}, "
            f"{rate / L:.3g} times L, so the step 1/L is longer than the theorem allows there "
            f"(sample the box more densely, or give a smaller alpha)")


def _box_list(region):
    """A box as [[lo_1..lo_d], [hi_1..hi_d]] (the JSON form)."""
    return [np.asarray(region[0], dtype=np.float64).tolist(),
            np.asarray(region[1], dtype=np.float64).tolist()]


def rounds_to_epsilon(
    family: Callable[[int], MultilevelProblem | NumericProblem],
    ns: Sequence[int] = (2, 3, 4, 5),
    *,
    epsilon: float = 1e-10,
    method: str = "hierarchical",
    max_rounds: int = 400,
    inner_steps: int = 1,
    x0: ArrayLike | None = None,
    box: tuple | None = None,
    describe: Callable[[int, MultilevelProblem | NumericProblem], str] | None = None,
    progress: Callable[[int], object] | None = None,
    time_budget: float | None = None,
) -> dict:
    r"""$T_\varepsilon(n)$: rounds until $\lVert \nabla F_1(x^t) \rVert^2 \le \varepsilon$, and
    the mean $\lVert e_t \rVert$, for each $n$ (Theorem 4.2's dependence on the number of
    levels; Lemmas A.1-A.3).

    ``family(n)`` returns a problem with $n$ levels. The step is $1/L_n$ with $L_n$ the
    $L$-smoothness constant of $F_1$ sampled on ``box`` (default: $x^0 \pm 1$), the step as a
    function of $n$ as in the paper's remark; the run starts at ``x0`` (default 0, projected
    into the box). ``describe(n, problem)`` names each problem studied (default: its
    levels and block sizes); ``progress(n)`` is called before each $n$. The fitted growth is
    the slope of $\log T_\varepsilon$ against $n$ (a geometric growth rate per level);
    ``growth_linear`` is the slope of $T_\varepsilon$ against $n$ (rounds per level).

    ``time_budget`` (seconds): an $n$ whose predicted time would take the study past it is
    not started, nor any larger one; ``stopped`` then says which and why. The prediction
    is the last member's time times its growth over the member before (at least the last
    member's time). ``seconds`` holds each member's wall time.

    Args:
        family: ``n -> problem``, a declared ``MultilevelProblem`` or a ``NumericProblem``
            with $n$ levels.
        ns: The numbers of levels studied, in order.
        epsilon: The target $\varepsilon$ on $\lVert \nabla F_1(x^t) \rVert^2$.
        method: The outer method run (one of `mlverify.optimize.OUTER_METHODS`).
        max_rounds: The rounds of each run; $T_\varepsilon$ is infinite when the target is
            not reached within them.
        inner_steps: Inner steps per level and round (single loop and ITD).
        x0: The start $x^0$ for every member (default 0), projected into the box.
        box: ``(lo, hi)``, the region $L_n$ is sampled on (default $x^0 \pm 1$).
        describe: ``(n, problem) -> str``, each member's description in ``problems``.
        progress: Called as ``progress(n)`` before each member.
        time_budget: Seconds the whole study may take (above); None for no limit.

    Returns:
        A dict of lists, one entry per member run: ``n``, ``T_eps`` (the first $t + 1$
            with $\lVert \nabla F_1(x^t) \rVert^2 \le \varepsilon$, or ``inf``),
            ``mean_error`` and ``first_error`` (of $\lVert e_t \rVert$ over the run),
            ``L``, ``problems``, ``seconds`` and ``diverged`` (None, or the error of a run
            whose inner steps diverged: its ``T_eps`` is ``inf``); and the study's
            ``growth_per_level``,
            ``growth_linear`` (None with fewer than two finite $T_\varepsilon$),
            ``epsilon``, ``max_rounds``, ``box`` (the last member's region) and
            ``stopped`` (None, or why the larger $n$ were not run).

    Raises:
        HessianError: A member fails Theorem 4.2's assumptions on the box: a lower level
            not strongly convex (the error names that level; the message gives $n$ and the
            violation).
        UnboundedLevelError: A member's lower level is unbounded below (named).
        ValueError: ``lo < hi`` fails in some coordinate of the box.
        MlverifyError: A lower solve or a run failed; the error names the level.
    """
    rows = {"n": [], "T_eps": [], "mean_error": [], "first_error": [], "L": [], "problems": [],
            "seconds": [], "diverged": []}
    region_used = None
    stopped = None
    started = time.perf_counter()
    for n in ns:
        if time_budget is not None and rows["seconds"]:
            predicted = _predicted_seconds(rows["seconds"])
            spent = time.perf_counter() - started
            if spent + predicted > time_budget:
                stopped = (f"n = {n} and above not run: n = {n} is predicted to take "
                           f"{predicted:.0f} s (n = {rows['n'][-1]} took "
                           f"{rows['seconds'][-1]:.1f} s), past the time budget of "
                           f"{time_budget:g} s with {spent:.0f} s spent")
                break
        member_start = time.perf_counter()
        if progress is not None:
            progress(n)
        problem = family(n)
        num = as_numeric(problem, "implicit-exact")
        d = num.sizes[0]
        start = np.zeros(d) if x0 is None else np.asarray(x0, dtype=np.float64).reshape(d)
        region = as_box(box if box is not None else (start - 1, start + 1), d)
        start = project(start, region)
        region_used = _box_list(region)
        constants, violation = constants_4_2(problem, region, samples=5)
        if violation is not None:
            raise (violation.error(f"family member n={n}: ")
                   if isinstance(violation, Violation)
                   else HessianError(f"family member n={n}: {violation}", level=1))
        L = constants["L"][0]
        try:
            trace = optimize(
                problem,
                method,
                steps=max_rounds,
                step_size=1.0 / L,
                x0=start,
                inner_steps=inner_steps,
                track_exact=True,
            )
        except (DivergenceError, NonFiniteError) as err:
            # The run itself failed (its inner steps diverged): T_eps is not reached.
            rows["n"].append(n)
            rows["T_eps"].append(np.inf)
            rows["mean_error"].append(np.inf)
            rows["first_error"].append(np.nan)
            rows["diverged"].append(str(err))
        else:
            hits = np.nonzero(trace.exact_grad_norm**2 <= epsilon)[0]
            rows["n"].append(n)
            rows["T_eps"].append(int(hits[0]) + 1 if hits.size else np.inf)
            rows["mean_error"].append(float(np.mean(trace.error)))
            rows["first_error"].append(float(trace.error[0]))
            rows["diverged"].append(None)
        rows["L"].append(L)
        rows["problems"].append(
            describe(n, problem) if describe is not None
            else f"n={n}, blocks {tuple(int(v) for v in num.sizes)}"
        )
        rows["seconds"].append(time.perf_counter() - member_start)
    finite = np.isfinite(rows["T_eps"])
    growth = growth_linear = None
    if finite.sum() >= 2:
        n_arr = np.asarray(rows["n"])[finite]
        t_arr = np.asarray(rows["T_eps"], dtype=float)[finite]
        growth = float(np.polyfit(n_arr, np.log(t_arr), 1)[0])
        growth_linear = float(np.polyfit(n_arr, t_arr, 1)[0])
    rows["growth_per_level"] = growth
    rows["growth_linear"] = growth_linear
    rows["epsilon"] = epsilon
    rows["max_rounds"] = max_rounds
    rows["box"] = region_used
    rows["stopped"] = stopped
    return rows


def _predicted_seconds(seconds) -> float:
    """The next member's time: the last one's, times its growth over the one before (at
    least 1)."""
    last = seconds[-1]
    if len(seconds) < 2 or seconds[-2] <= 0:
        return last
    return last * max(1.0, last / seconds[-2])
