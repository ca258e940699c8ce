"""Theorem 4.1 and 4.2 as checkable statements."""

from __future__ import annotations

import itertools

import numpy as np
import scipy.optimize

from ..errors import ConvergenceError, HessianError, MlverifyError
from ..optimize import as_numeric, hessian_F1, optimize, project
from ..optimize import exact_value_and_gradient as _exact
from .report import Report

#: Relative slack for "left $\le$ right": the two sides are float64 sums of up to $T$ terms.
ROUND_OFF = 1e-9
#: A lower Hessian whose smallest eigenvalue is below this (relative to max(1, largest)) at
#: a sampled point makes the level "not strongly convex": the bounds do not apply.
STRONG_CONVEXITY_FLOOR = 1e-6
#: Safety factor on the sampled $\lambda_{\max}$: sampling can only under-estimate a maximum.
L_MARGIN = 1.01


def _box(box, d):
    lo, hi = box
    lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (d,)).copy()
    hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (d,)).copy()
    if np.any(lo >= hi):
        raise ValueError(f"the box needs lo < hi, got {lo} and {hi}")
    return lo, hi


def _samples(lo, hi, count, seed):
    d = lo.size
    per_axis = max(2, int(round(count ** (1.0 / d))))
    if per_axis**d <= 4 * count:
        grid = [np.linspace(lo[i], hi[i], per_axis) for i in range(d)]
        return [np.array(p) for p in itertools.product(*grid)]
    rng = np.random.default_rng(seed)
    return [lo + (hi - lo) * rng.random(d) for _ in range(count)]


