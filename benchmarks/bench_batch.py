"""Throughput of the batched Theorem 4.1 check: one vmapped call against a Python loop.

    python benchmarks/bench_batch.py [--instances 32] [--T 50]

Both use the same jitted single-instance check; compile is timed apart from the runs, and
the runs are medians of 3. Writes benchmarks/results/batch.md.
"""

import argparse
import pathlib
import platform
import statistics
import time

import jax
import numpy as np

from mlverify import verify


def timed(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=32)
    parser.add_argument("--T", type=int, default=50)
    args = parser.parse_args()
    sizes = (2, 1, 1)
    objectives_of, params, _ = verify.quadratic_family_batch(3, sizes, seeds=range(args.instances))
    check = verify.instance_check(objectives_of, sizes, (-2, 2), T=args.T, grid_points=3)
    start = time.perf_counter()
    batched = jax.jit(jax.vmap(check)).lower(params).compile()
    compile_batched = time.perf_counter() - start
    first = jax.tree_util.tree_map(lambda a: a[0], params)
    start = time.perf_counter()
    single = jax.jit(check).lower(first).compile()
    compile_single = time.perf_counter() - start
    instances = [jax.tree_util.tree_map(lambda a, i=i: a[i], params) for i in range(args.instances)]
    run_batched = timed(lambda: batched(params))
    run_loop = timed(lambda: [single(p) for p in instances])
    out = batched(params)
    passed = int(np.sum(np.asarray(out["ok"]) & np.asarray(out["applicable"])))
    lines = [
        "# Batched Theorem 4.1 check: throughput",
        "",
        f"Command: `python benchmarks/bench_batch.py --instances {args.instances} --T {args.T}`",
        f"Machine: {platform.processor() or platform.machine()}, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), jax {jax.__version__}, "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        f"Family: quadratic trilevel, blocks {sizes}, {args.instances} seeded instances, "
        f"T = {args.T}; {passed}/{args.instances} pass.",
        "",
        "| | compile (s) | run (s, median of 3) | instances / s |",
        "| --- | --- | --- | --- |",
        f"| vmapped, one call | {compile_batched:.2f} | {run_batched:.3f} | "
        f"{args.instances / run_batched:.1f} |",
        f"| Python loop over the jitted single check | {compile_single:.2f} | {run_loop:.3f} | "
        f"{args.instances / run_loop:.1f} |",
        "",
        f"Speed-up of the vmapped call over the loop (same run): {run_loop / run_batched:.2f}x",
    ]
    path = pathlib.Path(__file__).parent / "results" / "batch.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
