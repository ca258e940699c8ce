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
import ast
import json
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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

#: Exit statuses: every check passes, a bound fails, bad input, an assumption is violated.
EXIT_PASS, EXIT_FAIL, EXIT_BAD_INPUT, EXIT_NOT_APPLICABLE = 0, 1, 2, 3
#: Symbolic and finite-difference hypergradients must agree to this (relative): central
#: differences with step h carry an O(h^2) truncation and an O(eps/h) round-off error.
FD_AGREEMENT = 1e-6
#: Symbolic and JAX hypergradients compute the same formulas: they agree to round-off.
JAX_AGREEMENT = 1e-8
#: A Jacobian whose formula is longer than this many characters is shown as float64
#: values at the check point instead.
JACOBIAN_TEXT_LIMIT = 120
#: A Jacobian whose formula, written out, has more operations than this is never written
#: out (its size is read off the derivation graph); it cannot fit the text limit anyway.
JACOBIAN_OPS_LIMIT = 1000
#: Points of the box sampled by the assumption step.
ASSUMPTION_SAMPLES = 9
#: Multistart starts per level at each sampled point (``solve_lower(x1, starts=...)``).
MULTISTARTS = 4
#: The JAX cross-check compiles nested implicit derivatives; above this many levels that
#: compile takes longer than the rest of the run, so it runs only with --jax-check.
JAX_CHECK_MAX_LEVELS = 3
#: The T_eps(n) study's default time budget (seconds, --study-budget).
STUDY_BUDGET_S = 300.0
#: Zoo problems: the default box of each.
ZOO_BOXES = {
    "default": (-2.0, 2.0),
    "quadratic": (-2.0, 2.0),
    "nonquadratic": (-1.0, 1.0),
    "compounding": (-2.0, 2.0),
    "ridge": (1.0, 3.5),
    "indefinite": (-1.0, 1.0),
}
#: Zoo problems: the options that apply to each.
ZOO_OPTIONS = {
    "default": set(),
    "quadratic": {"levels", "size", "seed", "max_levels"},
    "nonquadratic": {"levels", "size", "seed", "max_levels"},
    "compounding": {"levels", "seed", "max_levels"},
    "ridge": {"seed"},
    "indefinite": set(),
}
#: The ridge data seed whose validation loss has an interior minimum, $F_1$ strongly convex on
#: the default box $[1, 3.5]$ around it (other seeds: give a `--box` where $F_1$ is convex).
RIDGE_SEED = 5
#: Files a run writes into --out; left-overs of an earlier run are removed first.
ARTEFACTS = ("report.json", "theorem-4.1.json", "theorem-4.1.png", "theorem-4.2.json",
             "theorem-4.2.png", "rounds-vs-levels.png", "trace-implicit-exact.npz",
             "trace-hierarchical.npz", "trace-itd.npz")


class BadInput(Exception):
    """Bad input: a one-line reason, exit status 2."""


@dataclass
class Target:
    """What a run checks: the problem, its box, its family (or why there is none)."""

    problem: object
    box: tuple
    label: str
    family: object = None
    family_reason: str = ""
    members: dict = field(default_factory=dict)
    describe: object = None  # n -> a one-line description of family(n)
    family_label: str = ""


# ---------------------------------------------------------------------------- options
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
        choices=list(ZOO_BOXES),
        help="a built-in problem (default: default, the trilevel problem of "
        "mlverify.zoo.default_problem); quadratic, nonquadratic and compounding are "
        "families with --levels levels",
    )
    v.add_argument("--levels", type=int, metavar="N",
                   help="number of levels of a zoo family (default 3)")
    v.add_argument("--size", type=int, metavar="D",
                   help="block size of the quadratic and nonquadratic families (default 1)")
    v.add_argument("--seed", type=int, metavar="S",
                   help=f"seed of a zoo family's coefficients (default 0; ridge: {RIDGE_SEED})")
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
    for name in sorted(given - ZOO_OPTIONS[zoo]):
        applies = [z for z, names in ZOO_OPTIONS.items() if name in names]
        raise BadInput(f"--{name.replace('_', '-')} does not apply to --zoo {zoo} (it applies "
                       f"to {', '.join(applies)})")


