"""Certified verification (mlverify.certify): time against box width, levels and block size,
where certification gives up, and python-flint's arb against mpmath's iv on one enclosure.

    python benchmarks/bench_certify.py            # ~2-4 min -> benchmarks/results/certify.md
    python benchmarks/bench_certify.py --quick    # fewer configurations, ~1 min

Every configuration builds its problem fresh in this process. "compile" is the time to
derive and print the certified programs (sympy, once per problem); "certify" is the time of
``certify_constants`` on the box (median of ``--repeat`` runs after the compile). The
machine is a shared 2-core CPU: wall times are indicative, box counts are exact.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402
from _machine import RESULTS, command_line, describe, markdown  # noqa: E402

import mlverify as mv  # noqa: E402
from mlverify import zoo  # noqa: E402
from mlverify.certify import certified_system, certify_constants  # noqa: E402


def _timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _row(label, make, box, repeat, **options):
    start = time.perf_counter()
    problem = make()
    certified_system(problem)
    compile_s = time.perf_counter() - start
    run_s, cert = _timed(lambda: certify_constants(problem, box, **options), repeat)
    lam = cert.lambda_max
    mins = cert.lambda_min
    lam_s = f"[{lam[0]:.6g}, {lam[1]:.6g}]" if lam else "-"
    min_s = f"[{mins[0]:.6g}, {mins[1]:.6g}]" if mins else "-"
    reason = cert.reason.replace("|", "/")
    if len(reason) > 160:
        reason = reason[:157] + "..."
    line = (f"| {label} | {compile_s:.2f} | {run_s:.2f} | {cert.boxes} | {cert.status} | "
            f"{lam_s} | {min_s} | {reason} |")
    print(line, flush=True)
    return line


HEADER = ("| configuration | compile (s) | certify (s) | boxes | status | max lambda_max(F_1'') "
          "| min lambda_min(F_1'') | reason |\n|---|---|---|---|---|---|---|---|")


def _degenerate():
    x1, x2, x3 = sp.symbols("x1 x2 x3")
    return mv.MultilevelProblem([
        mv.Level(x1, x1**2 + x2**2 + x3**2),
        mv.Level(x2, (x2 - x1) ** 2 / 2 + x3**2 / 2),
        mv.Level(x3, (x3 - x2) ** 4 / 4 + x3**2 * x1**2 / 8),
    ])


def arithmetic_comparison(repeat: int) -> list[str]:
    """The Hessian programs of the default problem over one sub-box and its enclosure,
    evaluated by arb (python-flint) and by mpmath's iv at the same precision."""
    from flint import arb
    from mpmath import iv

    from mlverify.certify import Program, float_down, float_up, krawczyk
    from mlverify.certify.hypergradient import precision
    from mlverify.certify.system import total_hessian_F1

    problem = zoo.default_problem()
    system = certified_system(problem)
    derivation = problem.derivation(True)
    graph = derivation.graph
    outputs = [e for k in range(1, problem.n) for e in derivation.hessians[k]]
    outputs += list(total_hessian_F1(graph, derivation))
    measured = {}
    lines = ["| arithmetic | precision (bits) | one evaluation (ms, median) | "
             "width of the Hessian of F_1 | width at a point (hypergradient) |",
             "|---|---|---|---|---|"]
    for bits in (64, 128):
        with precision(bits):
            lo, hi = 0.5, 0.5 + 1 / 64
            x1 = [arb(lo).union(arb(hi))]
            solved = problem.solve_lower([0.5 + 1 / 128]).xs
            center = np.concatenate([np.reshape(x, -1) for x in solved])
            enclosure = krawczyk(system, x1, center)
            assert enclosure.ok, enclosure.reason
            z_lo = [float_down(v) for v in enclosure.z]
            z_hi = [float_up(v) for v in enclosure.z]
            # the same float64 box for both libraries
            arb_inputs = [x1[0]] + [arb(a).union(arb(b)) for a, b in zip(z_lo, z_hi, strict=True)]
            point = problem.solve_lower([0.7])
            pz = np.concatenate([np.reshape(x, -1) for x in point.xs])
            penc = krawczyk(system, [arb(0.7)], pz)
            p_lo = [float_down(v) for v in penc.z]
            p_hi = [float_up(v) for v in penc.z]
            arb_point = [arb(0.7)] + [arb(a).union(arb(b)) for a, b in zip(p_lo, p_hi, strict=True)]
            programs = {"arb (python-flint)": (Program(graph, outputs, "flint"),
                                               Program(graph, list(derivation.gradients[0]),
                                                       "flint"), arb_inputs, arb_point)}
        iv.prec = bits
        iv_inputs = [iv.mpf([lo, hi])] + [iv.mpf([a, b]) for a, b in zip(z_lo, z_hi, strict=True)]
        iv_point = [iv.mpf(0.7)] + [iv.mpf([a, b]) for a, b in zip(p_lo, p_hi, strict=True)]
        programs["mpmath iv"] = (Program(graph, outputs, "mpmath"),
                                 Program(graph, list(derivation.gradients[0]), "mpmath"),
                                 iv_inputs, iv_point)
        for name, (hess, grad, inputs, pinputs) in programs.items():
            with precision(bits):
                seconds, values = _timed(lambda h=hess, i=inputs: h(i), repeat * 20)
                last = values[-1]
                g = grad(pinputs)[0]
            if name.startswith("arb"):
                width = float(2 * arb(last).rad()) if isinstance(last, arb) else 0.0
                gwidth = float(2 * arb(g).rad())
            else:
                width = float(last.delta)
                gwidth = float(g.delta)
            measured[(name.split()[0], bits)] = (seconds, width)
            lines.append(f"| {name} | {bits} | {1e3 * seconds:.3f} | {width:.3e} | "
                         f"{gwidth:.3e} |")
            print(lines[-1], flush=True)
    iv.prec = 53
    for bits in (64, 128):
        (t_arb, w_arb), (t_iv, w_iv) = measured[("arb", bits)], measured[("mpmath", bits)]
        lines.append("")
        lines.append(f"At {bits} bits: arb is {t_iv / t_arb:.0f}x faster than mpmath iv; the "
                     f"widths differ by {100 * (w_arb / w_iv - 1):+.1f} % (arb / iv - 1).")
    lines += ["", "Choice: arb (python-flint), pinned in pyproject.toml as a core dependency "
              "(it installs as a wheel): the same enclosures at a small fraction of the time, "
              "and a maintained C library underneath. mpmath iv stays available for comparison "
              "(`mlverify.certify.Program(graph, outputs, arithmetic=\"mpmath\")`); it has no "
              "tanh/sinh/cosh, which are written through exp there."]
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    info = describe()
    repeat = 1 if args.quick else args.repeat
    sections = []

    rows = [HEADER]
    widths = (0.25, 1.0, 2.0) if args.quick else (0.125, 0.25, 0.5, 1.0, 2.0, 3.0)
    for half in widths:
        rows.append(_row(f"default trilevel, box [-{half:g}, {half:g}]", zoo.default_problem,
                         (-half, half), repeat))
    sections.append(("Time against the box width: the default trilevel problem "
                     "(`mlverify.zoo.default_problem()`; its box is [-2, 2])", rows))

    rows = [HEADER]
    for n in (2, 3, 4):
        rows.append(_row(f"nonquadratic(n={n}, size=1, seed=0), box [-1, 1]",
                         lambda n=n: zoo.nonquadratic(n, seed=0), (-1.0, 1.0), repeat))
    for n in (2, 3, 4):
        rows.append(_row(f"quadratic(n={n}, seed=0), box [-1, 1]",
                         lambda n=n: zoo.quadratic(n, seed=0).symbolic(), (-1.0, 1.0), repeat))
    sections.append(("Time against the number of levels n (scalar blocks)", rows))

    rows = [HEADER]
    sizes = (1, 2) if args.quick else (1, 2, 3)
    for size in sizes:
        box = ([-0.5] * size, [0.5] * size)
        rows.append(_row(f"nonquadratic(n=2, size={size}, seed=0), box [-0.5, 0.5]^{size}",
                         lambda s=size: zoo.nonquadratic(2, size=s, seed=0), box, 1))
    if not args.quick:
        for n in (3, 4):
            box = ([-0.25] * 2, [0.25] * 2)
            rows.append(_row(f"nonquadratic(n={n}, size=2, seed=0), box [-0.25, 0.25]^2",
                             lambda n=n: zoo.nonquadratic(n, size=2, seed=0), box, 1,
                             time_limit=60.0))
    for d in (1, 2, 3):
        rows.append(_row(f"quadratic(n=3, sizes=(1, {d}, {d}), seed=0), box [-1, 1]",
                         lambda d=d: zoo.quadratic(3, sizes=(1, d, d), seed=0).symbolic(),
                         (-1.0, 1.0), 1))
    sections.append(("Time against the block size", rows))

    rows = [HEADER]
    rows.append(_row("default trilevel, box [-6, 6], 30 s", zoo.default_problem, (-6.0, 6.0),
                     1, time_limit=30.0))
    rows.append(_row("nonquadratic(n=3), box [-3, 3], 30 s",
                     lambda: zoo.nonquadratic(3, seed=0), (-3.0, 3.0), 1, time_limit=30.0))
    rows.append(_row("indefinite_problem(), box [-1, 1]", zoo.indefinite_problem, (-1.0, 1.0), 1))
    rows.append(_row("degenerate bottom level at x1 = 0, box [-1, 1], 400 boxes", _degenerate,
                     (-1.0, 1.0), 1, max_boxes=400))
    sections.append(("Where certification gives up (or proves a violation)", rows))

    comparison = arithmetic_comparison(1 if args.quick else 3)

    out = ["# Certified verification (`mlverify.certify`)", "", markdown(info, command_line()),
           "", "python-flint " + _flint_version(), ""]
    for title, table in sections:
        out += [f"## {title}", "", *table, ""]
    out += ["## arb (python-flint) against mpmath iv on the same enclosure", "",
            "The straight-line programs of every lower Hessian H_k and of the Hessian of F_1 "
            "for the default problem, evaluated over x1 in [0.5, 0.5 + 1/64] times the "
            "Krawczyk enclosure of the lower solutions there (the same float64 box given to "
            "both), and the hypergradient program over the point enclosure at x1 = 0.7. "
            "Width: of the last output (an entry of the Hessian of F_1) and of the "
            "hypergradient.", "", *comparison, ""]
    path = os.path.join(RESULTS, "certify.md")
    with open(path, "w") as fh:
        fh.write("\n".join(out))
    print("wrote", path)


def _flint_version() -> str:
    import flint

    return getattr(flint, "__version__", "?")


if __name__ == "__main__":
    main()
