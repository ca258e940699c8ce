r"""Numerical checks of the convergence theorems (Theorems 4.1 and 4.2).

``theorem_4_1`` checks the $O(1/T)$ bound of projected gradient descent with the exact
hypergradient on a box; ``theorem_4_2`` checks the inexact-hypergradient bound along the
single-loop and ITD runs and measures how the error and the rounds-to-epsilon grow with $n$.
Each returns a `Report` with ``.verdict`` in {"pass", "fail", "not-applicable"}.

On the paper's argument: its proofs end by appeal to the Central Limit Theorem for the
deterministic sum $\frac1T \sum_t \lVert \nabla F_1(x^t) \rVert^2$. No probability is involved:
the correct statement is the deterministic telescoping bound checked here, which holds for
every $T$.
"""

from .batch import BatchReport, instance_check, quadratic_family_batch, theorem_4_1_batch
from .report import Report
from .theorems import constants_4_1, constants_4_2, rounds_to_epsilon, theorem_4_1, theorem_4_2

__all__ = [
    "BatchReport",
    "instance_check",
    "quadratic_family_batch",
    "theorem_4_1_batch",
    "Report", "constants_4_1", "constants_4_2", "rounds_to_epsilon", "theorem_4_1", "theorem_4_2"]
