"""JAX-native reference problems for the numeric core, with answers from NumPy alone.

Nothing here calls mlverify: the closed forms follow from the *definition* of the n-level
problem (SPEC section 2), solved bottom-up with dense linear algebra, not from the lemmas
of section 3 or from automatic differentiation.

Quadratic family: f_k(z) = z^T Q_k z / 2 + c_k^T z over all variables z = (x_1..x_n).
The principal block of Q_k over the blocks k..n is M M^T + I (positive definite), so each
reduced objective F_k is strictly convex in x_k and every lower argmin is unique; the
couplings to the blocks above are arbitrary.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class Quadratic:
    """A seeded quadratic n-level problem: ``Q[k]``, ``c[k]`` of f_{k+1}, block ``sizes``."""

    sizes: tuple[int, ...]
    Q: tuple[np.ndarray, ...]
    c: tuple[np.ndarray, ...]

    @property
    def n(self) -> int:
        return len(self.sizes)

    @property
    def starts(self) -> tuple[int, ...]:
        return tuple(int(s) for s in np.cumsum((0,) + self.sizes))

    def objectives(self):
        """f_k(xs) as JAX callables of the tuple of level blocks."""
        out = []
        for q, c in zip(self.Q, self.c, strict=True):
            qj, cj = jnp.asarray(q), jnp.asarray(c)

            def f(xs, qj=qj, cj=cj):
                z = jnp.concatenate([jnp.ravel(x) for x in xs])
                return 0.5 * z @ qj @ z + cj @ z

            out.append(f)
        return out

    def init(self):
        return [np.zeros(d) for d in self.sizes]


def quadratic(sizes, seed: int, *, normalise: bool = False) -> Quadratic:
    """The seeded quadratic problem with the given block sizes (see the module docstring).

    ``normalise``: scale the random entries by 1/sqrt(total size), so that the spectra stay
    O(1) for large blocks (the Hessians are then well conditioned: eigenvalues in [1, ~2.5]).
    """
    sizes = tuple(int(d) for d in sizes)
    rng = np.random.default_rng(12345 + 1009 * seed + 17 * len(sizes) + sum(sizes))
    total = sum(sizes)
    scale = 1.0 / np.sqrt(total) if normalise else 1.0
    starts = np.cumsum((0,) + sizes)
    qs, cs = [], []
    for k in range(len(sizes)):
        a = scale * rng.uniform(-1.0, 1.0, size=(total, total))
        q = 0.5 * (a + a.T)
        lo = starts[k]
        m = scale * rng.uniform(-1.0, 1.0, size=(total - lo, total - lo))
        q[lo:, lo:] = m @ m.T + np.eye(total - lo)
        qs.append(q)
        cs.append(rng.uniform(-1.0, 1.0, size=total))
    return Quadratic(sizes, tuple(qs), tuple(cs))


@dataclass(frozen=True)
class QuadraticSolution:
    """The affine lower responses and the hypergradient at one x_1.

    ``lower``: x_2*..x_n* (one array per level); ``hypergradient``: dF_1/dx_1;
    ``responses[k]`` (0-based k >= 1): (A, b) with Y_{>=k}(x_{<k}) = A x_{<k} + b, i.e. the
    stacked blocks k..n as an affine map of the blocks above.
    """

    lower: tuple[np.ndarray, ...]
    hypergradient: np.ndarray
    responses: dict


def quadratic_closed_form(problem: Quadratic, x1) -> QuadraticSolution:
    """Solve the nested argmins exactly, bottom-up, and differentiate F_1 (all linear algebra).

    With Y_{>k}(u) = A u + b for u = x_{<=k} (empty below the bottom level), level k sees
    z = P u + e, P = [I; A], e = [0; b], so F_k(u) = (P u + e)^T Q_k (P u + e)/2 + c_k^T (P u + e)
    and D_u F_k = P^T Q_k P u + P^T (Q_k e + c_k). Setting its x_k rows to zero gives
    x_k = -M_kk^{-1} (M_k< x_{<k} + r_k), M = P^T Q_k P, r = P^T (Q_k e + c_k).
    """
    sizes, starts, n = problem.sizes, problem.starts, problem.n
    total = starts[-1]
    # Y_{>k} as a map of x_{<=k}: below the bottom level there is nothing.
    a_below = np.zeros((0, total))
    b_below = np.zeros(0)
    responses = {}
    for k in range(n - 1, 0, -1):
        upto = starts[k + 1]  # entries of x_{<=k}
        p = np.vstack([np.eye(upto), a_below[:, :upto]])
        e = np.concatenate([np.zeros(upto), b_below])
        q, c = problem.Q[k], problem.c[k]
        m = p.T @ q @ p
        r = p.T @ (q @ e + c)
        own = slice(starts[k], starts[k + 1])
        above = slice(0, starts[k])
        # x_k = G x_{<k} + h
        g = -np.linalg.solve(m[own, own], m[own, above])
        h = -np.linalg.solve(m[own, own], r[own])
        # Y_{>=k}(x_{<k}) = [G x + h; A_below [x; G x + h] + b_below]
        lift = np.vstack([np.eye(starts[k]), g])  # x_{<=k} from x_{<k}
        lift_b = np.concatenate([np.zeros(starts[k]), h])
        a_new = np.vstack([g, a_below[:, :upto] @ lift])
        b_new = np.concatenate([h, a_below[:, :upto] @ lift_b + b_below])
        responses[k] = (a_new, b_new)
        a_below = np.hstack([a_new, np.zeros((a_new.shape[0], total - starts[k]))])
        b_below = b_new
    a1, b1 = responses[1]
    x1 = np.asarray(x1, dtype=np.float64).reshape(-1)
    stacked = a1 @ x1 + b1
    lower = tuple(stacked[starts[k] - starts[1] : starts[k + 1] - starts[1]] for k in range(1, n))
    p = np.vstack([np.eye(sizes[0]), a1])
    z = np.concatenate([x1, stacked])
    hypergradient = p.T @ (problem.Q[0] @ z + problem.c[0])
    return QuadraticSolution(lower, hypergradient, responses)


def quadratic_reduced_objective(problem: Quadratic, k: int, upto) -> float:
    """F_k(x_{<=k}) (0-based k) with the levels below by the closed-form responses; ``upto``
    is the flat vector x_{<=k}. For the finite-difference self-checks of the closed form."""
    upto = np.asarray(upto, dtype=np.float64).reshape(-1)
    assert upto.size == problem.starts[k + 1]
    if k + 1 < problem.n:
        a, b = quadratic_closed_form(problem, np.zeros(problem.sizes[0])).responses[k + 1]
        z = np.concatenate([upto, a @ upto + b])
    else:
        z = upto
    return float(0.5 * z @ problem.Q[k] @ z + problem.c[k] @ z)


def rel_err(got, want) -> float:
    """max |got - want| / max |want| (max-norm relative error; ``want`` must not vanish)."""
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    want = np.asarray(want, dtype=np.float64).reshape(-1)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = float(np.max(np.abs(want)))
    assert scale > 0.0, "relative error against a zero reference"
    return float(np.max(np.abs(got - want)) / scale)


def stationary_maximum_start():
    """A bilevel NumericProblem whose declared start is a stationary maximum of level 2:
    f_1 = x_1^2 + x_2^2, f_2 = -(x_2 - x_1)^2 + x_2^4/10 from x = 0 (zero gradient). Its
    minimiser is x_2 = +-sqrt(5) at x_1 = 0, where dF_1/dx_1 = 2 x_1 + 2 y dy/dx_1 with
    dy/dx_1 = -2 / (1.2 y^2 - 2) = -1/2: -sqrt(5) on the positive branch."""
    from mlverify.numeric import NumericProblem

    return NumericProblem(
        [lambda xs: jnp.sum(xs[0] ** 2 + xs[1] ** 2),
         lambda xs: jnp.sum(-((xs[1] - xs[0]) ** 2) + 0.1 * xs[1] ** 4)],
        [np.zeros(1), np.zeros(1)],
    )
