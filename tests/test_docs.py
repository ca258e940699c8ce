"""The documentation: its examples run, the site builds strictly and reads as it should.

- Every ```python block of a page runs; a page's blocks run in order in one namespace (so
  a later block may use the names of an earlier one), in a temporary working directory.
- docs/benchmarks.md is what docs/gen_benchmarks.py writes now (run that script after
  re-running a benchmark).
- `mkdocs build --strict` succeeds (once per test run, into a temporary directory); mkdocs.yml
  makes broken links and anchors warnings, so strict mode fails on them.
- The built API pages show every public name with its docstring. A public name (the rule
  stated on docs/api/index.md): in a public module (no path component starting with "_"),
  a name of its ``__all__``, or where it has none a function or class defined there whose
  name has no leading underscore, or an UPPER_CASE constant assigned there; and a public
  method or property defined on a public class. Each is shown where it is defined.
- Formulas are in pymdownx.arithmatex markup in the built HTML (KaTeX, served from the site,
  renders it in the browser), none is left in plain text, and no page loads anything from the
  network.
- The notebooks are pages of the site, with their stored plots.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import os
import pathlib
import pkgutil
import re
import runpy
import subprocess
import sys

import nbformat
import pytest
import yaml
from bs4 import BeautifulSoup

import mlverify

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)
#: Pages written by hand (benchmarks.md quotes the benchmark reports verbatim; cli.md is
#: generated from the argument parser, whose help text is plain text for a terminal).
HAND_WRITTEN = [p for p in PAGES if p.name not in ("benchmarks.md", "cli.md")]
#: Pages that state the paper's mathematics (each must show formulas).
FORMULA_PAGES = {"index.md", "getting-started.md", "concepts.md", "algorithms.md", "theorems.md"}
#: Characters the pages used for formulas in plain text before they were LaTeX.
PLAIN_MATH = re.compile(r"[∇Σ∑∂≤≥≠∈αβλεφθηΠπ·ᵀ²³√∞→⇒]")
#: Formulas in plain-text notation: x_k, D_kj, ^{-1}, <=, sum_i, ||e_t||, lambda_max, x_1..x_n.
PLAIN_FORMULA = re.compile(
    r"(?<![\w.])[A-Za-z]_(\{|[0-9a-zA-Z]{1,2}\b)|\^\{|\^-1|<=|>=|\bsum_|\|\||lambda_max"
    r"|\b[a-z]\.\.[a-z0-9]\b|[0-9]\.\.[a-z]\b"
)


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


def test_benchmarks_page_is_up_to_date():
    # run_path: the script is not a package, and this writes no bytecode into docs/.
    page = runpy.run_path(str(DOCS / "gen_benchmarks.py"), run_name="docs_generator")["render"]()
    assert (DOCS / "benchmarks.md").read_text() == page, (
        "docs/benchmarks.md is stale: run python docs/gen_benchmarks.py"
    )


def test_cli_page_is_generated_from_the_parser_and_current():
    """docs/cli.md is written by docs/gen_cli.py from build_parser(): current, and every
    option of mlverify verify is on it."""
    page = runpy.run_path(str(DOCS / "gen_cli.py"), run_name="docs_generator")["render"]()
    assert (DOCS / "cli.md").read_text() == page, "docs/cli.md is stale: run python docs/gen_cli.py"
    from mlverify.cli import build_parser

    verify = build_parser()._subparsers._group_actions[0].choices["verify"]
    for action in verify._actions:
        for option in action.option_strings:
            assert f"`{option}" in page, option


def _nav_paths(entries) -> list[str]:
    paths = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        paths += _nav_paths(value) if isinstance(value, list) else [value]
    return paths


def test_nav_lists_every_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs"
    listed = _nav_paths(config["nav"])
    pages = sorted(
        str(p.relative_to(DOCS))
        for p in DOCS.rglob("*.md")
        if p.relative_to(DOCS).parts[0] != "javascripts"  # the vendored KaTeX's README
    )
    assert sorted(listed) == pages
    # The notebooks are not listed: docs/hooks.py adds every notebooks/*.ipynb to the nav.
    assert not [p for p in listed if p.endswith(".ipynb")]


# ---------------------------------------------------------------------- the built site
@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    """`mkdocs build --strict` into a temporary directory (about 10 s)."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml")]
        + ["-d", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "NO_MKDOCS_2_WARNING": "1"},
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@functools.cache
def _html(path: pathlib.Path) -> BeautifulSoup:
    """The parsed page (parsed once: the tests only read it)."""
    return BeautifulSoup(path.read_text(), "html.parser")


