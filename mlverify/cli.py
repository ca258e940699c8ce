"""``mlverify verify``: derive, cross-check, optimise and verify the bounds on one problem.

Exit status: 0 every check passes, 1 a bound (or a cross-check) fails, 2 bad input,
3 an assumption is violated so a bound is not applicable.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import time
from pathlib import Path

import numpy as np

#: Exit statuses: every check passes, a bound fails, bad input, an assumption is violated.
EXIT_PASS, EXIT_FAIL, EXIT_BAD_INPUT, EXIT_NOT_APPLICABLE = 0, 1, 2, 3
#: Symbolic, JAX and finite-difference hypergradients must agree to this (relative).
AGREEMENT = 1e-8


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _load_problem(args):
    from . import zoo

    if args.problem_file:
        path = Path(args.problem_file)
        if not path.is_file():
            raise FileNotFoundError(f"no problem file {path}")
        namespace = runpy.run_path(str(path))
        if "problem" not in namespace:
            raise ValueError(f"{path} defines no `problem` (a mlverify.MultilevelProblem)")
        box = namespace.get("box", (-2.0, 2.0))
        return namespace["problem"], box, str(path)
    if args.zoo == "default":
        return zoo.default_problem(), (-2.0, 2.0), "default trilevel (mlverify.zoo.default_problem)"
    if args.zoo == "quadratic":
        sizes = (args.size,) * args.levels
        return (
            zoo.quadratic(args.levels, sizes, seed=args.seed).symbolic(),
            (-2.0, 2.0),
            f"quadratic n={args.levels} d={args.size} seed={args.seed}",
        )
    if args.zoo == "nonquadratic":
        return (
            zoo.nonquadratic(args.levels, args.size, seed=args.seed),
            (-2.0, 2.0),
            f"non-quadratic n={args.levels} d={args.size} seed={args.seed}",
        )
    if args.zoo == "ridge":
        return zoo.ridge_bilevel(seed=args.seed)[0], (-3.0, 3.0), "bilevel ridge tuning"
    if args.zoo == "indefinite":
        return zoo.indefinite_problem(), (-1.0, 1.0), "indefinite lower level (zoo)"
    raise ValueError(f"unknown zoo problem {args.zoo!r}")


def _cross_check(problem, x1):
    """Relative disagreement of the symbolic, JAX-exact and finite-difference hypergradients."""
    symbolic = np.asarray(problem.hypergradient_at(x1), dtype=np.float64)
    numeric = problem.lower()
    jax_exact = np.ravel(
        np.asarray(
            numeric.hypergradient(np.asarray(x1, float), "exact", solve_options={"tol": 1e-12})
        )
    )
    fd = np.ravel(np.asarray(numeric.hypergradient(np.asarray(x1, float), "fd")))
    scale = max(1.0, float(np.max(np.abs(symbolic))))
    return {
        "symbolic": symbolic.tolist(),
        "jax_exact": jax_exact.tolist(),
        "finite_difference": fd.tolist(),
        "symbolic_vs_jax": float(np.max(np.abs(symbolic - jax_exact)) / scale),
        "symbolic_vs_fd": float(np.max(np.abs(symbolic - fd)) / scale),
        "no_curvature_error": float(
            np.max(np.abs(np.asarray(problem.hypergradient_at(x1, curvature=False)) - symbolic))
            / scale
        ),
    }


def run_verify(args) -> int:
    """``mlverify verify`` on parsed arguments: derive the Jacobians, cross-check the
    hypergradients, run the outer methods, check Theorems 4.1 and 4.2 and measure
    rounds-to-epsilon against $n$; write the report and plots; return the exit status."""
    import sympy as sp

    from . import verify, zoo
    from .optimize import optimize

    quiet = args.json
    start = time.perf_counter()
    problem, box, label = _load_problem(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"problem": label, "levels": problem.n, "block_sizes": list(problem.sizes)}
    _say(f"mlverify verify: {label} ({problem.n} levels, blocks {problem.sizes})", quiet)

    _say("[1/5] deriving the best-response Jacobians (Lemmas 2.1, 3.1, 3.2)", quiet)
    jacobians = {}
    for k in range(problem.n, 1, -1):
        for j in range(1, k):
            expr = problem.best_response_jacobian(k, j)
            text = sp.sstr(expr[0, 0] if expr.shape == (1, 1) else expr)
            jacobians[f"D_{j} y_{k}"] = text
            if not quiet:
                short = text if len(text) <= 160 else text[:157] + "..."
                print(f"  D_{j} y_{k} = {short}")
    result["jacobians"] = jacobians

    x_check = np.full(problem.sizes[0], 0.5)
    _say(f"[2/5] symbolic vs JAX vs finite differences at x1 = {x_check.tolist()}", quiet)
    check = _cross_check(problem, x_check)
    result["cross_check"] = check
    agree = check["symbolic_vs_jax"] <= AGREEMENT and check["symbolic_vs_fd"] <= 1e-6
    if not quiet:
        print(
            f"  |symbolic - JAX| = {check['symbolic_vs_jax']:.2e}, |symbolic - FD| = "
            f"{check['symbolic_vs_fd']:.2e}, dropping curvature changes it by "
            f"{check['no_curvature_error']:.2e} (relative)"
        )

    _say(f"[3/5] implicit-exact and ITD, {args.T} rounds", quiet)
    runs = {}
    for method, options in (("implicit-exact", {}), ("itd", {"inner_steps": 10})):
        trace = optimize(problem, method, steps=args.T, box=box, **options)
        trace.save(str(out / f"trace-{method}.npz"))
        runs[method] = {
            "final_x1": trace.x1[-1].tolist(),
            "final_F1": float(trace.F1[-1]),
            "time_s": float(trace.time[-1]),
        }
    result["runs"] = runs

    _say(f"[4/5] Theorem 4.1 on the box {box}", quiet)
    report41 = verify.theorem_4_1(problem, box=box, T=args.T)
    report41.save(str(out / "theorem-4.1.json"))
    if report41.table:
        report41.plot(str(out / "theorem-4.1.png"))
    if not quiet:
        print(report41)

    _say(
        "[5/5] Theorem 4.2: inexact single-loop iterates, and T_eps(n) for "
        f"n = 2..{args.max_levels}",
        quiet,
    )
    report42 = verify.theorem_4_2(problem, T=args.T, methods=("hierarchical", "itd"))
    report42.save(str(out / "theorem-4.2.json"))
    if report42.table:
        report42.plot(str(out / "theorem-4.2.png"))
    growth = verify.rounds_to_epsilon(
        lambda n: zoo.nonquadratic(n, seed=args.seed), ns=tuple(range(2, args.max_levels + 1))
    )
    _plot_growth(growth, out / "rounds-vs-levels.png")
    if not quiet:
        print(report42)
        print("  n   T_eps   mean ||e_t||")
        for n, t_eps, err in zip(growth["n"], growth["T_eps"], growth["mean_error"], strict=True):
            print(f"  {n:<3} {t_eps:<7} {err:.3e}")
        print(f"  fitted growth of log T_eps per level: {growth['growth_per_level']:.3g}")

    verdicts = {
        "cross-check": "pass" if agree else "fail",
        "theorem 4.1": report41.verdict,
        "theorem 4.2": report42.verdict,
    }
    result.update(
        theorem_4_1=report41.to_dict(),
        theorem_4_2=report42.to_dict(),
        rounds_to_epsilon=growth,
        verdicts=verdicts,
        elapsed_s=time.perf_counter() - start,
    )
    (out / "report.json").write_text(json.dumps(result, indent=1, default=_json_default))
    if quiet:
        print(json.dumps({"verdicts": verdicts, "out": str(out)}, default=_json_default))
    else:
        print("\nSummary")
        for name, verdict in verdicts.items():
            print(f"  {name:<13} {verdict}")
        print(
            f"  written to {out}/ (report.json, theorem-4.1.png, theorem-4.2.png, "
            f"rounds-vs-levels.png, traces) in {time.perf_counter() - start:.1f} s"
        )
    if "not-applicable" in verdicts.values():
        reason = report41.reason or report42.reason
        print(f"mlverify: {reason}", file=sys.stderr)
        return EXIT_NOT_APPLICABLE
    return EXIT_PASS if all(v == "pass" for v in verdicts.values()) else EXIT_FAIL


def _plot_growth(growth, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(growth["n"], growth["T_eps"], "o-")
    ax[0].set_xlabel("levels n")
    ax[0].set_ylabel("rounds to ||grad F_1||^2 <= 1e-10")
    ax[1].semilogy(growth["n"], growth["mean_error"], "o-")
    ax[1].set_xlabel("levels n")
    ax[1].set_ylabel("mean ||e_t|| (hierarchical)")
    fig.suptitle("Theorem 4.2: dependence on the number of levels")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: the ``verify`` subcommand and its options."""
    parser = argparse.ArgumentParser(prog="mlverify", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="derive, cross-check and verify the bounds on a problem")
    v.add_argument("problem_file", nargs="?", help="a .py file defining `problem` (and `box`)")
    v.add_argument(
        "--zoo",
        default="default",
        choices=["default", "quadratic", "nonquadratic", "ridge", "indefinite"],
    )
    v.add_argument("--levels", type=int, default=3, help="n for the zoo families")
    v.add_argument("--size", type=int, default=1, help="block size for the zoo families")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--T", type=int, default=100, help="rounds of each run")
    v.add_argument("--max-levels", type=int, default=5, help="largest n in the T_eps(n) study")
    v.add_argument("--out", default="mlverify-out", help="output folder")
    v.add_argument("--json", action="store_true", help="print only a JSON summary on stdout")
    return parser


def main(argv=None) -> int:
    """The ``mlverify`` command: run it on ``argv`` and return the exit status; a lower
    Hessian that is not positive definite gives 3, bad input 2, with the error's message."""
    from .errors import HessianError, MlverifyError

    args = build_parser().parse_args(argv)
    try:
        return run_verify(args)
    except HessianError as err:
        print(f"mlverify: assumption violated: bound not applicable: {err}", file=sys.stderr)
        return EXIT_NOT_APPLICABLE
    except (MlverifyError, FileNotFoundError, ValueError, SyntaxError) as err:
        print(f"mlverify: bad input: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
