# ruff: noqa: E501  (markdown table rows are long strings)
"""Sato et al.'s real-data experiment: trilevel hyperparameter learning under data poisoning
on the diabetes data, against the bilevel model, and implicit-exact against ITD on it.

Usage (from the repository root, with the data extra: ``pip install -e ".[data]"``)::

    nice -n 10 python benchmarks/bench_poisoning.py            # ~10 min on one core
    python benchmarks/bench_poisoning.py --quick               # 2 noise levels x 2 seeds, ~2 min

Writes ``benchmarks/results/poisoning.md`` and ``.json``. One process, pinned to one core
(``os.sched_setaffinity`` before jax is imported: XLA then runs single-threaded).

Data (``mlverify.zoo.load_splits``): the 442 x 10 diabetes data shipped in scikit-learn,
every feature and the target standardised, rows split at random by the seed into 147
train / 147 validation / 148 test, Gaussian label noise of standard deviation sigma added
to the training targets only (sigma in ``mlverify.zoo.NOISE_LEVELS``: 0, 0.5, 1, 2 in units
of the target's standard deviation).

Part 1, models: for every noise level and seed, the trilevel model
(``mv.zoo.data_poisoning(dataset="diabetes")``: theta = log lambda; the attacker's P,
147 x 10 = 1470 entries, penalty c = 5; ridge weights w) and the bilevel model
(``mv.zoo.ridge_hyperparameter``) are each solved by implicit-exact from theta = 0:
``ROUNDS`` = 200 projected steps theta <- clip(theta - alpha g, -8, 3) with alpha = 10 (below
2/L for L = 0.14, the largest |F_1''| seen on a theta grid for these splits; the report
counts the rounds where F_1 rose, which would show a step too long), g the exact
hypergradient at the lower levels solved to ``SOLVE_TOL`` = 1e-9 (warm-started): the update of
``mv.optimize(num, "implicit-exact")``, written out so that each problem compiles one
function. Reported: the test MSE of the level-3 weights at the final theta (the model the
trilevel problem learns: trained on the attacked data), the validation MSE F_1, the final
theta, and for the trilevel model also the test MSE of ridge refitted to the (noisy,
unattacked) training data with the trilevel's lambda.

Part 2, algorithms, on the trilevel model (sigma = 1, ``--compare-seeds`` seeds):
``mv.optimize(num, method, steps=COMPARE_ROUNDS, step_size=10, box=(-8, 3), track_exact=True)``
(100 rounds) for implicit-exact, ITD with K = 20 and K = 50 unrolled steps per level (default
inner steps 1/(1.2 L_k)), and the hierarchical single loop (10 inner steps per level per
round). Compilation is done by a 2-round warm-up run on the same problem object, so the
timed run (``trace.time``: the algorithm alone, tracking excluded) is compile-free.
Reported: the wall time until F_1 (lower levels solved exactly, evaluated outside the
timer) first comes within 1 % of the total decrease to the reference value F_ref, the F_1
that implicit-exact reaches in ``REFERENCE_ROUNDS`` = 600 rounds (target = F_ref + 0.01
(F_1(theta_0) - F_ref)), the final F_1 and test MSE (weights
w*(theta_T) with the lower levels solved), and the hypergradient error against the exact
one, e_t = |g_t - grad F_1(theta_t)|: relative at the start (e_0 / |grad F_1(theta_0)|) and
its median over the rounds, absolute (near the optimum grad F_1 -> 0, so relative errors
there measure nothing but the bias).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The mlverify of this checkout, whatever an editable install elsewhere points at.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _machine  # noqa: E402

ALPHA = 10.0
BOX = (-8.0, 3.0)
ROUNDS = 200
COMPARE_NOISE = 1.0
ITD_STEPS = (20, 50)
COMPARE_ROUNDS = 100
REFERENCE_ROUNDS = 600
HIERARCHICAL_STEPS = 10
TARGET_FRACTION = 1e-2
#: Lower-level tolerance (gradient norm). Not 1e-10: the nested solver solves level 3 to the
#: same absolute tolerance as level 2, and where H_3 is ill-conditioned (small lambda) level
#: 3's remaining error keeps level 2's gradient above 1e-10 (a cold solve at theta = -4.7046,
#: seed 0, sigma = 1 stalls at 1.37e-10; see docs/data-poisoning.md).
SOLVE_TOL = 1e-9


def pin_cpu():
    """Pin this process to the last CPU (before jax starts its threads)."""
    try:
        cpu = sorted(os.sched_getaffinity(0))[-1]
        os.sched_setaffinity(0, {cpu})
        return cpu
    except (AttributeError, OSError):
        return None


def solve_implicit(num, rounds):
    """Projected gradient descent on theta with the exact hypergradient (implicit-exact).
    Returns (theta, lower solution at theta, per-round F_1, compile+first-call s, run s)."""
    import jax.numpy as jnp
    import numpy as np

    theta, lower, values = np.zeros(1), None, []
    t0 = time.perf_counter()
    first = None
    for _ in range(rounds + 1):
        options = {"tol": SOLVE_TOL} if lower is None else {"tol": SOLVE_TOL, "init": list(lower)}
        g, lower = num.solve_and_hypergradient(jnp.asarray(theta), "exact", solve_options=options)
        flat = [jnp.asarray(theta)] + [num.flatten(k, x) for k, x in enumerate(lower, 1)]
        values.append(num.objective_value(0, flat))
        if first is None:
            first = time.perf_counter() - t0
        if len(values) <= rounds:
            theta = np.clip(theta - ALPHA * np.asarray(g), *BOX)
    return theta, lower, values, first, time.perf_counter() - t0 - first


def _rises(values):
    """(rounds where F_1 rose beyond round-off, the largest rise): a rise of the size of the
    lower solve's error in F_1 is noise; a large one would mean the step is too long."""
    steps = [b - a for a, b in zip(values, values[1:], strict=False)]
    count = sum(d > 1e-12 * (1 + abs(a)) for a, d in zip(values, steps, strict=False))
    return count, max(steps)


