"""What the joint solve's program costs against its size: the calibration of
`mlverify.numeric.cost.PROGRAM_CALIBRATION`.

For two families and each depth, in a fresh process: the joint solve's step
(`stacked.Newton.iterate`, jit with the package's compiler options) traced, its top-level
jaxpr equations counted, then lowered and compiled; seconds for trace, lowering and compile
together, and the process's peak resident memory. Then the same program compiled in pieces,
as `cost.CheckedProgram` compiles one of at least `cost.SPLIT_FROM` equations (here at
every depth from 4, to calibrate `cost.SPLIT_CALIBRATION`): traced, its repeats computed
once (`pieces.deduplicate`), cut into pieces of `cost.PIECE_EQUATIONS`, compiled side by
side, run once. The families:

- ``bench``: the non-quadratic family of ``bench_deep_jax.py`` (blocks of 4; tanh couplings,
  quartic and sine terms);
- ``other``: softplus, log(1 + e^t) of a bilinear form, cosh and Gaussian couplings with
  block sizes cycling through (3, 3, 4, 5, 1, 1): at the same depth its programs are several
  times larger.

    python benchmarks/bench_program_cost.py --max-n 7 --other-max-n 7
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _machine import describe, markdown, run_worker  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
OTHER_SIZES = (3, 3, 4, 5, 1, 1)


def other_family(n: int, seed: int = 1):
    """Softplus, log(1 + e^t) of a bilinear form, cosh and Gaussian couplings, each level
    inside the nonlinearity with every other; blocks cycling through `OTHER_SIZES`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mlverify.numeric import NumericProblem

    sizes = [OTHER_SIZES[k % len(OTHER_SIZES)] for k in range(n)]
    rng = np.random.default_rng(seed)
    targets = [jnp.asarray(rng.normal(size=d) / 2) for d in sizes]
    weights = {(k, m): jnp.asarray(rng.normal(size=(sizes[m], sizes[k])) / 3)
               for k in range(n) for m in range(n) if m != k}

    def objective(k):
        def f(xs):
            x = xs[k]
            value = 0.5 * jnp.sum((x - targets[k]) ** 2) + 0.1 * jnp.sum(jnp.cosh(x / 2))
            for m in range(n):
                if m == k:
                    continue
                near = xs[m] @ weights[(k, m)]
                value = value + 0.2 * jnp.sum(jax.nn.softplus(near) * x)
                value = value + 0.05 * jnp.log1p(jnp.exp(near @ x))
                if m > k:
                    value = value + 0.1 * jnp.exp(-jnp.sum((near - x) ** 2) / 4)
            return value

        return f

    return NumericProblem([objective(k) for k in range(n)], [jnp.zeros(d) for d in sizes])


def worker(n: int, family: str, mode: str) -> dict:
    import jax
    import jax.numpy as jnp
    from bench_deep_jax import family as bench_family

    from mlverify.numeric import cost, stacked
    from mlverify.numeric.problem import compiler_options

    problem = bench_family(n) if family == "bench" else other_family(n)
    blocks = problem._start(jnp.full(problem.sizes[0], 0.1), None)
    flat = jnp.concatenate([jnp.ravel(b) for b in blocks])
    state = stacked.compiled_start(tuple(problem.sizes), 1)(flat)
    fn = jax.jit(stacked.Newton(problem.core.fs, problem.sizes, 1).iterate,
                 compiler_options=compiler_options(n))
    begin, pieces = time.perf_counter(), None
    if mode == "one":
        traced = fn.trace(state, 1e-12, 100)
        equations = len(traced.jaxpr.eqns)
        traced.lower().compile()
    else:  # as CheckedProgram compiles past SPLIT_FROM, and one step run
        cost.SPLIT_FROM = 0
        program = cost.CheckedProgram(fn, n, compiler_options=compiler_options(n))
        jax.block_until_ready(program(state, 1e-12, 100))
        equations, pieces = program.equations, program.pieces
    seconds = time.perf_counter() - begin
    return {"n": n, "family": family, "mode": mode, "sizes": list(problem.sizes),
            "equations": equations, "pieces": pieces, "seconds": seconds,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-n", type=int, default=3)
    parser.add_argument("--max-n", type=int, default=7)
    parser.add_argument("--other-max-n", type=int, default=6)
    parser.add_argument("--other-one-max-n", type=int, default=6,
                        help="the other family's deepest program compiled as one (deeper: in "
                        "pieces only; 7 levels as one would need far more than 8 GB)")
    parser.add_argument("--pieces-min-n", type=int, default=4)
    parser.add_argument("--limit", type=float, default=600, help="seconds per process")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import jax

        jax.config.update("jax_enable_x64", True)
        print(json.dumps(worker(int(args.worker[0]), args.worker[1], args.worker[2])))
        return
    info, rows = describe(), []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for family, top in (("bench", args.max_n), ("other", args.other_max_n)):
        for n in range(args.min_n, top + 1):
            for mode in ("one", "pieces"):
                if (mode == "one" and family == "other" and n > args.other_one_max_n
                        or mode == "pieces" and n < args.pieces_min_n):
                    continue
                row = run_worker(__file__, "--worker", n, family, mode, limit=args.limit,
                                 env=env)
                if "failed" in row:  # no row: the table's growth compares measured depths
                    print(f"{family}, {n} levels, {mode}: {row['failed']}", file=sys.stderr)
                    continue
                rows.append(row)
                print(json.dumps(rows[-1]), flush=True)
    command = (f"python benchmarks/bench_program_cost.py --min-n {args.min_n} "
               f"--max-n {args.max_n} --other-max-n {args.other_max_n} "
               f"--other-one-max-n {args.other_one_max_n} --pieces-min-n {args.pieces_min_n}")
    lines = ["# The joint solve's program: cost against size",
             "",
             "Each row a fresh process: `stacked.Newton.iterate` traced (its top-level jaxpr "
             "equations counted), lowered and compiled with the package's compiler options; "
             "seconds for the three together, peak resident memory of the process. "
             "'one': compiled as one program (`mlverify.numeric.cost.PROGRAM_CALIBRATION` "
             "holds these rows); 'pieces': its repeats computed once and compiled in pieces "
             "side by side, one step run (`cost.SPLIT_CALIBRATION`).",
             "", markdown(info, command), "",
             "| family | n | block sizes | equations | growth | compiled | "
             "trace + compile (s) | peak memory (GB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    previous = {}
    for row in rows:
        blocks = row["sizes"]  # one size for every block: that size alone
        sizes = ", ".join(map(str, blocks if len(set(blocks)) > 1 else blocks[:1]))
        before = previous.get(row["family"])
        growth = (f"x{row['equations'] / before[1]:.1f}"
                  if before and before[0] == row["n"] - 1 else "")
        previous[row["family"]] = (row["n"], row["equations"])
        how = "one" if row["pieces"] is None else f"{row['pieces']} pieces"
        lines.append(f"| {row['family']} | {row['n']} | {sizes} | {row['equations']:,} | "
                     f"{growth} | {how} | {row['seconds']:.2f} | {row['peak_gb']:.2f} |")
    out = ROOT / "benchmarks" / "results" / "program_cost.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
