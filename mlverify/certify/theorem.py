r"""The certified part of a Theorem 4.1 check: constants, labels, and the JSON record.

`theorem_4_1(..., certify=True)` calls
[`certify_constants`][mlverify.certify.constants.certify_constants] first; this module turns
its [`BoxCertificate`][mlverify.certify.constants.BoxCertificate] into the report's
constants and fields. A verdict says what it rests on: "pass (certified)" when every
assumption and $L$ are proven on the box and the inequality holds with $L_{\mathrm{cert}}$;
"pass (sampled)" when certification did not succeed; "not applicable (certified)" when an
assumption is proven to fail; a fail with certified constants (and with a proven lower
bound on $F_1^*$) is a counterexample to the stated theorem.
"""

from __future__ import annotations

import numpy as np

from ..checks import L_MARGIN, bound_4_1, bound_holds
from .bounds import float_down, float_up
from .constants import certify_constants  # noqa: F401  (theorem_4_1 calls it)
from .hypergradient import CertificationError, point_enclosure, precision

#: The label of a fail with certified constants that still fails with the proven bounds on
#: $F_1(x^0)$ and $F_1^*$ (see `finish`): a counterexample to the stated theorem.
COUNTEREXAMPLE = "fail (certified constants): counterexample to the stated theorem"


def merge_constants(sampled: dict, certificate) -> dict:
    r"""The report's constants with the certified ones in place of the sampled estimates.

    `L` becomes $L_{\mathrm{cert}}$, `lambda_min` and `mu_k` the proven lower bounds; the
    sampled $L$ is kept as `L_sampled` (when sampling produced one) for comparison.
    """
    constants = dict(sampled)
    if "L" in sampled:
        constants["L_sampled"] = sampled["L"]
    lam_lo, lam_hi = certificate.lambda_max
    how = (f"certified: {L_MARGIN} x proven lambda_max <= {lam_hi:.10g} (lambda_max in "
           f"[{lam_lo:.10g}, {lam_hi:.10g}] over the box, {certificate.boxes} boxes, "
           f"{certificate.seconds:.2f} s)")
    value = certificate.L
    if "L" in sampled and sampled["L"][0] > value:
        # Any number above a proven bound is one; the sampled L (a finite-difference
        # Hessian) can exceed the tight bound by its truncation error.
        value = float(sampled["L"][0])
        how += "; raised to the sampled L, which exceeds it by the sampling's own error"
    constants["L"] = (value, how)
    lo, hi = certificate.lambda_min
    constants["lambda_min"] = (lo, f"certified lower bound (min over the box in [{lo:.6g}, "
                                    f"{hi:.6g}]; > 0: positive definite)")
    for k, (mlo, mhi) in certificate.mu.items():
        constants[f"mu_{k}"] = (mlo, f"certified lower bound of lambda_min(D_kk F_k) over the "
                                     f"box (in [{mlo:.6g}, {mhi:.6g}])")
    return constants


def F1_enclosure(problem, x1):
    r"""$(F_1(x_1), \mathrm{d}F_1/\mathrm{d}x_1)$ at a point as balls (lower solutions
    enclosed)."""
    from .programs import _as_arb

    system, balls, z = point_enclosure(problem, x1)
    with precision(128):
        value = _as_arb(system.objective([*balls, *z])[0])
        grad = [_as_arb(v) for v in system.hypergradient([*balls, *z])]
    return value, grad


