r"""A family where Theorem 4.2's dependence on the number of levels is visible.

In the single-loop (hierarchical) scheme each lower iterate trails its best response, and
its error enters the gradient of the level above through the best-response Jacobian; the
level above passes its own error, grown by that, further up (the paper's Lemmas A.1-A.3).
In [`nonquadratic`][mlverify.zoo.families.nonquadratic] each scalar level's step is nearly
Newton's step, so every level catches up within a round and $T_\varepsilon(n)$ barely moves
with $n$. Here every lower block is 2-dimensional with condition number $\kappa$
(``kappa``), so one gradient step of $1/L_k$ closes only a fraction $1/\kappa$ of the slow
direction's error, and every level is coupled to the one below it: the errors compound down
the chain, and the rounds to a target grow with $n$.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..problem import Level, MultilevelProblem


def compounding(n: int, seed: int = 0, kappa: int = 10,
                coupling: float | sp.Rational | None = None,
                scale: float | sp.Rational | None = None) -> MultilevelProblem:
    r"""The n-level compounding family, blocks of 2 (seeded).

    $$
    \begin{aligned}
    f_1 &= \tfrac12 \lVert x_1 - a \rVert^2 + b\, x_1^\top x_2 + \tfrac12 \lVert x_2 \rVert^2, \\
    f_k &= \tfrac12 (x_k - c\, x_{k-1})^\top A\, (x_k - c\, x_{k-1}) + b\, x_k^\top x_{k+1}
      \qquad (2 \le k < n), \\
    f_n &= \tfrac12 (x_n - c\, x_{n-1})^\top A\, (x_n - c\, x_{n-1})
    \end{aligned}
    $$

    with $A = \operatorname{diag}(1, \kappa)$ ($\kappa$ = ``kappa``), $c$ = ``scale``
    (default $1/2$), $b$ = ``coupling`` (default $3/5$) and the target $a$ (entries
    $\pm\tfrac12$ to $\pm 1$) from the seed. Every level is a strongly convex quadratic in its
    own block ($A$ is positive definite, and $b c$ is small against it), so every best
    response is affine and the exact hypergradient is known; the single-loop errors are what
    grow with $n$: the slow direction of each level trails its best response by a factor
    $1 - 1/\kappa$ per round and passes $b$ times its error to the level above.

    Args:
        n: The number of levels, at least 2.
        seed: The seed of the target $a$.
        kappa: The condition number $\kappa$ of $A$ (an integer).
        coupling: $b$, the coupling of each level to the one below (default $3/5$), made
            an exact rational by ``sympy.nsimplify``.
        scale: $c$, how strongly each level's best response follows the level above
            (default $1/2$), made an exact rational by ``sympy.nsimplify``.

    Returns:
        The declared ``MultilevelProblem``, every block of 2 symbols
            (``x1_0``, ``x1_1``, ``x2_0``, ...).

    Raises:
        ValueError: ``n`` is less than 2.
    """
    if n < 2:
        raise ValueError(f"the compounding family needs n >= 2 levels, got {n}")
    rng = np.random.default_rng(seed)
    b = sp.Rational(3, 5) if coupling is None else sp.nsimplify(coupling)
    c = sp.Rational(1, 2) if scale is None else sp.nsimplify(scale)
    blocks = [sp.Matrix(sp.symbols(f"x{k + 1}_0:2")) for k in range(n)]
    a_mat = sp.diag(1, int(kappa))
    target = sp.Matrix([sp.Rational(int(v), 4) * (-1) ** int(s) for v, s in
                        zip(rng.integers(2, 5, size=2), rng.integers(0, 2, size=2), strict=True)])
    levels = []
    x1, x2 = blocks[0], blocks[1]
    f1 = ((x1 - target).T * (x1 - target))[0, 0] / 2 + b * (x1.T * x2)[0, 0] \
        + (x2.T * x2)[0, 0] / 2
    levels.append(Level(x1, f1))
    for k in range(1, n):
        gap = blocks[k] - c * blocks[k - 1]
        f = (gap.T * a_mat * gap)[0, 0] / 2
        if k + 1 < n:
            f += b * (blocks[k].T * blocks[k + 1])[0, 0]
        levels.append(Level(blocks[k], sp.expand(f)))
    return MultilevelProblem(levels)
