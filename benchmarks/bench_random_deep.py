"""Deep families the package was not tuned on: seeded random block sizes and couplings.

Each family has ``n`` levels with block sizes drawn from 1..4 and every level coupled to
every other through a nonlinearity drawn from tanh, sin, cos, softplus, exp(-t^2) and
log(1 + t^2) (weights scaled by 0.3/sqrt(n)), plus a quadratic and a quartic term of its
own block. In a fresh process per (n, seed), under a time limit (run the script itself
under a memory cap):

- ``first``: ``hypergradient(x1, "exact")`` at ``x1 = 0.1`` (tracing, compilation, the
  joint lower solve from the declared start, its checks, the hypergradient);
- ``second``: at ``x1 = -0.2`` (median of 3);
- ``equations``: the traced joint-solve program (`cost.CheckedProgram`), and the memory
  `cost.predict_program` predicted for it before it compiled, against the process's
  measured peak;
- ``FD``: the largest difference from the fourth-order central difference of F_1
  (``method="fd"``): the exact value, checked independently.

    python benchmarks/bench_random_deep.py --levels 5 6 7 --seeds 0 1
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
NONLINEARITIES = ("tanh", "sin", "cos", "softplus", "gauss", "log1p_square")


def random_family(n: int, seed: int):
    """The seeded family as a NumericProblem (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mlverify.numeric import NumericProblem

    functions = {"tanh": jnp.tanh, "sin": jnp.sin, "cos": jnp.cos,
                 "softplus": jax.nn.softplus, "gauss": lambda t: jnp.exp(-t**2),
                 "log1p_square": lambda t: jnp.log1p(t**2)}
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(1, 5, size=n)]
    targets = [jnp.asarray(rng.normal(size=d) / 2) for d in sizes]
    couplings = {
        (k, m): (NONLINEARITIES[rng.integers(len(NONLINEARITIES))],
                 jnp.asarray(rng.normal(size=(sizes[m], sizes[k])) * 0.3 / np.sqrt(n)))
        for k in range(n) for m in range(n) if m != k}

    def objective(k):
        def f(xs):
            x = xs[k]
            value = 0.5 * jnp.sum((x - targets[k]) ** 2) + 0.05 * jnp.sum(x**4)
            for m in range(n):
                if m != k:
                    name, weight = couplings[(k, m)]
                    value = value + jnp.sum(functions[name](xs[m]) @ weight * x)
            return value
        return f

    return NumericProblem([objective(k) for k in range(n)], [jnp.zeros(d) for d in sizes])


def worker(n: int, seed: int) -> dict:
    import statistics

    import jax
    import jax.numpy as jnp
    import numpy as np

    from mlverify.numeric import cost

    problem = random_family(n, seed)
    d = problem.sizes[0]
    x1, x2 = jnp.full(d, 0.1), jnp.full(d, -0.2)
    start = time.perf_counter()
    jax.block_until_ready(problem.hypergradient(x1))
    first = time.perf_counter() - start
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        value = jax.block_until_ready(problem.hypergradient(x2))
        seconds.append(time.perf_counter() - start)
    checked = [p for p in problem._jit_cache.values() if isinstance(p, cost.CheckedProgram)]
    estimate = checked[0].estimate if checked else None
    equations = checked[0].equations if checked else None
    fd = np.asarray(problem.hypergradient(x2, "fd"))
    return {"n": n, "seed": seed, "sizes": list(problem.sizes), "first": first,
            "second": statistics.median(seconds), "equations": equations,
            "predicted_gb": estimate.memory_gb if estimate else None,
            "fd_error": float(np.max(np.abs(np.asarray(value) - fd))),
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[5, 6, 7])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--limit", type=float, default=600, help="seconds per process")
    parser.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    info, rows = describe(), []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for n in args.levels:
        for seed in args.seeds:
            row = run_worker(__file__, "--worker", n, seed, limit=args.limit, env=env)
            rows.append({"n": n, "seed": seed, **row})
            print(json.dumps(rows[-1]), flush=True)
    command = ("python benchmarks/bench_random_deep.py --levels "
               + " ".join(map(str, args.levels)) + " --seeds " + " ".join(map(str, args.seeds)))
    lines = ["# Deep random families: the exact hypergradient on problems it was not tuned on",
             "", __doc__.split("\n\n")[1].replace("\n", " "), "", markdown(info, command), "",
             "| n | seed | block sizes | first call (s) | second call (ms) | equations | "
             "predicted / measured peak (GB) | FD difference |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        if "failed" in row:
            lines.append(f"| {row['n']} | {row['seed']} | | failed: {row['failed']} | | | | |")
            continue
        predicted = f"{row['predicted_gb']:.2f}" if row["predicted_gb"] is not None else "-"
        equations = f"{row['equations']:,}" if row["equations"] is not None else "-"
        lines.append(f"| {row['n']} | {row['seed']} | {', '.join(map(str, row['sizes']))} | "
                     f"{row['first']:.1f} | {row['second'] * 1e3:.0f} | {equations} | "
                     f"{predicted} / {row['peak_gb']:.2f} | {row['fd_error']:.1e} |")
    out = ROOT / "benchmarks" / "results" / "random_deep.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
