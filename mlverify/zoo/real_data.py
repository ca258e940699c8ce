r"""Real regression data for Sato et al.'s experiment: the diabetes data, split and poisoned.

Sato, Tanaka & Takeda (NeurIPS 2021) measured trilevel hyperparameter learning under data
poisoning on real regression data, with every feature and the target standardised and
random train/validation/test splits; the paper we implement (Gu & Chen) compares its
implicit method with their ITD on that benchmark. This module builds the same experiment on
the diabetes data ($442$ patients $\times$ $10$ features), which scikit-learn ships inside its
package (``sklearn.datasets.load_diabetes``): nothing is downloaded. scikit-learn is an optional
dependency: ``pip install -e ".[data]"``.

- [`load_splits`][mlverify.zoo.real_data.load_splits] - standardised data, a seeded random
  split, and label noise of a stated standard deviation added to the training targets
  (validation and test targets stay clean: they measure the model, the noise models corrupted
  training data).
- [`poisoning_problem`][mlverify.zoo.real_data.poisoning_problem] - the trilevel model
  (``mv.zoo.data_poisoning(dataset=...)``).
- [`ridge_hyperparameter`][mlverify.zoo.real_data.ridge_hyperparameter] - the bilevel model
  on the same splits, and [`ridge_closed_form`][mlverify.zoo.real_data.ridge_closed_form]
  its solution and hypergradient in closed form (Lemma 2.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np

from ..errors import MlverifyError, ProblemDefinitionError
from ..numeric import NumericProblem

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

#: The data sets this module can load (each shipped inside scikit-learn).
DATASETS = ("diabetes",)
#: The label-noise levels of the experiment: standard deviations of the Gaussian noise added
#: to the standardised training targets (the target itself has standard deviation 1).
NOISE_LEVELS = (0.0, 0.5, 1.0, 2.0)
#: The attacker's default penalty $c$ (see
#: [`poisoning_problem`][mlverify.zoo.real_data.poisoning_problem]).
DEFAULT_PENALTY = 5.0
#: Default split of the 442 diabetes rows: 147 train, 147 validation, the other 148 test.
DEFAULT_TRAIN, DEFAULT_VAL = 147, 147


class MissingExtraError(MlverifyError, ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""


@dataclass(frozen=True)
class RegressionSplits:
    """One seeded split of a standardised regression data set (float64 NumPy arrays).

    ``y_train`` holds the training targets with the label noise added (standard deviation
    ``noise``); ``y_train_clean`` the same targets without it. ``x_*`` have one row per
    sample and one column per feature.
    """

    dataset: str
    seed: int
    noise: float
    x_train: np.ndarray
    y_train: np.ndarray
    y_train_clean: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_train(self) -> int:
        """The number of training rows."""
        return int(self.x_train.shape[0])

    @property
    def features(self) -> int:
        """The number of features (columns of ``x_train``)."""
        return int(self.x_train.shape[1])

    def val_mse(self, w: ArrayLike) -> float:
        r"""Validation mean squared error of the linear model with weights ``w``.

        Args:
            w: The weights, one per feature.

        Returns:
            $\tfrac{1}{n_v} \lVert X_v w - y_v \rVert^2$ as a float.
        """
        return float(np.mean((self.x_val @ np.asarray(w, np.float64) - self.y_val) ** 2))

    def test_mse(self, w: ArrayLike) -> float:
        r"""Test mean squared error of the linear model with weights ``w``.

        Args:
            w: The weights, one per feature.

        Returns:
            The mean of $(x^\top w - y)^2$ over the test rows, as a float.
        """
        return float(np.mean((self.x_test @ np.asarray(w, np.float64) - self.y_test) ** 2))


def load_dataset(dataset: str = "diabetes") -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of ``dataset`` as shipped in scikit-learn, unscaled, float64 (diabetes: 442 x 10).

    Raises [`MissingExtraError`][mlverify.zoo.real_data.MissingExtraError] naming the
    ``data`` extra when scikit-learn is absent.

    Args:
        dataset: One of `DATASETS`.

    Returns:
        The pair ``(X, y)``: the features, one row per sample, and the targets.

    Raises:
        ProblemDefinitionError: ``dataset`` is not one of `DATASETS`.
        MissingExtraError: scikit-learn is not installed.
    """
    if dataset not in DATASETS:
        raise ProblemDefinitionError(
            f"unknown data set {dataset!r}; available: {', '.join(DATASETS)}", quantity="dataset"
        )
    try:
        from sklearn.datasets import load_diabetes
    except ImportError as exc:
        raise MissingExtraError(
            f"the {dataset!r} data set is loaded through scikit-learn, which is not installed: "
            "install the 'data' extra (pip install -e \".[data]\", or "
            "pip install 'mlverify[data]')",
            quantity="dataset",
        ) from exc
    # scaled=False: the raw values; scikit-learn's default pre-scales each column to unit norm.
    bunch = load_diabetes(scaled=False)
    return np.asarray(bunch.data, np.float64), np.asarray(bunch.target, np.float64)


