r"""What a deep exact hypergradient will cost, before it is built.

The exact hypergradient of $n$ levels differentiates $f_n$ to order $n$ (Lemma 3.2 and its
induction), and the JAX core traces the best-response rule of every level below once more
at every order: for general objectives the program, its compile time and the memory XLA
needs to compile it grow geometrically with $n$. The lower solve no longer multiplies (the
joint solve of `mlverify.numeric.solvers`); the derivative program does.

`predict_exact` reads the growth off a measured calibration (`CALIBRATION`: the first call
of ``hypergradient(x1, "exact")`` on the benchmark's non-quadratic family, blocks of 4,
``benchmarks/results/deep_jax.md``; `LOWER_BOUNDS`: depths whose run ran out of memory)
and extends it past the last measured depth by the last measured growth per level. It is
calibrated on blocks of 4: other block sizes and objectives cost more or less.
`check_affordable` compares the prediction with the memory this process may use
(`memory_limit`) and raises `CostError` naming the depth and the cheaper methods, instead
of letting XLA exhaust the machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import CostError

__all__ = ["CALIBRATION", "LOWER_BOUNDS", "CostError", "CostEstimate", "check_affordable",
           "memory_limit", "predict_exact"]

#: First call of the exact hypergradient (trace, compile, solve, evaluate) against the number
#: of levels n: (seconds, peak resident memory in GB), blocks of 4, the benchmark's
#: non-quadratic family, 2-core AMD EPYC (benchmarks/results/deep_jax.md, 2026-12-06, the
#: solve and the hypergradient fused with the level constants formed once, XLA level 0).
CALIBRATION = {3: (1.4, 0.51), 4: (5.1, 0.74), 5: (41.8, 1.94)}
#: Depths whose measured first call did not finish: (seconds, GB) when it ran out of memory,
#: lower bounds of its cost (6 levels: bad_alloc at 12.9 GB after 488 s, same machine and
#: family, while compiling the joint solve's program, the first of the call).
LOWER_BOUNDS = {6: (488.0, 12.9)}
#: The environment variable that sets the memory (GB) a deep exact program may plan for.
MEMORY_VARIABLE = "MLVERIFY_MEMORY_LIMIT"
#: Plan for at most this share of the memory available.
MEMORY_SHARE = 0.8


@dataclass(frozen=True)
class CostEstimate:
    """A predicted first call: ``seconds`` and peak ``memory_gb`` on the calibration machine,
    and ``basis``, what the numbers rest on (measured or extrapolated)."""

    levels: int
    seconds: float
    memory_gb: float
    basis: str


def predict_exact(n: int) -> CostEstimate:
    """The first exact hypergradient call of ``n`` levels, from `CALIBRATION` (measured up
    to its deepest entry, beyond it extended by the last measured growth per level)."""
    if n in CALIBRATION:
        seconds, memory = CALIBRATION[n]
        return CostEstimate(n, seconds, memory, "measured (blocks of 4)")
    if n in LOWER_BOUNDS:
        seconds, memory = LOWER_BOUNDS[n]
        return CostEstimate(n, seconds, memory, "at least: the measured run (blocks of 4) ran "
                            f"out of memory at {memory:g} GB")
    points = {**CALIBRATION, **LOWER_BOUNDS}
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
        "memory per level (blocks of 4)")


def memory_limit() -> float:
    """The memory (GB) a program of this process may plan for: ``MLVERIFY_MEMORY_LIMIT`` if
    set, else `MEMORY_SHARE` of the smaller of the memory the system has available and the
    process's control-group limit."""
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
    return MEMORY_SHARE * min(limits) if limits else float("inf")


def check_affordable(n: int) -> CostEstimate:
    """`predict_exact` for ``n`` levels, or CostError where its memory exceeds
    `memory_limit`: the error names the depth and the methods that cost less."""
    estimate = predict_exact(n)
    limit = memory_limit()
    if estimate.memory_gb > limit:
        raise CostError(
            f"the exact hypergradient of {n} levels is predicted to need about "
            f"{estimate.memory_gb:.1f} GB to compile ({estimate.basis}), more than the "
            f"{limit:.1f} GB this process may use ({MEMORY_VARIABLE} sets it). Every "
            "hypergradient method with solved lower levels needs this lower-solve program. "
            "Cheaper: the single-loop 'hierarchical' outer method (no lower-solve program; "
            "the exact formula at the iterates, about a third of this program at 5 levels, "
            "bounded by Theorem 4.2), the problem declared in sympy (a MultilevelProblem: its "
            "formulas run as compiled NumPy code, no JAX program), or fewer levels",
            levels=n, predicted_gb=estimate.memory_gb, limit_gb=limit)
    return estimate