def _parse_box(lo, hi, d: int, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) as float64 vectors of length d, or BadInput naming ``origin``."""
    sides = []
    for name, side in (("lo", lo), ("hi", hi)):
        if isinstance(side, str):
            try:
                side = [float(v) for v in side.strip().split(",")]
            except ValueError as err:
                raise BadInput(f"{origin}: {name} = {side.strip()!r} is not a number or a "
                               f"comma-separated list of numbers") from err
        try:
            array = np.asarray(side, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as err:
            raise BadInput(f"{origin}: {name} = {side!r} is not numeric") from err
        if array.size == 1:
            array = np.full(d, array[0])
        if array.size != d:
            raise BadInput(f"{origin}: {name} has {array.size} entries but x_1 has {d}")
        if not np.all(np.isfinite(array)):
            raise BadInput(f"{origin}: {name} holds NaN or inf")
        sides.append(array)
    if np.any(sides[0] >= sides[1]):
        raise BadInput(f"{origin}: the box needs lo < hi in every coordinate, got lo = "
                       f"{sides[0].tolist()}, hi = {sides[1].tolist()}")
    return sides[0], sides[1]


# ---------------------------------------------------------------------------- loading
def _assignment_lines(source: str) -> dict:
    """Line of the last top-level assignment or definition of each name in the file."""
    lines = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            lines[node.name] = node.lineno
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        lines[sub.id] = node.lineno
    return lines


def _line_in_file(err: BaseException, path: Path):
    """The last line of ``path`` in the traceback of ``err``."""
    line = None
    for frame, lineno in traceback.walk_tb(err.__traceback__):
        if Path(frame.f_code.co_filename).resolve() == path.resolve():
            line = lineno
    return line


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def _is_problem(value) -> bool:
    from .numeric import NumericProblem
    from .problem import MultilevelProblem

    return isinstance(value, (MultilevelProblem, NumericProblem))


def _load_file(path_text: str, box_option, max_levels) -> Target:
    path = Path(path_text)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    source = path.read_text()
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as err:
        raise BadInput(f"{path}:{err.lineno}: syntax error: {err.msg}") from err
    namespace = {"__name__": "__mlverify_problem__", "__file__": str(path)}
    try:
        exec(code, namespace)
    except Exception as err:  # noqa: BLE001 - any error in the user's file is bad input
        raise BadInput(f"{path}:{_line_in_file(err, path) or '?'}: {_one_line(err)}") from err
    lines = _assignment_lines(source)
    if "problem" not in namespace:
        raise BadInput(f"{path}: defines no problem (assign a mlverify.MultilevelProblem to "
                       f"the name problem)")
    problem = namespace["problem"]
    where = f"{path}:{lines.get('problem', '?')}"
    if not _is_problem(problem):
        raise BadInput(f"{where}: problem is a {type(problem).__name__}, not a "
                       f"mlverify.MultilevelProblem or NumericProblem")
    d = problem.sizes[0]
    if box_option is not None:
        box = _parse_box(*box_option, d, "--box")
    elif "box" in namespace:
        value = namespace["box"]
        origin = f"{path}:{lines.get('box', '?')}: box"
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise BadInput(f"{origin} must be (lo, hi), got {value!r}")
        box = _parse_box(*value, d, origin)
    else:
        box = _parse_box(-2.0, 2.0, d, "default box")
    target = Target(problem, box, str(path))
    family = namespace.get("family")
    if family is None:
        target.family_reason = f"{path} defines no family(n)"
        if max_levels is not None:
            raise BadInput(f"--max-levels applies to a family, and {path} defines no family(n)")
        return target
    origin = f"{path}:{lines.get('family', '?')}"
    if not callable(family):
        raise BadInput(f"{origin}: family must be a function of n, got {type(family).__name__}")
    target.family = family
    target.family_label = f"family(n) of {path}"
    for n in range(2, (max_levels or 4) + 1):  # build every member now: errors are bad input
        try:
            member = family(n)
        except Exception as err:  # noqa: BLE001 - an error in the user's family(n)
            line = _line_in_file(err, path) or lines.get("family", "?")
            raise BadInput(f"{path}:{line}: family({n}): {_one_line(err)}") from err
        if not _is_problem(member):
            raise BadInput(f"{origin}: family({n}) returned a {type(member).__name__}, not a "
                           f"MultilevelProblem or NumericProblem")
        if member.n != n:
            raise BadInput(f"{origin}: family({n}) has {member.n} levels, not {n}")
        if member.sizes[0] != d:
            raise BadInput(f"{origin}: family({n}) has x_1 of size {member.sizes[0]}, but the "
                           f"box is for size {d}")
        target.members[n] = member
    return target


def _load_zoo(args) -> Target:
    from . import zoo

    name = args.zoo or "default"
    levels = args.levels if args.levels is not None else 3
    size = args.size if args.size is not None else 1
    seed = args.seed if args.seed is not None else (RIDGE_SEED if name == "ridge" else 0)
    families = {
        "quadratic": (lambda n: zoo.quadratic(n, (size,) * n, seed=seed).symbolic(),
                      lambda n: f"quadratic n={n} d={size} seed={seed}"),
        "nonquadratic": (lambda n: zoo.nonquadratic(n, size, seed=seed),
                         lambda n: f"non-quadratic n={n} d={size} seed={seed}"),
        "compounding": (lambda n: zoo.compounding(n, seed=seed),
                        lambda n: f"compounding n={n} d=2 seed={seed}"),
    }
    singles = {
        "default": (zoo.default_problem, "default trilevel (mlverify.zoo.default_problem)"),
        "ridge": (lambda: zoo.ridge_bilevel(seed=seed)[0], f"bilevel ridge tuning seed={seed}"),
        "indefinite": (zoo.indefinite_problem, "indefinite lower level (zoo)"),
    }
    if name in families:
        build, describe = families[name]
        problem = build(levels)
        target = Target(problem, None, describe(levels), family=build, describe=describe,
                        family_label=f"the {name} family"
                        + (f", d={size}" if name != "compounding" else ", d=2")
                        + f", seed={seed}")
    else:
        build, label = singles[name]
        problem = build()
        target = Target(problem, None, label,
                        family_reason=f"--zoo {name} is one problem, not a family (the "
                        f"families are quadratic, nonquadratic and compounding)")
    d = problem.sizes[0]
    if args.box is not None:
        target.box = _parse_box(*args.box, d, "--box")
    else:
        target.box = _parse_box(*ZOO_BOXES[name], d, f"the box of --zoo {name}")
    if target.family is not None:
        # the problem itself is the member with its number of levels (derived once)
        target.members = {n: problem if n == levels else build(n)
                          for n in range(2, (args.max_levels or 4) + 1)}
    return target


# ---------------------------------------------------------------------------- output
class _Console:
    """Step headers and results; progress bars on stderr."""

    def __init__(self, args):
        self.stream = sys.stderr if args.json else sys.stdout
        self.bars = not args.no_progress

    def say(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def bar(self, total: int, label: str, unit: str = "round"):
        from tqdm import tqdm

        # disable=None: bars on a terminal only, not in a log or a pipe.
        return tqdm(total=total, desc=f"  {label}", file=sys.stderr, leave=False,
                    disable=None if self.bars else True, unit=unit, dynamic_ncols=True)


def _rounds_callback(bar):
    def update(done, _steps):
        bar.n = done
        bar.refresh()

    return update


def _box_text(box) -> str:
    lo, hi = (np.asarray(b).tolist() for b in box)
    if len(set(lo)) == 1 and len(set(hi)) == 1:
        return f"[{lo[0]:g}, {hi[0]:g}]" + (f"^{len(lo)}" if len(lo) > 1 else "")
    return f"lo = {lo}, hi = {hi}"


def _verdict_text(report) -> str:
    how = "certified" if getattr(report, "certified", False) else "sampled"
    return f"{report.verdict} ({how})"


# ---------------------------------------------------------------------------- steps
def _check_point(box) -> np.ndarray:
    """Where the Jacobians and the hypergradient are shown: 5/8 of the way across the box
    (its centre is often a point of symmetry where terms vanish)."""
    lo, hi = np.asarray(box[0]), np.asarray(box[1])
    return lo + 0.625 * (hi - lo)


def _jacobians(problem, x1, console) -> dict:
    """Each D_j y_k: symbolic when its formula is short, else float64 values at x1.

    Decided on the derivation graph (`DerivationGraph.expanded_size`, the formula's
    operation count without writing it out): only a formula within
    ``JACOBIAN_OPS_LIMIT`` operations is written out and then shown if it has at most
    ``JACOBIAN_TEXT_LIMIT`` characters."""
    import sympy as sp

    from .problem import MultilevelProblem

    if not isinstance(problem, MultilevelProblem):
        console.say("  skipped: a NumericProblem has no symbolic form")
        return {"skipped": "a NumericProblem has no symbolic form"}
    derivation = problem.derivation()
    graph = derivation.graph
    out = {}
    lower = None
    pairs = [(k, j) for k in range(problem.n, 1, -1) for j in range(1, k)]
    with console.bar(len(pairs), "Jacobians", unit="Jacobian") as bar:
        for k, j in pairs:
            bar.update(1)
            name = f"D_{j} y_{k}"
            matrix = derivation.jacobians[(k - 1, j - 1)]
            operations = graph.expanded_size(list(matrix))
            text = None
            if operations <= JACOBIAN_OPS_LIMIT:
                expr = graph.expand_matrix(matrix)
                text = sp.sstr(expr[0, 0] if expr.shape == (1, 1) else expr)
                if len(text) <= JACOBIAN_TEXT_LIMIT:
                    out[name] = {"symbolic": text}
                    console.say(f"  {name} = {text}")
                    continue
            if lower is None:
                lower = problem.solve_lower(x1)
            value = problem.numeric().jacobian_frozen(k, j, [lower.x1, *lower.xs])
            out[name] = {"value": value.tolist(), "at_x1": x1.tolist(),
                         "formula_operations": operations}
            if text is not None:
                out[name]["formula_characters"] = len(text)
                size = f"{len(text)} characters, more than {JACOBIAN_TEXT_LIMIT}"
            else:
                size = (f"{operations:.3g} operations written out, more than "
                        f"{JACOBIAN_OPS_LIMIT}")
            shown = np.array2string(value, precision=6, separator=", ")
            console.say(f"  {name} = {shown}  (float64 at the solution for x1 = "
                        f"{np.round(x1, 6).tolist()}; the formula has {size})")
    return out


def _unbounded_along_negative_curvature(problem, level: int, x1) -> str | None:
    """A description if level ``level``'s objective falls without bound along the direction of
    most negative curvature from its start (levels above at their start, levels below
    re-solved); None when it does not, or when that cannot be decided here."""
    from .problem import MultilevelProblem

    if not isinstance(problem, MultilevelProblem):
        return None
    evaluator = problem.numeric()
    k = level - 1
    blocks = [np.asarray(x1, dtype=np.float64)] + [np.array(x) for x in problem.inits[1:]]
    try:
        base = evaluator._reduced_value(k, blocks, 1e-10, 100)
        h = evaluator.gradient_hessian(k, blocks)[1]
        eigenvalues, vectors = np.linalg.eigh(0.5 * (h + h.T))
        if eigenvalues[0] >= 0:
            return None
        for sign in (1.0, -1.0):
            values = []
            for s in 10.0 ** np.arange(0, 9):
                trial = list(blocks)
                trial[k] = blocks[k] + sign * s * vectors[:, 0]
                values.append(evaluator._reduced_value(k, trial, 1e-10, 100))
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


def _bottom_level_unbounded(problem, x1) -> str | None:
    """For the bottom level (its reduced objective is f_n itself): a description if f_n
    falls without bound in x_n, decided exactly where f_n is quadratic in x_n with a
    negative Hessian eigenvalue, else by f_n falling monotonically to below f_n(0) - 1e6
    at distance 1e8 along the direction of most negative curvature or a coordinate axis
    (x1 given, the levels in between at 0); None otherwise."""
    import sympy as sp

    from .problem import MultilevelProblem

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


def _classify(problem, err, x1, symbolic: bool) -> tuple[str, str]:
    """(kind, reason) for an error of a lower level: 'unbounded below' where that can be
    shown, else 'not unique', 'degenerate or indefinite' or 'solve failed'."""
    from .errors import HessianError, NonUniqueMinimiserError, UnboundedLevelError

    if isinstance(err, UnboundedLevelError):
        return "unbounded below", _one_line(err)
    if isinstance(err, NonUniqueMinimiserError):
        return "not unique", _one_line(err)
    level = getattr(err, "level", None)
    if level == problem.n:
        unbounded = _bottom_level_unbounded(problem, x1)
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
        unbounded = _unbounded_along_negative_curvature(problem, level, x1)
        if unbounded is not None:
            return "unbounded below", unbounded
    if isinstance(err, HessianError):
        return "degenerate or indefinite", _one_line(err)
    return "solve failed", _one_line(err)


def _check_assumptions(problem, box, *, samples: int = ASSUMPTION_SAMPLES,
                       starts: int = MULTISTARTS, progress=None) -> dict:
    """The assumptions every check shares, on the box: at sampled x1, each lower level has a
    unique minimiser (by a seeded multistart of ``starts`` points), is bounded below, and is
    strongly convex there (D_kk F_k positive definite and well conditioned).

    Returns ``{"ok", "reason", "level", "kind", "points", "mu"}``; ``kind`` is one of
    "unbounded below", "not unique", "degenerate or indefinite", "solve failed" when not ok.
    """
    from .errors import (
        ConvergenceError,
        HessianError,
        MlverifyError,
        NonUniqueMinimiserError,
        UnboundedLevelError,
    )
    from .optimize import as_numeric
    from .verify.assumptions import bottom_level_unbounded
    from .verify.theorems import STRONG_CONVEXITY_FLOOR, _samples

    num = as_numeric(problem, "implicit-exact")
    points = _samples(np.asarray(box[0]), np.asarray(box[1]), samples, 0)
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
            hessians = num.lower_hessians([np.asarray(x1), *lower])
        except (UnboundedLevelError, NonUniqueMinimiserError, HessianError,
                ConvergenceError) as err:
            kind, reason = _classify(problem, err, x1, symbolic=False)
            return fail(kind, err.level,
                        reason if kind == "unbounded below" else f"at {where}: {reason}")
        except MlverifyError as err:
            return fail("solve failed", err.level, f"at {where}: {_one_line(err)}")
        for k, h in enumerate(hessians, start=2):
            eig = np.linalg.eigvalsh(0.5 * (np.asarray(h) + np.asarray(h).T))
            mu[k] = min(mu.get(k, np.inf), float(eig[0]))
            if eig[0] <= STRONG_CONVEXITY_FLOOR * abs(eig[-1]):
                return fail("degenerate or indefinite", k,
                            f"level {k} is not strongly convex at {where}: min eigenvalue of "
                            f"D_kk F_k is {eig[0]:.3g} (at most {STRONG_CONVEXITY_FLOOR:g} "
                            f"times the largest)")
        flat = [np.asarray(num.flatten(k, x)) for k, x in enumerate(lower, start=1)]
        unbounded = bottom_level_unbounded(num, x1, flat, np.asarray(hessians[-1]))
        if unbounded is not None:
            return fail("unbounded below", problem.n, unbounded)
    result["mu"] = mu
    return result


def _finite_difference(problem, x1, step=1e-5) -> np.ndarray:
    """Central differences of F_1 with tightly solved lower levels (symbolic solver)."""
    from .optimize import as_numeric, exact_value_and_gradient

    num = as_numeric(problem, "implicit-exact")
    grad = np.zeros_like(x1)
    for i in range(x1.size):
        e = np.zeros_like(x1)
        e[i] = step * max(1.0, abs(x1[i]))
        plus = exact_value_and_gradient(num, x1 + e)[0]
        minus = exact_value_and_gradient(num, x1 - e)[0]
        grad[i] = (plus - minus) / (2 * e[i])
    return grad


def _cross_check(problem, x1, jax_check: bool) -> dict:
    """Relative disagreement of the symbolic hypergradient with finite differences of F_1
    and, where it runs, with the JAX core's exact hypergradient."""
    from .optimize import as_numeric, exact_value_and_gradient
    from .problem import MultilevelProblem

    declared = isinstance(problem, MultilevelProblem)
    num = as_numeric(problem, "implicit-exact")
    exact = np.asarray(exact_value_and_gradient(num, x1)[1], dtype=np.float64)
    fd = _finite_difference(problem, x1)
    scale = max(1.0, float(np.max(np.abs(exact))))
    if declared:
        _, error = problem.hypergradient_at(x1, with_error=True)
    else:
        _, error = problem.hypergradient(np.asarray(x1, float), "exact", with_error=True)
    check = {
        "at_x1": x1.tolist(),
        "exact": exact.tolist(),
        # the a-posteriori bound on |exact - dF_1/dx_1| (lower solves and round-off)
        "error_estimate": np.asarray(error, dtype=np.float64).tolist(),
        "finite_difference": fd.tolist(),
        "exact_vs_fd": float(np.max(np.abs(exact - fd)) / scale),
    }
    if declared:
        no_curvature = np.asarray(problem.hypergradient_at(x1, curvature=False))
        check["no_curvature_error"] = float(np.max(np.abs(no_curvature - exact)) / scale)
        if problem.n <= JAX_CHECK_MAX_LEVELS or jax_check:
            from .optimize import _lowered

            numeric = _lowered(problem)
            jax_exact = np.ravel(np.asarray(numeric.hypergradient(
                np.asarray(x1, float), "exact", solve_options={"tol": 1e-12})))
            check["jax_exact"] = jax_exact.tolist()
            check["symbolic_vs_jax"] = float(np.max(np.abs(exact - jax_exact)) / scale)
        else:
            check["symbolic_vs_jax"] = None
            check["jax_skipped"] = (f"{problem.n} levels: the JAX core's nested compile would "
                                    f"dominate the run; pass --jax-check to run it")
    return check


