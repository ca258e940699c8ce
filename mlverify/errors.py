"""Exceptions. Every one names the level (1 = top) and the quantity at fault."""

from __future__ import annotations


def one_line(err: BaseException) -> str:
    """An exception as one line: its type and its message, whitespace collapsed."""
    return " ".join(f"{type(err).__name__}: {err}".split())


class MlverifyError(Exception):
    """Base class of every error mlverify raises on purpose."""

    def __init__(self, message: str, *, level: int | None = None, quantity: str | None = None):
        self.level = level
        self.quantity = quantity
        prefix = f"level {level}: " if level is not None else ""
        super().__init__(prefix + message)


class ProblemDefinitionError(MlverifyError, ValueError):
    """The declared problem is malformed: shapes, variables, objectives, level count."""


class HessianError(MlverifyError, ArithmeticError):
    """A lower-level Hessian $H_k = D_{kk} F_k$ is singular or indefinite at the point.

    Attributes ``min_eigenvalue`` and ``condition_number`` hold what was measured (``None``
    where the check was exact and symbolic); ``everywhere`` is True where $H_k$ is a
    constant matrix (decided exactly by the derivation), so the fault holds at every point,
    and False where it was found at one point.
    """

    def __init__(
        self,
        message: str,
        *,
        level: int,
        min_eigenvalue: float | None = None,
        condition_number: float | None = None,
        everywhere: bool = False,
    ):
        self.min_eigenvalue = min_eigenvalue
        self.condition_number = condition_number
        self.everywhere = everywhere
        super().__init__(message, level=level, quantity="Hessian D_kk F_k")


class ConvergenceError(MlverifyError, RuntimeError):
    """An inner solve stopped before reaching its tolerance; ``residual`` is what it reached."""

    def __init__(self, message: str, *, level: int, residual: float, tolerance: float):
        self.residual = residual
        self.tolerance = tolerance
        super().__init__(message, level=level, quantity="gradient residual")


class NonFiniteError(MlverifyError, FloatingPointError):
    """A NaN or infinity appeared in an iterate, a Jacobian, a hypergradient or a bound."""


class DivergenceError(MlverifyError, ArithmeticError):
    """An unrolled inner solver (ITD) diverged: its gradient steps raised the level's objective,
    so the step is too large for the curvature there. ``step_scale`` is the last factor tried
    on the default steps (1 where the step was given)."""

    def __init__(self, message: str, *, level: int, step_scale: float = 1.0):
        self.step_scale = step_scale
        super().__init__(message, level=level, quantity="inner step size")


class NonUniqueMinimiserError(MlverifyError, ArithmeticError):
    """A lower level has more than one minimiser at the point (found by seeded multistart).

    ``level`` is 1-based; ``x1`` is the top-level point; ``minimisers`` holds the distinct
    minimisers found (each a float64 array of the level's block) and ``values`` their
    reduced objective values $F_k$. Multistart can find a second minimiser; it cannot prove
    that there is none.
    """

    def __init__(self, message: str, *, level: int, x1=None, minimisers=(), values=()):
        self.x1 = x1
        self.minimisers = tuple(minimisers)
        self.values = tuple(values)
        super().__init__(message, level=level, quantity="minimiser")


class UnboundedLevelError(MlverifyError, ArithmeticError):
    """A lower level's reduced objective is unbounded below along the solver's path."""

    def __init__(self, message: str, *, level: int, value: float | None = None):
        self.value = value
        super().__init__(message, level=level, quantity="objective (unbounded below)")


class CostError(MlverifyError, MemoryError):
    """An exact program of this many levels is predicted to need more memory than the process
    may use (``mlverify.numeric.cost``); ``levels``, ``predicted_gb`` and ``limit_gb`` hold
    the numbers. Raised before XLA compiles it: from the depth alone, or from the size of
    its traced program."""

    def __init__(self, message: str, *, levels: int, predicted_gb: float, limit_gb: float):
        self.levels = levels
        self.predicted_gb = predicted_gb
        self.limit_gb = limit_gb
        super().__init__(message, quantity="memory of the exact program")


class UnknownOptionError(ValueError, TypeError):
    """An option name that a method does not take; the message lists the valid ones. A
    ValueError (and a TypeError, as Python raises for an unknown keyword)."""