def _text_outside(element, selector: str) -> str:
    """The text of ``element`` outside its descendants that match ``selector``."""
    skipped = {id(tag) for tag in element.select(selector)}
    parts = []
    for string in element.find_all(string=True):
        if not any(id(parent) in skipped for parent in string.parents):
            parts.append(str(string))
    return " ".join(" ".join(parts).split())


def _built(site: pathlib.Path, source: str) -> pathlib.Path:
    """The HTML file that the page ``source`` (relative to docs/) is built into."""
    stem = source.rsplit(".", 1)[0]
    return site / ("index.html" if stem == "index" else f"{stem.removesuffix('/index')}/index.html")


def test_site_builds_strictly(site):
    for page in DOCS.rglob("*.md"):
        source = str(page.relative_to(DOCS))
        if not source.startswith("javascripts/"):
            assert _built(site, source).is_file(), source
    for vendored in ("katex.min.js", "katex.min.css", "contrib/auto-render.min.js", "LICENSE"):
        assert (site / "javascripts" / "katex" / vendored).is_file(), vendored
    assert not (site / "javascripts" / "katex" / "README.md").exists()


# ---------------------------------------------------------------------- public names
def public_modules() -> list[str]:
    names = ["mlverify"]
    for info in pkgutil.walk_packages(mlverify.__path__, "mlverify."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def _assigned(module) -> dict[str, int]:
    """Module-level names assigned in the module's source, with their line numbers."""
    tree = ast.parse(inspect.getsource(module))
    lines = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    lines[name.id] = node.lineno
    return lines


def _constant_doc(module, name: str) -> str:
    """A constant's docstring: the ``#:`` comment above it (docs/griffe_comments.py)."""
    comment_above = runpy.run_path(str(DOCS / "griffe_comments.py"))["comment_above"]
    lines = inspect.getsource(module).splitlines()
    return comment_above(lines, _assigned(module)[name]) or ""


def _own_doc(obj, name: str) -> str:
    """The docstring written on ``obj`` itself (never inherited, never dataclass-made)."""
    if isinstance(obj, property):
        obj = obj.fget
    doc = obj.__doc__ or ""
    if inspect.isclass(obj) and doc.startswith(f"{name}("):  # the dataclass signature
        return ""
    return inspect.cleandoc(doc)


@functools.cache
def public_names() -> dict[str, str]:
    """Every public name, as the id its API entry has (where it is defined) -> docstring."""
    modules = {name: importlib.import_module(name) for name in public_modules()}
    names: dict[str, str] = {}
    for module_name, module in modules.items():
        if hasattr(module, "__all__"):
            exported = list(module.__all__)
        else:
            exported = [
                name
                for name, value in vars(module).items()
                if not name.startswith("_")
                and (inspect.isclass(value) or inspect.isfunction(value))
                and value.__module__ == module_name
            ]
            exported += [n for n in _assigned(module) if n.isupper() and not n.startswith("_")]
        for name in exported:
            value = getattr(module, name)
            if inspect.ismodule(value):
                continue
            if inspect.isclass(value) or inspect.isfunction(value):
                home = value.__module__
                names[f"{home}.{name}"] = _own_doc(value, name)
            else:  # a constant: documented in the module that assigns it
                home = next(
                    m
                    for m, mod in modules.items()
                    if name in _assigned(mod) and getattr(mod, name) is value
                )
                names[f"{home}.{name}"] = _constant_doc(modules[home], name)
            if inspect.isclass(value) and value.__module__ == home:
                for member, attribute in vars(value).items():
                    if member.startswith("_"):
                        continue
                    if isinstance(attribute, (staticmethod, classmethod)):
                        attribute = attribute.__func__
                    if inspect.isfunction(attribute) or isinstance(attribute, property):
                        names[f"{home}.{name}.{member}"] = _own_doc(attribute, member)
    return names


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]{2,}", text)


