"""LaTeX of the derived Jacobians, in the lemmas' notation (for notebooks and docs).

``abstract=True`` gives the lemma that applies at that level, written with the problem's own
level indices; ``abstract=False`` gives the concrete derived matrix.
"""

from __future__ import annotations

import sympy as sp


def _d(*indices: int) -> str:
    return "D_{" + "".join(str(i) for i in indices) + "}"


def lemma_name(n: int, k: int) -> str:
    """Which lemma gives $D_j y_k$ in an $n$-level problem (1-based levels)."""
    if n == 2:
        return "Lemma 2.1"
    if k == n:
        return "Lemma 3.1"
    if k == n - 1:
        return "Lemma 3.2"
    return "Lemma 3.2 (by induction)"


def abstract_jacobian(n: int, k: int, j: int) -> str:
    """$D_j y_k$ as the lemma states it, at level $k$ of an $n$-level problem."""
    lhs = f"{_d(j)} y_{{{k}}}"
    if k == n:
        return rf"{lhs} = -\left[{_d(k, k)} f_{{{k}}}\right]^{{-1}} {_d(k, j)} f_{{{k}}}"
    if k == n - 1:
        z = n
        gy = f"{_d(k)} y_{{{z}}}"
        gx = f"{_d(j)} y_{{{z}}}"
        f = f"f_{{{k}}}"
        hess = (
            rf"{_d(k, k)}{f} + {_d(k, z)}{f}\,{gy} + {gy}^{{\top}} {_d(z, k)}{f} "
            rf"+ {gy}^{{\top}} {_d(z, z)}{f}\,{gy} "
            rf"+ \sum_i ({_d(z)}{f})_i\, {_d(k, k)} (y_{{{z}}})_i"
        )
        cross = (
            rf"{_d(k, j)}{f} + {_d(k, z)}{f}\,{gx} + {gy}^{{\top}} {_d(z, j)}{f} "
            rf"+ {gy}^{{\top}} {_d(z, z)}{f}\,{gx} "
            rf"+ \sum_i ({_d(z)}{f})_i\, {_d(k, j)} (y_{{{z}}})_i"
        )
        return rf"{lhs} = -\left[{hess}\right]^{{-1}} \left[{cross}\right]"
    lower = ", ".join(f"y_{{{m}}}" for m in range(k + 1, n + 1))
    return (
        rf"{lhs} = -\left[{_d(k, k)} F_{{{k}}}\right]^{{-1}} {_d(k, j)} F_{{{k}}},\quad "
        rf"F_{{{k}}} = f_{{{k}}}(x_{{\le {k}}}, {lower})"
    )


def latex_best_response_jacobian(problem, k: int, j: int, abstract: bool = True) -> str:
    """LaTeX of $D_j y_k$: the lemma's formula (``abstract``) or the derived matrix."""
    if abstract:
        return abstract_jacobian(problem.n, k, j)
    matrix = problem.best_response_jacobian(k, j)
    value = matrix[0, 0] if matrix.shape == (1, 1) else matrix
    return rf"{_d(j)} y_{{{k}}} = " + sp.latex(value)


def latex_derivation(problem, abstract: bool = True) -> list[str]:
    """Every best-response Jacobian of the problem, lowest level first, then the hypergradient."""
    lines = []
    for k in range(problem.n, 1, -1):
        for j in range(1, k):
            lines.append(latex_best_response_jacobian(problem, k, j, abstract))
    if abstract:
        terms = " + ".join(
            rf"\left(\frac{{d y_{{{m}}}}}{{d x_1}}\right)^{{\top}} {_d(m)} f_1"
            for m in range(2, problem.n + 1)
        )
        lines.append(rf"\frac{{d F_1}}{{d x_1}} = {_d(1)} f_1 + {terms}")
    else:
        gradient = problem.hypergradient()
        value = gradient[0, 0] if gradient.shape == (1, 1) else gradient
        lines.append(r"\frac{d F_1}{d x_1} = " + sp.latex(value))
    return lines
