"""The documentation: its examples run, its generated pages are current, the site builds.

- Every ```python block of a page runs; a page's blocks run in order in one namespace (so
  a later block may use the names of an earlier one), in a temporary working directory.
- docs/api.md and docs/benchmarks.md are what docs/gen_api.py and docs/gen_benchmarks.py
  write now (run those scripts after changing a docstring or re-running a benchmark).
- `mkdocs build --strict` succeeds; mkdocs.yml makes broken links and anchors warnings, so
  strict mode fails on them.
"""

from __future__ import annotations

import os
import pathlib
import re
import runpy
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)


def python_blocks(page: pathlib.Path) -> list[str]:
    return PYTHON_BLOCK.findall(page.read_text())


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_python_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for number, block in enumerate(python_blocks(page), start=1):
        code = compile(block, f"{page.name} (python block {number})", "exec")
        exec(code, namespace)


def test_every_python_example_is_found():
    """The pages with examples are the ones we expect, so a typo in a fence is noticed."""
    pages = {p.name for p in PAGES if python_blocks(p)}
    assert {
        "index.md",
        "getting-started.md",
        "concepts.md",
        "algorithms.md",
        "theorems.md",
    } <= pages
    for page in PAGES:
        fences = re.findall(r"^```(\S*)", page.read_text(), flags=re.M)
        assert "py" not in fences and "Python" not in fences, f"{page.name}: use ```python"


def _generator(name: str) -> dict:
    # run_path: the scripts are not a package, and this writes no bytecode into docs/.
    return runpy.run_path(str(DOCS / name), run_name="docs_generator")


def test_api_reference_is_up_to_date():
    page, _ = _generator("gen_api.py")["render"]()
    assert (DOCS / "api.md").read_text() == page, "docs/api.md is stale: run python docs/gen_api.py"


def test_benchmarks_page_is_up_to_date():
    page = _generator("gen_benchmarks.py")["render"]()
    assert (DOCS / "benchmarks.md").read_text() == page, (
        "docs/benchmarks.md is stale: run python docs/gen_benchmarks.py"
    )


def test_nav_lists_every_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs"
    listed = [next(iter(entry.values())) for entry in config["nav"]]
    assert sorted(listed) == sorted(p.name for p in PAGES)


def test_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in PAGES:
        name = "index.html" if page.stem == "index" else f"{page.stem}/index.html"
        assert (tmp_path / "site" / name).is_file(), name