def standardise(values: np.ndarray) -> np.ndarray:
    """Each column (or a vector) shifted to mean 0 and scaled to standard deviation 1.

    Args:
        values: A matrix (each column standardised) or a vector.

    Returns:
        A float64 array of the same shape (the population standard deviation, ``ddof=0``;
            a constant column gives NaN).
    """
    values = np.asarray(values, np.float64)
    return (values - values.mean(axis=0)) / values.std(axis=0)


def load_splits(
    dataset: str = "diabetes",
    seed: int = 0,
    noise: float = 0.0,
    n_train: int | None = None,
    n_val: int | None = None,
) -> RegressionSplits:
    r"""Standardised ``dataset`` split at random by ``seed``, with label noise on ``y_train``.

    Every feature and the target are standardised over the whole data set (Sato et al.'s
    preprocessing), then the rows are permuted by ``numpy.random.default_rng(seed)``: the
    first ``n_train`` rows train (default 147), the next ``n_val`` validate (default 147) and
    the rest test. The training targets get ``noise * e`` added, $e \sim N(0, I)$ drawn from a
    stream of its own for ``seed`` (the same $e$ at every noise level, so that levels differ
    only in its size).

    Args:
        dataset: One of `DATASETS`.
        seed: The seed of the permutation and of the noise draw.
        noise: The noise's standard deviation (finite, at least 0; see `NOISE_LEVELS`).
        n_train: Training rows (default 147); at least 2.
        n_val: Validation rows (default 147); at least 1, leaving at least one test row.

    Returns:
        The split as `RegressionSplits` (standardised float64 arrays, ``y_train`` with the
            noise and ``y_train_clean`` without).

    Raises:
        ProblemDefinitionError: An unknown ``dataset``, a negative or non-finite ``noise``,
            or split sizes the data cannot hold.
        MissingExtraError: scikit-learn is not installed.
    """
    n_train = DEFAULT_TRAIN if n_train is None else int(n_train)
    n_val = DEFAULT_VAL if n_val is None else int(n_val)
    noise = float(noise)
    if not np.isfinite(noise) or noise < 0:
        raise ProblemDefinitionError(
            f"the label noise must be a finite standard deviation >= 0, got {noise}",
            quantity="noise",
        )
    x, y = load_dataset(dataset)
    rows = x.shape[0]
    if n_train < 2 or n_val < 1 or n_train + n_val >= rows:
        raise ProblemDefinitionError(
            f"{dataset} has {rows} rows: need n_train >= 2, n_val >= 1 and at least one test "
            f"row, got n_train={n_train}, n_val={n_val}",
            quantity="split sizes",
        )
    x, y = standardise(x), standardise(y)
    order = np.random.default_rng(seed).permutation(rows)
    train, val, test = np.split(order, [n_train, n_train + n_val])
    noise_draw = np.random.default_rng([seed, 1]).normal(size=n_train)
    return RegressionSplits(
        dataset=dataset,
        seed=int(seed),
        noise=noise,
        x_train=x[train],
        y_train=y[train] + noise * noise_draw,
        y_train_clean=y[train],
        x_val=x[val],
        y_val=y[val],
        x_test=x[test],
        y_test=y[test],
    )


def _splits_for(dataset, seed, noise, n_train, n_val, splits):
    if splits is not None:
        return splits
    return load_splits(dataset, seed=seed, noise=noise, n_train=n_train, n_val=n_val)


