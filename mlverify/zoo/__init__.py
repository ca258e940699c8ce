"""Reference problems, each with what is known about its answer.

- `quadratic` - the quadratic n-level family: affine best responses, closed-form
  hypergradient and optimum (all third derivatives vanish, so it cannot test curvature terms).
- `nonquadratic` - tanh couplings plus quartic own terms: non-zero curvature terms.
- `ridge_bilevel` - bilevel ridge-regression hyperparameter tuning, closed form (teaching).
- `data_poisoning` - Sato et al.'s trilevel: a regulariser against validation loss, an
  attacker perturbing training inputs, ridge weights.
- :func:`compounding` - blocks of 2 with condition number kappa, each level coupled to the
  one below: the single-loop errors compound through the Jacobian chain (Lemmas A.1-A.3),
  so Theorem 4.2's rounds-to-epsilon grow with n.
- :func:`default_problem` - the trilevel non-quadratic problem ``mlverify verify`` runs.
"""

from .compounding import compounding
from .families import (
    QuadraticFamily,
    data_poisoning,
    default_problem,
    indefinite_problem,
    nonquadratic,
    quadratic,
    ridge_bilevel,
)

__all__ = [
    "QuadraticFamily",
    "compounding",
    "data_poisoning",
    "default_problem",
    "indefinite_problem",
    "nonquadratic",
    "quadratic",
    "ridge_bilevel",
]
