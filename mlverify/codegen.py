"""Printing a derivation graph as straight-line code (sympy's ``lambdify``).

The graph already is a common-subexpression form: each intermediate becomes one assignment,
in definition order. Only the partial derivatives of the objectives are whole expressions,
so sympy's ``cse`` runs over those alone (they share transcendental subterms such as a
``tanh`` and its powers) before the assignments.
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy as sp

from .derive import DerivationGraph


def straight_line(graph: DerivationGraph, outputs: Sequence[sp.Expr]):
    """``(assignments, outputs)`` in the format of ``sympy.cse``, for ``lambdify(cse=...)``."""
    deps = graph.dependencies(outputs)
    partials = [s for s in deps if graph.is_partial(s)]
    others = [s for s in deps if not graph.is_partial(s)]
    assignments: list[tuple[sp.Symbol, sp.Expr]] = []
    if partials:
        shared, reduced = sp.cse(
            [graph.defs[s] for s in partials], symbols=sp.numbered_symbols("_cse"), order="none"
        )
        assignments.extend(shared)
        assignments.extend(zip(partials, reduced, strict=True))
    # Partials depend on variables only, so they can all come first.
    assignments.extend((s, graph.defs[s]) for s in others)
    return assignments, list(outputs)


def compile_graph(graph: DerivationGraph, outputs: Sequence[sp.Expr], modules="numpy"):
    """A function of all variables (positional scalars) returning the list ``outputs``."""
    assignments, exprs = straight_line(graph, outputs)
    return sp.lambdify(
        list(graph.variables), exprs, modules=modules, cse=lambda _: (assignments, exprs)
    )
