"""`mlverify verify` on deep user files: wall time, peak memory and the time of each step,
before and after (a git revision against the working tree), with the compilation cache
cold and warm.

Each run is its own process (`python -m mlverify verify FILE`, what a user starts) under
`/usr/bin/time` (peak resident memory) and a time limit (a run past it is reported as
"> LIMIT s"). "cold" runs with an empty cache folder, "warm" runs again with the folder
the cold run filled; "before" runs the package as it was at a git revision (extracted to a
temporary folder, first on the path; it has no cache).

    python benchmarks/bench_deep_cli.py --before b1a1f29 --limit 600
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _machine import describe, markdown  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROBLEMS = ROOT / "benchmarks" / "problems"
DATA = ROOT / "tests" / "data"
CONFIGS = [
    ("4 levels, blocks (2, 3, 2, 2), every level coupled below",
     [str(DATA / "four_levels_dense.py")]),
    ("4 levels, blocks (2, 3, 2, 2)", [str(PROBLEMS / "four_levels_vector.py")]),
    ("5 levels, blocks (1, 2, 2, 1, 2)", [str(PROBLEMS / "five_levels_vector.py")]),
    ("4 scalar levels (tests/data/four_levels.py)", [str(DATA / "four_levels.py")]),
    ("default trilevel (no file)", []),
    ("vector block + family (tests/data/vector_ridge.py)", [str(DATA / "vector_ridge.py")]),
]
STEPS = ("jacobians", "assumptions", "cross_check", "theorem_4_1", "theorem_4_2",
         "rounds_to_epsilon")


def _run(package_root: pathlib.Path, argv, out: pathlib.Path, env_extra: dict, limit: float):
    env = dict(os.environ, PYTHONPATH=str(package_root), **env_extra)
    stats = out.with_suffix(".time")
    command = ["/usr/bin/time", "-q", "-f", "%M", "-o", str(stats), "timeout", str(int(limit)),
               sys.executable, "-m", "mlverify", "verify", *argv, "--out", str(out),
               "--no-progress"]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=package_root, env=env, capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - start
    try:
        peak_mb = int(stats.read_text().split()[-1]) / 1024
    except (OSError, ValueError, IndexError):
        peak_mb = float("nan")
    report = out / "report.json"
    steps = {}
    if report.is_file() and done.returncode != 124:
        steps = json.loads(report.read_text()).get("step_times_s", {})
    return {"wall": wall, "peak_mb": peak_mb, "rc": done.returncode, "load": load,
            "timed_out": done.returncode == 124, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="b1a1f29", help="git revision of the 'before' code")
    parser.add_argument("--limit", type=float, default=600, help="seconds per run at most")
    parser.add_argument("--only", nargs="*", help="indices of CONFIGS to run")
    parser.add_argument("--no-before", action="store_true", help="skip the 'before' runs")
    args = parser.parse_args()
    info = describe()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        old = tmp / "before"
        old.mkdir()
        archive = subprocess.run(["git", "archive", args.before, "mlverify"], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        for index, (name, argv) in enumerate(CONFIGS):
            if args.only and str(index) not in args.only:
                continue
            cache = tmp / f"cache-{index}"
            result = {}
            if not args.no_before:
                result["before"] = _run(old, argv, tmp / f"before-{index}", {}, args.limit)
            for label in ("cold", "warm"):
                result[label] = _run(ROOT, argv, tmp / f"{label}-{index}",
                                     {"MLVERIFY_CACHE_DIR": str(cache)}, args.limit)
            print(name, json.dumps(result), flush=True)
            rows.append((name, argv, result))

    def wall(run):
        if run is None:
            return "(not run)"
        if run["timed_out"]:
            return f"> {args.limit:.0f} s (stopped)"
        return f"{run['wall']:.1f} s, {run['peak_mb'] / 1024:.2f} GB, exit {run['rc']}"

    command = (f"python benchmarks/bench_deep_cli.py --before {args.before} --limit "
               f"{args.limit:g}" + (" --no-before" if args.no_before else ""))
    lines = [
        "# `mlverify verify` on deep user files: before and after, cache cold and warm",
        "",
        markdown(info, command),
        "",
        "Each figure is one process `python -m mlverify verify FILE --no-progress` (imports "
        "and compiles included): wall time, peak resident memory, exit status. *before*: the "
        f"code at {args.before}; *cold*: this code with an empty compilation-cache folder; "
        "*warm*: this code again, the folder filled by the cold run. The files are in "
        "`benchmarks/problems/` and `tests/data/`.",
        "",
        "| problem | before | after, cache cold | after, cache warm | warm / cold |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, _argv, result in rows:
        ratio = result["warm"]["wall"] / result["cold"]["wall"]
        lines.append(f"| {name} | {wall(result.get('before'))} | {wall(result['cold'])} | "
                     f"{wall(result['warm'])} | {ratio:.2f} |")
    lines += ["", "Where the time goes (seconds per step, after; cold / warm):", "",
              "| problem | " + " | ".join(STEPS) + " |",
              "| --- |" + " --- |" * len(STEPS)]
    for name, _argv, result in rows:
        cells = []
        for step in STEPS:
            cold, warm = result["cold"]["steps"].get(step), result["warm"]["steps"].get(step)
            cells.append("-" if cold is None else f"{cold:.1f} / {warm:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    out = ROOT / "benchmarks" / "results" / "deep_cli.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
