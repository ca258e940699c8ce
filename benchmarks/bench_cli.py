"""How long `mlverify verify` takes, before and after the speed work of 2026-12.

Each configuration runs as its own process (`python -m mlverify.cli verify ...`, what a user
starts), so the figures include the imports and every compile. "before" runs the package as
it was at a git revision (extracted to a temporary folder and put first on the path),
"after" the working tree. Reported per run: wall time, CPU time of the process (user +
system, all threads) and the 1-minute load average when it started: on a shared machine the
wall time moves with the load, the CPU time much less. Medians over --repeats runs.

    python benchmarks/bench_cli.py --before 0ab0a8d --repeats 1
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
CONFIGS = [
    ("default", []),
    ("quadratic, 4 scalar levels", ["--zoo", "quadratic", "--levels", "4"]),
    ("nonquadratic, 4 scalar levels", ["--zoo", "nonquadratic", "--levels", "4"]),
    ("ridge", ["--zoo", "ridge"]),
    ("compounding, n = 2..4 (new)", ["--zoo", "compounding", "--levels", "4"]),
    ("user file, 4 scalar levels", [str(DATA / "four_levels.py")]),
    ("user file, vector block + family", [str(DATA / "vector_ridge.py")]),
]


def _run(package_root: pathlib.Path, argv: list[str], out: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(package_root))
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mlverify.cli", "verify", *argv, "--out", out],
        cwd=package_root, env=env, capture_output=True, text=True, check=False,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "load": load, "rc": done.returncode,
            "err": done.stderr.strip().splitlines()[-1:] if done.returncode not in (0, 3) else []}


def _median(runs, key):
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="0ab0a8d", help="git revision of the 'before' code")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="names of the configurations to run")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = pathlib.Path(tmp) / "before"
        old.mkdir()
        archive = subprocess.run(["git", "archive", args.before, "mlverify"], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        for name, argv in CONFIGS:
            if args.only and name not in args.only:
                continue
            result = {}
            for label, root, extra in (("before", old, []), ("after", ROOT, ["--no-progress"])):
                if label == "before" and "(new)" in name:
                    result[label] = None
                    continue
                runs = [_run(root, argv + extra, str(pathlib.Path(tmp) / f"out-{label}"))
                        for _ in range(args.repeats)]
                result[label] = runs
                print(name, label, runs, flush=True)
            rows.append((name, argv, result))
    lines = [
        "# `mlverify verify`: time per run, before and after the speed work of 2026-12 (compiled programs shared across steps)",
        "",
        f"Command: `python benchmarks/bench_cli.py --before {args.before} --repeats "
        f"{args.repeats}`. Date: {time.strftime('%Y-%m-%d %H:%M')}. Machine: 2-core x86_64, "
        "shared with other jobs (load average in the table). Each figure is one process "
        "`python -m mlverify.cli verify ARGS` with the default --T 100, imports and compiles "
        f"included; median of {args.repeats} run(s). CPU = user + system time of the process "
        "(all threads): on a loaded machine the wall time grows with the load, the CPU time "
        "much less. exit = exit status.",
        "",
        "| configuration | before: wall / CPU (s), exit | after: wall / CPU (s), exit | load |",
        "| --- | --- | --- | --- |",
    ]

    def cell(runs):
        if runs is None:
            return "(not in the old code)"
        return (f"{_median(runs, 'wall'):.1f} / {_median(runs, 'cpu'):.1f}, "
                f"{runs[0]['rc']}")

    for name, argv, result in rows:
        loads = [r["load"] for runs in result.values() if runs for r in runs]
        shown = " ".join(str(pathlib.Path(a).relative_to(ROOT)) if a.startswith(str(ROOT))
                         else a for a in argv) or "(no options)"
        lines.append(f"| {name} (`{shown}`) | "
                     f"{cell(result['before'])} | {cell(result['after'])} | "
                     f"{min(loads):.1f}-{max(loads):.1f} |")
    out = ROOT / "benchmarks" / "results" / "cli.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
