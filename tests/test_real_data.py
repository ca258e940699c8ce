"""The real data of Sato et al.'s experiment (mlverify.zoo.real_data) and its two models.

References are independent of the code under test: scikit-learn's own StandardScaler for
the standardisation, central finite differences of F_1 (lower levels solved tightly) for
the trilevel hypergradient, the hand-derived closed form of ridge regression for the
bilevel one.
"""

from __future__ import annotations

import importlib.util
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import mlverify as mv
from mlverify import zoo
from mlverify.zoo import real_data

#: The hypergradient against finite differences: the issue's bar (float64, Lemma 3.2).
FD_RTOL = 1e-6

#: Everything but the missing-extra test needs the data extra (the test extra pulls it in).
needs_data = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None, reason='needs pip install -e ".[data]"'
)


@pytest.fixture(scope="module")
def diabetes():
    from sklearn.datasets import load_diabetes
    from sklearn.preprocessing import StandardScaler

    x, y = load_diabetes(return_X_y=True, scaled=False)
    return StandardScaler().fit_transform(x), StandardScaler().fit_transform(y[:, None])[:, 0]


# ----------------------------------------------------------------------------- the loader
@needs_data
def test_splits_shapes_and_standardisation(diabetes):
    x, y = diabetes
    s = zoo.load_splits("diabetes", seed=3)
    assert (s.x_train.shape, s.x_val.shape, s.x_test.shape) == ((147, 10), (147, 10), (148, 10))
    assert s.y_train.shape == (147,) and s.y_val.shape == (147,) and s.y_test.shape == (148,)
    assert all(a.dtype == np.float64 for a in (s.x_train, s.y_train, s.x_test, s.y_test))
    # The three parts are a permutation of the standardised rows (StandardScaler, ddof 0).
    rows = np.column_stack([np.vstack([s.x_train, s.x_val, s.x_test]),
                            np.concatenate([s.y_train, s.y_val, s.y_test])])
    full = np.column_stack([x, y])
    order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_allclose(order(rows), order(full), rtol=0, atol=1e-12)
    np.testing.assert_allclose(rows.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(rows.std(axis=0), 1, atol=1e-12)


@needs_data
def test_splits_are_seeded():
    a, b, c = zoo.load_splits(seed=5), zoo.load_splits(seed=5), zoo.load_splits(seed=6)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.x_train, c.x_train)
    small = zoo.load_splits(seed=5, n_train=40, n_val=30)
    assert (small.n_train, small.x_val.shape[0], small.x_test.shape[0]) == (40, 30, 372)


@needs_data
def test_label_noise_levels():
    clean = zoo.load_splits(seed=2)
    one, two = zoo.load_splits(seed=2, noise=1.0), zoo.load_splits(seed=2, noise=2.0)
    np.testing.assert_array_equal(clean.y_train, clean.y_train_clean)
    draw = one.y_train - one.y_train_clean
    # The same draw at every level, scaled by the level; standard normal (147 samples).
    np.testing.assert_allclose(two.y_train - two.y_train_clean, 2 * draw, rtol=1e-14, atol=1e-14)
    assert abs(draw.mean()) < 0.3 and 0.8 < draw.std() < 1.2
    # Only the training targets are noisy.
    for name in ("x_train", "y_train_clean", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(one, name), getattr(clean, name))
    assert zoo.NOISE_LEVELS == (0.0, 0.5, 1.0, 2.0)


@needs_data
@pytest.mark.parametrize(
    "kwargs, quantity",
    [({"noise": -0.1}, "noise"), ({"noise": float("nan")}, "noise"),
     ({"n_train": 300, "n_val": 142}, "split sizes"), ({"dataset": "boston"}, "dataset")],
)
def test_bad_split_requests(kwargs, quantity):
    with pytest.raises(mv.ProblemDefinitionError) as info:
        zoo.load_splits(**kwargs)
    assert info.value.quantity == quantity


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import now raises ImportError
    with pytest.raises(zoo.MissingExtraError) as info:
        zoo.load_splits()
    assert isinstance(info.value, ImportError) and isinstance(info.value, mv.MlverifyError)
    assert 'pip install -e ".[data]"' in str(info.value) and "scikit-learn" in str(info.value)
    with pytest.raises(ImportError):
        zoo.data_poisoning(dataset="diabetes")