def part_models(noise_levels, seeds, rounds):
    import numpy as np

    from mlverify import zoo

    rows = []
    for noise in noise_levels:
        for seed in seeds:
            splits = zoo.load_splits("diabetes", seed=seed, noise=noise)
            row = {"noise": noise, "seed": seed}
            tri = zoo.data_poisoning(dataset="diabetes", seed=seed, noise=noise)
            theta, lower, values, first, run = solve_implicit(tri, rounds)
            p, w = (np.asarray(b) for b in lower)
            row["tri"] = {
                "theta": float(theta[0]), "val_mse": values[-1], "test_mse": splits.test_mse(w),
                "refit_test_mse": splits.test_mse(zoo.ridge_closed_form(splits, float(theta[0]))[0]),
                "attack_rms": float(np.sqrt(np.mean(p**2))), "first_call_s": first, "run_s": run,
                "final_step": float(abs(values[-1] - values[-2])), "rises": _rises(values)[0],
                "max_rise": _rises(values)[1],
            }
            bil = zoo.ridge_hyperparameter(splits=splits)
            theta_b, lower_b, values_b, first_b, run_b = solve_implicit(bil, rounds)
            w_b = np.asarray(lower_b[0])
            w_closed, _ = zoo.ridge_closed_form(splits, float(theta_b[0]))
            row["bil"] = {
                "theta": float(theta_b[0]), "val_mse": values_b[-1], "test_mse": splits.test_mse(w_b),
                "closed_form_gap": float(np.max(np.abs(w_b - w_closed))), "rises": _rises(values_b)[0],
                "max_rise": _rises(values_b)[1],
                "first_call_s": first_b, "run_s": run_b,
            }
            print(f"  noise {noise:g} seed {seed}: test MSE tri {row['tri']['test_mse']:.4f} "
                  f"(theta {row['tri']['theta']:.2f}), bil {row['bil']['test_mse']:.4f} "
                  f"(theta {row['bil']['theta']:.2f}); first calls {first:.1f} / {first_b:.1f} s",
                  flush=True)
            rows.append(row)
    return rows


