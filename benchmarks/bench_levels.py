"""Theorem 4.2's dependence on the number of levels: T_eps(n) on two zoo families, over seeds.

For each family and seed: T_eps(n), the rounds of the single-loop (hierarchical) scheme until
||grad F_1||^2 <= 1e-10, for n = 2..5, with the step 1/L_n (L_n sampled on x_0 +- 1), and
the fitted growth (slope of T_eps against n, rounds per level; slope of log T_eps, per
level). Reported: every seed's row, and the mean and standard deviation of the slopes.

    python benchmarks/bench_levels.py --seeds 5
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

from mlverify import verify, zoo

ROOT = pathlib.Path(__file__).resolve().parent.parent
FAMILIES = {
    "compounding": lambda seed: (lambda n: zoo.compounding(n, seed=seed)),
    "nonquadratic": lambda seed: (lambda n: zoo.nonquadratic(n, seed=seed)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-n", type=int, default=5)
    args = parser.parse_args()
    ns = tuple(range(2, args.max_n + 1))
    lines = [
        "# T_eps(n) against the number of levels, over seeds",
        "",
        f"Command: `python benchmarks/bench_levels.py --seeds {args.seeds} --max-n {args.max_n}`"
        f". Date: {time.strftime('%Y-%m-%d')}. Single-loop (hierarchical) scheme, one inner "
        "step per level and round, step 1/L_n, target ||grad F_1||^2 <= 1e-10, start x_1 = 0 "
        "with the lower iterates at 0; > 400: not reached in 400 rounds. Growth: least-squares "
        "slope of T_eps against n "
        "(rounds per level) and of log T_eps against n (per level).",
        "",
    ]
    for name, make in FAMILIES.items():
        lines += [f"## {name}", "", "| seed | " + " | ".join(f"n = {n}" for n in ns)
                  + " | rounds per level | log T_eps per level | seconds |",
                  "| --- |" + " --- |" * (len(ns) + 3)]
        linear, geometric, diverged = [], [], []
        for seed in range(args.seeds):
            began = time.perf_counter()
            rows = verify.rounds_to_epsilon(make(seed), ns=ns)
            seconds = time.perf_counter() - began
            linear.append(rows["growth_linear"])
            geometric.append(rows["growth_per_level"])
            cells = []
            for n, t_eps, why in zip(rows["n"], rows["T_eps"], rows["diverged"], strict=True):
                if why:
                    diverged.append(f"seed {seed}, n = {n}: {why}")
                cells.append("diverged" if why else ("> 400" if t_eps == float("inf")
                                                     else str(t_eps)))
            lines.append(f"| {seed} | " + " | ".join(cells)
                         + f" | {rows['growth_linear']:.2f} | {rows['growth_per_level']:.3f} | "
                         f"{seconds:.1f} |")
            print(name, seed, rows["T_eps"], f"{seconds:.1f} s", flush=True)
        lines += ["", f"Growth over {args.seeds} seeds: {statistics.mean(linear):.2f} +- "
                  f"{statistics.stdev(linear):.2f} rounds per level; log T_eps "
                  f"{statistics.mean(geometric):.3f} +- {statistics.stdev(geometric):.3f} per "
                  "level (mean +- standard deviation; the fit uses the finite T_eps)."
                  " Seconds: the whole study of one seed, n = 2 to "
                  f"{args.max_n}, in one process (derivations, runs and exact hypergradients "
                  "by the compiled symbolic formulas).", ""]
        if diverged:
            lines += ["Diverged runs (the single loop's inner step 1/L_k, L_k at the start, too "
                      "large for the curvature met along the run):", ""]
            lines += [f"- {line}" for line in diverged] + [""]
    out = ROOT / "benchmarks" / "results" / "levels.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
