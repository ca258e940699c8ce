"""A griffe extension: ``#:`` comments above a module-level constant are its docstring.

mlverify documents its constants the way Sphinx reads them, with ``#:`` comment lines right
above the assignment (``#: Blocks larger than this use matrix-free CG by default.``); griffe
reads only string literals after an assignment. This extension, loaded by mkdocstrings (see
``mkdocs.yml``), gives such a constant the comment's text as its docstring, so that the API
pages show it. One comment above a tuple assignment (``A, B = 0, 1``) documents each name.
"""

from __future__ import annotations

import ast

import griffe


def comment_above(lines: list[str], lineno: int) -> str | None:
    """The text of the ``#:`` lines directly above line ``lineno`` (1-based), or None."""
    text: list[str] = []
    index = lineno - 2
    while index >= 0 and lines[index].strip().startswith("#:"):
        text.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    return " ".join(text) if text else None


class CommentDocstrings(griffe.Extension):
    """Module-level attributes without a docstring take the ``#:`` comment above them."""

    def on_attribute_instance(self, *, node: ast.AST, attr: griffe.Attribute, agent, **kwargs):
        if attr.docstring is not None or not attr.parent or not attr.parent.is_module:
            return
        if attr.lineno is None or attr.filepath is None:
            return
        collection = attr.lines_collection
        lines = collection[attr.filepath] if attr.filepath in collection else []
        text = comment_above(list(lines), attr.lineno)
        if text:
            attr.docstring = griffe.Docstring(text, lineno=attr.lineno - 1, parent=attr)