# ----------------------------------------------------------------------------- the models
def test_synthetic_data_poisoning_is_unchanged():
    """Without ``dataset`` the zoo keeps its synthetic problem: same data, same objectives."""
    num = zoo.data_poisoning()
    assert num.sizes == (1, 150, 5) and num.names == ("theta", "P", "w")
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=5)
    xt = rng.normal(size=(30, 5))
    yt = xt @ w_true + 0.1 * rng.normal(size=30)
    xv = rng.normal(size=(30, 5))
    yv = xv @ w_true + 0.1 * rng.normal(size=30)
    theta, p, w = np.array([0.3]), 0.1 * np.ones((30, 5)), np.linspace(-1, 1, 5)
    flat = [jnp.asarray(theta), jnp.asarray(p.ravel()), jnp.asarray(w)]
    r = (xt + p) @ w - yt
    expected = [0.5 * np.mean((xv @ w - yv) ** 2), -0.5 * np.mean(r**2) + np.sum(p**2),
                0.5 * np.mean(r**2) + 0.5 * np.exp(0.3) * np.sum(w**2)]
    for k in range(3):
        assert num.objective_value(k, flat) == pytest.approx(expected[k], rel=1e-14)
    with pytest.raises(mv.ProblemDefinitionError):
        zoo.data_poisoning(noise=1.0)
    with pytest.raises(mv.ProblemDefinitionError):
        zoo.data_poisoning(dataset="diabetes", features=5)


@pytest.fixture(scope="module")
def trilevel():
    splits = zoo.load_splits(seed=1, noise=1.0)
    return splits, zoo.data_poisoning(dataset="diabetes", seed=1, noise=1.0)


@needs_data
def test_trilevel_blocks_are_the_real_sizes(trilevel):
    splits, num = trilevel
    assert num.n == 3 and num.names == ("theta", "P", "w")
    assert num.sizes == (1, 147 * 10, 10)
    assert num.unflatten(1, num.init[1]).shape == (147, 10)  # P: one row per training input
    # f_1 is the validation MSE of the weights, f_3 the ridge loss on the attacked inputs.
    w = np.linspace(-0.5, 0.5, 10)
    p = np.full((147, 10), 0.01)
    flat = [jnp.array([0.2]), jnp.asarray(p.ravel()), jnp.asarray(w)]
    assert num.objective_value(0, flat) == pytest.approx(splits.val_mse(w), rel=1e-13)
    ridge = 0.5 * np.mean(((splits.x_train + p) @ w - splits.y_train) ** 2)
    ridge += 0.5 * np.exp(0.2) * np.sum(w**2)
    assert num.objective_value(2, flat) == pytest.approx(ridge, rel=1e-13)


def _reduced_F1(num, theta, init):
    lower = num.solve_lower(jnp.array([theta]), tol=1e-12, init=init)
    flat = [jnp.array([theta])] + [num.flatten(k, x) for k, x in enumerate(lower, 1)]
    return num.objective_value(0, flat), list(lower)


