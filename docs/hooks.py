"""mkdocs hooks: the executed notebooks of ``notebooks/`` become pages of the site.

The notebooks stay where they are (``notebooks/*.ipynb`` at the repository root, run by
``tests/test_notebooks.py``); this hook adds every one of them to the site's files as
``notebooks/<name>.ipynb`` and to the nav's "Notebooks" section, after its first entry (the
overview page), in file-name order. A new notebook therefore appears without editing
``mkdocs.yml``. mkdocs-jupyter renders them with their stored outputs (``execute: false``).

The site must read offline, so the hook also takes out of each notebook page the two
loaders that nbconvert's template puts there: MathJax (an empty ``<script src="">`` here;
``docs/javascripts/katex-init.js`` renders the notebooks' ``$...$`` with the KaTeX served
from the site) and mermaid.js, imported from a CDN when a notebook has a mermaid diagram
(ours have none). Each notebook page starts with a link that downloads the notebook.

The search index holds each page's text, formulas as their LaTeX source (``\\(D_j y_k =
-H_k^{-1} D_{kj} F_k\\)``); after the build the hook rewrites them as plain text with
Unicode symbols (``D_j y_k = -H_k^-1 D_kj F_k``), so that search results read as text.
"""

from __future__ import annotations

import json
import pathlib
import re

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
#: The nav section the notebooks are appended to.
SECTION = "Notebooks"
#: nbconvert's MathJax loader and configuration, between the comments its template writes.
MATHJAX = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)
#: nbconvert's module script that imports mermaid.js from a CDN.
MERMAID = re.compile(r'<script type="module">(?:(?!</script>).)*?mermaid.*?</script>', re.S)


def notebook_paths() -> list[pathlib.Path]:
    """The notebooks the site shows: ``notebooks/*.ipynb``, by file name."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def site_path(notebook: pathlib.Path) -> str:
    """The notebook's path inside the site's files (and in the nav): ``notebooks/NAME``."""
    return f"notebooks/{notebook.name}"


def on_config(config):
    for entry in config.nav or []:
        if isinstance(entry, dict) and SECTION in entry:
            section = entry[SECTION]
            if not isinstance(section, list):
                section = [section]
            listed = {next(iter(e.values())) if isinstance(e, dict) else e for e in section}
            section += [site_path(p) for p in notebook_paths() if site_path(p) not in listed]
            entry[SECTION] = section
            break
    else:
        raise ValueError(f"mkdocs.yml: the nav has no '{SECTION}' section for the notebooks")
    return config


# Before mkdocs-jupyter's own on_files (priority 0), which turns .ipynb files into pages.
@event_priority(50)
def on_files(files, config):
    for notebook in notebook_paths():
        path = site_path(notebook)
        if files.get_file_from_path(path) is None:
            files.append(File(path, str(ROOT), config.site_dir, config.use_directory_urls))
    return files


#: The link above every notebook page (mkdocs-jupyter's include_source copies the .ipynb
#: next to the page, so the link is relative to it).
DOWNLOAD = ('<p class="notebook-download"><a href="{name}" download>Download this notebook '
            "({name})</a>: it runs as is in a checkout with the test extras installed "
            '(<code>pip install -e ".[test]"</code>).</p>\n')


def on_page_content(html, page, config, files):
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    name = pathlib.PurePosixPath(page.file.src_uri).name
    return DOWNLOAD.format(name=name) + MERMAID.sub("", MATHJAX.sub("", html))


def on_serve(server, config, builder):
    server.watch(str(NOTEBOOKS))
    return server


#: LaTeX commands of the pages' formulas, as they read in plain text.
SYMBOLS = {
    "alpha": "α", "beta": "β", "delta": "δ", "eta": "η", "theta": "θ", "kappa": "κ",
    "lambda": "λ", "mu": "μ", "sigma": "σ", "varepsilon": "ε", "varphi": "φ", "Lambda": "Λ",
    "Phi": "Φ", "Pi": "Π", "nabla": "∇", "partial": "∂", "sum": "Σ", "infty": "∞",
    "dots": "…", "vdots": "⋮", "cdot": "·", "times": "×", "pm": "±", "le": "≤", "ge": "≥",
    "ne": "≠", "approx": "≈", "sim": "~", "in": "∈", "cap": "∩", "succeq": "⪰",
    "mapsto": "↦", "leftarrow": "←", "Longrightarrow": "⟹", "top": "ᵀ", "sqrt": "√",
    "lVert": "‖", "rVert": "‖", "|": "‖", "lvert": "|", "rvert": "|", "langle": "⟨",
    "rangle": "⟩", "_": "_", "\\": " ", "arg": "arg", "&amp;": "",
    # literal braces, kept apart from grouping braces until those are gone
    "{": "\x01", "}": "\x02",
}
#: Commands that only set size, spacing, font or layout: dropped, their argument kept.
DROPPED = re.compile(r"\\(?:Bigl|Bigr|bigl|bigr|left|right|mathrm|operatorname|text|bar|hat|"
                     r"tilde|dot|overline|underline|begin\{[a-z*]+\}|end\{[a-z*]+\}|"
                     r"tag|quad|qquad|[ ,;!])")
#: A fraction with one-token or braced numerator and denominator.
FRACTION = re.compile(r"\\t?frac\s*(\{[^{}]*\}|\w)\s*(\{[^{}]*\}|\w)")
#: A formula of the search index: ``\(...\)`` and ``\[...\]`` (pages), ``$$...$$`` and
#: ``$...$`` (notebooks' markdown cells).
MATH = re.compile(r"\\\((.*?)\\\)|\\\[(.*?)\\\]|\$\$(.+?)\$\$|\$(?!\s)([^$\n]+?)(?<!\s)\$",
                  re.S)


def _over(a: str, b: str) -> str:
    a, b = a[1:-1] if a.startswith("{") else a, b[1:-1] if b.startswith("{") else b
    return (a if len(a) == 1 else f"({a})") + "/" + (b if len(b) == 1 else f"({b})")


def plain_math(latex: str) -> str:
    """A formula's LaTeX source as plain text (see the module docstring)."""
    text = FRACTION.sub(lambda m: _over(m.group(1), m.group(2)), latex)
    text = text.replace(r"\mathbb{R}", "ℝ")
    text = re.sub(r"\\([A-Za-z]+|[|{}_\\])",
                  lambda m: SYMBOLS.get(m.group(1), m.group(0)), text)
    text = DROPPED.sub(" ", text)
    text = re.sub(r"[{}]", "", text)  # grouping braces
    text = re.sub(r"\\([A-Za-z]+)", r"\1", text)  # \min, \log, ...: their names
    text = text.replace("\x01", "{").replace("\x02", "}")
    return re.sub(r"\s+", " ", text).strip()


def plain_search_text(text: str) -> str:
    r"""``text`` with every formula (`MATH`) as plain text."""
    return MATH.sub(lambda m: plain_math(next((g for g in m.groups() if g), "")), text)


def on_post_build(config):
    index = pathlib.Path(config.site_dir) / "search" / "search_index.json"
    if not index.exists():
        return
    data = json.loads(index.read_text(encoding="utf-8"))
    for doc in data.get("docs", []):
        doc["text"] = plain_search_text(doc.get("text", ""))
        doc["title"] = plain_search_text(doc.get("title", ""))
    index.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
