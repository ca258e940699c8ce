r"""What a deep hypergradient program will cost, before it is built.

The exact hypergradient of $n$ levels differentiates $f_n$ to order $n$ (Lemma 3.2 and its
induction): for general objectives the program, its compile time and the memory XLA needs
to compile it grow geometrically with $n$. Two kinds of program, two calibrations:

- ``"stacked"`` (`mlverify.numeric.stacked`): the exact hypergradient, the lower solve and
  its checks where every lower block is dense; its program grows by a roughly constant
  factor per level (`CALIBRATION`).
- ``"nested"`` (`mlverify.numeric.implicit`): the nested best-response rules, which the
  approximate methods (``no-curvature``, ``cg``, ``neumann``), explicit linear-solver
  options and matrix-free levels (blocks over ``DENSE_LIMIT``) use; each derivative order
  re-traces every lower rule, so it grows much faster (`NESTED_CALIBRATION`).

`predict_exact` reads the growth off the calibration (the first call of
``hypergradient(x1, method)`` on the benchmark's non-quadratic family, blocks of 4,
``benchmarks/results/deep_jax.md``; lower bounds: depths whose run ran out of memory) and
extends it past the last measured depth by the last measured growth per level. It is
calibrated on blocks of 4: other block sizes and objectives cost more or less.
`check_affordable` compares the prediction with the memory this process may use
(`memory_limit`; a depth known only by a lower bound planned at `UNKNOWN_MARGIN` times it)
and raises `CostError` naming the depth and what costs less, instead of letting XLA
exhaust the machine.
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass, replace

import jax

from ..errors import CostError
from . import pieces

__all__ = ["CALIBRATION", "LOWER_BOUNDS", "NESTED_CALIBRATION", "NESTED_LOWER_BOUNDS",
           "PIECE_EQUATIONS", "PROGRAM_CALIBRATION", "SPLIT_CALIBRATION", "SPLIT_FROM",
           "UNKNOWN_MARGIN", "CheckedProgram", "CostError", "CostEstimate", "check_affordable",
           "check_program", "memory_limit", "predict_exact", "predict_program"]

#: First call of the exact hypergradient on the stacked program (trace, compile, joint solve,
#: checks, hypergradient) against the number of levels n: (seconds, peak resident memory in
#: GB), blocks of 4, the benchmark's non-quadratic family, 2-core AMD EPYC
#: (benchmarks/results/deep_jax.md, 2026-12-07 20:40 UTC, the deep compiler options from 3
#: levels; the program is the joint solve's step, `stacked.Newton.iterate`, compiled in
#: pieces from `SPLIT_FROM` equations: at 7 levels, which took 108 s and 3.55 GB as one).
CALIBRATION = {3: (0.82, 0.35), 4: (1.74, 0.37), 5: (5.08, 0.41), 6: (16.0, 0.72),
               7: (66.8, 1.37)}
#: Depths whose measured first call on the stacked program did not finish (none measured).
LOWER_BOUNDS: dict[int, tuple[float, float]] = {}
#: The same first call on the nested best-response program (the exact formula before the
#: stacked form; what the approximate methods still build): 2026-12-06, solve and
#: hypergradient fused with the level constants formed once, XLA level 0.
NESTED_CALIBRATION = {3: (1.4, 0.51), 4: (5.1, 0.74), 5: (41.8, 1.94)}
#: Depths whose nested program ran out of memory: (seconds, GB) when it did, lower bounds (6
#: levels: bad_alloc at 12.9 GB after 488 s, while compiling the joint solve's program).
NESTED_LOWER_BOUNDS = {6: (488.0, 12.9)}
#: Tracing, lowering and compiling the joint solve's step (`stacked.Newton.iterate`, jit with
#: `COMPILER_OPTIONS`) as one program, against the size of its traced program: (top-level
#: jaxpr equations, seconds, peak resident memory of the process in GB), 2-core AMD EPYC,
#: 2026-12-07 20:24 UTC (benchmarks/results/program_cost.md). Two families: the benchmark's
#: (blocks of 4, 3 to 7 levels) and one with softplus, log(1 + e^t) of a bilinear form, cosh
#: and Gaussian couplings (blocks (3, 3, 4, 5, 1, 1), 3 to 6 levels), whose programs are 1.4
#: to 4.1 times larger at the same depth and need more memory per equation. `predict_program`
#: reads them as an upper envelope (neither seconds nor memory decreases with size).
PROGRAM_CALIBRATION = (
    (601, 0.72, 0.33), (1599, 1.49, 0.34), (4784, 3.94, 0.38), (17050, 15.22, 0.69),
    (71654, 99.11, 3.45),
    (868, 1.26, 0.34), (2925, 3.65, 0.41), (11670, 14.92, 0.79), (55311, 116.89, 5.91),
)
#: A traced program of at least this many equations compiles in pieces (`CheckedProgram`,
#: `mlverify.numeric.pieces`). Below, one program costs about what pieces cost (6 levels of
#: the benchmark's family, 17,050 equations: 15.2 s and 0.69 GB as one, 15.2 s and 0.62 GB
#: in 2 pieces) and runs a step sooner (on an earlier machine, in 4 pieces: 2.6 against
#: 3.4 ms); above, pieces cost far less (7 levels, 71,654 equations: 99 s and 3.45 GB as
#: one, 62 s and 1.34 GB in 4 pieces; the second family's 6 levels, 55,311: 117 s and
#: 5.9 GB, 67 s and 1.80 GB; `SPLIT_CALIBRATION`'s run).
SPLIT_FROM = 20_000
#: The size of a piece, in equations after `pieces.deduplicate`. Larger pieces hand fewer
#: values on (each one crossing is one slice more in every step) and run a step sooner, at
#: more memory per compile: 7 levels of the benchmark's family, each size in its own
#: process, one run: a second call of 0.60 s in 9 pieces of 5,000 (peak 0.95 GB), 0.47 s
#: in 5 of 10,000 (1.16 GB), 0.54 s in 3 of 20,000 (1.68 GB), the first call 65, 65 and
#: 81 s (before `pieces.deduplicate` read stop_gradient through: 4 pieces now).
PIECE_EQUATIONS = 10_000
#: As `PROGRAM_CALIBRATION`, for the same programs compiled in pieces (traced, deduplicated,
#: cut into pieces of `PIECE_EQUATIONS`, compiled side by side on 2 threads, one step run),
#: the same run; the second family's 7 levels (293,700 equations, 22 pieces) need far more
#: than this machine's memory as one program.
SPLIT_CALIBRATION = (
    (1599, 1.81, 0.36), (4784, 4.49, 0.41), (17050, 15.22, 0.62), (71654, 62.35, 1.34),
    (2925, 4.21, 0.43), (11670, 12.31, 0.66), (55311, 66.90, 1.80), (293700, 355.45, 3.77),
)
#: The programs `predict_exact` knows.
PROGRAMS = ("stacked", "nested")
#: The environment variable that sets the memory (GB) a deep exact program may plan for.
MEMORY_VARIABLE = "MLVERIFY_MEMORY_LIMIT"
#: ITD's programs (`mlverify.numeric.itd`) need more memory per equation than the stacked
#: programs `PROGRAM_CALIBRATION` and `SPLIT_CALIBRATION` measure: a file of blocks
#: (2, 3, 1, 4, 2, 3, 2), one unrolled step, peaked at 1.37x the prediction at 6 levels (15,313
#: equations, as one) and 1.53x at 7 (47,081, 3 pieces); planned with this factor.
ITD_MEMORY_FACTOR = 1.6
#: Plan for at most this share of the memory available.
MEMORY_SHARE = 0.8
#: A depth known only by a lower bound (its measured run ran out of memory there) is refused
#: unless the limit is at least this many times the bound: what it needs beyond the bound is
#: unknown (the nested rules' program grew 5.4x and 7.3x per level up to 5 levels).
UNKNOWN_MARGIN = 2.0


@dataclass(frozen=True)
class CostEstimate:
    """A predicted first call: ``seconds`` and peak ``memory_gb`` on the calibration machine,
    ``basis``, what the numbers rest on (measured or extrapolated), and ``lower_bound``:
    whether they are only a lower bound (a measured run ran out of memory)."""

    levels: int
    seconds: float
    memory_gb: float
    basis: str
    lower_bound: bool = False


def predict_exact(n: int, program: str = "stacked") -> CostEstimate:
    """The first call of ``n`` levels on ``program`` (``"stacked"``: the exact
    hypergradient; ``"nested"``: the nested best-response rules), from its calibration
    (measured up to its deepest entry, beyond it extended by the last measured growth per
    level)."""
    if program not in PROGRAMS:
        raise ValueError(f"unknown program {program!r}; the programs are: {', '.join(PROGRAMS)}")
    calibration, bounds = ((CALIBRATION, LOWER_BOUNDS) if program == "stacked"
                           else (NESTED_CALIBRATION, NESTED_LOWER_BOUNDS))
    if n in calibration:
        seconds, memory = calibration[n]
        return CostEstimate(n, seconds, memory, "measured (blocks of 4)")
    if n in bounds:
        seconds, memory = bounds[n]
        return CostEstimate(n, seconds, memory, "at least: the measured run (blocks of 4) ran "
                            f"out of memory at {memory:g} GB", lower_bound=True)
    points = {**calibration, **bounds}
    known = sorted(points)
    if n < known[0]:
        seconds, memory = points[known[0]]
        return CostEstimate(n, seconds, memory, f"at most the measured n = {known[0]}")
    last, before = known[-1], known[-2]
    time_growth = points[last][0] / points[before][0]
    memory_growth = points[last][1] / points[before][1]
    steps = n - last
    return CostEstimate(
        n, points[last][0] * time_growth**steps, points[last][1] * memory_growth**steps,
        f"extrapolated from n = {last} by x{time_growth:.1f} time and x{memory_growth:.1f} "
        "memory per level (blocks of 4)" + (", from a lower bound" if last in bounds else ""),
        lower_bound=last in bounds)


def memory_limit() -> float:
    """The memory (GB) a program of this process may plan for: ``MLVERIFY_MEMORY_LIMIT`` if
    set, else `MEMORY_SHARE` of the smallest of the memory the system has available, the
    process's control-group limit and its address-space limit (``ulimit -v``, where XLA's
    allocations fail first)."""
    value = os.environ.get(MEMORY_VARIABLE, "").strip()
    if value:
        try:
            return float(value)
        except ValueError as err:
            raise ValueError(
                f"{MEMORY_VARIABLE}={value!r} is not a number of gigabytes") from err
    limits = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) / 2**20)
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            limits.append(int(text) / 2**30)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft not in (resource.RLIM_INFINITY, -1):
        limits.append(soft / 2**30)
    return MEMORY_SHARE * min(limits) if limits else float("inf")


def check_affordable(n: int, program: str = "stacked") -> CostEstimate:
    """`predict_exact` for ``n`` levels on ``program``, or CostError where its memory
    exceeds `memory_limit`: the error names the depth and what costs less."""
    estimate = predict_exact(n, program)
    limit = memory_limit()
    needed = estimate.memory_gb * (UNKNOWN_MARGIN if estimate.lower_bound else 1.0)
    if needed > limit:
        _refuse(estimate, needed, limit, program)
    return estimate


def predict_program(equations: int, levels: int, *, split: bool = False) -> CostEstimate:
    """Tracing, lowering and compiling a stacked program of ``equations`` top-level
    equations (its traced jaxpr) from `PROGRAM_CALIBRATION` (``split``: compiled in pieces,
    `SPLIT_CALIBRATION`): its upper envelope interpolated in log-log between the measured
    sizes, beyond the largest extended by the growth from the largest size at most half of
    it."""
    points, seconds, memory = [], 0.0, 0.0
    for size, s, m in sorted(SPLIT_CALIBRATION if split else PROGRAM_CALIBRATION):
        seconds, memory = max(seconds, s), max(memory, m)
        points.append((size, seconds, memory))
    first, last = points[0], points[-1]
    if equations <= first[0]:
        return CostEstimate(levels, first[1], first[2],
                            f"its {equations:,} equations, at most the measured {first[0]:,}")
    if equations > last[0]:
        a = max((p for p in points if p[0] <= last[0] / 2), default=first)
        b, how = last, f"extrapolated from the measured {last[0]:,}"
        if a == b:  # one measurement: in proportion to the equations
            scale = equations / b[0]
            return CostEstimate(levels, b[1] * scale, b[2] * scale,
                                f"its {equations:,} equations, {how} in proportion")
    else:
        at = next(i for i, p in enumerate(points) if p[0] >= equations)
        a, b, how = points[at - 1], points[at], "interpolated between measured programs"
        if b[0] == equations:
            return CostEstimate(levels, b[1], b[2], f"its {equations:,} equations, measured")
    share = math.log(equations / a[0]) / math.log(b[0] / a[0])
    return CostEstimate(levels, a[1] * (b[1] / a[1]) ** share, a[2] * (b[2] / a[2]) ** share,
                        f"its {equations:,} equations, {how}")


def check_program(equations: int, levels: int, program: str = "stacked", *,
                  split: bool = False) -> CostEstimate:
    """`predict_program` for a traced program, or CostError where its memory exceeds
    `memory_limit` (before XLA compiles it)."""
    estimate = predict_program(equations, levels, split=split)
    if program == "itd":
        estimate = replace(
            estimate, memory_gb=estimate.memory_gb * ITD_MEMORY_FACTOR,
            basis=f"{estimate.basis}, times {ITD_MEMORY_FACTOR:g} for ITD's programs")
    limit = memory_limit()
    if estimate.memory_gb > limit:
        _refuse(estimate, estimate.memory_gb, limit, program)
    return estimate


class CheckedProgram:
    """A ``jax.jit`` function whose program is measured before its first compile: the first
    call traces it (``jitted.trace``; the call reuses that trace), counts its equations and
    raises CostError (`check_program`) where compiling it would need more memory than this
    process may use. The depth alone (`check_affordable`) is calibrated on one family; what
    a program costs depends on its objectives too (another family of 6 levels traced to 3.2
    times the equations of the benchmark's and needed 5.9 GB where the benchmark's needs
    0.69).

    A program of at least `SPLIT_FROM` equations is compiled in pieces
    (`mlverify.numeric.pieces`): its repeated equations computed once, then cut into pieces
    of about `PIECE_EQUATIONS`, compiled side by side on the processors this process may
    use, and run one after the other; the same values to round-off, in a fraction of the
    memory and time (7 levels of the benchmark's family, tracing included: 62 s and 1.34 GB
    instead of 99 s and 3.45 GB). Its arguments must then have the shapes and types of the
    first call's."""

    def __init__(self, jitted, levels: int, program: str = "stacked", compiler_options=None):
        self.jitted, self.levels, self.program = jitted, int(levels), program
        self.compiler_options = compiler_options
        #: After the first call: the traced program's top-level equations, and what
        #: `check_program` predicted from them.
        self.equations: int | None = None
        self.estimate: CostEstimate | None = None
        #: Where the program was compiled in pieces: how many (else None).
        self.pieces: int | None = None
        self._split = None

    def __call__(self, *args):
        if self.estimate is None:
            traced = self.jitted.trace(*args)
            self.equations = len(traced.jaxpr.eqns)
            split = self.equations >= SPLIT_FROM and pieces.splittable(traced.jaxpr)
            self.estimate = check_program(self.equations, self.levels, self.program,
                                          split=split)
            if split:
                self._compile_in_pieces(traced, args)
        if self._split is not None:
            run, tree, out = self._split
            leaves, structure = jax.tree.flatten(args)
            if structure != tree:
                raise TypeError(f"a program compiled in pieces takes {tree}, got {structure}")
            return jax.tree.unflatten(out, run(*leaves))
        return self.jitted(*args)

    def _compile_in_pieces(self, traced, args):
        closed = pieces.deduplicate(traced.jaxpr)
        count = max(2, math.ceil(len(closed.jaxpr.eqns) / PIECE_EQUATIONS))
        run, compilers = pieces.split(closed, count, self.compiler_options)
        pieces.compile_all(compilers)
        self.pieces = count
        self._split = (run, jax.tree.structure(args), jax.tree.structure(traced.out_info))


