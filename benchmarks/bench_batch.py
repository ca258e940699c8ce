"""Throughput of the batched Theorem 4.1 check: one vmapped call against a Python loop.

    python benchmarks/bench_batch.py [--instances 32] [--T 50]

Every row uses the single-instance check as `verify.theorem_4_1_batch` builds it (the
package's compiler options; each round's lower solve warm-started from the last), except
where a row says what it changes: XLA's default compiler options, or every lower solve
from zero. Two families: the zoo's quadratic trilevel (blocks (2, 1, 1); Newton solves a
quadratic level in one step from anywhere, so the warm start cannot help there) and a
non-quadratic trilevel (cosh and sine couplings, blocks (2, 2, 1); one parameter per
instance, the coupling strength). Compile is timed apart from the runs, and the runs are
medians of 3, all in one process. Writes benchmarks/results/batch.md.
"""

import argparse
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mlverify import verify
from mlverify.numeric.problem import compiler_options


def timed(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def quadratic(instances):
    sizes = (2, 1, 1)
    objectives_of, params, _ = verify.quadratic_family_batch(3, sizes, seeds=range(instances))
    return "quadratic trilevel", sizes, objectives_of, params


def nonquadratic(instances):
    sizes, n = (2, 2, 1), 3
    rng = np.random.default_rng(5)
    weights = {(k, m): jnp.asarray(rng.normal(size=(sizes[m], sizes[k])) / 2)
               for k in range(n) for m in range(n) if m != k}

    def objectives_of(strength):
        def objective(k):
            def f(xs):
                x = xs[k]
                value = jnp.sum((x - 0.4 * (k + 1)) ** 2) + jnp.sum(jnp.cosh(x)) / 4
                for m in range(n):
                    if m != k:
                        value = value + strength * jnp.sin(xs[m]) @ weights[(k, m)] @ x
                return value
            return f
        return [objective(k) for k in range(n)]

    return ("non-quadratic trilevel (cosh, sine couplings)", sizes, objectives_of,
            jnp.asarray(np.linspace(0.05, 0.6, instances)))


def rows_for(family, instances, T):
    name, sizes, objectives_of, params = family(instances)
    options = compiler_options(len(sizes))

    def compiled(warm_start=True, opts=options, vmap=True, example=params):
        check = verify.instance_check(objectives_of, sizes, (-2, 2), T=T, grid_points=3,
                                      warm_start=warm_start)
        start = time.perf_counter()
        program = jax.jit(jax.vmap(check) if vmap else check, compiler_options=opts)
        program = program.lower(example).compile()
        return program, time.perf_counter() - start

    # the first compile in a process also compiles the helpers every variant shares: once,
    # untimed, so that no row pays for the others
    compiled()
    first = jax.tree_util.tree_map(lambda a: a[0], params)
    each = [jax.tree_util.tree_map(lambda a, i=i: a[i], params) for i in range(instances)]
    batched, compile_batched = compiled()
    single, compile_single = compiled(vmap=False, example=first)
    defaults, compile_defaults = compiled(opts=None)
    cold, compile_cold = compiled(warm_start=False)
    runs = {"batched": timed(lambda: batched(params)),
            "loop": timed(lambda: [single(p) for p in each]),
            "defaults": timed(lambda: defaults(params)),
            "cold": timed(lambda: cold(params))}
    out = batched(params)
    passed = int(np.sum(np.asarray(out["ok"]) & np.asarray(out["applicable"])))
    # the variants change the cost, not the results: their worst ratios side by side
    ratio = np.asarray(out["ratio"])
    spread = max(float(np.max(np.abs(np.asarray(other(params)["ratio"]) - ratio) / ratio))
                 for other in (defaults, cold))
    table = [
        ("vmapped, one call", compile_batched, runs["batched"]),
        ("Python loop over the jitted single check", compile_single, runs["loop"]),
        ("vmapped, XLA's default compiler options", compile_defaults, runs["defaults"]),
        ("vmapped, every lower solve from zero", compile_cold, runs["cold"]),
    ]
    lines = [f"## {name}, blocks {sizes}", "",
             f"{instances} instances, T = {T}; {passed}/{instances} pass.", "",
             "| | compile (s) | run (s, median of 3) | instances / s |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {label} | {c:.2f} | {r:.3f} | {instances / r:.1f} |" for label, c, r in table]
    speedup = runs["loop"] / runs["batched"]
    lines += ["", f"Speed-up of the vmapped call over the loop: {speedup:.2f}x; the rows' worst "
              f"ratios left/right agree to {spread:.1e} (relative).", ""]
    return lines


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=32)
    parser.add_argument("--T", type=int, default=50)
    args = parser.parse_args()
    lines = [
        "# Batched Theorem 4.1 check: throughput",
        "",
        f"Command: `python benchmarks/bench_batch.py --instances {args.instances} --T {args.T}`",
        f"Machine: {platform.processor() or platform.machine()}, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), jax {jax.__version__}, "
        f"{time.strftime('%Y-%m-%d')}",
        "",
    ]
    for family in (quadratic, nonquadratic):
        lines += rows_for(family, args.instances, args.T)
    path = pathlib.Path(__file__).parent / "results" / "batch.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
