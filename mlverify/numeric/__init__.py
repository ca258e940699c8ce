"""The JAX core: numeric n-level problems, implicit differentiation, inner solvers, ITD."""

from .implicit import ImplicitCore, LinearSolve
from .problem import METHODS, LowerSolution, NumericProblem

__all__ = ["ImplicitCore", "LinearSolve", "LowerSolution", "METHODS", "NumericProblem"]
