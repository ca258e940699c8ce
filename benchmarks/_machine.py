"""Machine and software description shared by the benchmark scripts."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nproc() -> str:
    try:
        return subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(os.cpu_count())


def _version(module: str) -> str:
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "?")
    except ImportError:
        return "not installed"


def describe() -> dict:
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": _nproc(),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "sympy": _version("sympy"),
        "numpy": _version("numpy"),
        "mlverify": _version("mlverify"),
        "load_at_start": load,
    }


def markdown(info: dict, command: str) -> str:
    return "\n".join(
        [
            "| | |",
            "|---|---|",
            f"| date | {info['date']} |",
            f"| `nproc` | {info['nproc']} |",
            f"| CPU (/proc/cpuinfo) | {info['cpu']} |",
            f"| platform | {info['platform']} |",
            f"| python | {info['python']} |",
            f"| jax / jaxlib | {info['jax']} / {info['jaxlib']} (CPU) |",
            f"| sympy | {info['sympy']} |",
            f"| numpy | {info['numpy']} |",
            f"| mlverify | {info['mlverify']} |",
            f"| load average at start (1, 5, 15 min) | {info['load_at_start']} |",
            "",
            "Command (from the repository root):",
            "",
            "```",
            command,
            "```",
        ]
    )


def command_line() -> str:
    script = os.path.relpath(os.path.abspath(sys.argv[0]), _repo_root())
    return " ".join(["python", shlex.quote(script), *map(shlex.quote, sys.argv[1:])])


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


REPO_ROOT = _repo_root()
RESULTS = os.path.join(REPO_ROOT, "benchmarks", "results")