@needs_data
@pytest.mark.parametrize("theta", [-2.0, 0.0, 1.5])
def test_trilevel_hypergradient_agrees_with_finite_differences(trilevel, theta):
    """The exact hypergradient (Lemmas 3.1, 3.2; what implicit-exact steps along) against
    fourth-order central differences of F_1, lower levels solved to 1e-12, step 1e-3
    (truncation ~h^4 F^(5) < 1e-12; round-off and solve error ~1e-12 / h = 1e-9)."""
    _, num = trilevel
    g, lower = num.solve_and_hypergradient(jnp.array([theta]), "exact",
                                           solve_options={"tol": 1e-12})
    assert lower.residual <= 1e-12
    h, init, values = 1e-3, list(lower), []
    for shift in (-2, -1, 1, 2):
        value, _ = _reduced_F1(num, theta + shift * h, init)
        values.append(value)
    fd = (values[0] - 8 * values[1] + 8 * values[2] - values[3]) / (12 * h)
    assert float(g[0]) == pytest.approx(fd, rel=FD_RTOL)
    assert abs(fd) > 1e-3  # a point where the comparison means something


@needs_data
def test_trilevel_attacker_is_strongly_convex_on_a_small_split():
    """The attacker's reduced Hessian D_22 F_2 (levels below by Lemma 3.1) is positive
    definite at the smallest regulariser of the benchmark's box (theta = -8: the largest
    weights), with heavy label noise: the lower solution is unique there."""
    num = zoo.data_poisoning(dataset="diabetes", seed=0, noise=2.0, n_train=30, n_val=30)
    theta = jnp.array([-8.0])
    lower = num.solve_lower(theta, tol=1e-12)
    h2, h3 = num.lower_hessians((theta, *lower))
    assert h2.shape == (300, 300)
    # per row the attacker's curvature is (c - |w|^2)/n at best; here c = 5, n = 30.
    assert np.linalg.eigvalsh(h2)[0] > 0.01 / 30 and np.linalg.eigvalsh(h3)[0] > 0


@needs_data
def test_bilevel_hypergradient_matches_closed_form():
    splits = zoo.load_splits(seed=4, noise=0.5)
    num = zoo.ridge_hyperparameter(splits=splits)
    assert num.sizes == (1, 10) and num.names == ("theta", "w")
    for theta in (-4.0, 0.0, 2.0):
        w_closed, g_closed = zoo.ridge_closed_form(splits, theta)
        g, lower = num.solve_and_hypergradient(jnp.array([theta]), "exact",
                                               solve_options={"tol": 1e-12})
        np.testing.assert_allclose(np.asarray(lower[0]), w_closed, rtol=1e-10, atol=1e-13)
        assert float(g[0]) == pytest.approx(g_closed, rel=1e-9)
    # the closed form itself: its derivative against central differences of its F_1
    h = 1e-5
    f = lambda t: splits.val_mse(zoo.ridge_closed_form(splits, t)[0])  # noqa: E731
    assert zoo.ridge_closed_form(splits, 0.5)[1] == pytest.approx(
        (f(0.5 + h) - f(0.5 - h)) / (2 * h), rel=1e-7
    )


@needs_data
def test_trilevel_without_attack_is_the_bilevel_model():
    """A prohibitive penalty (c = 1e9) leaves the attacker nothing to gain: the trilevel
    hypergradient tends to the bilevel closed form (the gap is O(1/c))."""
    splits = zoo.load_splits(seed=0, noise=1.0, n_train=40, n_val=40)
    num = real_data.poisoning_problem(splits=splits, penalty=1e9)
    g = float(num.hypergradient(jnp.array([-1.0]), "exact", solve_options={"tol": 1e-12})[0])
    assert g == pytest.approx(zoo.ridge_closed_form(splits, -1.0)[1], rel=1e-6)
    with pytest.raises(mv.ProblemDefinitionError) as info:
        real_data.poisoning_problem(splits=splits, penalty=0.0)
    assert info.value.level == 2


@pytest.mark.parametrize("penalty", [0.0, -1.0, float("nan")])
def test_the_synthetic_poisoning_problem_refuses_a_penalty_that_is_not_positive(penalty):
    """Without a positive penalty the attacker (level 2) has no minimiser: refused at
    construction, as for the real data."""
    with pytest.raises(mv.ProblemDefinitionError) as info:
        zoo.data_poisoning(penalty=penalty)
    assert info.value.level == 2 and info.value.quantity == "penalty"
