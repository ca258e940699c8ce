# ruff: noqa: E501  (markdown table rows are long strings)
"""Head to head: time to a 1e-6 relative hypergradient, implicit-exact against ITD, and how the
ratio depends on the number of levels n, the block size d and the lower levels' conditioning.

Usage (from the repository root)::

    python benchmarks/bench_h2h.py            # the full grid (~15-25 min on the 2-core machine)
    python benchmarks/bench_h2h.py --quick    # blocks of 10, kappa 1 and 10 (~4 min)

Writes ``benchmarks/results/h2h.md`` and ``.json``.

Problems: ``bench_algorithms.family(n, d, seed=0, condition=kappa)``: the non-quadratic
tanh-coupled family of ``bench_algorithms.py`` whose own quadratic term has curvatures
log-spaced in [1, kappa] (kappa = 1 is exactly that script's problem; its reduced Hessians
have condition numbers ~2-3, measured and reported here as kappa_eff).

Per problem, in one process pinned to one core:

* reference: ``num.solve_lower(x1, tol=1e-12)`` and the ``exact`` hypergradient there;
* implicit-exact: ``num.hypergradient(x1, "exact", solve_options={"tol": t, "init": <solution
  at the nearby point x1'>})``, the user-facing call an outer step of ``optimize`` makes: the
  compiled nested Newton (warm-started as in an outer loop) and the exact hypergradient at its
  result in one compiled call, status checks included; t is the loosest of 1e-2, 1e-4, 1e-6,
  1e-8, 1e-10 whose error is <= 1e-6;
* ITD: the library's ``itd_hypergradient`` compiled, from the fixed start (zeros), inner steps
  c / L_k with L_k = lambda_max(D_kk F_k) at the reference (``lower_lipschitz``) and c tuned
  against the reference over 0.5..1.8 at a probe K (this favours ITD; no status checks, also
  in its favour); K doubles from 5 until the error is <= 1e-6, then is bisected down to the
  smallest K (within 10 %) that reaches it; if the next K's projected time (x 2^(n-1)) passes
  ``--cap`` seconds first, ITD did not reach 1e-6 and the ratio is reported as a lower bound,
  at the best error it did reach.

Part 2 (trilevel, blocks of 10): time to the outer solution with ``mv.optimize``, see
``run_outer``.

The final pair is re-timed in blocks A-B-A (implicit-exact, ITD, implicit-exact), medians of
several calls after a warm-up call per block, ``block_until_ready`` on each; compile is
excluded and reported.
ratio = ITD time / implicit-exact time (> 1: implicit-exact faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402
from bench_algorithms import _itd_fn, compile_fn, family, flat_at, hg_function, pin_cpu, rel_err  # noqa: E402

TARGET = 1e-6
TOLS = (1e-2, 1e-4, 1e-6, 1e-8, 1e-10)
STEP_FACTORS = (0.5, 0.7, 0.9, 1.0, 1.2, 1.5, 1.8)


def grid(quick: bool):
    if quick:
        return [(3, 10, 1.0), (3, 10, 10.0), (4, 10, 1.0), (4, 10, 10.0)]
    return [
        (n, d, kappa)
        for kappa in (1.0, 10.0, 100.0)
        for n, d in ((3, 10), (3, 100), (4, 10), (4, 100))
    ] + [(3, 1000, 1.0), (3, 1000, 10.0)]


def call_times(fn, reps, warm_up=False):
    """Wall times of ``reps`` calls of fn(), each ended by ``block_until_ready`` (after one
    untimed call when ``warm_up``)."""
    import jax

    if warm_up:
        jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return times


def run_problem(n, d, kappa, cap):
    import jax
    import jax.numpy as jnp
    import numpy as np

    row = {"n": n, "d": d, "kappa": kappa}
    num, x1, near_x1 = family(n, d, condition=kappa)
    t0 = time.perf_counter()
    ref = num.solve_lower(x1, tol=1e-12)
    row["solver_compile_and_first_solve_s"] = time.perf_counter() - t0
    ref_flat = flat_at(x1, ref)
    exact, _, row["exact_compile_s"] = compile_fn(hg_function(num, "exact"), ref_flat)
    g_ref = np.asarray(exact(ref_flat))
    lips = num.lower_lipschitz([x1, *ref])
    # lambda_min by eigvalsh of the dense reduced Hessians (not formed for blocks of 1000)
    hessians = num.lower_hessians([x1, *ref]) if d <= 200 else [None] * (n - 1)
    mins = [float("nan") if h is None else float(np.linalg.eigvalsh(h)[0]) for h in hessians]
    row["kappa_eff"] = [lam / mu for lam, mu in zip(lips, mins, strict=True)]
    near = num.solve_lower(near_x1, tol=1e-12)

    # implicit-exact: the library's one compiled call (warm-started solve + exact
    # hypergradient), at the loosest tolerance that reaches the target
    for tol in TOLS:
        g, low = num.solve_and_hypergradient(x1, "exact", solve_options={"tol": tol, "init": near})
        err = rel_err(g, g_ref)
        if err <= TARGET:
            break
    row["implicit_tol"], row["implicit_err"], row["newton_steps"] = tol, err, low.iterations

    def implicit():
        return num.hypergradient(x1, "exact", solve_options={"tol": tol, "init": near})

    # ITD: tune the step factor at a probe K, then double K
    cold = flat_at(x1, [np.zeros(d)] * (n - 1))
    probe = 10 if n == 3 else 5
    itd_probe, _, _ = compile_fn(_itd_fn(num, probe), cold, jnp.asarray(lips))
    errors = {c: rel_err(itd_probe(cold, jnp.asarray(lips) ** -1 * c), g_ref) for c in STEP_FACTORS}
    factor = min(errors, key=errors.get)
    lrs = jnp.asarray([factor / lam for lam in lips])
    row["itd_step_factor"], row["itd_step_errors"] = factor, errors
    sweep = []

    def try_K(K):
        compiled, _, compile_s = compile_fn(_itd_fn(num, K), cold, lrs)
        t0 = time.perf_counter()
        g = jax.block_until_ready(compiled(cold, lrs))
        first = time.perf_counter() - t0
        seconds = statistics.median(call_times(lambda: compiled(cold, lrs), 3 if first < 1 else 1))
        err = rel_err(g, g_ref)
        sweep.append({"K": K, "seconds": seconds, "err": err, "compile_s": compile_s})
        print(f"  n={n} d={d} kappa={kappa:g}: ITD K={K} err {err:.2e} in {seconds * 1e3:.2f} ms", flush=True)
        return compiled, err, seconds

    # Double K until the target is met (or the cap), then bisect down to the smallest K
    # (within 10 %) that meets it: doubling alone would overstate ITD's cost by up to 2^(n-1).
    K, failed_K = 5, 0
    while True:
        compiled, err, seconds = try_K(K)
        if err <= TARGET or seconds * 2 ** (n - 1) > cap or not np.isfinite(err):
            break
        failed_K, K = K, 2 * K
    best = (compiled, K, err)
    if err <= TARGET:
        lo, hi = failed_K, K
        while hi - lo > max(1, lo // 10):
            mid = (lo + hi) // 2
            compiled_mid, err_mid, _ = try_K(mid)
            if err_mid <= TARGET:
                hi, best = mid, (compiled_mid, mid, err_mid)
            else:
                lo = mid
    row["itd_sweep"] = sorted(sweep, key=lambda s: s["K"])
    compiled, K, itd_err = best
    row["itd_K"], row["itd_err"], row["itd_reached"] = K, itd_err, itd_err <= TARGET

    def unrolled():
        return compiled(cold, lrs)

    # Blocks A-B-A (implicit, ITD, implicit) rather than call-by-call interleaving: a call
    # right after a large ITD call runs several times slower (ITD's reverse pass allocates
    # big buffers; measured 1.1 ms alone vs 3-9.5 ms right after, n=4, d=10); the second A
    # block catches drift from other jobs on the machine.
    single = max(s["seconds"] for s in sweep if s["K"] == K)
    reps = 11 if single < 0.05 else (5 if single < 2 else 3)
    # Each block starts with an untimed call (allocations, caches).
    ti = call_times(implicit, 11, warm_up=True)
    tu = call_times(unrolled, reps, warm_up=True)
    ti += call_times(implicit, 11, warm_up=True)
    row["implicit_s"], row["itd_s"] = statistics.median(ti), statistics.median(tu)
    row["ratio"] = row["itd_s"] / row["implicit_s"]
    row["ratio_of_minima"] = min(tu) / min(ti)
    return row


def run_outer(n, d, kappa, itd_K, itd_factor, rounds):
    """Part 2: time to the outer solution. ``mv.optimize`` with implicit-exact (solve tol
    1e-10, warm-started) and with ITD (K and step factor from part 1), both at step 1/L;
    x_1* from a 3x longer implicit-exact run at solve tol 1e-12. Reported: the algorithm's
    wall time (``trace.time``) to the first round with ||x_1^t - x_1*|| <= 1e-6 ||x_1*||."""
    import numpy as np

    from mlverify.optimize import estimate_lipschitz, optimize

    num, x1, _ = family(n, d, condition=kappa)
    L = estimate_lipschitz(num, x1)
    common = {"L": L, "x0": x1}
    star = optimize(num, "implicit-exact", steps=3 * rounds, solve_options={"tol": 1e-12}, **common)
    x_star = star.x1[-1]
    ref = num.solve_lower(x1, tol=1e-12)
    lips = num.lower_lipschitz([x1, *ref])
    lr = tuple(itd_factor / lam for lam in lips)  # hashable: it keys the compiled function
    row = {"n": n, "d": d, "kappa": kappa, "L": L, "rounds": rounds, "itd_K": itd_K}
    for method, options in (("implicit-exact", {"solve_options": {"tol": 1e-10}}),
                            ("itd", {"inner_steps": itd_K, "inner_lr": lr})):
        optimize(num, method, steps=2, **common, **options)  # compile outside the timing
        trace = optimize(num, method, steps=rounds, **common, **options)
        dist = np.linalg.norm(trace.x1[1:] - x_star, axis=1) / np.linalg.norm(x_star)
        hit = np.flatnonzero(dist <= TARGET)
        row[method] = {
            "seconds": float(trace.time[hit[0]]) if hit.size else None,
            "round": int(hit[0]) + 1 if hit.size else None,
            "final_distance": float(dist[-1]),
            "total_seconds": float(trace.time[-1]),
        }
    a, b = row["implicit-exact"]["seconds"], row["itd"]["seconds"]
    row["ratio"] = b / a if a and b else None
    # ITD never there (its fixed K leaves a bias): its whole run already took this long.
    row["ratio_lower_bound"] = (row["itd"]["total_seconds"] / a if a and not b else None)
    return row


def _fmt_t(s):
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def write_markdown(result, path):
    lines = [
        "# Head to head: implicit-exact vs ITD, time to a 1e-6 hypergradient, by n, d and conditioning",
        "",
        "Generated by `benchmarks/bench_h2h.py` (its docstring defines every quantity). One process "
        "pinned to one core; compile excluded; medians of calls timed in blocks A-B-A. ratio = ITD / "
        "implicit-exact (> 1: implicit-exact faster). ITD's inner step is tuned against the "
        "reference (favours ITD); implicit-exact is warm-started from the nearby point's solution.",
        "",
        _machine.markdown(result["machine"], result["command"]),
        "",
        f"Total run time: {result['total_s'] / 60:.1f} min. ITD cap: {result['cap']} s per call.",
        "",
        "| n | d | kappa | kappa_eff (levels 2..n) | implicit-exact (solve tol, Newton steps) | ITD (K, step c/L) | errors (imp / ITD) | ratio | ratio of minima |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['n']} | {r['d']} | {r['kappa']:g} | | failed: {r['error']} | | | | |")
            continue
        eff = ", ".join("?" if v != v else f"{v:.3g}" for v in r["kappa_eff"])
        reached = "" if r["itd_reached"] else " (did not reach 1e-6)"
        bound = "" if r["itd_reached"] else "> "
        lines.append(
            f"| {r['n']} | {r['d']} | {r['kappa']:g} | {eff} | {_fmt_t(r['implicit_s'])} "
            f"(tol {r['implicit_tol']:g}, {r['newton_steps']}) | {_fmt_t(r['itd_s'])} (K={r['itd_K']}, "
            f"c={r['itd_step_factor']:g}){reached} | {r['implicit_err']:.1e} / {r['itd_err']:.1e} | "
            f"**{bound}{r['ratio']:.3g}** | {bound}{r['ratio_of_minima']:.3g} |"
        )
    outer = result.get("outer", [])
    if outer:
        lines += [
            "",
            "## Time to the outer solution (`mv.optimize`, step 1/L)",
            "",
            "Wall time of the algorithm (`trace.time`) until ||x_1^t - x_1*|| <= 1e-6 ||x_1*||; "
            "x_1* from a 3x longer implicit-exact run at solve tol 1e-12; 40 x kappa rounds. ITD "
            "runs with the K and step of the table above (its hypergradient reaches 1e-6 at the "
            "start point)." + (f" Part 2 re-run by `{result['outer_command']}`." if result.get("outer_command") else ""),
            "",
            "| n | d | kappa | implicit-exact: time (round) | ITD: time (round), K | final distance (imp / ITD) | ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in outer:
            if "error" in r:
                lines.append(f"| {r['n']} | {r['d']} | {r['kappa']:g} | failed: {r['error']} | | | |")
                continue
            cells = []
            for m in ("implicit-exact", "itd"):
                v = r[m]
                cells.append(f"never in {_fmt_t(v['total_seconds'])}" if v["seconds"] is None
                             else f"{_fmt_t(v['seconds'])} ({v['round']})")
            ratio = "n/a" if r["ratio"] is None else f"**{r['ratio']:.3g}**"
            if r.get("ratio_lower_bound"):
                ratio = f"**> {r['ratio_lower_bound']:.3g}** (ITD's whole run)"
            lines.append(
                f"| {r['n']} | {r['d']} | {r['kappa']:g} | {cells[0]} | {cells[1]}, K={r['itd_K']} | "
                f"{r['implicit-exact']['final_distance']:.1e} / {r['itd']['final_distance']:.1e} | {ratio} |"
            )
    lines += ["", "ITD's K sweeps (K: error, time):", ""]
    for r in result["rows"]:
        if "itd_sweep" in r:
            sweep = "; ".join(f"{s['K']}: {s['err']:.1e}, {_fmt_t(s['seconds'])}" for s in r["itd_sweep"])
            lines.append(f"- n={r['n']}, d={r['d']}, kappa={r['kappa']:g}: {sweep}")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cap", type=float, default=20.0, help="seconds an ITD call may take")
    parser.add_argument("--out", default=None, help="output prefix (default results/h2h)")
    parser.add_argument("--rounds", type=int, default=40, help="outer rounds in part 2, x kappa")
    parser.add_argument("--outer-from", default=None, help="re-run part 2 only on a saved JSON")
    parser.add_argument("--from-json", default=None)
    args = parser.parse_args()
    prefix = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "h2h")
    if args.from_json:
        with open(args.from_json) as fh:
            write_markdown(json.load(fh), prefix + ".md")
        return
    pin_cpu()
    if args.outer_from:
        with open(args.outer_from) as fh:
            result = json.load(fh)
        result["outer_command"] = _machine.command_line()
        outer(result, args.rounds, time.perf_counter() - result["total_s"], prefix)
        return
    result = {"machine": _machine.describe(), "command": _machine.command_line(), "cap": args.cap, "rows": []}
    start = time.perf_counter()
    for n, d, kappa in grid(args.quick):
        print(f"n={n} d={d} kappa={kappa:g}", flush=True)
        try:
            row = run_problem(n, d, kappa, args.cap)
        except Exception as exc:  # noqa: BLE001 - recorded in the report, never hidden
            row = {"n": n, "d": d, "kappa": kappa, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        print(f"  -> {json.dumps({k: row.get(k) for k in ('ratio', 'implicit_s', 'itd_s', 'itd_K', 'error')})}", flush=True)
        result["rows"].append(row)
        save(result, start, prefix)
    outer(result, args.rounds, start, prefix)


def outer(result, rounds, start, prefix):
    """Part 2 for the trilevel rows with blocks of 10 and kappa <= 10. Level 1's own term has
    curvatures in [1, kappa] too, so gradient descent at 1/L needs ~kappa times more rounds:
    ``rounds * kappa`` are run (kappa = 100 would take 4000 ITD rounds of ~0.1 s)."""
    result["outer"] = []
    for r in result["rows"]:
        if "error" in r or r["d"] > 10 or r["n"] != 3 or r["kappa"] > 10 or not r["itd_reached"]:
            continue
        print(f"outer runs n={r['n']} d={r['d']} kappa={r['kappa']:g}", flush=True)
        try:
            row = run_outer(r["n"], r["d"], r["kappa"], r["itd_K"], r["itd_step_factor"],
                            int(rounds * r["kappa"]))
        except Exception as exc:  # noqa: BLE001
            row = {"n": r["n"], "d": r["d"], "kappa": r["kappa"], "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        print(f"  -> {row.get('ratio')}", flush=True)
        result["outer"].append(row)
        save(result, start, prefix)


def save(result, start, prefix):
    result["total_s"] = time.perf_counter() - start
    with open(prefix + ".json", "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    write_markdown(result, prefix + ".md")


if __name__ == "__main__":
    main()
