"""The reference problem families (see the package docstring)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np
import sympy as sp

from ..errors import ProblemDefinitionError
from ..numeric import NumericProblem
from ..problem import Level, MultilevelProblem

if TYPE_CHECKING:
    from numpy.typing import ArrayLike


def _symbols(n, sizes):
    names = "xyzuvwpqrst"
    blocks = []
    for k in range(n):
        if sizes[k] == 1:
            blocks.append(sp.Matrix([sp.Symbol(f"x{k + 1}")]))
        else:
            blocks.append(sp.Matrix(sp.symbols(f"{names[k % len(names)]}{k + 1}_0:{sizes[k]}")))
    return blocks


@dataclass(frozen=True)
class QuadraticFamily:
    r"""$f_k(z) = \tfrac12 z^\top Q_k z + c_k^\top z$, $z = (x_1, \dots, x_n)$, each $Q_k$
    symmetric positive definite.

    $Q_k$ positive definite makes every reduced Hessian
    $\begin{bmatrix} I \\ J \end{bmatrix}^\top Q_k \begin{bmatrix} I \\ J \end{bmatrix}$
    positive definite, so each lower level has a unique minimiser and $F_1$ is a strongly
    convex quadratic. The entries are rationals (``Q_num / denominator``), so the symbolic
    form is exact.
    """

    sizes: tuple[int, ...]
    Q: tuple[np.ndarray, ...]  # integer numerators
    c: tuple[np.ndarray, ...]
    denominator: int

    @property
    def n(self) -> int:
        """The number of levels $n$."""
        return len(self.sizes)

    def _float(self):
        return [q / self.denominator for q in self.Q], [c / self.denominator for c in self.c]

    def symbolic(self) -> MultilevelProblem:
        """The family as a declared `MultilevelProblem` (exact rational coefficients)."""
        blocks = _symbols(self.n, self.sizes)
        z = sp.Matrix.vstack(*blocks)
        levels = []
        for k in range(self.n):
            q = sp.Matrix(self.Q[k].tolist()) / self.denominator
            c = sp.Matrix(self.c[k].tolist()) / self.denominator
            f = (z.T * q * z)[0, 0] / 2 + (c.T * z)[0, 0]
            levels.append(Level(blocks[k] if self.sizes[k] > 1 else blocks[k][0], sp.expand(f)))
        return MultilevelProblem(levels)

    def numeric(self) -> NumericProblem:
        """The family as a JAX `NumericProblem` (float64 coefficients, zero start)."""
        qs, cs = self._float()
        qs = [jnp.asarray(q) for q in qs]
        cs = [jnp.asarray(c) for c in cs]

        def objective(k):
            def f(xs):
                z = jnp.concatenate(xs)
                return 0.5 * z @ qs[k] @ z + cs[k] @ z

            return f

        init = [jnp.zeros(d) for d in self.sizes]
        return NumericProblem([objective(k) for k in range(self.n)], init)

    # -------------------------------------------------------------- closed forms
    def reduced_map(self) -> tuple[np.ndarray, np.ndarray]:
        """$(P, p)$ with $z = P x_1 + p$ on the solution manifold (nested argmins solved
        exactly)."""
        qs, cs = self._float()
        ends = np.cumsum(self.sizes)
        total = int(ends[-1])
        P, p = np.eye(total), np.zeros(total)  # z as an affine map of x_{<=n} (identity)
        for k in range(self.n - 1, 0, -1):
            lo, hi = int(ends[k - 1]), int(ends[k])
            pu, pv = P[:, :lo], P[:, lo:hi]
            a = pv.T @ qs[k] @ pv
            v_map = -np.linalg.solve(a, pv.T @ qs[k] @ pu)
            v_off = -np.linalg.solve(a, pv.T @ (qs[k] @ p + cs[k]))
            P, p = pu + pv @ v_map, p + pv @ v_off
        return P, p

    def hypergradient(self, x1: ArrayLike) -> np.ndarray:
        r"""The exact hypergradient $\nabla F_1(x_1) = P^\top (Q_1 z + c_1)$, $z = P x_1 + p$
        (closed form, see `reduced_map`).

        Args:
            x1: The top-level block $x_1$ (length $d_1$; a number for a scalar block).

        Returns:
            $\nabla F_1(x_1)$ as a float64 array of length $d_1$.
        """
        P, p = self.reduced_map()
        q1, c1 = self._float()[0][0], self._float()[1][0]
        return P.T @ (q1 @ (P @ np.asarray(x1, float) + p) + c1)

    def F1(self, x1: ArrayLike) -> float:
        r"""The upper objective $F_1(x_1) = \tfrac12 z^\top Q_1 z + c_1^\top z$ at
        $z = P x_1 + p$, the lower levels solved exactly.

        Args:
            x1: The top-level block $x_1$ (length $d_1$; a number for a scalar block).

        Returns:
            $F_1(x_1)$ as a float.
        """
        P, p = self.reduced_map()
        q1, c1 = self._float()[0][0], self._float()[1][0]
        z = P @ np.asarray(x1, float) + p
        return float(0.5 * z @ q1 @ z + c1 @ z)

    def hessian_F1(self) -> np.ndarray:
        r"""The (constant) Hessian of $F_1$, $P^\top Q_1 P$: its largest eigenvalue is the
        exact $L$ of Theorem 4.1."""
        P, _ = self.reduced_map()
        return P.T @ self._float()[0][0] @ P

    def lower_solution(self, x1: ArrayLike) -> list[np.ndarray]:
        r"""The exact lower solutions $x_2^*, \dots, x_n^*$ at ``x1``, one array per level.

        Args:
            x1: The top-level block $x_1$ (length $d_1$; a number for a scalar block).

        Returns:
            $n - 1$ float64 arrays, $x_k^*$ of length $d_k$ for $k = 2, \dots, n$.
        """
        P, p = self.reduced_map()
        z = P @ np.asarray(x1, float) + p
        return np.split(z, np.cumsum(self.sizes)[:-1])[1:]

    def optimum(self) -> np.ndarray:
        r"""$\operatorname*{arg\,min} F_1$ over $\mathbb{R}^{d_1}$."""
        P, p = self.reduced_map()
        q1, c1 = self._float()[0][0], self._float()[1][0]
        return np.linalg.solve(P.T @ q1 @ P, -P.T @ (q1 @ p + c1))


def quadratic(n: int, sizes: Sequence[int] | None = None, seed: int = 0,
              coupling: int = 1) -> QuadraticFamily:
    r"""A seeded quadratic n-level problem; ``sizes`` defaults to scalar blocks.

    With $d = \sum_k d_k$: $Q_k = I + M_k M_k^\top / (4d)$, $M_k$ a $d \times d$ matrix of
    integers drawn uniformly from $-\text{coupling}, \dots, \text{coupling}$, and $c_k$ of
    integers from $-4d, \dots, 4d$ divided by $4d$ (so $Q_k \succeq I$).

    Args:
        n: The number of levels.
        sizes: The block sizes $d_1, \dots, d_n$; None for scalar blocks.
        seed: The seed of the coefficients.
        coupling: The largest magnitude of the integer entries of $M_k$ (0: every
            $Q_k = I$, no coupling between the blocks).

    Returns:
        The `QuadraticFamily` (its `symbolic` and `numeric` forms and closed forms).

    Raises:
        ValueError: ``sizes`` does not have ``n`` entries.
    """
    sizes = tuple(sizes) if sizes is not None else (1,) * n
    if len(sizes) != n:
        raise ValueError(f"{n} levels but {len(sizes)} block sizes")
    rng = np.random.default_rng(seed)
    total = sum(sizes)
    denominator = 4 * total
    qs, cs = [], []
    for _ in range(n):
        m = rng.integers(-coupling, coupling + 1, size=(total, total))
        qs.append(m @ m.T + denominator * np.eye(total, dtype=np.int64))
        cs.append(rng.integers(-denominator, denominator + 1, size=total))
    return QuadraticFamily(sizes, tuple(qs), tuple(cs), denominator)


def nonquadratic(
    n: int, size: int = 1, seed: int = 0, strength: float | sp.Rational | None = None
) -> MultilevelProblem:
    r"""tanh couplings plus quartic own terms, seeded; lower best responses are non-affine.

    $$
    f_k = \tfrac12 \lVert x_k - a_k \rVert^2 + \tfrac18 \sum_i (x_k)_i^4
      + s \sum_{m \ne k} \tanh(x_m)^\top W_{km} x_k
      + \frac{s}{2d} \sum_{m > k} \Bigl(\sum_i \sin\bigl((x_m)_i\bigr)\Bigr)
        \Bigl(\sum_i (x_k)_i\Bigr)
    $$

    The coefficients are small rationals so that every lower level is strongly convex near
    its solution and $F_1$ is strongly convex near the origin.

    Args:
        n: The number of levels.
        size: The size $d$ of every block.
        seed: The seed of $a_k$ (entries in $\{-\tfrac34, -\tfrac12, \dots, \tfrac34\}$)
            and $W_{km}$ (entries in $\{-1, -\tfrac12, 0, \tfrac12, 1\}$; an all-zero
            draw is replaced by $\tfrac12 I$).
        strength: The coupling $s$ (default $3/10$), made an exact rational by
            ``sympy.nsimplify``.

    Returns:
        The declared ``MultilevelProblem`` (scalar symbols ``x1``, ``x2``, ... for
            ``size=1``).
    """
    strength = sp.Rational(3, 10) if strength is None else sp.nsimplify(strength)
    rng = np.random.default_rng(seed)
    sizes = (size,) * n
    blocks = _symbols(n, sizes)
    levels = []
    for k in range(n):
        xk = blocks[k]
        a = sp.Matrix([sp.Rational(int(v), 4) for v in rng.integers(-3, 4, size=size)])
        f = ((xk - a).T * (xk - a))[0, 0] / 2 + sum(v**4 for v in xk) / 8
        for m in range(n):
            if m == k:
                continue
            w = sp.Matrix(
                size, size, [sp.Rational(int(v), 2) for v in rng.integers(-2, 3, size=size * size)]
            )
            if w == sp.zeros(size, size):
                w = sp.eye(size) / 2
            coupling = (blocks[m].applyfunc(sp.tanh).T * w * xk)[0, 0]
            f += strength * coupling
            if m > k:
                f += strength / 2 * sum(sp.sin(v) for v in blocks[m]) * sum(xk) / size
        levels.append(Level(xk if size > 1 else xk[0], f))
    return MultilevelProblem(levels)


def ridge_bilevel(
    n_train: int = 6, n_val: int = 6, features: int = 2, seed: int = 0
) -> tuple[MultilevelProblem, Callable[[float], tuple[np.ndarray, float]]]:
    r"""Bilevel ridge tuning: $\theta = \log\lambda$ against validation loss; $w$ the ridge
    weights (Lemma 2.1's example).

    $$
    \min_\theta \tfrac12 \lVert X_v w^* - y_v \rVert^2, \qquad
    w^* = \operatorname*{arg\,min}_w \tfrac12 \lVert X_t w - y_t \rVert^2
      + \tfrac{e^\theta}{2} \lVert w \rVert^2 .
    $$

    Returns ``(problem, closed_form)`` where ``closed_form(theta)`` gives
    $(w^*, \mathrm{d}F_1/\mathrm{d}\theta)$ from $w^* = (X^\top X + \lambda I)^{-1} X^\top y$
    and $\mathrm{d}w^*/\mathrm{d}\theta = -\lambda (X^\top X + \lambda I)^{-1} w^*$
    ($X$, $y$ the training data). Data: small integers from the seed, so the symbolic
    problem is exact.

    Args:
        n_train: The number of training rows ($X_t$, $y_t$).
        n_val: The number of validation rows ($X_v$, $y_v$).
        features: The number of features, the size of $w$.
        seed: The seed of the data (integers from $-3$ to $3$).

    Returns:
        The pair ``(problem, closed_form)``: the bilevel ``MultilevelProblem`` (symbols
            ``theta`` and ``w0``, ``w1``, ...) and ``closed_form(theta)``, which returns
            $w^*$ as a float64 array and $\mathrm{d}F_1/\mathrm{d}\theta$ as a float.
    """
    rng = np.random.default_rng(seed)
    xt = rng.integers(-3, 4, size=(n_train, features))
    yt = rng.integers(-3, 4, size=n_train)
    xv = rng.integers(-3, 4, size=(n_val, features))
    yv = rng.integers(-3, 4, size=n_val)
    theta = sp.Symbol("theta")
    w = sp.Matrix(sp.symbols(f"w0:{features}"))
    rt = sp.Matrix(xt.tolist()) * w - sp.Matrix(yt.tolist())
    rv = sp.Matrix(xv.tolist()) * w - sp.Matrix(yv.tolist())
    f1 = (rv.T * rv)[0, 0] / 2
    f2 = (rt.T * rt)[0, 0] / 2 + sp.exp(theta) / 2 * (w.T * w)[0, 0]
    problem = MultilevelProblem([Level(theta, f1), Level(w, f2)])

    def closed_form(theta_value: float):
        lam = float(np.exp(theta_value))
        a = xt.T @ xt + lam * np.eye(features)
        w_star = np.linalg.solve(a, xt.T @ yt)
        dw = -lam * np.linalg.solve(a, w_star)
        grad = (xv @ dw) @ (xv @ w_star - yv)
        return w_star, float(grad)

    return problem, closed_form


def data_poisoning(
    seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
    features: int | None = None,
    penalty: float | None = None,
    *,
    dataset: str | None = None,
    noise: float = 0.0,
) -> NumericProblem:
    r"""Sato et al.'s trilevel hyperparameter learning under data poisoning (JAX-native).

    ``dataset="diabetes"``: the real data of Sato et al.'s experiment, standardised, split by
    ``seed``, with label noise ``noise`` on the training targets; see
    [`poisoning_problem`][mlverify.zoo.real_data.poisoning_problem]. Without ``dataset``,
    synthetic data (defaults ``n_train = n_val = 30``, ``features = 5``, ``penalty = 2``),
    as below.

    Level 1 (learner): $\theta = \log\lambda$, the validation loss
    $\tfrac{1}{2 n_v} \lVert X_v w - y_v \rVert^2$ of the ridge weights.
    Level 2 (attacker): a perturbation $P$ of the training inputs that raises the training
    loss, $-\tfrac{1}{2n} \lVert (X + P) w - y \rVert^2 + \tfrac{c}{2} \lVert P \rVert_F^2$
    with $c$ = ``penalty`` (the penalty keeps the attacker strongly convex).
    Level 3: ridge weights on the poisoned data,
    $\tfrac{1}{2n} \lVert (X + P) w - y \rVert^2 + \tfrac{e^\theta}{2} \lVert w \rVert^2$
    (closed form exists; solved numerically).

    Data are synthetic and documented: $X \sim N(0, 1)$ entrywise,
    $y = X w_{\text{true}} + 0.1\, N(0, 1)$, $w_{\text{true}} \sim N(0, 1)$, all from
    ``seed``; nothing is downloaded. Initial point: $\theta = \log 0.1$, $P = 0$, $w = 0$.

    Args:
        seed: The seed of the synthetic data, or of the split of the real data.
        n_train: Training rows $n$ (default 30; for ``dataset``, that of `load_splits`).
        n_val: Validation rows $n_v$ (default 30; for ``dataset``, that of `load_splits`).
        features: Features of the synthetic data (default 5); must be None with
            ``dataset``.
        penalty: The attacker's penalty $c$ (default 2; for ``dataset``,
            `DEFAULT_PENALTY` of `mlverify.zoo.real_data`, whose scaling differs: see
            there).
        dataset: A real data set (``"diabetes"``), or None for the synthetic data.
        noise: Standard deviation of the label noise on the training targets (only with
            ``dataset``).

    Returns:
        The trilevel ``NumericProblem`` with blocks named ``theta``, ``P`` and ``w``.

    Raises:
        ProblemDefinitionError: ``features`` given with ``dataset``, ``noise`` without it,
            a penalty that is not positive, or (with ``dataset``) an unknown data set, bad
            split sizes or a negative noise.
        MissingExtraError: ``dataset`` needs scikit-learn, which is not installed.
    """
    if dataset is not None:
        from .real_data import poisoning_problem

        if features is not None:
            raise ProblemDefinitionError(
                f"the {dataset} data fix the number of features", quantity="features"
            )
        return poisoning_problem(dataset, seed, noise, n_train, n_val, penalty)
    if noise != 0.0:
        raise ProblemDefinitionError("label noise needs a dataset", quantity="noise")
    n_train = 30 if n_train is None else n_train
    n_val = 30 if n_val is None else n_val
    features = 5 if features is None else features
    penalty = 2.0 if penalty is None else float(penalty)
    if not np.isfinite(penalty) or penalty <= 0:
        # c <= 0 leaves the attacker (level 2) without a minimiser
        raise ProblemDefinitionError(
            f"the attacker's penalty must be > 0, got {penalty}", level=2, quantity="penalty")
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=features)
    xt = rng.normal(size=(n_train, features))
    yt = xt @ w_true + 0.1 * rng.normal(size=n_train)
    xv = rng.normal(size=(n_val, features))
    yv = xv @ w_true + 0.1 * rng.normal(size=n_val)
    xt, yt, xv, yv = (jnp.asarray(a) for a in (xt, yt, xv, yv))

    def validation(xs):
        _, _, w = xs
        return 0.5 * jnp.mean((xv @ w - yv) ** 2)

    def attacker(xs):
        _, p, w = xs
        residual = (xt + p) @ w - yt
        return -0.5 * jnp.mean(residual**2) + 0.5 * penalty * jnp.sum(p**2)

    def ridge(xs):
        theta, p, w = xs
        residual = (xt + p) @ w - yt
        return 0.5 * jnp.mean(residual**2) + 0.5 * jnp.exp(theta[0]) * jnp.sum(w**2)

    init = [jnp.array([np.log(0.1)]), jnp.zeros((n_train, features)), jnp.zeros(features)]
    return NumericProblem([validation, attacker, ridge], init, names=("theta", "P", "w"))


def default_problem() -> MultilevelProblem:
    r"""The trilevel non-quadratic problem ``mlverify verify`` checks by default.

    $$
    \begin{aligned}
    f_1 &= \tfrac12 (x_1 - 1)^2 + \tfrac12 x_2^2 + \tfrac12 x_3^2 + \tfrac14 x_1 x_3, \\
    f_2 &= \tfrac12 \bigl(x_2 - \tanh x_1\bigr)^2 + \tfrac18 x_2^4 + \tfrac14 x_2 \sin x_3, \\
    f_3 &= \tfrac12 (x_3 - x_1 x_2)^2 + \tfrac18 x_3^4 + \tfrac14 x_3 \tanh x_2 .
    \end{aligned}
    $$

    Each lower level is strongly convex in its own variable, the best responses are not
    affine (so Lemma 3.2's curvature terms are non-zero), and $F_1$ is strongly convex on the
    default box $[-2, 2]$.
    """
    x1, x2, x3 = sp.symbols("x1 x2 x3")
    half, quarter = sp.Rational(1, 2), sp.Rational(1, 4)
    f1 = half * (x1 - 1) ** 2 + half * x2**2 + half * x3**2 + quarter * x1 * x3
    f2 = half * (x2 - sp.tanh(x1)) ** 2 + x2**4 / 8 + quarter * x2 * sp.sin(x3)
    f3 = half * (x3 - x1 * x2) ** 2 + x3**4 / 8 + quarter * sp.tanh(x2) * x3
    return MultilevelProblem([Level(x1, f1), Level(x2, f2), Level(x3, f3)])


def indefinite_problem() -> MultilevelProblem:
    r"""A bilevel problem whose lower level fails the assumptions for $x_1 \le 0$.

    $$
    f_1 = \tfrac12 \bigl(x_1 - \tfrac12\bigr)^2 + \tfrac12 x_2^2, \qquad
    f_2 = \tfrac12 x_1 (x_2 - 1)^2 + \tfrac14 (x_2 - 1)^4
    $$

    The lower Hessian $x_1 + 3 (x_2 - 1)^2$ vanishes at the solution $x_2 = 1$ when
    $x_1 = 0$, and for $x_1 < 0$ the lower level has two minimisers
    ($x_2 = 1 \pm \sqrt{-x_1}$): on a box containing $x_1 \le 0$ no bound that assumes a
    unique, strongly convex lower level applies (Theorems 4.1 and 4.2).
    """
    x1, x2 = sp.symbols("x1 x2")
    f1 = (x1 - sp.Rational(1, 2)) ** 2 / 2 + x2**2 / 2
    f2 = x1 * (x2 - 1) ** 2 / 2 + (x2 - 1) ** 4 / 4
    return MultilevelProblem([Level(x1, f1), Level(x2, f2)])
