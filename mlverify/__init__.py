# ruff: noqa: I001  (the import order is deliberate: float64 is switched on first)
"""mlverify: multilevel optimisation by implicit differentiation, exact and checked.

Importing mlverify switches JAX to float64 (see `mlverify._config`, the one place).
"""

from . import _config  # noqa: F401  (float64 before anything traces)
from .cache import enable_compilation_cache
from .errors import (
    ConvergenceError,
    CostError,
    DivergenceError,
    HessianError,
    MlverifyError,
    NonFiniteError,
    NonUniqueMinimiserError,
    ProblemDefinitionError,
    UnboundedLevelError,
)
from .problem import Level, MultilevelProblem

from . import numeric, verify, zoo  # noqa: E402  (after the core names they build on)
from .numeric import NumericProblem  # noqa: E402
from .optimize import Trace, optimize  # noqa: E402

__all__ = [
    "ConvergenceError",
    "CostError",
    "DivergenceError",
    "HessianError",
    "Level",
    "MlverifyError",
    "MultilevelProblem",
    "NonFiniteError",
    "NonUniqueMinimiserError",
    "NumericProblem",
    "ProblemDefinitionError",
    "Trace",
    "UnboundedLevelError",
    "enable_compilation_cache",
    "numeric",
    "optimize",
    "verify",
    "zoo",
]
__version__ = "0.1.0"
