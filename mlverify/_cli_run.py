"""What one run of ``mlverify verify`` records and prints: the console, the report, the
files written, the time each step took, and the exits (a finished run or an error)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Exit statuses: every check passes, a bound fails, bad input, an assumption is violated.
EXIT_PASS, EXIT_FAIL, EXIT_BAD_INPUT, EXIT_NOT_APPLICABLE = 0, 1, 2, 3

#: Files a run writes into --out; left-overs of an earlier run are removed first.
ARTEFACTS = ("report.json", "theorem-4.1.json", "theorem-4.1.png", "theorem-4.2.json",
             "theorem-4.2.png", "rounds-vs-levels.png", "trace-implicit-exact.npz",
             "trace-hierarchical.npz", "trace-itd.npz")


# ---------------------------------------------------------------------------- options


class _Console:
    """Step headers and results; progress bars on stderr."""

    def __init__(self, args):
        self.stream = sys.stderr if args.json else sys.stdout
        self.bars = not args.no_progress

    def say(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def bar(self, total: int, label: str, unit: str = "round"):
        from tqdm import tqdm

        # disable=None: bars on a terminal only, not in a log or a pipe.
        return tqdm(total=total, desc=f"  {label}", file=sys.stderr, leave=False,
                    disable=None if self.bars else True, unit=unit, dynamic_ncols=True)


def _rounds_callback(bar):
    def update(done, _steps):
        bar.n = done
        bar.refresh()

    return update


def _box_text(box) -> str:
    lo, hi = (np.asarray(b).tolist() for b in box)
    if len(set(lo)) == 1 and len(set(hi)) == 1:
        return f"[{lo[0]:g}, {hi[0]:g}]" + (f"^{len(lo)}" if len(lo) > 1 else "")
    return f"lo = {lo}, hi = {hi}"


def _verdict_text(report) -> str:
    how = "certified" if getattr(report, "certified", False) else "sampled"
    return f"{report.verdict} ({how})"


# ---------------------------------------------------------------------------- steps


def _clean_out(out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    removed = []
    for name in ARTEFACTS:
        path = out / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    return removed


@dataclass
class _Run:
    """What a run accumulates: the report, the verdicts, the files written, the time each
    step took."""

    args: argparse.Namespace
    console: _Console
    out: Path
    box_json: list
    start: float = field(default_factory=time.perf_counter)
    result: dict = field(default_factory=dict)
    verdicts: dict = field(default_factory=dict)
    written: list = field(default_factory=list)
    step_times: dict = field(default_factory=dict)

    @contextmanager
    def step(self, name: str, header: str):
        """Print the step's header; afterwards its wall time (also in the JSON's
        ``step_times_s``)."""
        self.console.say(header)
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.step_times[name] = seconds
            self.console.say(f"  took {seconds:.1f} s")


def _compilation_cache(args) -> str:
    """Switch JAX's persistent compilation cache on unless --no-cache or MLVERIFY_NO_CACHE;
    returns what the header says about it."""
    from .cache import cache_switched_off, enable_compilation_cache

    if args.no_cache:
        return "off (--no-cache)"
    if cache_switched_off():
        return "off (MLVERIFY_NO_CACHE)"
    folder = enable_compilation_cache()
    return f"{folder}" if folder is not None else "off (the cache folder cannot be created)"


def _save_report(run, report, theorem):
    report.save(str(run.out / f"theorem-{theorem}.json"))
    run.written.append(f"theorem-{theorem}.json")
    if report.table:
        report.plot(str(run.out / f"theorem-{theorem}.png"))
        run.written.append(f"theorem-{theorem}.png")
    run.verdicts[f"theorem {theorem}"] = report.verdict
    run.console.say(_indent(report.summary()) + f"\n  verdict: {_verdict_text(report)}")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def _finish(run, reason="") -> int:
    """Write report.json, print the summary (exactly the files written) and the one-line
    reason; returns the exit status."""
    result, console = run.result, run.console
    result["verdicts"] = run.verdicts
    result["step_times_s"] = dict(run.step_times)
    result["elapsed_s"] = time.perf_counter() - run.start
    result["files"] = ["report.json", *run.written]
    (run.out / "report.json").write_text(json.dumps(_plain(result), indent=1,
                                                    default=_json_default))
    console.say("\nSummary")
    for name, verdict in run.verdicts.items():
        console.say(f"  {name:<18} {verdict}")
    console.say(f"  written to {run.out}/: {', '.join(result['files'])}")
    console.say(f"  in {result['elapsed_s']:.1f} s")
    if run.args.json:
        print(json.dumps(_plain(result), default=_json_default), flush=True)
    values = set(run.verdicts.values())
    if "fail" in values:
        print(f"mlverify: fail: {reason}", file=sys.stderr)
        return EXIT_FAIL
    if "not-applicable" in values:
        print(f"mlverify: not applicable: {reason or _first_reason(result)}", file=sys.stderr)
        return EXIT_NOT_APPLICABLE
    return EXIT_PASS


def _first_reason(result) -> str:
    study = result.get("rounds_to_epsilon", {})
    return study.get("skipped", "") if isinstance(study, dict) else ""


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return str(value)


def _error_exit(args, state, status: int, kind: str, message: str, err) -> int:
    """An exit on an error: the one-line message on stderr; with --json, the report of the
    steps that ran and the error (exit code, kind, level, quantity, reason) on stdout, and
    in report.json where the output folder was set up."""
    print(f"mlverify: {message}", file=sys.stderr)
    run = state.get("run")
    error = {"exit_code": status, "kind": kind,
             "level": getattr(err, "level", None), "quantity": getattr(err, "quantity", None),
             "reason": message}
    result = dict(run.result) if run is not None else {}
    if run is not None:
        result.update(verdicts=run.verdicts, step_times_s=dict(run.step_times),
                      elapsed_s=time.perf_counter() - run.start)
    result["error"] = error
    if run is not None:
        try:
            (run.out / "report.json").write_text(
                json.dumps(_plain(result), indent=1, default=_json_default))
            result["files"] = ["report.json", *run.written]
        except OSError:
            pass
    if args.json:
        print(json.dumps(_plain(result), default=_json_default), flush=True)
    return status
