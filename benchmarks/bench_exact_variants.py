"""Where the exact n-level hypergradient's compile time goes, and the variants tried.

    python benchmarks/bench_exact_variants.py [--max-n 6] [--timeout 240]

Blocks of 4, a seeded non-quadratic family (tanh couplings, quartic own terms), frozen at
fixed iterates. Each configuration runs in its own process with a time limit; trace
(``jit(...).lower``), XLA compile (``.compile``) and run (median of 20, block_until_ready)
are timed apart. Variants:

- ``shipped``: mlverify's core (custom_jvp best responses with a custom_linear_solve tangent,
  cached level gradients) compiled with mlverify's XLA options (level 0);
- ``shipped-O2``: the same compiled with XLA's default optimisation;
- ``chord``: the first design, best responses as p chord steps v <- v - H_0^{-1}(g - c)
  (exact to order p), kept here as the measured alternative.

Writes benchmarks/results/exact_variants.md.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

WORKER = r'''
import json, sys, time
import jax, jax.numpy as jnp
import mlverify as mv
from mlverify.numeric.implicit import LinearSolve
from mlverify.numeric.problem import COMPILER_OPTIONS
sg = jax.lax.stop_gradient
variant, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
key = jax.random.PRNGKey(0)
W = jax.random.normal(key, (n, n, d, d)) * 0.3
def make(k):
    def f(xs):
        val = 0.5 * jnp.sum(xs[k] ** 2) + 0.25 * jnp.sum(xs[k] ** 4)
        for m in range(n):
            if m != k:
                val = val + jnp.sum(jnp.tanh(W[k, m] @ xs[m]) * xs[k]) + 0.1 * jnp.sum(xs[m] ** 2) * jnp.sum(xs[k])
        return val
    return f
fs = [make(k) for k in range(n)]
xs = tuple(jnp.linspace(-0.5, 0.5, d) * (k + 1) / n for k in range(n))
if variant.startswith("shipped"):
    core = mv.numeric.NumericProblem(fs, xs).core
    fn = lambda flat: core.hypergradient_frozen(flat, LinearSolve("dense"))
else:
    from jax.scipy.linalg import cho_factor, cho_solve
    def reduced(k, blocks, order, consts):
        blocks = list(blocks)
        for m in range(k + 1, n):
            blocks.append(response(m, tuple(blocks), order, consts))
        return fs[k](tuple(blocks))
    def response(m, upper, order, consts):
        a = anchors[0][m]
        if order == 0:
            return a
        cf, c = consts[m]
        g = lambda u, v: jax.grad(lambda vv: reduced(m, u + (vv,), order + 1, consts))(v)
        v = a
        for _ in range(order):
            v = v - cho_solve(cf, g(upper, v) - c)
        return v
    anchors = [None]
    def fn(flat):
        anchors[0] = tuple(sg(x) for x in flat)
        consts = {}
        for m in range(n - 1, 0, -1):
            u0 = anchors[0][:m]
            g = lambda v: jax.grad(lambda vv: reduced(m, u0 + (vv,), 2, consts))(v)
            consts[m] = (cho_factor(sg(jax.jacfwd(g)(anchors[0][m]))), sg(g(anchors[0][m])))
        return jax.grad(lambda x: reduced(0, (x,), 1, consts))(flat[0])
options = COMPILER_OPTIONS if variant == "shipped" else None
jitted = jax.jit(fn, compiler_options=options)
t = time.perf_counter(); lowered = jitted.lower(xs); trace = time.perf_counter() - t
t = time.perf_counter(); compiled = lowered.compile(); compile_s = time.perf_counter() - t
out = compiled(xs).block_until_ready()
runs = []
for _ in range(20):
    t = time.perf_counter(); compiled(xs).block_until_ready(); runs.append(time.perf_counter() - t)
runs.sort()
print(json.dumps({"trace": trace, "compile": compile_s, "run_ms": runs[10] * 1e3, "value": [float(v) for v in out[:2]]}))
'''


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-n", type=int, default=6)
    parser.add_argument("--timeout", type=int, default=240)
    parser.add_argument("--size", type=int, default=4)
    args = parser.parse_args()
    rows = []
    for n in range(2, args.max_n + 1):
        for variant in ("shipped", "shipped-O2", "chord"):
            try:
                proc = subprocess.run([sys.executable, "-c", WORKER, variant, str(n), str(args.size)],
                                      capture_output=True, text=True, timeout=args.timeout)
                result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {"error": proc.stderr[-300:]}
            except subprocess.TimeoutExpired:
                result = {"timeout": args.timeout}
            rows.append((n, variant, result))
            print(n, variant, result, flush=True)
    lines = ["# Exact hypergradient: compile and run against n (blocks of %d)" % args.size, "",
             f"Command: `python benchmarks/bench_exact_variants.py --max-n {args.max_n} --timeout {args.timeout}`",
             f"Date: {time.strftime('%Y-%m-%d')}; 2-core x86_64 CPU, jax (CPU); other jobs shared the machine, "
             "so compare rows of one n, not lone figures.", "",
             "| n | variant | trace (s) | XLA compile (s) | run (ms) | hypergradient[:2] |",
             "| --- | --- | --- | --- | --- | --- |"]
    for n, variant, r in rows:
        if "trace" in r:
            lines.append(f"| {n} | {variant} | {r['trace']:.2f} | {r['compile']:.2f} | {r['run_ms']:.3f} | "
                         f"{r['value'][0]:.10f}, {r['value'][1]:.10f} |")
        elif "timeout" in r:
            lines.append(f"| {n} | {variant} | timeout > {r['timeout']} s (trace + compile) | | | |")
        else:
            lines.append(f"| {n} | {variant} | error | | | |")
    path = pathlib.Path(__file__).parent / "results" / "exact_variants.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
