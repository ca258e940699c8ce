"""A griffe extension: ``#:`` comments above a module-level constant are its docstring.

mlverify documents its constants the way Sphinx reads them, with ``#:`` comment lines right
above the assignment (``#: Blocks larger than this use matrix-free CG by default.``); griffe
reads only string literals after an assignment. This extension, loaded by mkdocstrings (see
``mkdocs.yml``), gives such a constant the comment's text as its docstring, so that the API
pages show it. Griffe skips the names of a tuple assignment (``A, B = 0, 1``); with a ``#:``
comment above, each becomes an attribute with its value and the comment as docstring.
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

    def on_module_members(self, *, node: ast.AST, mod: griffe.Module, agent, **kwargs):
        if not isinstance(node, ast.Module) or mod.filepath not in mod.lines_collection:
            return
        lines = list(mod.lines_collection[mod.filepath])
        for statement in node.body:
            if not (
                isinstance(statement, ast.Assign)
                and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Tuple)
                and isinstance(statement.value, ast.Tuple)
                and len(statement.targets[0].elts) == len(statement.value.elts)
            ):
                continue
            text = comment_above(lines, statement.lineno)
            if not text:
                continue
            for target, value in zip(statement.targets[0].elts, statement.value.elts, strict=True):
                if isinstance(target, ast.Name) and target.id not in mod.members:
                    attribute = griffe.Attribute(
                        target.id,
                        lineno=statement.lineno,
                        endlineno=statement.end_lineno,
                        value=ast.unparse(value),
                    )
                    attribute.labels.add("module-attribute")
                    mod.set_member(target.id, attribute)
                    attribute.docstring = griffe.Docstring(
                        text, lineno=statement.lineno - 1, parent=attribute
                    )
