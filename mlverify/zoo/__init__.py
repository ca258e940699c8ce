r"""Reference problems, each with what is known about its answer.

- `quadratic` - the quadratic n-level family: affine best responses, closed-form
  hypergradient and optimum (all third derivatives vanish, so it cannot test curvature terms).
- `nonquadratic` - tanh couplings plus quartic own terms: non-zero curvature terms.
- `ridge_bilevel` - bilevel ridge-regression hyperparameter tuning, closed form (teaching).
- `data_poisoning` - Sato et al.'s trilevel: a regulariser against validation loss, an
  attacker perturbing training inputs, ridge weights.
- [`compounding`][mlverify.zoo.compounding.compounding] - blocks of 2 with condition number
  $\kappa$, each level coupled to the one below: the single-loop errors compound through the
  Jacobian chain (Lemmas A.1-A.3), so Theorem 4.2's rounds-to-$\varepsilon$ grow with $n$.
- [`ridge_hyperparameter`][mlverify.zoo.real_data.ridge_hyperparameter] - the bilevel ridge
  hyperparameter model on real data (the diabetes data through scikit-learn,
  ``pip install -e ".[data]"``); with ``data_poisoning(dataset="diabetes")`` the two models
  of Sato et al.'s experiment ([`mlverify.zoo.real_data`][mlverify.zoo.real_data]:
  [`load_splits`][mlverify.zoo.real_data.load_splits],
  [`ridge_closed_form`][mlverify.zoo.real_data.ridge_closed_form]).
- [`default_problem`][mlverify.zoo.families.default_problem] - the trilevel non-quadratic
  problem ``mlverify verify`` runs.
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
from .real_data import (
    NOISE_LEVELS,
    MissingExtraError,
    RegressionSplits,
    load_splits,
    ridge_closed_form,
    ridge_hyperparameter,
)

__all__ = [
    "MissingExtraError",
    "NOISE_LEVELS",
    "QuadraticFamily",
    "compounding",
    "RegressionSplits",
    "data_poisoning",
    "default_problem",
    "indefinite_problem",
    "load_splits",
    "nonquadratic",
    "quadratic",
    "ridge_bilevel",
    "ridge_closed_form",
    "ridge_hyperparameter",
]