def F_star_bounds(problem, box, x_hat, m: float) -> tuple[float, float]:
    r"""Proven bounds on $F_1^*$, the minimum of $F_1$ over the box, given
    $\lambda_{\min} \ge m > 0$ there.

    Upper: $F_1(\hat x)$, $\hat x$ = `x_hat`. Lower: strong convexity on the (convex) box gives

    $$
    F_1(y) \ge F_1(\hat x) + g^\top (y - \hat x) + \tfrac{m}{2} \lVert y - \hat x \rVert^2,
    $$

    minimised coordinatewise over the box in closed form ($-g_i^2/(2m)$ where the minimiser
    is inside, else an end).
    """
    from flint import arb

    lo, hi = (np.asarray(v, dtype=np.float64) for v in box)
    value, grad = F1_enclosure(problem, x_hat)
    with precision(128):
        total = value
        mm = arb(float(m))
        for i, g in enumerate(grad):
            a = arb(float(lo[i])) - arb(float(x_hat[i]))
            b = arb(float(hi[i])) - arb(float(x_hat[i]))
            smallest = None
            for end in (g.lower(), g.upper()):
                t_star = -end / mm
                if t_star < a:
                    candidate = end * a + mm * a * a / 2
                elif t_star > b:
                    candidate = end * b + mm * b * b / 2
                else:  # the unconstrained minimum bounds every constrained one from below
                    candidate = -end * end / (2 * mm)
                low = candidate.lower()
                smallest = low if smallest is None or low < smallest else smallest
            total = total + smallest
        lower = float_down(total)
    return lower, float_up(value)


def record(certificate, *, certified: bool, label: str, notes=(), **extra) -> dict:
    """The `Report.certificate` dict: the certificate's intervals, label and notes."""
    out = certificate.as_dict() if certificate is not None else {}
    out.update({"certified": bool(certified), "label": label, "notes": list(notes)})
    out.update(extra)
    return out


def finish(problem, certificate, *, box, verdict: str, L_value: float, L_given, x_hat,
           x_start, left_mean, t):
    r"""(certified, certificate dict) for a finished Theorem 4.1 run.

    A fail with certified constants is re-checked against the largest right side the proof
    allows, $2L\,\bigl(\overline{F_1(x^0)} - \underline{F_1^*}\bigr)/T$ (the proven upper
    bound of $F_1(x^0)$ and lower bound of $F_1^*$); if it still fails, it is flagged as a
    counterexample to the stated theorem (the run itself being float64).
    """
    notes = []
    certified = certificate.certified
    if not certified:
        notes.append(f"certification did not succeed: {certificate.reason}")
    elif L_given is not None and not L_given >= certificate.lambda_max[1]:
        certified = False
        proven_low = certificate.lambda_max[0]
        if L_given < proven_low:
            notes.append(f"the given L = {L_given:.6g} is below the proven lambda_max >= "
                         f"{proven_low:.6g}: it is not a bound, so the theorem's assumption "
                         f"lambda_max <= L fails")
        else:
            notes.append(f"the given L = {L_given:.6g} is not proven to bound lambda_max "
                         f"(proven only <= {certificate.lambda_max[1]:.6g})")
    extra = {}
    label = f"{verdict} ({'certified' if certified else 'sampled'})"
    if certified:
        try:
            f_lo, f_hi = F_star_bounds(problem, box, x_hat, certificate.lambda_min[0])
            f0_hi = float_up(F1_enclosure(problem, x_start)[0])
            extra["F_star"] = {"interval": [f_lo, f_hi],
                               "method": "strong convexity with the certified lambda_min, "
                                         "from a proven enclosure of F_1 and its gradient"}
            notes.append(f"proven: F_1* in [{f_lo:.10g}, {f_hi:.10g}]")
        except CertificationError as err:
            f_lo = None
            notes.append(f"F_1* could not be bounded: {err}")
        if verdict == "fail" and f_lo is not None:
            right_high = bound_4_1(L_value, f0_hi - f_lo, np.asarray(t, dtype=np.float64))
            proven_fail = ~bound_holds(np.asarray(left_mean), right_high)
            if np.any(proven_fail):
                label = COUNTEREXAMPLE
                notes.append(f"the bound fails at {int(np.sum(proven_fail))} values of T even "
                             f"with the proven F_1(x^0) <= {f0_hi:.10g} and F_1* >= "
                             f"{f_lo:.10g} (the run itself is in float64)")
            else:
                notes.append("the failure disappears with the proven bounds on F_1(x^0) and "
                             "F_1*: not a counterexample")
    return certified, record(certificate, certified=certified, label=label, notes=notes,
                             **extra)