# ---------------------------------------------------------------------------- the run
def _clean_out(out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    removed = []
    for name in ARTEFACTS:
        path = out / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    return removed


@dataclass
class _Run:
    """What a run accumulates: the report, the verdicts, the files written, the time each
    step took."""

    args: argparse.Namespace
    console: _Console
    out: Path
    box_json: list
    start: float = field(default_factory=time.perf_counter)
    result: dict = field(default_factory=dict)
    verdicts: dict = field(default_factory=dict)
    written: list = field(default_factory=list)
    step_times: dict = field(default_factory=dict)

    @contextmanager
    def step(self, name: str, header: str):
        """Print the step's header; afterwards its wall time (also in the JSON's
        ``step_times_s``)."""
        self.console.say(header)
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.step_times[name] = seconds
            self.console.say(f"  took {seconds:.1f} s")


def _compilation_cache(args) -> str:
    """Switch JAX's persistent compilation cache on unless --no-cache or MLVERIFY_NO_CACHE;
    returns what the header says about it."""
    from .cache import cache_switched_off, enable_compilation_cache

    if args.no_cache:
        return "off (--no-cache)"
    if cache_switched_off():
        return "off (MLVERIFY_NO_CACHE)"
    folder = enable_compilation_cache()
    return f"{folder}" if folder is not None else "off (the cache folder cannot be created)"


def run_verify(args, state: dict | None = None) -> int:
    """The six steps on the problem ``args`` names (see the module docstring); returns the
    exit status. Raises BadInput before any long work. ``state["run"]`` receives the run
    (its report so far), for the report of an error exit."""
    _check_options(args)
    console = _Console(args)
    start = time.perf_counter()
    target = (_load_file(args.problem_file, args.box, args.max_levels) if args.problem_file
              else _load_zoo(args))
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
            kind, reason = _classify(problem, err, x_check, symbolic=True)
            console.say(f"  not derivable: {reason}")
            run.result["jacobians"] = {"skipped": reason}
            failure = {"kind": kind, "level": err.level, "reason": reason}
    if failure is not None:
        return _not_applicable(run, failure)

    with run.step("assumptions", f"[2/6] assumptions on the box: unique, strongly convex, "
                  f"bounded-below lower levels at {ASSUMPTION_SAMPLES} points"):
        with console.bar(None, "sampled points", unit="point") as bar:
            assumptions = _check_assumptions(problem, box, progress=bar.update)
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
    check = _cross_check(problem, x_check, run.args.jax_check)
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
            report41 = verify.theorem_4_1(problem, box=box, T=args.T,
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
                                      methods=("hierarchical", "itd"), progress=progress42)
    _save_report(run, report42, "4.2")
    return report42


def _not_applicable(run, assumptions) -> int:
    """A lower level fails the assumptions every check shares: no bound applies."""
    run.verdicts["assumptions"] = "not-applicable"
    reason = assumptions["reason"]
    if f"level {assumptions['level']}" not in reason:
        reason = f"level {assumptions['level']} {assumptions['kind']}: {reason}"
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
            console.say(f"  not applicable: {_one_line(err)}")
            return {"skipped": f"not applicable: {err}", "n": ns}
    console.say("  n   T_eps   mean ||e_t||   time     problem")
    for n, t_eps, err, seconds, what in zip(growth["n"], growth["T_eps"],
                                            growth["mean_error"], growth["seconds"],
                                            growth["problems"], strict=True):
        shown = f"{t_eps}" if np.isfinite(t_eps) else f">{growth['max_rounds']}"
        console.say(f"  {n:<3} {shown:<7} {err:<14.3e} {seconds:<8.1f} {what}")
    if growth["stopped"]:
        console.say(f"  stopped: {growth['stopped']} (--study-budget)")
    if growth["growth_per_level"] is not None:
        console.say(f"  fitted growth: log T_eps rises {growth['growth_per_level']:.3g} per level "
                    f"(T_eps x {np.exp(growth['growth_per_level']):.3g}), "
                    f"{growth['growth_linear']:.3g} rounds per level")
    _plot_growth(growth, run.out / "rounds-vs-levels.png", target.family_label)
    run.written.append("rounds-vs-levels.png")
    return growth


def _save_report(run, report, theorem):
    report.save(str(run.out / f"theorem-{theorem}.json"))
    run.written.append(f"theorem-{theorem}.json")
    if report.table:
        report.plot(str(run.out / f"theorem-{theorem}.png"))
        run.written.append(f"theorem-{theorem}.png")
    run.verdicts[f"theorem {theorem}"] = report.verdict
    run.console.say(_indent(report.summary()) + f"\n  verdict: {_verdict_text(report)}")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def _finish(run, reason="") -> int:
    """Write report.json, print the summary (exactly the files written) and the one-line
    reason; returns the exit status."""
    result, console = run.result, run.console
    result["verdicts"] = run.verdicts
    result["step_times_s"] = dict(run.step_times)
    result["elapsed_s"] = time.perf_counter() - run.start
    result["files"] = ["report.json", *run.written]
    (run.out / "report.json").write_text(json.dumps(_plain(result), indent=1,
                                                    default=_json_default))
    console.say("\nSummary")
    for name, verdict in run.verdicts.items():
        console.say(f"  {name:<18} {verdict}")
    console.say(f"  written to {run.out}/: {', '.join(result['files'])}")
    console.say(f"  in {result['elapsed_s']:.1f} s")
    if run.args.json:
        print(json.dumps(_plain(result), default=_json_default), flush=True)
    values = set(run.verdicts.values())
    if "fail" in values:
        print(f"mlverify: fail: {reason}", file=sys.stderr)
        return EXIT_FAIL
    if "not-applicable" in values:
        print(f"mlverify: not applicable: {reason or _first_reason(result)}", file=sys.stderr)
        return EXIT_NOT_APPLICABLE
    return EXIT_PASS


def _first_reason(result) -> str:
    study = result.get("rounds_to_epsilon", {})
    return study.get("skipped", "") if isinstance(study, dict) else ""


def _plot_growth(growth, path, label):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ns = np.asarray(growth["n"])
    t_eps = np.asarray(growth["T_eps"], dtype=float)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    finite = np.isfinite(t_eps)
    ax[0].plot(ns[finite], t_eps[finite], "o-",
               label=rf"first round with $\Vert\nabla F_1\Vert^2 \leq$ {growth['epsilon']:.0e}")
    if (~finite).any():
        ax[0].plot(ns[~finite], np.full((~finite).sum(), growth["max_rounds"]), "x",
                   color="C3", label=f"not reached in {growth['max_rounds']} rounds")
    ax[0].set_ylim(bottom=0, top=1.15 * max(float(np.max(t_eps[finite], initial=1)),
                                            growth["max_rounds"] if (~finite).any() else 1))
    ax[0].set_xlabel("levels n")
    ax[0].set_ylabel(r"rounds $T_\varepsilon(n)$ (single loop)")
    ax[0].legend(fontsize=8, loc="lower right")
    errors = np.asarray(growth["mean_error"], dtype=float)
    positive = errors[errors > 0]
    # a log axis needs a positive value (the errors are all 0 where the lower levels are
    # solved exactly in one step, e.g. quadratic ones)
    (ax[1].semilogy if positive.size else ax[1].plot)(ns, errors, "o-", color="C1")
    if positive.size:  # at least two decades, so that a small spread is not blown up
        middle = np.sqrt(positive.min() * positive.max())
        ax[1].set_ylim(min(positive.min() / 2, middle / 10), max(positive.max() * 2, middle * 10))
    ax[1].set_xlabel("levels n")
    ax[1].set_ylabel(r"mean $\Vert e_t\Vert$ over the run (single loop)")
    for a in ax:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Theorem 4.2 against the number of levels: {label}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return str(value)


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
                           f"assumption violated: bound not applicable: {_one_line(err)}", err)
    except MlverifyError as err:
        if args.debug:
            raise
        return _error_exit(args, state, EXIT_FAIL, type(err).__name__,
                           f"{_one_line(err)} (rerun with --debug for the traceback)", err)
    except KeyboardInterrupt:
        return _error_exit(args, state, 130, "interrupted", "interrupted", None)
    except Exception as err:  # noqa: BLE001 - one line, not a traceback, unless --debug
        if args.debug:
            raise
        return _error_exit(args, state, EXIT_FAIL, "unexpected error",
                           f"unexpected error: {_one_line(err)} (rerun with --debug for the "
                           f"traceback)", err)


def _error_exit(args, state, status: int, kind: str, message: str, err) -> int:
    """An exit on an error: the one-line message on stderr; with --json, the report of the
    steps that ran and the error (exit code, kind, level, quantity, reason) on stdout, and
    in report.json where the output folder was set up."""
    print(f"mlverify: {message}", file=sys.stderr)
    run = state.get("run")
    error = {"exit_code": status, "kind": kind,
             "level": getattr(err, "level", None), "quantity": getattr(err, "quantity", None),
             "reason": message}
    result = dict(run.result) if run is not None else {}
    if run is not None:
        result.update(verdicts=run.verdicts, step_times_s=dict(run.step_times),
                      elapsed_s=time.perf_counter() - run.start)
    result["error"] = error
    if run is not None:
        try:
            (run.out / "report.json").write_text(
                json.dumps(_plain(result), indent=1, default=_json_default))
            result["files"] = ["report.json", *run.written]
        except OSError:
            pass
    if args.json:
        print(json.dumps(_plain(result), default=_json_default), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