def _true_F1(num, xs):
    """F_1 along the outer iterates, lower levels solved (warm-started), outside any timer."""
    import jax.numpy as jnp

    values, init = [], None
    for x in xs:
        lower = num.solve_lower(jnp.asarray(x), tol=SOLVE_TOL, init=init)
        init = list(lower)
        flat = [jnp.asarray(x)] + [num.flatten(k, b) for k, b in enumerate(lower, 1)]
        values.append(num.objective_value(0, flat))
    return values


def part_algorithms(seeds, rounds):
    import jax.numpy as jnp
    import numpy as np

    import mlverify as mv
    from mlverify import zoo

    methods = [("implicit-exact", {}), *[(f"itd K={k}", {"inner_steps": k}) for k in ITD_STEPS],
               (f"hierarchical ({HIERARCHICAL_STEPS} inner steps)", {"inner_steps": HIERARCHICAL_STEPS})]
    rows = []
    for seed in seeds:
        splits = zoo.load_splits("diabetes", seed=seed, noise=COMPARE_NOISE)
        num = zoo.data_poisoning(dataset="diabetes", seed=seed, noise=COMPARE_NOISE)
        row = {"seed": seed, "methods": {}}
        for label, options in methods:
            method = label.split()[0]
            common = dict(step_size=ALPHA, box=BOX, x0=np.zeros(1), track_exact=True,
                          solve_options={"tol": SOLVE_TOL}, **options)
            entry = {}
            try:
                t0 = time.perf_counter()
                mv.optimize(num, method, steps=2, **common)
                entry["warmup_s"] = time.perf_counter() - t0
                trace = mv.optimize(num, method, steps=rounds, **common)
            except Exception as exc:  # noqa: BLE001 - recorded in the report, never hidden
                entry["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                row["methods"][label] = entry
                print(f"  seed {seed} {label}: {entry['error']}", flush=True)
                continue
            F1 = list(trace.F1) if trace.F1_exact else _true_F1(num, trace.x1)
            lower = num.solve_lower(jnp.asarray(trace.x1[-1]), tol=SOLVE_TOL)
            exact, error = np.asarray(trace.exact_grad_norm), np.asarray(trace.error)
            entry.update(
                F1=[float(v) for v in F1], time=[float(v) for v in trace.time],
                theta_final=float(trace.x1[-1][0]), F1_final=float(F1[-1]),
                test_mse=splits.test_mse(np.asarray(lower[-1])),
                errors=[float(v) for v in error], exact_grad_norm=[float(v) for v in exact],
                rel_error_start=float(error[0] / exact[0]), abs_error_median=float(np.median(error)),
                total_s=float(trace.time[-1]),
            )
            row["methods"][label] = entry
            print(f"  seed {seed} {label}: F_1 {entry['F1_final']:.6f}, test {entry['test_mse']:.4f}, "
                  f"{entry['total_s']:.2f} s for {rounds} rounds, hypergradient error at the start "
                  f"{entry['rel_error_start']:.1e} (relative), median {entry['abs_error_median']:.1e}",
                  flush=True)
        _, _, reference, _, _ = solve_implicit(num, REFERENCE_ROUNDS)
        row["F_ref"] = reference[-1]
        imp = row["methods"].get("implicit-exact", {})
        if "F1" in imp:
            f0, f_ref = imp["F1"][0], reference[-1]
            target = f_ref + TARGET_FRACTION * (f0 - f_ref)
            row["target"] = target
            for entry in row["methods"].values():
                if "F1" not in entry:
                    continue
                hit = next((t for t, v in enumerate(entry["F1"]) if v <= target), None)
                entry["round_to_target"] = hit
                entry["time_to_target"] = None if hit is None else (0.0 if hit == 0 else entry["time"][hit - 1])
        rows.append(row)
    return rows


def _mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def write_markdown(result, path):
    lines = [
        "# Sato et al.'s experiment on the diabetes data: trilevel against bilevel, implicit-exact against ITD",
        "",
        "Generated by `benchmarks/bench_poisoning.py` (its docstring defines every quantity). One process "
        "pinned to one core. Data: scikit-learn's diabetes data (442 x 10), features and target "
        "standardised, seeded splits 147 train / 147 validation / 148 test, Gaussian label noise of "
        "standard deviation sigma on the training targets only. Trilevel: level-2 block P of 147 x 10, "
        "attacker penalty c = 5.",
        "",
        _machine.markdown(result["machine"], result["command"]),
        "",
        f"Total run time: {result.get('total_s', 0) / 60:.1f} min.",
        "",
    ]
    models = result.get("models", [])
    if models:
        seeds = sorted({r["seed"] for r in models})
        lines += [
            f"## Test MSE, trilevel against bilevel (mean ± standard deviation over {len(seeds)} seeds)",
            "",
            f"Both models by implicit-exact, {result['rounds']} rounds from theta = 0 (alpha = {ALPHA:g}, "
            f"theta in [{BOX[0]:g}, {BOX[1]:g}], lower levels solved to {SOLVE_TOL:g}). 'wins' = seeds where the trilevel's test MSE is lower. "
            "'refit' = ridge on the unattacked training data with the trilevel's lambda.",
            "",
            "| sigma | bilevel test MSE | trilevel test MSE | trilevel wins | trilevel refit test MSE | bilevel val MSE | trilevel val MSE | theta bilevel | theta trilevel |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for noise in sorted({r["noise"] for r in models}):
            rs = [r for r in models if r["noise"] == noise]
            wins = sum(r["tri"]["test_mse"] < r["bil"]["test_mse"] for r in rs)
            lines.append(
                f"| {noise:g} | {_mean_sd([r['bil']['test_mse'] for r in rs])} | "
                f"{_mean_sd([r['tri']['test_mse'] for r in rs])} | {wins}/{len(rs)} | "
                f"{_mean_sd([r['tri']['refit_test_mse'] for r in rs])} | "
                f"{_mean_sd([r['bil']['val_mse'] for r in rs])} | {_mean_sd([r['tri']['val_mse'] for r in rs])} | "
                f"{_mean_sd([r['bil']['theta'] for r in rs])} | {_mean_sd([r['tri']['theta'] for r in rs])} |"
            )
        first_tri = [r["tri"]["first_call_s"] for r in models]
        first_bil = [r["bil"]["first_call_s"] for r in models]
        gaps = [r["bil"]["closed_form_gap"] for r in models]
        steps = [r["tri"]["final_step"] for r in models]
        lines += [
            "",
            f"First call per problem (trace + compile + one solve): trilevel median {statistics.median(first_tri):.1f} s, "
            f"bilevel {statistics.median(first_bil):.1f} s; the {result['rounds']} rounds after it: trilevel median "
            f"{statistics.median([r['tri']['run_s'] for r in models]):.2f} s, bilevel "
            f"{statistics.median([r['bil']['run_s'] for r in models]):.2f} s. Bilevel weights against the closed form: "
            f"max deviation {max(gaps):.1e}. Last-round change of the trilevel F_1: max {max(steps):.1e}. "
            f"Rounds where F_1 rose: {sum(r['tri']['rises'] + r['bil']['rises'] for r in models)} of "
            f"{2 * len(models) * result['rounds']}, by at most "
            f"{max(max(r['tri'].get('max_rise', 0), r['bil'].get('max_rise', 0)) for r in models):.1e} "
            f"(lower levels solved to {SOLVE_TOL:g}).",
            "",
            "Per seed (test MSE bilevel / trilevel):",
            "",
        ]
        for noise in sorted({r["noise"] for r in models}):
            rs = [r for r in models if r["noise"] == noise]
            cells = ", ".join(f"{r['seed']}: {r['bil']['test_mse']:.3f} / {r['tri']['test_mse']:.3f}" for r in rs)
            lines.append(f"- sigma {noise:g}: {cells}")
        lines.append("")
    algos = result.get("algorithms", [])
    if algos:
        labels = list(algos[0]["methods"])
        lines += [
            f"## Trilevel model, sigma = {COMPARE_NOISE:g}: implicit-exact, ITD and the hierarchical single loop",
            "",
            f"`mv.optimize(..., steps={result['compare_rounds']}, step_size={ALPHA:g}, box=({BOX[0]:g}, {BOX[1]:g}), track_exact=True, solve_options={{'tol': {SOLVE_TOL:g}}})` "
            "after a 2-round warm-up (compile). Time to target: wall time of the algorithm until F_1 (lower levels "
            f"solved) is within {TARGET_FRACTION:g} of the total decrease to F_ref, the value implicit-exact reaches "
            f"in {REFERENCE_ROUNDS} rounds ('never' = not within the run). Hypergradient error e_t = |g_t - grad F_1(theta_t)|: relative at "
            "theta_0 = 0, and its median over the rounds (absolute; the norm of grad F_1(theta_0) is given per seed).",
            "",
            "| seed | method | time to target | round | whole run | final F_1 (val MSE) | final test MSE | hypergradient error: relative at theta_0 / median absolute | warm-up (compile) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in algos:
            imp = row["methods"].get("implicit-exact", {})
            if "exact_grad_norm" in imp:
                lines.append(f"| {row['seed']} | (grad F_1(theta_0) = {imp['exact_grad_norm'][0]:.2e} in norm, "
                             f"F_ref = {row['F_ref']:.6f}) | | | | | | | |")
            for label in labels:
                e = row["methods"].get(label, {})
                if "error" in e:
                    lines.append(f"| {row['seed']} | {label} | failed: {e['error']} | | | | | | |")
                    continue
                ttt = "never" if e.get("time_to_target") is None else f"{e['time_to_target'] * 1e3:.0f} ms"
                lines.append(
                    f"| {row['seed']} | {label} | {ttt} | {'-' if e.get('round_to_target') is None else e['round_to_target']} | {e['total_s']:.2f} s | "
                    f"{e['F1_final']:.6f} | {e['test_mse']:.4f} | {e['rel_error_start']:.1e} / {e['abs_error_median']:.1e} | "
                    f"{e['warmup_s']:.1f} s |"
                )
        lines += ["", "Time to target, ratio to implicit-exact (median over seeds; > 1: implicit-exact faster):", ""]
        for label in labels[1:]:
            ratios, missed = [], 0
            for row in algos:
                imp, e = row["methods"].get("implicit-exact", {}), row["methods"].get(label, {})
                if imp.get("time_to_target") and e.get("time_to_target") is not None:
                    ratios.append(e["time_to_target"] / imp["time_to_target"])
                elif "F1" in e:
                    missed += 1
            text = f"{statistics.median(ratios):.1f}" if ratios else "-"
            lines.append(f"- {label}: {text} ({len(ratios)} seeds reached the target, {missed} never did)")
        lines.append("")
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 noise levels x 2 seeds, 1 comparison seed")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--compare-seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="outer rounds, part 1")
    parser.add_argument("--compare-rounds", type=int, default=COMPARE_ROUNDS, help="part 2")
    parser.add_argument("--out", default=None, help="output prefix (default results/poisoning)")
    parser.add_argument("--from-json", default=None, help="re-render the markdown from a saved JSON")
    args = parser.parse_args()
    prefix = args.out or os.path.join(_machine.RESULTS, "poisoning")
    if args.from_json:
        with open(args.from_json) as fh:
            write_markdown(json.load(fh), prefix + ".md")
        return
    pin_cpu()
    from mlverify.zoo import NOISE_LEVELS

    noise_levels = (0.0, 2.0) if args.quick else NOISE_LEVELS
    seeds = range(2 if args.quick else args.seeds)
    compare = range(1 if args.quick else args.compare_seeds)
    result = {"machine": _machine.describe(), "command": _machine.command_line(),
              "rounds": args.rounds, "compare_rounds": args.compare_rounds}
    start = time.perf_counter()
    print("part 1: trilevel vs bilevel test MSE", flush=True)
    result["models"] = part_models(noise_levels, seeds, args.rounds)
    result["total_s"] = time.perf_counter() - start
    save(result, prefix)
    print("part 2: implicit-exact vs ITD vs hierarchical", flush=True)
    result["algorithms"] = part_algorithms(compare, args.compare_rounds)
    result["total_s"] = time.perf_counter() - start
    save(result, prefix)
    print(f"done in {result['total_s'] / 60:.1f} min -> {prefix}.md", flush=True)


def save(result, prefix):
    with open(prefix + ".json", "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    write_markdown(result, prefix + ".md")


if __name__ == "__main__":
    main()
