"""The JAX path at depth: the exact hypergradient of n levels, blocks of 4, first and second
call, the lower solve's steps and peak memory, against a git revision in the same run.

The family is the non-quadratic one of ``mlverify.zoo.nonquadratic`` written as JAX
callables (blocks of 4; tanh couplings, quartic and sine terms; seed 0): no sympy cost
in the timings. Each (code, n) runs in its own process (a first call is a first call)
under a time limit (run the script itself under a memory cap); the rows are

- ``first``: ``hypergradient(x1, "exact")`` in a fresh process (tracing, compilation, the
  lower solve from the declared start, the hypergradient), ``x1 = 0.1``;
- ``second``: the same at ``x1 = 0.3``, again from the declared start (median of 3);
- ``warm``: at ``x1 = 0.3``, started from the previous solution (``solve_options={"init":
  ...}``, what an outer run does; median of 3);
- ``steps``: the lower solve's steps for the second call (joint steps, or the nested
  solve's Newton steps over all levels and nested solves);
- ``FD``: the largest difference from a fourth-order central difference of F_1
  (``method="fd"``: step 1e-5, lower levels solved to 1e-13): the exact value, checked
  independently.

    python benchmarks/bench_deep_jax.py --before 46dc040 --max-n 5
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _machine import describe, markdown, run_worker  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def family(n: int, d: int = 4, seed: int = 0, strength: float = 0.3):
    """The benchmark family as a NumericProblem (see the module docstring)."""
    import jax.numpy as jnp
    import numpy as np

    from mlverify.numeric import NumericProblem

    rng = np.random.default_rng(seed)
    targets = [jnp.asarray(rng.integers(-3, 4, size=d) / 4.0) for _ in range(n)]
    weights = {(k, m): jnp.asarray(rng.integers(-2, 3, size=(d, d)) / 2.0)
               for k in range(n) for m in range(n) if m != k}

    def objective(k):
        def f(xs):
            x = xs[k]
            value = 0.5 * jnp.sum((x - targets[k]) ** 2) + jnp.sum(x**4) / 8
            for m in range(n):
                if m != k:
                    value = value + strength * jnp.tanh(xs[m]) @ weights[(k, m)] @ x
                if m > k:
                    value = value + strength / 2 * jnp.sum(jnp.sin(xs[m])) * jnp.sum(x) / d
            return value

        return f

    return NumericProblem([objective(k) for k in range(n)], [jnp.zeros(d) for _ in range(n)])


def worker(n: int, method: str = "exact") -> dict:
    """One process's measurements of ``hypergradient(x1, method)`` (printed as JSON by
    ``--worker``)."""
    import statistics

    import jax
    import jax.numpy as jnp
    import numpy as np

    problem = family(n)
    x1, x2 = jnp.full(4, 0.1), jnp.full(4, 0.3)
    start = time.perf_counter()
    jax.block_until_ready(problem.hypergradient(x1, method))
    first = time.perf_counter() - start
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        value = jax.block_until_ready(problem.hypergradient(x2, method))
        seconds.append(time.perf_counter() - start)
    previous = problem.solve_lower(x1)
    warm = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(problem.hypergradient(
            x2, method, solve_options={"init": list(previous.xs)}))
        warm.append(time.perf_counter() - start)
    steps = problem.solve_lower(x2).iterations
    fd = np.asarray(problem.hypergradient(x2, "fd"))
    return {"n": n, "method": method, "first": first, "second": statistics.median(seconds),
            "warm": statistics.median(warm), "steps": int(steps),
            "fd_error": float(np.max(np.abs(np.asarray(value) - fd))),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def program_worker(n: int, kind: str) -> dict:
    """One exact-hypergradient program alone, at the declared start: ``stacked`` (the
    shipped exact path, `mlverify.numeric.stacked.evaluation`: the hypergradient, the lower
    conditions, their Jacobian and Hessians) or ``nested`` (the nested best-response rules'
    frozen exact hypergradient, `ImplicitCore.hypergradient_frozen`); trace (lowering),
    XLA compile, program size (characters of StableHLO) and one run (median of 5), each as
    the package compiles it (XLA level 0, fusion emitters off, from 3 levels). Printed as JSON by
    ``--program-worker``."""
    import statistics

    import jax
    import jax.numpy as jnp

    from mlverify.numeric import stacked
    from mlverify.numeric.implicit import LinearSolve
    from mlverify.numeric.problem import compiler_options

    problem = family(n)
    blocks = tuple(problem._start(jnp.full(4, 0.1), None))
    if kind == "stacked":
        # the shipped program: one evaluation and the joint solve's update (what every
        # exact call, its solve and its checks run), its state, tolerance and step limit
        # arguments as the package passes them (not constants XLA could fold)
        program = stacked.Newton(problem.core.fs, problem.sizes, 1).iterate
        args = (stacked.compiled_start(tuple(problem.sizes), 1)(jnp.concatenate(blocks)),
                jnp.float64(1e-12), jnp.int32(100))
    else:
        def program(b):
            return problem.core.hypergradient_frozen(b, LinearSolve("auto"))
        args = (blocks,)
    fn = jax.jit(program, compiler_options=compiler_options(n))
    begin = time.perf_counter()
    lowered = fn.lower(*args)
    traced = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - start)
    return {"n": n, "kind": kind, "trace": traced - begin, "compile": done - traced,
            "hlo_chars": len(lowered.as_text()), "run_ms": statistics.median(runs) * 1e3,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _measure(package_root: pathlib.Path, n: int, limit: float, variant=None,
             method: str = "exact") -> dict:
    arguments = (("--worker", n, "--method", method) if variant is None
                 else ("--program-worker", n, variant))
    row = run_worker(__file__, *arguments, limit=limit,
                     env=dict(os.environ, PYTHONPATH=str(package_root)))
    if row.get("timed_out"):
        return {"n": n, "method": method, "timed_out": True}
    if "failed" in row:  # the exception's name, from the last line of its traceback
        return {"n": n, "method": method, "failed": row["failed"].split(":")[0]}
    return row


def _cell(row: dict, key: str, fmt: str) -> str:
    if row.get("timed_out"):
        return "> limit"
    if "failed" in row:
        return ("refused (CostError)" if row["failed"].endswith("CostError")
                else f"failed ({row['failed'].split('.')[-1]})")
    return format(row[key], fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="46dc040", help="git revision of the 'before' code")
    parser.add_argument("--min-n", type=int, default=3)
    parser.add_argument("--max-n", type=int, default=5)
    parser.add_argument("--limit", type=float, default=600, help="seconds per process at most")
    parser.add_argument("--skip-before-from", type=int, default=None,
                        help="no 'before' runs from this n on (they can take many minutes)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--method", default="exact", help=argparse.SUPPRESS)
    parser.add_argument("--methods", default="exact",
                        help="comma-separated hypergradient methods to time (exact first)")
    parser.add_argument("--nested-max-n", type=int, default=5,
                        help="program sizes of the nested rules up to this n")
    parser.add_argument("--program-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None or args.program_worker is not None:
        import jax

        jax.config.update("jax_enable_x64", True)
        if args.worker is not None:
            print(json.dumps(worker(args.worker, args.method)))
        else:
            print(json.dumps(program_worker(int(args.program_worker[0]),
                                            args.program_worker[1])))
        return
    info = describe()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = pathlib.Path(tmp)
        archive = subprocess.run(["git", "archive", args.before, "mlverify"], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        for n in range(args.min_n, args.max_n + 1):
            for method in args.methods.split(","):
                for label, root in (("before", old), ("now", ROOT)):
                    if (label == "before" and args.skip_before_from
                            and n >= args.skip_before_from):
                        continue
                    row = _measure(root, n, args.limit, method=method)
                    row["code"] = label
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        programs = []
        for n in range(args.min_n, args.max_n + 1):
            for kind in ("stacked", "nested"):
                if kind == "nested" and n > args.nested_max_n:
                    continue
                programs.append(_measure(ROOT, n, args.limit, variant=kind))
                programs[-1].setdefault("kind", kind)
                print(json.dumps(programs[-1]), flush=True)
    command = (f"python benchmarks/bench_deep_jax.py --before {args.before} --min-n "
               f"{args.min_n} --max-n {args.max_n} --limit {args.limit:g}"
               + (f" --skip-before-from {args.skip_before_from}" if args.skip_before_from
                  else "") + f" --nested-max-n {args.nested_max_n}"
               + (f" --methods {args.methods}" if args.methods != "exact" else ""))
    lines = [
        "# The exact hypergradient at depth (JAX path)",
        "",
        "Blocks of 4, the non-quadratic family (tanh couplings, quartic and sine terms). "
        "Each row is its own process; 'before' is the code at the revision, 'now' the "
        "working tree. First call: trace, compile, solve from the declared start, "
        "hypergradient. Second: another x_1, from the declared start. Warm: from the previous "
        "solution. FD: largest difference from a fourth-order central difference (for an "
        "approximate method, its approximation error).",
        "",
        markdown(info, command),
        "",
        "| n | method | code | first call (s) | second call (ms) | warm (ms) | "
        "lower-solve steps | FD difference | peak memory (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['n']} | {row['method']} | {row['code']} | {_cell(row, 'first', '.1f')} | "
            + (f"{row['second'] * 1e3:.1f}" if "second" in row else _cell(row, "x", ""))
            + " | "
            + (f"{row['warm'] * 1e3:.1f}" if "warm" in row else _cell(row, "x", ""))
            + f" | {_cell(row, 'steps', 'd')} | {_cell(row, 'fd_error', '.1e')} | "
            f"{_cell(row, 'peak_mb', '.0f')} |")
    lines += [
        "",
        "## The exact program alone: stacked conditions against nested best responses",
        "",
        "Each program compiled as one in its own process at the declared start, x_1 = 0.1, "
        "with the package's compiler options (from 20,000 equations the package compiles it "
        "in pieces instead: `program_cost.md`): `stacked` is the shipped exact path "
        "(`numeric.stacked.evaluation`: hypergradient, lower conditions, their Jacobian and "
        "Hessians; the solve and the checks call it again and again), `nested` the nested "
        "best-response rules' exact hypergradient (`ImplicitCore.hypergradient_frozen`: the "
        "hypergradient alone; the exact path before). Program: characters of its StableHLO "
        "text. Growth: this n against the one before.",
        "",
        "| n | program | trace (s) | XLA compile (s) | program (characters) | growth | "
        "one run (ms) | peak memory (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    sizes = {}
    for row in programs:
        if "hlo_chars" not in row:
            lines.append(f"| {row['n']} | {row['kind']} | {_cell(row, 'x', '')} | | | | | |")
            continue
        before = sizes.get((row["kind"], row["n"] - 1))
        growth = f"x{row['hlo_chars'] / before:.1f}" if before else ""
        sizes[(row["kind"], row["n"])] = row["hlo_chars"]
        lines.append(f"| {row['n']} | {row['kind']} | {row['trace']:.2f} | "
                     f"{row['compile']:.2f} | {row['hlo_chars']:,} | {growth} | "
                     f"{row['run_ms']:.2f} | {row['peak_mb']:.0f} |")
    out = ROOT / "benchmarks" / "results" / "deep_jax.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