def test_the_public_names_are_found():
    """The rule finds what the package exports, at the places that define it."""
    names = public_names()
    assert "mlverify.problem.MultilevelProblem.best_response_jacobian" in names
    assert "mlverify.numeric.problem.NumericProblem.hypergradient" in names
    assert "mlverify.verify.theorems.theorem_4_1" in names
    assert "mlverify.numeric.implicit.DENSE_LIMIT" in names
    assert "mlverify.numeric.problem.METHODS" in names  # re-exported by mlverify.numeric
    assert not [q for q in names if "._" in q]
    assert len(names) > 150


def test_every_public_name_has_a_docstring():
    missing = [name for name, doc in public_names().items() if not doc.strip()]
    assert not missing, f"public names without a docstring: {missing}"


def test_api_pages_show_every_public_name_with_its_docstring(site):
    entries = {}
    for page in (site / "api").rglob("index.html"):
        for heading in _html(page).select(".doc-heading[id]"):
            entries[heading["id"]] = heading
    absent, wrong = [], []
    for name, doc in public_names().items():
        heading = entries.get(name)
        if heading is None:
            absent.append(name)
            continue
        contents = heading.parent.find("div", class_="doc-contents", recursive=False)
        shown = _text_outside(contents, "div.doc-children") if contents else ""
        # The first words of the docstring, in order, in the entry's own text.
        expected = _words(doc.split("\n\n")[0])[:8]
        text = iter(_words(shown))
        if not expected or not all(word in text for word in expected):
            wrong.append(name)
    assert not absent, f"not on the API pages: {absent}"
    assert not wrong, f"shown without their docstring: {wrong}"


def test_package_pages_link_every_reexported_name(site):
    """A package's section lists each name of its ``__all__`` with a link to its entry."""
    pages = {
        "mlverify": "api/problem/index.html",
        "mlverify.numeric": "api/numeric/index.html",
        "mlverify.verify": "api/verify/index.html",
        "mlverify.zoo": "api/zoo/index.html",
    }
    for package, page in pages.items():
        html = (site / page).read_text()
        module = importlib.import_module(package)
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.ismodule(value):
                target = f"#{value.__name__}"
            elif inspect.isclass(value) or inspect.isfunction(value):
                target = f"#{value.__module__}.{name}"
            else:
                target = f".{name}"
            assert f'{target}"' in html, f"{package}: {name} is not linked on {page}"


# ---------------------------------------------------------------------- formulas
def _prose(soup: BeautifulSoup) -> str:
    """The article's text outside code, formulas and scripts."""
    return _text_outside(soup.select_one("article"), "code, pre, .arithmatex, script, style")


@pytest.mark.parametrize("page", HAND_WRITTEN, ids=lambda p: p.name)
def test_formulas_are_latex_in_arithmatex_markup(site, page):
    soup = _html(_built(site, page.name))
    prose = _prose(soup)
    assert "$" not in prose, f"{page.name}: a $ outside a formula (unbalanced math?)"
    assert not PLAIN_MATH.findall(prose), f"{page.name}: {PLAIN_MATH.findall(prose)}"
    plain = [m.group(0) for m in PLAIN_FORMULA.finditer(prose)]
    assert not plain, f"{page.name}: formulas in plain text: {plain}"
    for code in soup.select("article pre code"):
        if "language-python" in " ".join(code.parent.parent.get("class") or []):
            continue
        assert not PLAIN_MATH.search(code.get_text()), f"{page.name}: a formula in a code block"
    formulas = soup.select("article .arithmatex")
    if page.name in FORMULA_PAGES:
        assert formulas, f"{page.name}: no formula in arithmatex markup"
    for formula in formulas:
        text = formula.get_text().strip()
        assert (text.startswith("\\(") and text.endswith("\\)")) or (
            text.startswith("\\[") and text.endswith("\\]")
        ), text


