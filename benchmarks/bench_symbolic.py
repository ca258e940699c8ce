"""Symbolic core: derivation time and expression size against the number of levels n and
the block size d.

For each configuration (a seeded non-quadratic n-level problem with blocks of size d; see
``symbolic_problem``) this measures, in a fresh subprocess (cold sympy cache, own time limit):

* ``derive``: wall time of ``mlverify.derive.derive(prob.blocks, prob.objectives)`` on a
  freshly built problem, sympy's cache cleared first (median of 3 when one run is < 5 s);
* graph ops: ``derivation.graph.size(list(derivation.gradients[0]))``, the operations of the
  straight-line code for the hypergradient; intermediates: ``len(derivation.graph.order)``;
* naive sizes (scalar blocks, n <= 4 only): ``sympy.count_ops`` of the expanded hypergradient
  ``prob.hypergradient()`` (its size as a tree), and the size after ``sympy.cse`` (operations
  in the replacements plus the reduced expressions);
* ``prob.numeric()``: compile time of the lambdified NumPy evaluators (derivation already
  cached, so derivation time is not included);
* ``prob.hypergradient_at(x1)``: one warm-up call, then the median of several calls (each
  a nested Newton solve of the lower levels to 1e-12 plus one evaluation of the formula).

Usage (from the repository root)::

    python benchmarks/bench_symbolic.py            # full sweep -> benchmarks/results/symbolic.md
    python benchmarks/bench_symbolic.py --quick    # small sweep, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402


# ----------------------------------------------------------------------------- the problems
def symbolic_problem(n: int, d: int, seed: int = 0):
    """A seeded non-quadratic n-level problem with blocks of size d (sympy).

    Lower level k (1-based, k >= 2), block x_k = (x_k0..x_k,d-1):
        sum_i x_ki^4/4 + a_k x_ki^2/2                       (quartic + quadratic own terms)
      - sum_i x_ki tanh(x_{k-1,i} + c x_{k-1,i+1} [+ e x_1i])  (tanh coupling to the level above)
      + 1/4 sum_i x_ki x_k,i+1                              (d >= 2: a non-diagonal Hessian)
      + b x_k . x_1                                         (k >= 3)
      + s x_k . x_{k+1} + |x_{k+1}|^2/2
      + sum_{m>k} t_m sum_i sin(x_ki + x_m,i+1)              (sin couplings to all levels below)
    Top level: squared distances of every block to a target plus sum_i r sin(x_2i + x_n,i+1).
    Indices i+1 wrap around modulo d. Coefficients are small rationals drawn from a seeded
    RNG; a_k >= 3/2 keeps every lower level strongly convex near the evaluation point.
    """
    import sympy as sp

    import mlverify as mv

    rng = random.Random(7 + 1009 * seed + 31 * n + d)

    def pick(choices):
        return sp.Rational(rng.choice(choices))

    blocks = [
        (sp.Symbol(f"x{k}"),) if d == 1 else tuple(sp.symbols(f"x{k}_0:{d}"))
        for k in range(1, n + 1)
    ]
    objectives = []
    for k in range(n):  # 0-based level index
        x = blocks[k]
        if k == 0:
            f = sum((xi - pick(["1/2", "-1/2", "1"])) ** 2 / 2 for xi in x)
            for m in range(1, n):
                f += sum((y - pick(["1/2", "-1/2", "1/4"])) ** 2 / 2 for y in blocks[m])
            f += pick(["1", "-1", "3/4"]) * sum(
                sp.sin(blocks[1][i] + blocks[n - 1][(i + 1) % d]) for i in range(d)
            )
        else:
            above = blocks[k - 1]
            a = pick(["3/2", "2"]) if k == n - 1 else pick(["2", "5/2"])
            c = pick(["1", "1/2", "3/2"])
            e = pick(["1/2", "-1/2", "1/3"]) if k >= 2 else 0
            f = sum(xi**4 / 4 + a * xi**2 / 2 for xi in x)
            f -= sum(
                x[i] * sp.tanh(above[i] + c * above[(i + 1) % d] + e * blocks[0][i])
                for i in range(d)
            )
            if d > 1:
                f += sp.Rational(1, 4) * sum(x[i] * x[(i + 1) % d] for i in range(d))
            if k >= 2:
                f += pick(["1/3", "-1/4", "1/2"]) * sum(x[i] * blocks[0][i] for i in range(d))
            if k < n - 1:
                below = blocks[k + 1]
                f += pick(["1/2", "-1/2"]) * sum(x[i] * below[i] for i in range(d))
                f += sum(y**2 for y in below) / 2
                for m in range(k + 1, n):
                    f += pick(["1/2", "-1/2", "1/3"]) * sum(
                        sp.sin(x[i] + blocks[m][(i + 1) % d]) for i in range(d)
                    )
        objectives.append(f)
    levels = [
        mv.Level(b[0] if d == 1 else sp.Matrix(b), f)
        for b, f in zip(blocks, objectives, strict=True)
    ]
    return mv.MultilevelProblem(levels)


# ----------------------------------------------------------------------------- one config
def _count(exprs) -> int:
    import sympy as sp

    return sum(sp.count_ops(e) for e in exprs)


def run_config(n: int, d: int, naive: bool, hg_runs: int) -> dict:
    """Measure one (n, d) configuration in this process (called in a fresh subprocess)."""
    import numpy as np
    import sympy as sp
    from sympy.core.cache import clear_cache

    import mlverify
    from mlverify.codegen import straight_line
    from mlverify.derive import derive

    out: dict = {"n": n, "d": d, "mlverify_file": os.path.dirname(mlverify.__file__)}

    # derive(): fresh problem, cold sympy cache, median of up to 3
    times = []
    derivation = None
    for _ in range(3):
        prob = symbolic_problem(n, d)
        clear_cache()
        t0 = time.perf_counter()
        derivation = derive(prob.blocks, prob.objectives)
        times.append(time.perf_counter() - t0)
        if times[0] >= 5.0:
            break
    out["derive_s"] = statistics.median(times)
    out["derive_runs"] = len(times)
    outputs = list(derivation.gradients[0])
    out["graph_ops"] = derivation.graph.size(outputs)
    out["intermediates"] = len(derivation.graph.order)
    out["graph_needed"] = len(derivation.graph.dependencies(outputs))
    # what mlverify.codegen actually prints: the graph with sympy.cse over the partials
    assignments, exprs = straight_line(derivation.graph, outputs)
    out["codegen_ops"] = _count(e for _, e in assignments) + _count(exprs)

    # prob.numeric(): lambdify compile, the derivation already cached on the problem
    prob = symbolic_problem(n, d)
    clear_cache()
    prob.derivation()
    t0 = time.perf_counter()
    prob.numeric()
    out["numeric_s"] = time.perf_counter() - t0

    # hypergradient_at(x1): warm-up, then the median of hg_runs calls
    x1 = [0.3] * d
    try:
        value = prob.hypergradient_at(x1)
        runs = []
        for _ in range(hg_runs):
            t0 = time.perf_counter()
            prob.hypergradient_at(x1)
            runs.append(time.perf_counter() - t0)
            if runs[0] > 2.0 and len(runs) >= 3:
                break
        out["hg_at_ms"] = 1e3 * statistics.median(runs)
        out["hg_at_runs"] = len(runs)
        out["hg_value"] = [float(v) for v in np.asarray(value).ravel()]
    except Exception as exc:  # recorded, not hidden
        out["hg_at_error"] = f"{type(exc).__name__}: {exc}"

    if naive:
        t0 = time.perf_counter()
        expanded = list(prob.hypergradient())
        out["expand_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        out["naive_tree_ops"] = _count(expanded)
        out["count_ops_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        replacements, reduced = sp.cse(expanded)
        out["cse_s"] = time.perf_counter() - t0
        out["naive_cse_ops"] = _count(e for _, e in replacements) + _count(reduced)
    return out


# ----------------------------------------------------------------------------- the sweep
def configurations(quick: bool) -> list[tuple[int, int]]:
    if quick:
        scalar = [(n, 1) for n in range(2, 5)]
        blocks = [(n, d) for n in (2, 3) for d in (2, 3)]
    else:
        scalar = [(n, 1) for n in range(2, 7)]
        blocks = [(n, d) for n in (2, 3, 4) for d in (2, 3, 4)] + [(5, 4)]
    return scalar + blocks


def run_in_subprocess(n: int, d: int, naive: bool, hg_runs: int, timeout: float, env=None) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        json.dumps([n, d, naive, hg_runs]),
    ]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"n": n, "d": d, "status": f"timeout > {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {
            "n": n,
            "d": d,
            "status": "error: " + _machine.error_summary(proc.stderr or proc.stdout),
        }
    result = json.loads(lines[-1][len("RESULT ") :])
    result["status"] = "ok"
    result["subprocess_wall_s"] = wall
    return result


def _fmt_s(x):
    if x is None:
        return "-"
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


def _fmt_int(x):
    return "-" if x is None else f"{x:,}"


def table(rows, naive_columns: bool) -> str:
    head = ["n", "d", "derive (s)", "graph ops", "codegen ops", "intermediates"]
    if naive_columns:
        head += ["naive tree ops", "naive after cse", "cse time (s)"]
    head += ["`numeric()` compile (s)", "`hypergradient_at` (ms)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("status") != "ok":
            cells = [str(r["n"]), str(r["d"]), r["status"]] + ["-"] * (len(head) - 3)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        derive_cell = _fmt_s(r["derive_s"]) + ("" if r["derive_runs"] > 1 else " (1 run)")
        cells = [
            str(r["n"]),
            str(r["d"]),
            derive_cell,
            _fmt_int(r["graph_ops"]),
            _fmt_int(r.get("codegen_ops")),
            _fmt_int(r["intermediates"]),
        ]
        if naive_columns:
            if "naive_tree_ops" in r:
                cells += [
                    _fmt_int(r["naive_tree_ops"]),
                    _fmt_int(r["naive_cse_ops"]),
                    _fmt_s(r["cse_s"]),
                ]
            else:
                cells += ["-", "-", "-"]
        cells.append(_fmt_s(r["numeric_s"]))
        if "hg_at_ms" in r:
            cells.append(f"{r['hg_at_ms']:.3g} (median of {r['hg_at_runs']})")
        else:
            cells.append(r.get("hg_at_error", "-"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sweep (n <= 4, d <= 3)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=400.0,
        help="time limit per configuration in seconds (default 400)",
    )
    parser.add_argument("--hg-runs", type=int, default=7, help="timed hypergradient_at calls")
    parser.add_argument("--out", default=os.path.join(_machine.RESULTS, "symbolic.md"))
    parser.add_argument(
        "--no-snapshot",
        action="store_true",
        help="import mlverify from the working tree in every worker instead of "
        "a copy taken at the start",
    )
    parser.add_argument(
        "--from-json", metavar="JSON", help="only re-render the markdown from a saved results JSON"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.from_json:
        with open(args.from_json) as fh:
            saved = json.load(fh)
        write(
            args.out,
            saved["machine"],
            saved["command"],
            saved["rows"],
            saved.get("timeout_s", args.timeout),
            None,
            saved.get("code_line", ""),
        )
        return

    if args.worker:
        n, d, naive, hg_runs = json.loads(args.worker)
        print("RESULT " + json.dumps(run_config(n, d, naive, hg_runs)), flush=True)
        return

    info = _machine.describe()
    command = _machine.command_line()
    fingerprint = _machine.source_fingerprint()
    snapshot = None if args.no_snapshot else _machine.snapshot_package()
    env = _machine.worker_env(snapshot)
    t_start = time.perf_counter()
    rows = []
    for n, d in configurations(args.quick):
        naive = d == 1 and n <= 4
        row = run_in_subprocess(n, d, naive, args.hg_runs, args.timeout, env)
        rows.append(row)
        brief = {
            k: row.get(k)
            for k in (
                "status",
                "derive_s",
                "graph_ops",
                "intermediates",
                "codegen_ops",
                "naive_tree_ops",
                "naive_cse_ops",
                "numeric_s",
                "hg_at_ms",
            )
        }
        print(f"n={n} d={d}: {brief}", flush=True)
    total_min = (time.perf_counter() - t_start) / 60
    if snapshot:
        import shutil

        shutil.rmtree(snapshot, ignore_errors=True)
    worker_files = {r["mlverify_file"] for r in rows if r.get("mlverify_file")}
    code_line = _machine.code_markdown(fingerprint, snapshot, worker_files)
    end = _machine.source_fingerprint()["sources_sha256"]
    if end != fingerprint["sources_sha256"]:
        code_line += (
            f" The working tree's mlverify/ changed during the sweep (sha256 at the end `{end}`)"
            + ("; the snapshot was measured." if snapshot else "; rows may mix versions.")
        )
    write(args.out, info, command, rows, args.timeout, total_min, code_line, fingerprint)


def write(out, info, command, rows, timeout, total_min, code_line="", fingerprint=None) -> None:
    scalar = [r for r in rows if r["d"] == 1]
    # d = 1 rows repeated in the block-size table, for the n that have d > 1 rows
    vector_ns = {r["n"] for r in rows if r["d"] > 1}
    vector = sorted((r for r in rows if r["n"] in vector_ns), key=lambda r: (r["n"], r["d"]))
    text = [
        "# Symbolic core: derivation time and expression size",
        "",
        "Generated by `benchmarks/bench_symbolic.py`. Each configuration runs in its own fresh",
        "Python process (cold sympy cache) with a time limit of "
        f"{timeout:.0f} s"
        + (f"; the sweep took {total_min:.1f} min" if total_min else "")
        + ". The machine is shared with other jobs (see the load average below), so",
        "wall times are indicative only (repeated numeric sweeps on it differed by up to ~1.5x);",
        "sizes are exact and deterministic.",
        "",
        "## Machine",
        "",
        _machine.markdown(info, command),
        "",
        code_line,
        "",
        "## Problem family",
        "",
        "Seeded non-quadratic n-level problems, blocks of size d (`symbolic_problem` in the "
        "script):",
        "lower levels have quartic own terms `x^4/4 + a x^2/2`, a tanh coupling to the level above",
        "(`x_k . tanh(x_{k-1} + c x_{k-1}' [+ e x_1])`), bilinear and sin couplings to every level",
        "below, and for d >= 2 a ring coupling inside the block; the top level is squared "
        "distances",
        "plus `sin(x_2 + x_n')`. `x1 = (0.3, ..., 0.3)` for `hypergradient_at`.",
        "",
        "## Columns",
        "",
        "* **derive (s)**: `mlverify.derive.derive(prob.blocks, prob.objectives)` on a fresh "
        "problem,",
        "  `sympy.core.cache.clear_cache()` before each run; median of 3 runs, or 1 run where the",
        "  first took >= 5 s.",
        "* **graph ops**: `derivation.graph.size(list(derivation.gradients[0]))`, the operations",
        "  (`sympy.count_ops`) of the straight-line code for the hypergradient.",
        "* **codegen ops**: the same count for what `mlverify.codegen.straight_line` prints (the",
        "  graph, with `sympy.cse` applied across the partial derivatives of the objectives).",
        "* **intermediates**: `len(derivation.graph.order)` (all intermediates the derivation",
        "  defined, including those of the lower-level gradients, Hessians and Jacobians).",
        "* **naive tree ops**: `sum(sympy.count_ops(e) for e in prob.hypergradient())`, the size "
        "of",
        "  the fully expanded hypergradient as a tree (what repeated `sympy.diff` gives); **naive",
        "  after cse**: the same after `sympy.cse` (operations in the replacements plus the "
        "reduced",
        "  expressions); **cse time**: time of that `sympy.cse` call. Scalar blocks, n <= 4 only.",
        "  The expanded tree is obtained by substituting the graph's definitions back",
        "  (`graph.expand`), so its size is exact but the time a naive nested `sympy.diff` would",
        "  take to produce it is not measured here.",
        "* **`numeric()` compile (s)**: `prob.numeric()` (lambdify of the objectives, the lower",
        "  gradients/Hessians, the Jacobians and the hypergradient), derivation already cached.",
        "* **`hypergradient_at` (ms)**: `prob.hypergradient_at(x1)` after one warm-up call: nested",
        "  damped Newton solves of levels 2..n to 1e-12 plus one evaluation of the formula.",
        "",
        "## Scalar blocks (d = 1), n = 2..6",
        "",
        table(scalar, naive_columns=True),
        "",
        "## Block size d at n = 2, 3, 4 (and d = 4 at n = 5)",
        "",
        table(vector, naive_columns=False),
        "",
    ]
    slow = [r for r in rows if r.get("status") == "ok" and r["derive_s"] > 60]
    if slow:
        text += [
            "Over the ~60 s derivation target: "
            + ", ".join(f"n = {r['n']}, d = {r['d']} ({r['derive_s']:.0f} s)" for r in slow)
            + "; kept in the table as measured.",
            "",
        ]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        fh.write("\n".join(text))
    if total_min is not None:  # a fresh run: save the raw numbers too
        with open(os.path.splitext(out)[0] + ".json", "w") as fh:
            json.dump(
                {
                    "machine": info,
                    "command": command,
                    "code": fingerprint,
                    "code_line": code_line,
                    "timeout_s": timeout,
                    "total_min": total_min,
                    "rows": rows,
                },
                fh,
                indent=1,
            )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