def poisoning_problem(
    dataset: str = "diabetes",
    seed: int = 0,
    noise: float = 0.0,
    n_train: int | None = None,
    n_val: int | None = None,
    penalty: float | None = None,
    *,
    splits: RegressionSplits | None = None,
) -> NumericProblem:
    r"""Sato et al.'s trilevel hyperparameter learning under data poisoning, on real data.

    With the split of [`load_splits`][mlverify.zoo.real_data.load_splits] ($n$ training rows
    $X$, $y$; validation $X_v$, $y_v$):

    $$
    \begin{aligned}
    &\text{level 1 (learner):} && \min_\theta\ f_1 = \tfrac{1}{n_v} \lVert X_v w - y_v \rVert^2
      && \text{(validation MSE)} \\
    &\text{level 2 (attacker):} && \min_P\ f_2 = -\tfrac{1}{2n} \lVert (X + P) w - y \rVert^2
      + \tfrac{c}{2n} \lVert P \rVert_F^2 \\
    &\text{level 3 (model):} && \min_w\ f_3 = \tfrac{1}{2n} \lVert (X + P) w - y \rVert^2
      + \tfrac{e^\theta}{2} \lVert w \rVert^2
    \end{aligned}
    $$

    $\theta = \log \lambda$ is the ridge regulariser; the attacker perturbs every training
    input, $P$ of shape $(n, \text{features})$, to raise the model's training loss, paying
    $\tfrac{c}{2n} \lVert p_i \rVert^2$ per row (the penalty bounds the attack: per row the
    attacker is strongly convex when $c > \lVert w \rVert^2$). Level 3 has a closed form; here
    it is solved like any level (nested Newton), and the hypergradient is the exact one of
    Lemmas 3.1 and 3.2 (the curvature terms are not zero: $w^*$ is not affine in $P$).
    $c$ = ``penalty`` (default 5; at $c = 2$ the attack alone regularised so strongly that
    $F_1$ increased with $\theta$ across $[-8, 3]$ on the split we tried, leaving the
    regulariser nothing to learn). Initial point: $\theta = 0$, $P = 0$, $w = 0$.

    Args:
        dataset: One of `DATASETS`.
        seed: The seed of the split (see `load_splits`).
        noise: Standard deviation of the label noise on the training targets.
        n_train: Training rows $n$ (default 147).
        n_val: Validation rows $n_v$ (default 147).
        penalty: The attacker's penalty $c$ (default `DEFAULT_PENALTY`); must be positive.
        splits: A split to use instead of loading one (then ``dataset``, ``seed``,
            ``noise``, ``n_train`` and ``n_val`` are ignored).

    Returns:
        The trilevel ``NumericProblem`` with blocks named ``theta``, ``P`` and ``w``.

    Raises:
        ProblemDefinitionError: ``penalty`` is not positive and finite, or the split's
            arguments are invalid (see `load_splits`).
        MissingExtraError: scikit-learn is not installed (when no ``splits`` are given).
    """
    data = _splits_for(dataset, seed, noise, n_train, n_val, splits)
    c = DEFAULT_PENALTY if penalty is None else float(penalty)
    if not np.isfinite(c) or c <= 0:
        raise ProblemDefinitionError(
            f"the attacker's penalty must be > 0, got {c}", level=2, quantity="penalty"
        )
    n = data.n_train
    xt, yt, xv, yv = (jnp.asarray(a) for a in (data.x_train, data.y_train, data.x_val, data.y_val))

    def validation(xs):
        w = xs[2]
        return jnp.mean((xv @ w - yv) ** 2)

    def attacker(xs):
        _, p, w = xs
        residual = (xt + p) @ w - yt
        return -0.5 * jnp.mean(residual**2) + 0.5 * c * jnp.sum(p**2) / n

    def model(xs):
        theta, p, w = xs
        residual = (xt + p) @ w - yt
        return 0.5 * jnp.mean(residual**2) + 0.5 * jnp.exp(theta[0]) * jnp.sum(w**2)

    init = [jnp.zeros(1), jnp.zeros((n, data.features)), jnp.zeros(data.features)]
    return NumericProblem([validation, attacker, model], init, names=("theta", "P", "w"))


