"""mlverify's exact hypergradient against JAXopt's nested implicit differentiation, by depth.

What a JAX user would write without mlverify: every lower level solved by a JAXopt solver
whose objective calls the solvers of the levels below it, each differentiated implicitly
(``jaxopt.LBFGS(..., implicit_diff=True)``, which wraps the solve in ``custom_root`` on the
level's optimality condition), and ``jax.grad`` of F_1 through the whole nest. Its default
linear solve for the implicit system (normal-equation CG) fails from three levels on in JAX
0.10 (``NotImplementedError`` in the transpose of the nested ``custom_linear_solve``);
``implicit_diff_solve=solve_cg`` (the Hessians are symmetric positive definite) works, and
is what this benchmark uses. LBFGS stops at a gradient norm of 1e-10 or 100 iterations per
level.

The family is `bench_deep_jax.family` (blocks of 4; tanh couplings, quartic and sine terms;
seed 0). Each (method, n) runs in its own process under a time limit and a memory cap (the
parent watches the child's resident memory and stops it past the cap); the rows are

- ``first``: the hypergradient at ``x1 = 0.1`` in a fresh process (tracing, compilation,
  the lower solves, the hypergradient);
- ``second``: at ``x1 = 0.3`` (median of 3);
- ``difference``: the largest difference of the two methods' hypergradients at ``x1 = 0.3``.

    python benchmarks/bench_jaxopt.py --min-n 2 --max-n 5 --limit 600 --memory 8
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _machine import describe, markdown  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
METHODS = ("mlverify", "jaxopt")


def jaxopt_hypergradient(n: int):
    """``grad F_1`` through nested ``jaxopt.LBFGS`` solves with implicit differentiation."""
    import jax
    import jax.numpy as jnp
    import jaxopt
    from bench_deep_jax import family

    fs = family(n).core.fs
    solvers = {}

    def make(k):
        def reduced(xk, upper):
            xs = (*upper, xk)
            for m in range(k + 1, n):
                xs = (*xs, solvers[m](xs))
            return fs[k](xs)

        opt = jaxopt.LBFGS(fun=reduced, tol=1e-10, maxiter=100, implicit_diff=True,
                           implicit_diff_solve=jaxopt.linear_solve.solve_cg)
        return lambda upper: opt.run(jnp.zeros(4), tuple(upper)).params

    for k in range(n - 1, 0, -1):
        solvers[k] = make(k)

    def top(x1):
        xs = (x1,)
        for m in range(1, n):
            xs = (*xs, solvers[m](xs))
        return fs[0](xs)

    return jax.jit(jax.grad(top))


def worker(method: str, n: int) -> dict:
    """One process's measurements (printed as JSON by ``--worker``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from bench_deep_jax import family

    if method == "mlverify":
        problem = family(n)

        def hypergradient(x1):
            return problem.hypergradient(x1, "exact")
    else:
        hypergradient = jaxopt_hypergradient(n)
    x1, x2 = jnp.full(4, 0.1), jnp.full(4, 0.3)
    start = time.perf_counter()
    jax.block_until_ready(hypergradient(x1))
    first = time.perf_counter() - start
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        value = jax.block_until_ready(hypergradient(x2))
        seconds.append(time.perf_counter() - start)
    return {"method": method, "n": n, "first": first, "second": statistics.median(seconds),
            "value": np.asarray(value).tolist()}


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _measure(method: str, n: int, limit: float, memory_gb: float) -> dict:
    """Run one worker under the time limit and the memory cap; its row, with peak memory."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, __file__, "--worker", method, str(n)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    begin, peak, stopped = time.perf_counter(), 0.0, None
    while child.poll() is None:
        peak = max(peak, _rss_mb(child.pid))
        if peak > memory_gb * 1024:
            stopped = "memory"
        elif time.perf_counter() - begin > limit:
            stopped = "time"
        if stopped:
            child.kill()
            child.wait()
            return {"method": method, "n": n, "stopped": stopped, "peak_mb": peak,
                    "after": time.perf_counter() - begin}
        time.sleep(0.1)
    out, err = child.communicate()
    if child.returncode != 0:
        return {"method": method, "n": n, "failed": (err.strip().splitlines() or ["?"])[-1]}
    row = json.loads(out.strip().splitlines()[-1])
    row["peak_mb"] = peak
    return row


def _first(row: dict) -> str:
    if "stopped" in row:
        cap = "memory cap" if row["stopped"] == "memory" else "time limit"
        return f"> {row['after']:.0f} (stopped at the {cap}, {row['peak_mb'] / 1024:.1f} GB)"
    if "failed" in row:
        return f"failed: {row['failed'][:80]}"
    return f"{row['first']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-n", type=int, default=2)
    parser.add_argument("--max-n", type=int, default=5)
    parser.add_argument("--limit", type=float, default=600, help="seconds per process at most")
    parser.add_argument("--memory", type=float, default=8, help="GB per process at most")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        import jax

        jax.config.update("jax_enable_x64", True)
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return
    info = describe()
    rows = {}
    for n in range(args.min_n, args.max_n + 1):
        for method in METHODS:
            if method == "jaxopt" and rows.get(("jaxopt", n - 1), {}).get("stopped"):
                rows[(method, n)] = {"method": method, "n": n, "skipped": True}
                continue
            rows[(method, n)] = _measure(method, n, args.limit, args.memory)
            print(json.dumps({k: v for k, v in rows[(method, n)].items() if k != "value"}),
                  flush=True)
    command = (f"python benchmarks/bench_jaxopt.py --min-n {args.min_n} --max-n {args.max_n} "
               f"--limit {args.limit:g} --memory {args.memory:g}")
    lines = [
        "# The exact hypergradient against JAXopt's nested implicit differentiation",
        "",
        "Blocks of 4, the non-quadratic family of `benchmarks/bench_deep_jax.py`. mlverify: "
        "`NumericProblem.hypergradient(x1, \"exact\")` (the joint lower solve, then the "
        "lemmas' formulas). JAXopt: every lower level solved by `jaxopt.LBFGS` (gradient "
        "norm 1e-10) with `implicit_diff=True, implicit_diff_solve=solve_cg`, nested, and "
        "`jax.grad` of F_1 through the nest; JAXopt's default implicit linear solve fails "
        "from 3 levels on. Each row is its own process. First call: x_1 = 0.1 in a fresh "
        "process; second: x_1 = 0.3 (median of 3); difference: the largest entry of the "
        "difference of the two hypergradients at x_1 = 0.3.",
        "",
        markdown(info, command),
        "",
        "| n | mlverify first (s) | JAXopt first (s) | mlverify second (ms) | "
        "JAXopt second (ms) | mlverify peak (MB) | JAXopt peak (MB) | difference |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in range(args.min_n, args.max_n + 1):
        ours, theirs = rows[("mlverify", n)], rows[("jaxopt", n)]
        if theirs.get("skipped"):
            first = "not run (stopped at n - 1)"
        else:
            first = _first(theirs)
        difference = ""
        if "value" in ours and "value" in theirs:
            pairs = zip(ours["value"], theirs["value"], strict=True)
            difference = f"{max(abs(a - b) for a, b in pairs):.1e}"

        def ms(row):
            return f"{row['second'] * 1e3:.1f}" if "second" in row else "-"

        def mb(row):
            return f"{row['peak_mb']:.0f}" if "peak_mb" in row and "stopped" not in row else "-"

        lines.append(f"| {n} | {_first(ours)} | {first} | {ms(ours)} | {ms(theirs)} | "
                     f"{mb(ours)} | {mb(theirs)} | {difference} |")
    out = ROOT / "benchmarks" / "results" / "jaxopt.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
