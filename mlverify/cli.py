r"""mlverify verify: derive, cross-check, optimise and check Theorems 4.1 and 4.2 on one problem.

Every check runs on one region, the box $X = [\mathrm{lo}, \mathrm{hi}]$ for $x_1$: the
problem file's box, the `--box` option, or the zoo problem's default box. The steps:

  1. the best-response Jacobians (Lemmas 2.1, 3.1, 3.2);
  2. the assumptions on the box (each lower level has a unique, strongly convex minimiser
     and is bounded below; $F_1$'s Hessian);
  3. the hypergradient: symbolic against finite differences (and the JAX core);
  4. Theorem 4.1 (exact hypergradient, projected gradient descent on the box);
  5. Theorem 4.2 (inexact hypergradients: single-loop and ITD runs in the box);
  6. rounds to $\varepsilon$, $T_\varepsilon(n)$, against the number of levels, on the
     problem's family.

Exit status: 0 every check passes; 1 a bound or a cross-check fails; 2 bad input (an
error in the problem file, a bad or inapplicable option), found before any long work;
3 an assumption is violated, so a bound is not applicable.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ._cli_run import (
    EXIT_BAD_INPUT,
    EXIT_FAIL,
    EXIT_NOT_APPLICABLE,
    _box_text,
    _clean_out,
    _compilation_cache,
    _Console,
    _error_exit,
    _finish,
    _plain,
    _rounds_callback,
    _Run,
    _save_report,
)
from .errors import one_line
from .problem_file import BadInput, load_file, load_zoo
from .verify.assumptions import (
    ASSUMPTION_SAMPLES,
    check_assumptions,
    classify_failure,
    failure_reason,
)
from .verify.crosscheck import FD_AGREEMENT, JAX_AGREEMENT, JAX_CHECK_MAX_LEVELS, cross_check
from .verify.report import plot_rounds_to_epsilon
from .zoo import registry

#: The ``verify`` subcommand's description in ``--help``: the module docstring in plain
#: text, for a terminal (the docstring itself is written for the rendered API page).
VERIFY_HELP = """\
Every check runs on one region, the box X = [lo, hi] for x_1: the problem file's box, the
--box option, or the zoo problem's default box. The steps:

  1. the best-response Jacobians (Lemmas 2.1, 3.1, 3.2);
  2. the assumptions on the box (each lower level has a unique, strongly convex minimiser
     and is bounded below; F_1's Hessian);
  3. the hypergradient: symbolic against finite differences (and the JAX core), with its
     error estimate;
  4. Theorem 4.1 (exact hypergradient, projected gradient descent on the box);
  5. Theorem 4.2 (inexact hypergradients: single-loop and ITD runs in the box);
  6. rounds to epsilon T_eps(n) against the number of levels, on the problem's family.

Exit status: 0 every check passes; 1 a bound or a cross-check fails; 2 bad input (an
error in the problem file, a bad or inapplicable option), found before any long work;
3 an assumption is violated, so a bound is not applicable.
"""

#: The T_eps(n) study's default time budget (seconds, --study-budget).
STUDY_BUDGET_S = 300.0
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mlverify`` (every option has its help text)."""
    parser = argparse.ArgumentParser(
        prog="mlverify",
        description="Multilevel optimisation by implicit differentiation, checked.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser(
        "verify",
        help="derive, cross-check and check Theorems 4.1 and 4.2 on one problem",
        description=VERIFY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument(
        "problem_file",
        nargs="?",
        help="a Python file that defines problem (a mlverify.MultilevelProblem or "
        "NumericProblem) and optionally box = (lo, hi) (numbers or sequences of length d_1) "
        "and family(n), a function returning the problem with n levels; without a file, "
        "the zoo problem named by --zoo is checked",
    )
    v.add_argument(
        "--zoo",
        choices=list(registry.BOXES),
        help="a built-in problem (default: default, the trilevel problem of "
        "mlverify.zoo.default_problem); quadratic, nonquadratic and compounding are "
        "families with --levels levels",
    )
    v.add_argument("--levels", type=int, metavar="N",
                   help="number of levels of a zoo family (default 3)")
    v.add_argument("--size", type=int, metavar="D",
                   help="block size of the quadratic and nonquadratic families (default 1)")
    v.add_argument("--seed", type=int, metavar="S",
                   help=f"seed of a zoo family's coefficients (default 0; ridge: "
                   f"{registry.RIDGE_SEED})")
    v.add_argument(
        "--box", nargs=2, metavar=("LO", "HI"),
        help="the region X for x_1 used by every check: two numbers, or two "
        "comma-separated lists of d_1 numbers (overrides the file's box; default: the "
        "file's box, else [-2, 2] per coordinate; zoo problems have their own)",
    )
    v.add_argument("--T", type=int, default=100, metavar="T",
                   help="rounds of each run of Theorems 4.1 and 4.2 (default 100)")
    v.add_argument("--inner-steps", type=int, default=1, metavar="K",
                   help="inner steps per level and round of the single-loop and ITD runs of "
                   "Theorem 4.2 (default 1)")
    v.add_argument("--max-levels", type=int, metavar="N",
                   help="largest n of the rounds-to-epsilon study T_eps(n), n = 2..N, on the "
                   "problem's family (default 4)")
    v.add_argument("--out", default="mlverify-out", metavar="DIR",
                   help="output folder (default mlverify-out); earlier results there are "
                   "replaced")
    v.add_argument("--json", action="store_true",
                   help="print the whole report as one JSON object on stdout (progress and "
                   "messages go to stderr)")
    v.add_argument("--jax-check", action="store_true",
                   help=f"cross-check against the JAX core also for more than "
                   f"{JAX_CHECK_MAX_LEVELS} levels (a nested compile of a minute or more)")
    v.add_argument("--certify", action="store_true",
                   help="certify Theorem 4.1's constants by interval arithmetic instead of "
                   "sampling (slower)")
    v.add_argument("--no-cache", action="store_true",
                   help="do not keep JAX's compiled programs on disk (default: kept in "
                   "$MLVERIFY_CACHE_DIR, else ~/.cache/mlverify/jax, so a second run on this "
                   "machine skips the compiles; MLVERIFY_NO_CACHE=1 also switches it off)")
    v.add_argument("--study-budget", type=float, default=STUDY_BUDGET_S, metavar="S",
                   help="time budget in seconds of the T_eps(n) study: a larger n predicted to "
                   f"take past it (from the growth of the last ones) is not started (default "
                   f"{STUDY_BUDGET_S:g})")
    v.add_argument("--no-progress", action="store_true", help="no progress bars")
    v.add_argument("--debug", action="store_true",
                   help="show Python tracebacks instead of one-line messages")
    return parser


def _protect_box_values(argv):
    """argparse reads a value such as -1,0 after --box as an option; a leading space keeps
    it a value (stripped when parsed)."""
    argv = list(argv)
    for i, token in enumerate(argv):
        if token == "--box":
            for j in (i + 1, i + 2):
                if j < len(argv) and argv[j].startswith("-") and argv[j][1:2] in "0123456789.":
                    argv[j] = " " + argv[j]
    return argv


def _check_options(args) -> None:
    """Bad or inapplicable option values: exit 2 before anything is loaded."""
    for name, low in (("T", 2), ("inner_steps", 1), ("levels", 2), ("size", 1),
                      ("max_levels", 2), ("seed", 0)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise BadInput(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    if not args.study_budget > 0:
        raise BadInput(f"--study-budget must be a positive number of seconds, got "
                       f"{args.study_budget}")
    given = {name for name in ("levels", "size", "seed", "max_levels")
             if getattr(args, name) is not None}
    if args.problem_file:
        if args.zoo is not None:
            raise BadInput("give either a problem file or --zoo, not both")
        for name in sorted(given - {"max_levels"}):
            raise BadInput(f"--{name.replace('_', '-')} applies to the zoo families, not to a "
                           f"problem file")
        return
    zoo = args.zoo or "default"
    for name in sorted(given - registry.OPTIONS[zoo]):
        applies = [z for z, names in registry.OPTIONS.items() if name in names]
        raise BadInput(f"--{name.replace('_', '-')} does not apply to --zoo {zoo} (it applies "
                       f"to {', '.join(applies)})")


# ---------------------------------------------------------------------------- loading
# ---------------------------------------------------------------------------- output
def _check_point(box) -> np.ndarray:
    """Where the Jacobians and the hypergradient are shown: 5/8 of the way across the box
    (its centre is often a point of symmetry where terms vanish)."""
    lo, hi = np.asarray(box[0]), np.asarray(box[1])
    return lo + 0.625 * (hi - lo)


def _jacobians(problem, x1, console) -> dict:
    """Step 1: each D_j y_k as a formula or as float64 values (`jacobian_table`), printed."""
    from .verify.jacobians import JACOBIAN_OPS_LIMIT, JACOBIAN_TEXT_LIMIT, jacobian_table

    total = problem.n * (problem.n - 1) // 2
    with console.bar(total, "Jacobians", unit="Jacobian") as bar:
        out = jacobian_table(problem, x1, progress=bar.update)
    if "skipped" in out:
        console.say(f"  skipped: {out['skipped']}")
        return out
    for name, entry in out.items():
        if "symbolic" in entry:
            console.say(f"  {name} = {entry['symbolic']}")
            continue
        if "formula_characters" in entry:
            size = f"{entry['formula_characters']} characters, more than {JACOBIAN_TEXT_LIMIT}"
        else:
            size = (f"{entry['formula_operations']:.3g} operations written out, more than "
                    f"{JACOBIAN_OPS_LIMIT}")
        shown = np.array2string(np.array(entry["value"]), precision=6, separator=", ")
        console.say(f"  {name} = {shown}  (float64 at the solution for x1 = "
                    f"{np.round(x1, 6).tolist()}; the formula has {size})")
    return out


# ---------------------------------------------------------------------------- the run
def run_verify(args, state: dict | None = None) -> int:
    """The six steps on the problem ``args`` names (see the module docstring); returns the
    exit status. Raises BadInput before any long work. ``state["run"]`` receives the run
    (its report so far), for the report of an error exit."""
    _check_options(args)
    console = _Console(args)
    start = time.perf_counter()
    target = (load_file(args.problem_file, args.box, args.max_levels) if args.problem_file
              else load_zoo(args.zoo, levels=args.levels, size=args.size, seed=args.seed,
                       box_option=args.box, max_levels=args.max_levels))
    problem, box = target.problem, target.box
    run = _Run(args, console, Path(args.out),
               [np.asarray(box[0]).tolist(), np.asarray(box[1]).tolist()], start=start)
    if state is not None:
        state["run"] = run
    removed = _clean_out(run.out)
    cache = _compilation_cache(args)
    run.result.update(problem=target.label, levels=problem.n, block_sizes=list(problem.sizes),
                      box=run.box_json, compilation_cache=cache)
    console.say(f"mlverify verify: {target.label} ({problem.n} levels, blocks "
                f"{tuple(problem.sizes)}), box X = {_box_text(box)} for every check")
    console.say(f"  JAX compilation cache: {cache}")
    if removed:
        console.say(f"  removed {len(removed)} files of an earlier run from {run.out}/")
    x_check = _check_point(box)

    from .errors import HessianError, NonUniqueMinimiserError, UnboundedLevelError

    with run.step("jacobians", "[1/6] best-response Jacobians (Lemmas 2.1, 3.1, 3.2)"):
        try:
            run.result["jacobians"] = _jacobians(problem, x_check, console)
            failure = None
        except (HessianError, NonUniqueMinimiserError, UnboundedLevelError) as err:
            kind, reason = classify_failure(problem, err, x_check, symbolic=True)
            console.say(f"  not derivable: {reason}")
            run.result["jacobians"] = {"skipped": reason}
            failure = {"kind": kind, "level": err.level, "reason": reason}
    if failure is not None:
        return _not_applicable(run, failure)

    with run.step("assumptions", f"[2/6] assumptions on the box: unique, strongly convex, "
                  f"bounded-below lower levels at {ASSUMPTION_SAMPLES} points"):
        with console.bar(None, "sampled points", unit="point") as bar:
            assumptions = check_assumptions(problem, box, progress=bar.update)
        run.result["assumptions"] = _plain(assumptions)
        if assumptions["ok"]:
            mu = ", ".join(f"mu_{k} = {v:.3g}" for k, v in assumptions["mu"].items())
            how = (f"multistart, {assumptions['multistart']} starts per level; the bottom "
                   f"level probed for unboundedness along {assumptions['rays']} rays")
            console.say(f"  hold at every sampled point ({how}); smallest lower-Hessian "
                        f"eigenvalues {mu}")
        else:
            console.say(f"  violated ({assumptions['kind']}): {assumptions['reason']}")
    if not assumptions["ok"]:
        return _not_applicable(run, assumptions)
    run.verdicts["assumptions"] = "pass"

    agree = _step_cross_check(run, problem, x_check)
    report41, report42 = _step_theorems(run, problem, box)
    with run.step("rounds_to_epsilon", _n_study_header(target)):
        run.result["rounds_to_epsilon"] = _n_study(run, target, box)
    run.result.update(theorem_4_1=report41.to_dict(), theorem_4_2=report42.to_dict())
    return _finish(run, reason=_closing_reason(report41, report42, agree))


def _closing_reason(report41, report42, agree) -> str:
    """The one-line reason of the exit: a failing check first (it decides exit 1), then a
    check that is not applicable (exit 3), each named by its theorem."""
    named = (("Theorem 4.1", report41), ("Theorem 4.2", report42))
    for name, report in named:
        if report.verdict == "fail":
            return f"{name}: {report.reason}"
    if not agree:
        return "the exact hypergradient disagrees with finite differences or the JAX core"
    for name, report in named:
        if report.verdict == "not-applicable":
            return f"{name}: {report.reason}"
    return ""


def _step_cross_check(run, problem, x_check) -> bool:
    """Step 3: the exact hypergradient against finite differences (and the JAX core)."""
    from .problem import MultilevelProblem

    compared = ("the exact formula vs finite differences vs the JAX core"
                if isinstance(problem, MultilevelProblem)
                else "the JAX core's exact hypergradient vs finite differences")
    with run.step("cross_check", f"[3/6] hypergradient at x1 = "
                  f"{np.round(x_check, 6).tolist()}: {compared}"):
        return _cross_check_step(run, problem, x_check)


def _cross_check_step(run, problem, x_check) -> bool:
    check = cross_check(problem, x_check, run.args.jax_check)
    run.result["cross_check"] = check
    agree = check["exact_vs_fd"] <= FD_AGREEMENT and (
        check.get("symbolic_vs_jax") is None or check["symbolic_vs_jax"] <= JAX_AGREEMENT)
    estimate = max(check["error_estimate"])
    run.console.say(f"  exact hypergradient {np.round(check['exact'], 10).tolist()}, error "
                    f"estimate {estimate:.1e} (lower solves and round-off)")
    parts = [f"|exact - FD| = {check['exact_vs_fd']:.2e} (limit {FD_AGREEMENT:.0e})"]
    if check.get("symbolic_vs_jax") is not None:
        parts.append(f"|symbolic - JAX| = {check['symbolic_vs_jax']:.2e} "
                     f"(limit {JAX_AGREEMENT:.0e})")
    elif "jax_skipped" in check:
        parts.append(f"JAX skipped: {check['jax_skipped']}")
    if "no_curvature_error" in check:
        parts.append(f"dropping the curvature terms changes it by "
                     f"{check['no_curvature_error']:.2e}")
    run.console.say("  " + "; ".join(parts) + " (relative)")
    run.verdicts["cross-check"] = "pass" if agree else "fail"
    return agree


def _step_theorems(run, problem, box):
    """Steps 4 and 5: Theorems 4.1 and 4.2 on the box; their reports, plots and runs."""
    from . import verify

    args, console = run.args, run.console
    options = {"certify": True} if args.certify else {}
    with run.step("theorem_4_1", f"[4/6] Theorem 4.1: projected gradient descent with the "
                  f"exact hypergradient, {args.T} rounds, on the box"):
        with console.bar(args.T, "implicit-exact") as bar:
            # step 2 checked the shared assumptions (the theorems run only where they held)
            report41 = verify.theorem_4_1(problem, box=box, T=args.T, assumptions=False,
                                          progress=_rounds_callback(bar), **options)
        _save_report(run, report41, "4.1")
    with run.step("theorem_4_2", f"[5/6] Theorem 4.2: single-loop (hierarchical) and ITD runs, "
                  f"{args.T} rounds, {args.inner_steps} inner step(s), in the box"):
        report42 = _theorem_4_2(run, problem, box)
    traces = {**getattr(report41, "traces", {}), **getattr(report42, "traces", {})}
    for method, trace in traces.items():
        trace.save(str(run.out / f"trace-{method}.npz"))
        run.written.append(f"trace-{method}.npz")
    run.result["runs"] = {
        method: {"final_x1": trace.x1[-1].tolist(), "rounds": trace.rounds,
                 "time_s": float(trace.time[-1])}
        for method, trace in traces.items()
    }
    return report41, report42


def _theorem_4_2(run, problem, box):
    from . import verify

    args, console = run.args, run.console
    bar = console.bar(2 * args.T, "hierarchical, then ITD")
    counter = {"offset": 0}

    def progress42(done, steps):
        bar.n = counter["offset"] + done
        bar.refresh()
        if done == steps:
            counter["offset"] += steps

    with bar:
        report42 = verify.theorem_4_2(problem, T=args.T, box=box, inner_steps=args.inner_steps,
                                      methods=("hierarchical", "itd"), progress=progress42,
                                      assumptions=False)
    _save_report(run, report42, "4.2")
    return report42


def _not_applicable(run, assumptions) -> int:
    """A lower level fails the assumptions every check shares: no bound applies."""
    run.verdicts["assumptions"] = "not-applicable"
    reason = failure_reason(assumptions)
    for name in ("theorem_4_1", "theorem_4_2"):
        run.result[name] = {"verdict": "not-applicable", "box": run.box_json,
                            "reason": f"assumption violated: bound not applicable ({reason})"}
    run.result["rounds_to_epsilon"] = {"skipped": "the assumptions fail on the box"}
    run.verdicts.update({"theorem 4.1": "not-applicable", "theorem 4.2": "not-applicable"})
    return _finish(run, reason=f"assumption violated: {reason}")


def _n_study_header(target) -> str:
    if target.family is None:
        return (f"[6/6] T_eps(n) against the number of levels: skipped ("
                f"{target.family_reason})")
    ns = sorted(target.members)
    return (f"[6/6] T_eps(n): rounds of the single-loop scheme to ||grad F_1||^2 <= 1e-10, "
            f"n = {ns[0]}..{ns[-1]}, on the family, in the box")


def _n_study(run, target, box) -> dict:
    """Step 6: T_eps(n) on the family, or why it is skipped."""
    from . import verify
    from .errors import MlverifyError

    console = run.console
    if target.family is None:
        return {"skipped": target.family_reason}
    ns = sorted(target.members)
    describe = target.describe
    with console.bar(len(ns), "family members", unit="member") as bar:
        def progress(n):
            bar.set_postfix_str(f"n = {n}")
            bar.n = ns.index(n)
            bar.refresh()

        try:
            growth = verify.rounds_to_epsilon(
                lambda n: target.members[n], ns=tuple(ns), box=box, progress=progress,
                describe=(lambda n, p: describe(n)) if describe else
                (lambda n, p: f"family({n}): {p.n} levels, blocks {tuple(p.sizes)}"),
                time_budget=run.args.study_budget,
            )
        except MlverifyError as err:
            run.verdicts["rounds to epsilon"] = "not-applicable"
            console.say(f"  not applicable: {one_line(err)}")
            return {"skipped": f"not applicable: {err}", "n": ns}
    console.say("  n   T_eps   mean ||e_t||   time     problem")
    for n, t_eps, err, seconds, what, diverged in zip(
            growth["n"], growth["T_eps"], growth["mean_error"], growth["seconds"],
            growth["problems"], growth["diverged"], strict=True):
        shown = f"{t_eps}" if np.isfinite(t_eps) else f">{growth['max_rounds']}"
        if diverged:
            shown, what = "-", f"{what}; diverged: {diverged}"
        console.say(f"  {n:<3} {shown:<7} {err:<14.3e} {seconds:<8.1f} {what}")
    if growth["stopped"]:
        console.say(f"  stopped: {growth['stopped']} (--study-budget)")
    if growth["growth_per_level"] is not None:
        console.say(f"  fitted growth: log T_eps rises {growth['growth_per_level']:.3g} per level "
                    f"(T_eps x {np.exp(growth['growth_per_level']):.3g}), "
                    f"{growth['growth_linear']:.3g} rounds per level")
    plot_rounds_to_epsilon(growth, run.out / "rounds-vs-levels.png", target.family_label)
    run.written.append("rounds-vs-levels.png")
    return growth


def main(argv=None) -> int:
    """Run ``mlverify verify``; returns the exit status (see the module docstring)."""
    from .errors import (
        HessianError,
        MlverifyError,
        NonUniqueMinimiserError,
        UnboundedLevelError,
    )

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(_protect_box_values(argv))
    state: dict = {}
    try:
        return run_verify(args, state)
    except BadInput as err:
        if args.debug:
            raise
        return _error_exit(args, state, EXIT_BAD_INPUT, "bad input", f"bad input: {err}", err)
    except (HessianError, NonUniqueMinimiserError, UnboundedLevelError) as err:
        if args.debug:
            raise
        return _error_exit(args, state, EXIT_NOT_APPLICABLE, "assumption violated",
                           f"assumption violated: bound not applicable: {one_line(err)}", err)
    except MlverifyError as err:
        if args.debug:
            raise
        return _error_exit(args, state, EXIT_FAIL, type(err).__name__,
                           f"{one_line(err)} (rerun with --debug for the traceback)", err)
    except KeyboardInterrupt:
        return _error_exit(args, state, 130, "interrupted", "interrupted", None)
    except Exception as err:  # noqa: BLE001 - one line, not a traceback, unless --debug
        if args.debug:
            raise
        return _error_exit(args, state, EXIT_FAIL, "unexpected error",
                           f"unexpected error: {one_line(err)} (rerun with --debug for the "
                           f"traceback)", err)


if __name__ == "__main__":
    sys.exit(main())
