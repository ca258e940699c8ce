"""JAX core: compile time, run time and memory of the hypergradient methods against the
number of levels n and the block size d.

Frozen sweep. For each (n, d, method) a seeded non-quadratic JAX-native problem
(``numeric_problem``) is built in a fresh subprocess, and the hypergradient at fixed iterates
(no lower solve) is jitted as ``jax.jit(lambda flat: core.hypergradient_frozen(flat, solve,
curvature))`` (ITD: ``itd_hypergradient(core, flat, 10)``), which is what
``NumericProblem._frozen_flat`` runs minus its status checks. Measured:

* lower (s): ``jitted.lower(flat)`` (tracing to StableHLO), compile (s): ``.compile()``;
* run (ms): median of >= 7 calls of the compiled function after one warm-up call, each
  ended by ``jax.block_until_ready``;
* XLA temp (KiB): ``compiled.memory_analysis().temp_size_in_bytes``, the scratch buffers the
  compiled program allocates per call (its peak working memory beyond arguments/outputs);
* peak RSS (MiB): ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the worker process at the
  end (includes the Python/JAX baseline), and its growth over lower + compile + runs.

Every configuration has a time budget (``--timeout``, 120 s by default, for the whole
subprocess: imports, problem, lower, compile, runs). A configuration that runs past it is
recorded as "timeout > T s" with the phase it was in; a configuration whose method already
timed out at smaller or equal n and d is skipped (recorded as such), not re-run.

Methods: ``exact`` (every curvature term; dense Cholesky for blocks <= 200, CG to 1e-12 on
Hessian-vector products above), ``no-curvature``, ``cg`` (exactly 10 CG iterations per
solve, curvature kept), ``itd`` (10 unrolled gradient steps per lower level, nested).

End-to-end. The trilevel problem with blocks of 1000: ``num.hypergradient(x1, "exact")``
with the lower levels solved (nested Newton-CG), split into ``solve_lower`` and
``hypergradient_frozen``, first call (with JIT compilation) and warm calls; and a check
that the traced programs contain no d x d array other than the problem's own coupling
matrices.

Usage (from the repository root)::

    python benchmarks/bench_numeric.py            # full sweep (~20-30 min) -> results/numeric.md
    python benchmarks/bench_numeric.py --quick    # small sweep (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402

METHODS = ("exact", "no-curvature", "cg", "itd")


# ----------------------------------------------------------------------------- the problems
def numeric_problem(n: int, d: int, seed: int = 0):
    """(NumericProblem, point): a seeded non-quadratic n-level JAX problem, blocks of size d.

    With W_k, V_k, U_k random d x d matrices scaled 0.3/sqrt(d) (so that W x = O(0.3 |x|)),
    levels 0-based:

        f_k(x) = sum x_k^4/4 + |x_k|^2/2                       (quartic + unit quadratic)
               - x_k . tanh(W_k x_{k-1})                          (coupling to the level above)
               + 0.3 x_k . tanh(x_0)                              (k >= 2)
               + x_k . tanh(V_k x_{k+1}) + |x_{k+1}|^2/4          (k < n-1: the level below)
        f_0(x) = |x_0 - t|^2/2 + sum_{m>=1} (|x_m - 1/2|^2/2 + sum tanh(U_m x_m + 0.3 x_0)).

    ``point`` holds seeded iterates (N(0, 0.25) entries) for every level: the frozen sweep
    evaluates the hypergradient formulas there without solving anything.
    """
    import jax.numpy as jnp
    import numpy as np

    from mlverify.numeric import NumericProblem

    rng = np.random.default_rng(1000 * seed + 10 * n + d)
    scale = 0.3 / np.sqrt(d)
    W = [jnp.asarray(rng.standard_normal((d, d)) * scale) for _ in range(n)]
    V = [jnp.asarray(rng.standard_normal((d, d)) * scale) for _ in range(n)]
    U = [jnp.asarray(rng.standard_normal((d, d)) * scale) for _ in range(n)]
    target = jnp.asarray(rng.standard_normal(d) * 0.5)

    def top(xs):
        f = 0.5 * jnp.sum((xs[0] - target) ** 2)
        for m in range(1, n):
            f += 0.5 * jnp.sum((xs[m] - 0.5) ** 2) + jnp.sum(jnp.tanh(U[m] @ xs[m] + 0.3 * xs[0]))
        return f

    def lower(k):
        def f(xs):
            x = xs[k]
            value = jnp.sum(x**4) / 4 + 0.5 * jnp.sum(x**2) - x @ jnp.tanh(W[k] @ xs[k - 1])
            if k >= 2:
                value += 0.3 * jnp.sum(x * jnp.tanh(xs[0]))
            if k < n - 1:
                value += x @ jnp.tanh(V[k] @ xs[k + 1]) + 0.25 * jnp.sum(xs[k + 1] ** 2)
            return value

        return f

    objectives = [top] + [lower(k) for k in range(1, n)]
    init = [jnp.zeros(d) for _ in range(n)]
    point = tuple(jnp.asarray(rng.standard_normal(d) * 0.5) for _ in range(n))
    return NumericProblem(objectives, init), point


def frozen_function(num, method: str):
    """The jittable frozen hypergradient of ``method`` (as NumericProblem._frozen_builder)."""
    from mlverify.numeric import LinearSolve
    from mlverify.numeric.itd import itd_hypergradient

    core = num.core
    if method == "itd":
        return lambda flat: itd_hypergradient(core, flat, 10, None)
    if method == "cg":
        solve, curvature = LinearSolve("cg", iterations=10), True
    elif method in ("exact", "no-curvature"):
        solve, curvature = LinearSolve("auto", tol=1e-12), method == "exact"
    else:
        raise ValueError(method)
    return lambda flat: core.hypergradient_frozen(flat, solve, curvature)


# ----------------------------------------------------------------------------- workers
def _maxrss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _emit(tag: str, payload: dict) -> None:
    print(f"{tag} " + json.dumps(payload), flush=True)


def compiler_options(which: str) -> dict:
    """``library``: the XLA options NumericProblem jits with (if it sets any); ``default``: none."""
    if which == "default":
        return {}
    from mlverify.numeric import problem

    return dict(getattr(problem, "COMPILER_OPTIONS", {}) or {})


def worker_frozen(n: int, d: int, method: str, runs: int, xla: str = "library") -> None:
    import jax
    import numpy as np

    import mlverify

    out: dict = {
        "n": n,
        "d": d,
        "method": method,
        "phase": "build",
        "mlverify_file": os.path.dirname(mlverify.__file__),
        "cpus": sorted(os.sched_getaffinity(0)),
    }
    _emit("PARTIAL", out)
    num, point = numeric_problem(n, d)
    options = compiler_options(xla)
    out["compiler_options"] = options
    fn = jax.jit(frozen_function(num, method), compiler_options=options or None)
    rss0 = _maxrss_mib()
    out["phase"] = "lower"
    _emit("PARTIAL", out)
    t0 = time.perf_counter()
    lowered = fn.lower(point)
    out["lower_s"] = time.perf_counter() - t0
    out["phase"] = "compile"
    _emit("PARTIAL", out)
    t0 = time.perf_counter()
    compiled = lowered.compile()
    out["compile_s"] = time.perf_counter() - t0
    out["rss_after_compile_mib"] = _maxrss_mib()
    try:
        mem = compiled.memory_analysis()
        out["xla_temp_bytes"] = int(mem.temp_size_in_bytes)
        out["xla_arg_bytes"] = int(mem.argument_size_in_bytes)
        out["xla_out_bytes"] = int(mem.output_size_in_bytes)
    except Exception as exc:  # not every backend reports it
        out["xla_memory"] = f"unavailable: {type(exc).__name__}"
    out["phase"] = "run"
    _emit("PARTIAL", out)
    t0 = time.perf_counter()
    value = jax.block_until_ready(compiled(point))
    out["first_run_s"] = time.perf_counter() - t0
    times = []
    cpu0 = time.process_time()
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(point))
        times.append(time.perf_counter() - t0)
    out["run_cpu_per_wall"] = (time.process_time() - cpu0) / max(sum(times), 1e-12)
    out["load1_after_runs"] = os.getloadavg()[0]
    out["run_ms"] = 1e3 * statistics.median(times)
    out["run_min_ms"] = 1e3 * min(times)
    out["runs"] = len(times)
    out["rss_peak_mib"] = _maxrss_mib()
    out["rss_growth_mib"] = out["rss_peak_mib"] - rss0
    value = np.asarray(value)
    out["finite"] = bool(np.all(np.isfinite(value)))
    out["value"] = [float(v) for v in value]
    out["phase"] = "done"
    _emit("RESULT", out)


def _square_arrays(jaxpr, d, acc):
    """d x d arrays in ``jaxpr`` and its sub-jaxprs: primitives with a d x d output
    (``acc["ops"]``) and distinct d x d constant values (``acc["consts"]``, by id)."""
    for eqn in jaxpr.eqns:
        subs = [
            sub
            for param in eqn.params.values()
            for sub in (param if isinstance(param, (tuple, list)) else (param,))
            if hasattr(sub, "eqns") or (hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"))
        ]
        # Call-like primitives (jit, custom_jvp_call, while, ...) are walked into instead:
        # a d x d output of theirs is either computed by a primitive inside (counted there)
        # or an input forwarded through (e.g. a coupling matrix kept as a JVP residual).
        if not subs:
            for var in eqn.outvars:
                if getattr(var.aval, "shape", None) == (d, d):
                    acc["ops"].append(str(eqn.primitive))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):  # ClosedJaxpr
                    acc["consts"].update(
                        id(c) for c in sub.consts if getattr(c, "shape", None) == (d, d)
                    )
                    _square_arrays(sub.jaxpr, d, acc)
                elif hasattr(sub, "eqns"):  # Jaxpr
                    _square_arrays(sub, d, acc)
    return acc


def _dxd_check(closed, d):
    acc = {
        "ops": [],
        "consts": {id(c) for c in closed.consts if getattr(c, "shape", None) == (d, d)},
    }
    _square_arrays(closed.jaxpr, d, acc)
    return {"dxd_ops": acc["ops"], "dxd_consts": len(acc["consts"])}


def _unjitted(fn):
    """The Python function under a ``jax.jit`` (whose compiler options forbid nesting)."""
    return getattr(fn, "__wrapped__", fn)


def worker_e2e(n: int, d: int, repeats: int) -> None:
    """Trilevel end to end; each phase records its error instead of ending the worker."""
    import traceback

    import jax
    import jax.numpy as jnp
    import numpy as np

    import mlverify
    from mlverify.numeric.solvers import _step_function

    out: dict = {
        "n": n,
        "d": d,
        "phase": "build",
        "errors": {},
        "mlverify_file": os.path.dirname(mlverify.__file__),
        "cpus": sorted(os.sched_getaffinity(0)),
    }
    num, point = numeric_problem(n, d)
    x1 = point[0]
    rss0 = _maxrss_mib()

    def attempt(phase, fn):
        out["phase"] = phase
        _emit("PARTIAL", out)
        try:
            return fn()
        except Exception as exc:  # recorded in the report, not hidden
            out["errors"][phase] = _machine.error_summary(traceback.format_exc()) or repr(exc)
            return None

    # Which d x d arrays do the traced programs hold? (frozen exact; the Newton-CG steps)
    checks = {}
    closed = attempt(
        "jaxpr check: frozen exact", lambda: jax.make_jaxpr(num._frozen_builder("exact", {}))(point)
    )
    if closed is not None:
        checks["frozen exact (`_frozen_builder`, with status)"] = _dxd_check(closed, d)
    for k in range(1, n):
        closed = attempt(
            f"jaxpr check: Newton-CG step, level {k + 1}",
            lambda k=k: jax.make_jaxpr(_unjitted(_step_function(num, k, "newton")))(point),
        )
        if closed is not None:
            checks[f"Newton-CG step of the lower solve, level {k + 1}"] = _dxd_check(closed, d)
    out["dxd_check"] = checks

    # Warm frozen hypergradient at the seeded iterates (no solve), for reference.
    def frozen():
        jax.block_until_ready(num.hypergradient_frozen(point, "exact"))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(num.hypergradient_frozen(point, "exact"))
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)

    out["frozen_at_iterates_ms"] = attempt("frozen hypergradient at iterates", frozen)

    # First call: JIT compilation of the solver steps and of the frozen formula included.
    def first():
        t0 = time.perf_counter()
        value = jax.block_until_ready(num.hypergradient(x1, method="exact"))
        out["value_norm"] = float(jnp.linalg.norm(value))
        return time.perf_counter() - t0

    out["first_call_s"] = attempt("first hypergradient(x1) call", first)

    # Warm calls at nearby x1 (all compiled now): solve and hypergradient timed apart.
    def warm():
        rng = np.random.default_rng(7)
        solve_s, hg_s, total_s, residuals, iterations = [], [], [], [], []
        for _ in range(repeats):
            x = x1 + jnp.asarray(0.05 * rng.standard_normal(d))
            t0 = time.perf_counter()
            lower = num.solve_lower(x)
            jax.block_until_ready(tuple(lower))
            t1 = time.perf_counter()
            h = jax.block_until_ready(num.hypergradient_frozen((x, *lower), "exact"))
            t2 = time.perf_counter()
            jax.block_until_ready(num.hypergradient(x, method="exact"))
            t3 = time.perf_counter()
            solve_s.append(t1 - t0)
            hg_s.append(t2 - t1)
            total_s.append(t3 - t2)
            residuals.append(lower.residual)
            iterations.append(lower.iterations)
            assert bool(jnp.all(jnp.isfinite(h))), "non-finite hypergradient"
        out.update(
            solve_ms=1e3 * statistics.median(solve_s),
            frozen_ms=1e3 * statistics.median(hg_s),
            hypergradient_ms=1e3 * statistics.median(total_s),
            repeats=repeats,
            max_residual=max(residuals),
            newton_iterations=sorted(set(iterations)),
        )
        return True

    if out["first_call_s"] is not None:
        attempt("warm calls", warm)
    out.update(rss_peak_mib=_maxrss_mib(), rss_growth_mib=_maxrss_mib() - rss0, phase="done")
    _emit("RESULT", out)


# ----------------------------------------------------------------------------- driver
def run_worker(spec: list, timeout: float, env=None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    timed_out = False
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        timed_out = True
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr, rc = "", None
    wall = time.perf_counter() - t0
    results = [
        json.loads(l.split(" ", 1)[1]) for l in stdout.splitlines() if l.startswith("RESULT ")
    ]
    partial = [
        json.loads(l.split(" ", 1)[1]) for l in stdout.splitlines() if l.startswith("PARTIAL ")
    ]
    if results and rc == 0:
        row = results[-1]
        row["status"] = "ok"
    elif timed_out:
        row = partial[-1] if partial else {}
        row["status"] = f"timeout > {timeout:.0f} s (in {row.get('phase', 'startup')})"
    else:
        row = partial[-1] if partial else {}
        if rc is not None and rc < 0:
            import signal

            name = (
                signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
            )
            row["status"] = (
                f"killed by {name} (in {row.get('phase', 'startup')}; "
                "SIGKILL is most likely the out-of-memory killer)"
            )
        else:
            row["status"] = f"error (rc {rc}): " + _machine.error_summary(stderr or stdout)
    row["subprocess_wall_s"] = wall
    return row


def sweep_configurations(quick: bool):
    if quick:
        sizes = [(n, 4) for n in (2, 3, 4)] + [(n, d) for n in (2, 3) for d in (10, 100)]
    else:
        sizes = [(n, 4) for n in range(2, 7)]
        sizes += [(n, d) for n in (2, 3) for d in (10, 100, 1000)]
        sizes += [(4, d) for d in (10, 100)]
    return sizes


def _fmt(x, unit=""):
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}{unit}"
    if x >= 10:
        return f"{x:.1f}{unit}"
    return f"{x:.3g}{unit}"


def frozen_table(rows) -> str:
    head = [
        "n",
        "d",
        "method",
        "lower (s)",
        "compile (s)",
        "run (ms, median)",
        "run (ms, min)",
        "XLA temp (KiB)",
        "peak RSS (MiB)",
        "RSS growth (MiB)",
        "load",
        "rel. diff. to exact",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    exact = {
        (r["n"], r["d"]): r.get("value")
        for r in rows
        if r["method"] == "exact" and r.get("status") == "ok"
    }
    for r in rows:
        cells = [str(r["n"]), str(r["d"]), r["method"]]
        if r.get("status") != "ok":
            done = []
            if "lower_s" in r:
                done.append(f"lower {r['lower_s']:.1f} s")
            if "compile_s" in r:
                done.append(f"compile {r['compile_s']:.1f} s")
            note = r["status"] + (f"; {', '.join(done)}" if done else "")
            cells += [note] + ["-"] * (len(head) - 4)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        temp = r.get("xla_temp_bytes")
        ref = exact.get((r["n"], r["d"]))
        if r["method"] == "exact" or ref is None:
            diff = "-" if r["method"] == "exact" else "(no exact)"
        else:
            import numpy as np

            a, b = np.asarray(r["value"]), np.asarray(ref)
            diff = f"{np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300):.1e}"
        if not r.get("finite", True):
            diff += " (non-finite!)"
        cells += [
            _fmt(r["lower_s"]),
            _fmt(r["compile_s"]),
            _fmt(r["run_ms"]),
            _fmt(r.get("run_min_ms")),
            "-" if temp is None else _fmt(temp / 1024),
            _fmt(r["rss_peak_mib"]),
            _fmt(r["rss_growth_mib"]),
            f"{r['load1_after_runs']:.1f}" if "load1_after_runs" in r else "-",
            diff,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def e2e_section(row) -> str:
    if row.get("phase") != "done":
        return (
            f"The end-to-end worker did not finish: {row.get('status')} "
            f"(phase: {row.get('phase')})."
        )
    lines = [
        f"Trilevel (n = {row['n']}), blocks of d = {row['d']} (3 x {row['d']} variables), "
        '`method="exact"`, lower levels solved by nested Newton-CG (default tolerance 1e-10).',
        "",
        "| quantity | value |",
        "|---|---|",
    ]

    def item(label, key, fmt):
        value = row.get(key)
        lines.append(
            f"| {label} | {fmt.format(value) if value is not None else 'failed (see below)'} |"
        )

    item(
        'warm `num.hypergradient_frozen(point, "exact")` at the seeded iterates (no solve)',
        "frozen_at_iterates_ms",
        "{:.1f} ms",
    )
    item(
        'first `num.hypergradient(x1, method="exact")` call (incl. JIT compilation)',
        "first_call_s",
        "{:.1f} s",
    )
    if "solve_ms" in row:
        item(
            f"warm `num.solve_lower(x1)` (median of {row['repeats']} nearby x1)",
            "solve_ms",
            "{:.0f} ms",
        )
        item('warm `num.hypergradient_frozen((x1, *lower), "exact")`', "frozen_ms", "{:.1f} ms")
        item(
            'warm `num.hypergradient(x1, method="exact")` (solve + hypergradient)',
            "hypergradient_ms",
            "{:.0f} ms",
        )
        lines.append(
            f"| Newton iterations (all levels, nested) per solve | "
            f"{', '.join(map(str, row['newton_iterations']))} |"
        )
        lines.append(f"| largest lower residual reached | {row['max_residual']:.1e} |")
    lines.append(
        f"| peak RSS of the worker process | {row['rss_peak_mib']:.0f} MiB "
        f"(growth {row['rss_growth_mib']:.0f} MiB after the problem was built) |"
    )
    if row.get("errors"):
        lines += ["", "Errors (phase: exception):", ""]
        lines += [f"* {phase}: `{msg}`" for phase, msg in row["errors"].items()]
    checks = row.get("dxd_check") or {}
    if checks:
        lines += [
            "",
            "d x d arrays in the traced programs (`jax.make_jaxpr`, recursively through "
            "sub-jaxprs):",
            "",
            "| program | ops with a d x d output | distinct d x d constants |",
            "|---|---|---|",
        ]
        for name, check in checks.items():
            ops = check["dxd_ops"]
            kinds = (" (" + ", ".join(sorted(set(ops))) + ")") if ops else ""
            lines.append(f"| {name} | {len(ops)}{kinds} | {check['dxd_consts']} |")
        lines += [
            "",
            "The d x d constants are the problem's own coupling matrices W_k, V_k, U_k (data",
            "closed over by the objectives). An op count of 0 means no operation in that program",
            "produces a d x d array: no Hessian or Jacobian is formed, since blocks larger than "
            "200",
            "use conjugate gradients on Hessian-vector products.",
        ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sweep (n <= 4, d <= 100)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="time budget per configuration in s (default 120; 60 with --quick)",
    )
    parser.add_argument("--runs", type=int, default=9, help="timed runs per configuration (>= 7)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--sizes",
        help="comma-separated NxD configurations to run instead of the sweep's, e.g. 2x4,3x4,4x4",
    )
    parser.add_argument(
        "--no-e2e", action="store_true", help="skip the trilevel d = 1000 end-to-end run"
    )
    parser.add_argument("--out", default=os.path.join(_machine.RESULTS, "numeric.md"))
    parser.add_argument(
        "--xla-options",
        choices=("library", "default"),
        default="library",
        help="compile with the XLA options NumericProblem uses (default) or with XLA's defaults",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin each worker to one CPU core (see the report)",
    )
    parser.add_argument(
        "--pin-cpu",
        type=int,
        default=None,
        help="the core to pin workers to (default: the last one available)",
    )
    parser.add_argument(
        "--no-snapshot",
        action="store_true",
        help="import mlverify from the working tree in every worker instead of "
        "a copy taken at the start",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        pin = os.environ.get("MLVERIFY_BENCH_PIN_CPU")
        if pin:  # before jax is imported: XLA sizes its thread pool from the affinity mask
            os.sched_setaffinity(0, {int(pin)})
        spec = json.loads(args.worker)
        if spec[0] == "frozen":
            worker_frozen(*spec[1:])
        else:
            worker_e2e(*spec[1:])
        return

    timeout = args.timeout or (60.0 if args.quick else 120.0)
    runs = max(args.runs, 7)
    methods = [m for m in args.methods.split(",") if m]
    info = _machine.describe()
    command = _machine.command_line()
    fingerprint = _machine.source_fingerprint()
    snapshot = None if args.no_snapshot else _machine.snapshot_package()
    env = _machine.worker_env(snapshot)
    pinned = None
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        pinned = args.pin_cpu if args.pin_cpu is not None else max(os.sched_getaffinity(0))
        env["MLVERIFY_BENCH_PIN_CPU"] = str(pinned)
    t_start = time.perf_counter()

    rows = []
    timed_out: dict[str, list[tuple[int, int]]] = {m: [] for m in methods}
    sizes = (
        [tuple(int(v) for v in item.split("x")) for item in args.sizes.split(",") if item]
        if args.sizes
        else sweep_configurations(args.quick)
    )
    for n, d in sizes:
        for method in methods:
            if any(n2 <= n and d2 <= d for n2, d2 in timed_out[method]):
                row = {
                    "n": n,
                    "d": d,
                    "method": method,
                    "status": "skipped (timed out at smaller or equal n and d)",
                }
            else:
                row = run_worker(["frozen", n, d, method, runs, args.xla_options], timeout, env)
                if row["status"].startswith("timeout"):
                    timed_out[method].append((n, d))
            row.setdefault("n", n), row.setdefault("d", d), row.setdefault("method", method)
            rows.append(row)
            brief = {
                k: row.get(k)
                for k in (
                    "status",
                    "lower_s",
                    "compile_s",
                    "run_ms",
                    "xla_temp_bytes",
                    "rss_peak_mib",
                )
            }
            print(f"n={n} d={d} {method}: {brief}", flush=True)

    e2e = None
    if not args.no_e2e:
        e2e = run_worker(["e2e", 3, 1000, 5], max(timeout, 300.0), env)
        keys = ("status", "errors", "first_call_s", "solve_ms", "frozen_ms", "hypergradient_ms")
        print(f"e2e: { {k: e2e.get(k) for k in keys} }", flush=True)
    total_min = (time.perf_counter() - t_start) / 60
    worker_files = {
        r["mlverify_file"] for r in rows + ([e2e] if e2e else []) if r.get("mlverify_file")
    }
    if snapshot:
        fingerprint["snapshot_sha256"] = _machine.source_fingerprint(
            os.path.join(snapshot, "mlverify")
        )["sources_sha256"]
        import shutil

        shutil.rmtree(snapshot, ignore_errors=True)
    fingerprint["working_tree_sha256_at_end"] = _machine.source_fingerprint()["sources_sha256"]
    code_line = _machine.code_markdown(fingerprint, snapshot, worker_files)
    if fingerprint["working_tree_sha256_at_end"] != fingerprint["sources_sha256"]:
        code_line += (
            " The working tree's mlverify/ changed during the sweep (sha256 at the end "
            f"`{fingerprint['working_tree_sha256_at_end']}`)"
            + ("; the snapshot was measured." if snapshot else "; rows may mix versions.")
        )

    blocks4 = [r for r in rows if r["d"] == 4]
    larger = [r for r in rows if r["d"] != 4]
    text = [
        "# JAX core: hypergradient methods against n and block size",
        "",
        "Generated by `benchmarks/bench_numeric.py`"
        f"{' (--quick)' if args.quick else ''}; the sweep took {total_min:.1f} min. Each "
        f"configuration",
        f"runs in a fresh subprocess with a time budget of {timeout:.0f} s for everything "
        f"(imports,",
        "problem, lower, compile, runs). The machine is shared with other jobs (2 cores), so",
        "times are indicative only: tracing and compile times of the same configuration differed",
        "by up to ~1.5x between repeated sweeps (sizes and XLA memory are exact).",
        "",
        "## Machine",
        "",
        _machine.markdown(info, command),
        "",
        code_line,
        "",
        (
            f"Workers pinned to CPU core {pinned} (`os.sched_setaffinity` before importing jax, "
            f"so XLA "
            "runs single-threaded). On this shared 2-core machine, unpinned workers showed bimodal "
            "run times whenever other jobs ran: the same compiled program (n = 3, d = 100, "
            "`exact`) "
            "took 0.45 ms in one process and 40-50 ms in the next, with CPU time / wall time < 1 "
            "(XLA's 2-thread pool waiting on a busy core); pinned, it took 0.42-0.45 ms in six of "
            "six processes at load ~4.8. `--no-pin` runs unpinned."
            if pinned is not None
            else "Workers not pinned (`--no-pin`): XLA uses its default thread pool; on a shared "
            "machine run times of the larger configurations can then be bimodal (see "
            "`benchmarks/README.md`)."
        ),
        "",
        "XLA compiler options of the frozen sweep (`--xla-options "
        f"{args.xla_options}`): "
        + ", ".join(
            sorted(
                {
                    ("`" + json.dumps(r["compiler_options"]) + "`")
                    if r.get("compiler_options")
                    else "none (XLA defaults)"
                    for r in rows
                    if "compiler_options" in r
                }
            )
            or {"-"}
        )
        + (
            " (the options `NumericProblem` jits with, "
            "`mlverify.numeric.problem.COMPILER_OPTIONS`)."
            if args.xla_options == "library"
            else "."
        ),
        "",
        "## What is measured",
        "",
        "Frozen hypergradients (formulas evaluated at fixed seeded iterates, no lower solve) of a",
        "seeded non-quadratic problem family (`numeric_problem` in the script: tanh couplings",
        "through random d x d matrices scaled 0.3/sqrt(d), quartic own terms, unit quadratic own",
        "terms). The function is `jax.jit(lambda flat: core.hypergradient_frozen(flat, solve, "
        "curvature))`",
        "(ITD: `itd_hypergradient(core, flat, 10)`), i.e. `NumericProblem._frozen_flat` without "
        "its",
        "status checks.",
        "",
        '* methods: `exact` (all curvature terms; `LinearSolve("auto")`: dense Cholesky for blocks',
        "  <= 200, CG to 1e-12 on Hessian-vector products for larger blocks), `no-curvature`,",
        "  `cg` (exactly 10 CG iterations per solve, curvature kept), `itd` (10 nested unrolled",
        "  gradient steps per lower level);",
        "* **lower (s)**: `jitted.lower(flat)` (Python tracing to StableHLO); **compile (s)**:",
        "  `lowered.compile()` (XLA);",
        f"* **run (ms)**: median of {runs} calls of the compiled function after one warm-up call, "
        f"each",
        "  followed by `jax.block_until_ready`;",
        "* **XLA temp (KiB)**: `compiled.memory_analysis().temp_size_in_bytes`, the scratch memory",
        "  the compiled program uses per call (the arguments and outputs, n*d and d doubles, come",
        "  on top);",
        "* **peak RSS (MiB)**: `resource.getrusage(RUSAGE_SELF).ru_maxrss` of the worker process",
        "  at the end (includes about 250-300 MiB of Python + JAX baseline); **RSS growth**: its",
        "  increase over lower + compile + runs, i.e. mostly compilation memory;",
        "* **load**: the machine's 1-minute load average right after the timed runs, the worker",
        "  itself included (about 1 of it); on 2 cores, above ~2 means other jobs competed for the",
        "  CPU during the measurement;",
        "* **rel. diff. to exact**: max-norm difference to `exact` at the same point, relative to",
        "  max |exact| (a check that the methods compute comparable things, not an accuracy study:",
        "  the iterates are not lower-level solutions).",
        "",
        '"timeout" rows name the phase the worker was in when its budget ran out; "skipped"',
        "rows were not run because the same method already timed out at smaller or equal n and d.",
        "",
        "## Blocks of 4, n = 2..6",
        "",
        frozen_table(blocks4),
        "",
        "## Larger blocks: d = 10, 100, 1000 at n = 2, 3; d = 10, 100 at n = 4",
        "",
        frozen_table(larger) if larger else "(not run)",
        "",
        "## End-to-end: trilevel, blocks of 1000",
        "",
        e2e_section(e2e) if e2e else "(not run)",
        "",
    ]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(text))
    with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
        json.dump(
            {
                "machine": info,
                "command": command,
                "code": fingerprint,
                "timeout_s": timeout,
                "total_min": total_min,
                "rows": rows,
                "e2e": e2e,
            },
            fh,
            indent=1,
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