def _refuse(estimate: CostEstimate, needed: float, limit: float, program: str):
    n = estimate.levels
    if program == "stacked":
        what = "the lower solve and exact hypergradient"
        cheaper = ("Every method solves the lower levels on this one program. Cheaper: "
                   "the problem declared in sympy (a MultilevelProblem: its "
                   "formulas run as compiled NumPy code, no JAX program), or fewer levels")
    elif program == "itd":
        what = "ITD's hypergradient (unrolled inner steps at every level, differentiated through)"
        cheaper = ("Cheaper: method='exact' (the stacked program, which grows far slower), "
                   "fewer unrolled steps, or fewer levels")
    else:
        what = "a hypergradient on the nested best-response rules (the approximate methods, "\
               "linear-solver options, blocks over the dense limit)"
        cheaper = ("Cheaper: method='exact' with the default options where every lower "
                   "block is dense (one stacked program, which grows far slower), the "
                   "problem declared in sympy, or fewer levels")
    raise CostError(
        f"{what} of {n} levels is predicted to need "
        + (f"more than {estimate.memory_gb:.1f} GB (planned as {needed:.1f} GB, what it "
           "needs beyond the bound unknown)" if estimate.lower_bound
           else f"about {estimate.memory_gb:.1f} GB")
        + f" to compile ({estimate.basis}), more than the {limit:.1f} GB this process may use "
        f"({MEMORY_VARIABLE} sets it). {cheaper}",
        levels=n, predicted_gb=estimate.memory_gb, limit_gb=limit)