def constants_4_1(problem, box, *, samples: int = 25, seed: int = 0):
    r"""Check the assumptions on $X$ and estimate $L = \max_X \lambda_{\max}(\nabla^2 F_1)$.

    Returns ``(constants, violation)``: constants as name -> (value, how obtained), and a
    violation message (None when every assumption held at every sampled point). Method:
    a grid (or seeded random points in high dimension) plus L-BFGS-B maximisation of
    $\lambda_{\max}$ from the best sample; the lower solves check every lower Hessian there.
    """
    num = as_numeric(problem, "implicit-exact")
    lo, hi = _box(box, num.sizes[0])
    points = _samples(lo, hi, samples, seed)
    lam_min, lam_max, arg_max = np.inf, -np.inf, None
    mu = np.full(num.n, np.inf)  # per-level strong convexity: min eigenvalue of H_k
    for x in points:
        where = f"x1 = {np.round(x, 6).tolist()}"
        try:
            lower = _exact(num, x)[2]
            hessians = num.lower_hessians([num.unflatten(0, x), *lower])
            for k, h in enumerate(hessians, start=2):
                eig_k = np.linalg.eigvalsh(0.5 * (np.asarray(h) + np.asarray(h).T))
                mu[k - 1] = min(mu[k - 1], eig_k[0])
                if eig_k[0] <= STRONG_CONVEXITY_FLOOR * max(1.0, abs(eig_k[-1])):
                    return {}, (f"level {k} is not strongly convex at {where}: min eigenvalue "
                                f"of D_kk F_k is {eig_k[0]:.3g}")
            eig = np.linalg.eigvalsh(hessian_F1(num, x))
        except (HessianError, ConvergenceError) as err:
            return {}, f"at {where}: {err}"
        if eig[0] <= 0:
            return {}, (
                f"the Hessian of F_1 is not positive definite at x1 = "
                f"{np.round(x, 6).tolist()} (min eigenvalue {eig[0]:.4g})"
            )
        if eig[0] < lam_min:
            lam_min = eig[0]
        if eig[-1] > lam_max:
            lam_max, arg_max = eig[-1], x

    def negative_lam_max(x):
        return -np.linalg.eigvalsh(hessian_F1(num, x))[-1]

    try:
        refined = scipy.optimize.minimize(
            negative_lam_max,
            arg_max,
            method="L-BFGS-B",
            bounds=list(zip(lo, hi, strict=True)),
            options={"maxiter": 15},
        )
        lam_max = max(lam_max, -float(refined.fun))
    except MlverifyError as err:
        return {}, f"during the local maximisation of lambda_max: {err}"
    how = f"max over {len(points)} sampled points + L-BFGS-B refinement, x{L_MARGIN}"
    constants = {
        "L": (L_MARGIN * lam_max, how),
        "lambda_min": (lam_min, f"min over {len(points)} sampled points (> 0: positive definite)"),
    }
    for k in range(2, num.n + 1):
        constants[f"mu_{k}"] = (float(mu[k - 1]), f"min eigenvalue of D_kk F_k at the lower "
                                                  f"solutions, over {len(points)} points")
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
    problem,
    box,
    *,
    T: int = 200,
    L: float | None = None,
    F_star: float | None = None,
    x0=None,
    samples: int = 25,
    seed: int = 0,
    progress: bool = False,
    certify: bool = False,
    certify_options: dict | None = None,
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
    """
    num = as_numeric(problem, "implicit-exact")
    lo, hi = _box(box, num.sizes[0])
    certificate = None
    if certify:
        from ..certify import theorem as cert

        certificate = cert.certify_constants(problem, (lo, hi), **(certify_options or {}))
        if certificate.status == "violated":
            return Report("4.1", "not-applicable", {}, {},
                          reason=f"assumption violated: bound not applicable "
                                 f"({certificate.reason})", certified=True,
                          certificate=cert.record(certificate, certified=True,
                                                  label="not applicable (certified)"))
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
    right = 2 * L_value * (trace.F1[0] - F_star) / t
    ok = left_mean <= right * (1 + ROUND_OFF) + 1e-15
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
    return Report(
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
    )


def theorem_4_2(
    problem,
    *,
    T: int = 100,
    methods=("hierarchical", "itd"),
    inner_steps: int = 1,
    alpha: float | None = None,
    box=None,
    F_star: float | None = None,
    x0=None,
    samples: int = 9,
    progress: bool = False,
) -> Report:
    r"""Check Theorem 4.2's bound along each method's run ($X = \mathbb{R}^d$),

    $$
    \frac1T \sum_{t<T} \lVert \nabla F_1(x^t) \rVert^2 \le
    \frac{2\,(F_1(x^0) - F_1^*)}{\alpha T} + \frac1T \sum_{t<T} \lVert e_t \rVert^2,
    $$

    with $e_t$ measured against the exact hypergradient.

    ``alpha`` defaults to $1/L$ with $L$ sampled on ``box`` (default: $x_0 \pm 2$), the region the
    run is expected to stay in; leaving it is reported.
    """
    num = as_numeric(problem, "implicit-exact")
    d = num.sizes[0]
    x_start = np.asarray(num.flatten(0, num.init[0] if x0 is None else x0), dtype=np.float64)
    region = _box(box if box is not None else (x_start - 2, x_start + 2), d)
    constants, violation = constants_4_1(problem, region, samples=samples)
    if violation is not None:
        return Report(
            "4.2",
            "not-applicable",
            constants,
            {},
            reason=f"assumption violated: bound not applicable ({violation})",
        )
    if alpha is None:
        alpha = 1.0 / constants["L"][0]
        constants["alpha"] = (alpha, "1/L")
    else:
        constants["alpha"] = (float(alpha), "given")
    if F_star is None:
        F_star, _ = _minimum(num, *region, x_start)
        constants["F_star"] = (
            F_star,
            "L-BFGS-B on F_1 with the exact hypergradient, in the region",
        )
    else:
        constants["F_star"] = (float(F_star), "given")
    F0 = _exact(num, x_start)[0]
    tables, verdict, reasons = {}, "pass", []
    for method in methods:
        trace = optimize(
            problem,
            method,
            steps=T,
            step_size=alpha,
            x0=x_start,
            inner_steps=inner_steps,
            track_exact=True,
            progress=progress,
        )
        t = np.arange(1, T + 1)
        left = np.cumsum(trace.exact_grad_norm**2) / t
        error_term = np.cumsum(trace.error**2) / t
        right = 2 * (F0 - F_star) / (alpha * t) + error_term
        ok = left <= right * (1 + ROUND_OFF) + 1e-15
        outside = np.any((trace.x1 < region[0]) | (trace.x1 > region[1]))
        tables[method] = {
            "T": t,
            "left_mean": left,
            "right": right,
            "error_term": error_term,
            "mean_error": np.cumsum(trace.error) / t,
            "ok": ok,
        }
        if not np.all(ok):
            verdict = "fail"
            reasons.append(f"{method}: fails at {int(np.sum(~ok))} of {T} values of T")
        if outside:
            reasons.append(f"{method}: the run left the region where L was sampled")
    main = tables[methods[0]]
    ratio = float(max(np.max(tab["left_mean"] / tab["right"]) for tab in tables.values()))
    return Report(
        "4.2",
        verdict,
        constants,
        main,
        worst_ratio=ratio,
        fitted_slope=_fit_slope(main["T"], main["left_mean"]),
        reason="; ".join(reasons),
        extra={"methods": {m: tables[m] for m in methods}},
    )


def rounds_to_epsilon(
    family,
    ns=(2, 3, 4, 5),
    *,
    epsilon: float = 1e-10,
    method="hierarchical",
    max_rounds: int = 400,
    inner_steps: int = 1,
    x0=None,
) -> dict:
    r"""$T_\varepsilon(n)$: rounds until $\lVert \nabla F_1(x^t) \rVert^2 \le \varepsilon$, and the
    mean $\lVert e_t \rVert$, for each $n$ (Theorem 4.2 and the paper's remark after it).

    ``family(n)`` returns a problem; the step is $1/L_n$ with $L_n$ sampled near $x_0$ (the
    step as a function of $n$, as in the paper's remark). The fitted growth is the slope of
    $\log T_\varepsilon$ against $n$ (a geometric growth rate per level).
    """
    rows = {"n": [], "T_eps": [], "mean_error": [], "first_error": [], "L": []}
    for n in ns:
        problem = family(n)
        num = as_numeric(problem, "implicit-exact")
        start = np.zeros(num.sizes[0]) if x0 is None else np.asarray(x0, dtype=np.float64)
        constants, violation = constants_4_1(problem, (start - 1, start + 1), samples=5)
        if violation is not None:
            raise HessianError(f"family member n={n}: {violation}", level=1)
        L = constants["L"][0]
        trace = optimize(
            problem,
            method,
            steps=max_rounds,
            step_size=1.0 / L,
            x0=start,
            inner_steps=inner_steps,
            track_exact=True,
        )
        hits = np.nonzero(trace.exact_grad_norm**2 <= epsilon)[0]
        rows["n"].append(n)
        rows["T_eps"].append(int(hits[0]) + 1 if hits.size else np.inf)
        rows["mean_error"].append(float(np.mean(trace.error)))
        rows["first_error"].append(float(trace.error[0]))
        rows["L"].append(L)
    finite = np.isfinite(rows["T_eps"])
    growth = None
    if finite.sum() >= 2:
        growth = float(
            np.polyfit(
                np.asarray(rows["n"])[finite],
                np.log(np.asarray(rows["T_eps"], dtype=float)[finite]),
                1,
            )[0]
        )
    rows["growth_per_level"] = growth
    return rows