def test_the_lemmas_are_displayed_in_their_notation(site):
    displayed = [
        " ".join(div.get_text().split())
        for div in _html(_built(site, "concepts.md")).select("article div.arithmatex")
    ]
    assert any("D_j y_k = -H_k^{-1} D_{kj} F_k" in text for text in displayed)
    assert any("D_1 x_3^* = -\\bigl[D_{33} f_3\\bigr]^{-1} D_{31} f_3" in t for t in displayed)
    assert any("\\sum_i (f_z)_i\\, D_{yy} g_i" in text for text in displayed)
    theorems = _html(_built(site, "theorems.md")).select("article div.arithmatex")
    assert any("\\frac{2L\\,\\bigl(F_1(x^0) - F_1^*\\bigr)}{T}" in d.get_text() for d in theorems)


def test_docstring_formulas_are_latex(site):
    """No docstring on the API pages writes a formula in plain text (outside code)."""
    plain = []
    for page in (site / "api").rglob("index.html"):
        for contents in _html(page).select("div.doc-contents"):
            text = _text_outside(contents, "div.doc-children, code, pre, .arithmatex")
            plain += [text[max(0, m.start() - 40) : m.end()] for m in PLAIN_FORMULA.finditer(text)]
    assert not plain, plain


def test_docstring_math_is_rendered_on_the_api_pages(site):
    derive = _html(site / "api" / "symbolic" / "index.html").find(id="mlverify.derive")
    contents = derive.parent.find("div", class_="doc-contents", recursive=False)
    assert "D_j y_k = -H_k^{-1} B_{kj}" in " ".join(
        div.get_text() for div in contents.select("div.arithmatex")
    )


def test_search_results_read_formulas_as_text(site):
    """The search index (what a search result shows) holds formulas as plain text, not as
    their LaTeX source."""
    docs = json.loads((site / "search" / "search_index.json").read_text())["docs"]
    text = " ".join(doc["text"] for doc in docs)
    for source in ("\\(", "\\[", "\\lVert", "\\frac", "\\mathrm"):
        assert source not in text, source
    # Lemma 3.1's Jacobian as the algorithms page states it, read as text
    assert "D_j y_k = -H_k^-1 D_kj F_k" in text


# ---------------------------------------------------------------------- offline, notebooks
def test_the_site_loads_nothing_from_the_network(site):
    pages = list(site.rglob("*.html"))
    for page in pages:
        soup = _html(page)
        urls = [tag.get("src") for tag in soup.select("script[src], img[src], iframe[src]")]
        urls += [tag.get("href") for tag in soup.select("link[href]")]
        urls = [u for u in urls if u and not u.startswith("data:")]
        for url in urls:
            if url.startswith(("http://", "https://", "//")):
                raise AssertionError(f"{page.relative_to(site)} loads {url}")
        for script in soup.select("script:not([src])"):
            assert not re.search(r"import\(\s*[\"']https?:", script.get_text()), page
        assert "fonts.googleapis" not in page.read_text(), page
    head = _html(site / "concepts" / "index.html").head
    sources = [tag.get("src") for tag in head.parent.select("script[src]")]
    assert any(s.endswith("javascripts/katex/katex.min.js") for s in sources), sources


def test_every_notebook_is_a_page_with_its_plots(site):
    assert len(NOTEBOOKS) >= 5
    plots = 0
    for notebook in NOTEBOOKS:
        page = site / "notebooks" / notebook.stem / "index.html"
        assert page.is_file(), notebook.name
        soup = _html(page)
        assert soup.select_one(".jupyter-wrapper"), notebook.name
        cells = nbformat.read(notebook, as_version=4).cells
        stored = sum(
            "image/png" in output.get("data", {})
            for cell in cells
            for output in cell.get("outputs", [])
        )
        shown = len(soup.select('.jupyter-wrapper img[src^="data:image/png"]'))
        assert shown == stored, (notebook.name, stored, shown)
        assert "mathjax" not in page.read_text().lower(), notebook.name
        plots += shown
    assert plots >= 5
