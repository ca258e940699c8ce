"""The best-response Jacobians of Lemmas 2.1, 3.1 and 3.2 as a reader is shown them: a
formula where it is short, float64 values at the lower solution where it is not.

Whether a formula is short is decided on the derivation graph, from the operation count of
the formula written out (`DerivationGraph.expanded_size`), before anything is written out:
a Jacobian whose formula has millions of operations is never built only to be measured.
"""

from __future__ import annotations

import numpy as np

#: A Jacobian whose formula is longer than this many characters is shown as float64
#: values at the check point instead.
JACOBIAN_TEXT_LIMIT = 120
#: A Jacobian whose formula, written out, has more operations than this is never written
#: out (its size is read off the derivation graph); it cannot fit the text limit anyway.
JACOBIAN_OPS_LIMIT = 1000


def jacobian_table(problem, x1, progress=None) -> dict:
    """Each $D_j y_k$ of a declared problem, bottom level first: ``{"symbolic": text}``
    where the formula has at most ``JACOBIAN_TEXT_LIMIT`` characters, else ``{"value",
    "at_x1", "formula_operations"}`` (and ``formula_characters`` where it was written out)
    with the values at the lower solution for ``x1``. ``progress(1)`` is called per
    Jacobian. A NumericProblem has no formulas: ``{"skipped": reason}``.
    """
    import sympy as sp

    from ..problem import MultilevelProblem

    if not isinstance(problem, MultilevelProblem):
        return {"skipped": "a NumericProblem has no symbolic form"}
    derivation = problem.derivation()
    graph = derivation.graph
    out = {}
    lower = None
    for k in range(problem.n, 1, -1):
        for j in range(1, k):
            if progress is not None:
                progress(1)
            name = f"D_{j} y_{k}"
            matrix = derivation.jacobians[(k - 1, j - 1)]
            operations = graph.expanded_size(list(matrix))
            text = None
            if operations <= JACOBIAN_OPS_LIMIT:
                expr = graph.expand_matrix(matrix)
                text = sp.sstr(expr[0, 0] if expr.shape == (1, 1) else expr)
                if len(text) <= JACOBIAN_TEXT_LIMIT:
                    out[name] = {"symbolic": text}
                    continue
            if lower is None:
                lower = problem.solve_lower(x1)
            value = problem.numeric().jacobian_frozen(k, j, [lower.x1, *lower.xs])
            out[name] = {"value": value.tolist(), "at_x1": np.asarray(x1).tolist(),
                         "formula_operations": operations}
            if text is not None:
                out[name]["formula_characters"] = len(text)
    return out
