"""Machine and software description shared by the benchmark scripts."""

from __future__ import annotations

import datetime
import json
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


def run_worker(script: str, *arguments, limit: float, env: dict | None = None) -> dict:
    """``python script *arguments`` in a fresh process (a first call is a first call) under
    ``limit`` seconds: the JSON object its last line of output prints, or ``{"failed":
    why}`` (its last line of errors; over the limit, with ``"timed_out": True``)."""
    command = [sys.executable, script, *map(str, arguments)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return {"failed": f"over {limit:.0f} s", "timed_out": True}
    if done.returncode != 0:
        return {"failed": (done.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- code version
def source_fingerprint(package_dir: str | None = None) -> dict:
    """git HEAD, whether mlverify/ differs from it, and a sha256 of the mlverify sources."""
    import hashlib

    package_dir = package_dir or os.path.join(REPO_ROOT, "mlverify")
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(package_dir):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                digest.update(os.path.relpath(path, package_dir).encode())
                with open(path, "rb") as fh:
                    digest.update(fh.read())

    def git(*args):
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    return {
        "git_head": git("rev-parse", "--short", "HEAD"),
        "git_subject": git("log", "-1", "--format=%s"),
        "mlverify_dirty": bool(git("status", "--porcelain", "--", "mlverify")),
        "sources_sha256": digest.hexdigest()[:16],
    }


def snapshot_package() -> str:
    """Copy mlverify/ (as it is now) to a temporary directory; return that directory.

    Workers run with it first on PYTHONPATH, so edits to the working tree during a long
    sweep cannot mix code versions within one report.
    """
    import shutil
    import tempfile

    target = tempfile.mkdtemp(prefix="mlverify-bench-")
    shutil.copytree(
        os.path.join(REPO_ROOT, "mlverify"),
        os.path.join(target, "mlverify"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return target


def worker_env(snapshot_dir: str | None) -> dict:
    env = dict(os.environ)
    if snapshot_dir:
        env["PYTHONPATH"] = snapshot_dir + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
        )
    return env


def code_markdown(fingerprint: dict, snapshot_dir: str | None, worker_files: set) -> str:
    dirty = " plus uncommitted changes in mlverify/" if fingerprint["mlverify_dirty"] else ""
    lines = [
        f"Code measured: git `{fingerprint['git_head']}` ({fingerprint['git_subject']}){dirty}; "
        f"sha256 of the mlverify sources `{fingerprint['sources_sha256']}`.",
    ]
    if snapshot_dir:
        lines.append(
            "Every worker imported a copy of mlverify/ taken at the start of the sweep "
            "(so the whole report measures one code version)."
        )
    if len(worker_files) > 1:
        lines.append(
            f"WARNING: workers imported mlverify from several places: {sorted(worker_files)}"
        )
    return " ".join(lines)


def error_summary(text: str) -> str:
    """The exception line of a traceback (not JAX's trailing filtering notice)."""
    import re

    lines = [l for l in text.strip().splitlines() if l.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line):
            return line.strip()
    return " | ".join(lines[-2:])