def ridge_hyperparameter(
    dataset: str = "diabetes",
    seed: int = 0,
    noise: float = 0.0,
    n_train: int | None = None,
    n_val: int | None = None,
    *,
    splits: RegressionSplits | None = None,
) -> NumericProblem:
    r"""The bilevel hyperparameter model on the same splits as `poisoning_problem`:

    $$
    \begin{aligned}
    &\text{level 1:} && \min_\theta\ f_1 = \tfrac{1}{n_v} \lVert X_v w - y_v \rVert^2 \\
    &\text{level 2:} && \min_w\ f_2 = \tfrac{1}{2n} \lVert X w - y \rVert^2
      + \tfrac{e^\theta}{2} \lVert w \rVert^2
    \end{aligned}
    $$

    (the trilevel model without its attacker).
    [`ridge_closed_form`][mlverify.zoo.real_data.ridge_closed_form] gives $w^*$ and the
    hypergradient of Lemma 2.1 in closed form. Initial point: $\theta = 0$, $w = 0$.

    Args:
        dataset: One of `DATASETS`.
        seed: The seed of the split (see `load_splits`).
        noise: Standard deviation of the label noise on the training targets.
        n_train: Training rows $n$ (default 147).
        n_val: Validation rows $n_v$ (default 147).
        splits: A split to use instead of loading one (then ``dataset``, ``seed``,
            ``noise``, ``n_train`` and ``n_val`` are ignored).

    Returns:
        The bilevel ``NumericProblem`` with blocks named ``theta`` and ``w``.

    Raises:
        ProblemDefinitionError: The split's arguments are invalid (see `load_splits`).
        MissingExtraError: scikit-learn is not installed (when no ``splits`` are given).
    """
    data = _splits_for(dataset, seed, noise, n_train, n_val, splits)
    xt, yt, xv, yv = (jnp.asarray(a) for a in (data.x_train, data.y_train, data.x_val, data.y_val))

    def validation(xs):
        w = xs[1]
        return jnp.mean((xv @ w - yv) ** 2)

    def model(xs):
        theta, w = xs
        return 0.5 * jnp.mean((xt @ w - yt) ** 2) + 0.5 * jnp.exp(theta[0]) * jnp.sum(w**2)

    init = [jnp.zeros(1), jnp.zeros(data.features)]
    return NumericProblem([validation, model], init, names=("theta", "w"))


def ridge_closed_form(splits: RegressionSplits, theta: float) -> tuple[np.ndarray, float]:
    r"""$(w^*, \mathrm{d}F_1/\mathrm{d}\theta)$ of `ridge_hyperparameter` in closed form
    (Lemma 2.1):

    $$
    \begin{aligned}
    w^* &= (X^\top X / n + \lambda I)^{-1} X^\top y / n, \qquad \lambda = e^\theta, \\
    \mathrm{d}w^*/\mathrm{d}\theta &= -\lambda (X^\top X / n + \lambda I)^{-1} w^*, \\
    \mathrm{d}F_1/\mathrm{d}\theta &= \tfrac{2}{n_v} (X_v\, \mathrm{d}w^*/\mathrm{d}\theta)^\top
      (X_v w^* - y_v).
    \end{aligned}
    $$

    Args:
        splits: The split (its ``x_train``, ``y_train`` with the noise, ``x_val`` and
            ``y_val``).
        theta: $\theta = \log\lambda$.

    Returns:
        The pair ``(w, gradient)``: $w^*$ as a float64 array, one entry per feature, and
            $\mathrm{d}F_1/\mathrm{d}\theta$ as a float.
    """
    x, y, n = splits.x_train, splits.y_train, splits.n_train
    lam = float(np.exp(theta))
    a = x.T @ x / n + lam * np.eye(splits.features)
    w = np.linalg.solve(a, x.T @ y / n)
    dw = -lam * np.linalg.solve(a, w)
    grad = 2.0 / splits.x_val.shape[0] * (splits.x_val @ dw) @ (splits.x_val @ w - splits.y_val)
    return w, float(grad)


__all__ = [
    "DATASETS",
    "NOISE_LEVELS",
    "MissingExtraError",
    "RegressionSplits",
    "load_dataset",
    "load_splits",
    "poisoning_problem",
    "ridge_closed_form",
    "ridge_hyperparameter",
    "standardise",
]
