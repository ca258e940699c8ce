"""Implicit differentiation on the JAX core: best responses whose derivatives are the lemmas'.

Blocks are flat float64 vectors here (``NumericProblem`` flattens pytrees). ``anchors`` is
the tuple of all blocks (x_1, ..., x_n): the point where the formulas are evaluated. With
the lower levels solved it is the solution; "frozen" it is any iterate.

Exact best responses by chord steps (why and how)
-------------------------------------------------
The frozen best response y_m of level m is the implicit function of

    G(w, v) = g_m(w, v) - c_m = 0,     g_m = D_m F_m,   c_m = g_m(anchors)

through (w_0, a) = anchors: at a solution c_m = 0 and this is the true best response; at
frozen iterates its derivatives are exactly SPEC eq. (*) and its derivatives evaluated there,
which is what the single-loop algorithm uses. We represent it by p chord steps

    v_0 = a,    v_{i+1} = v_i - H_0^{-1} G(w, v_i),     H_0 = D_mm F_m(anchors) held fixed.

The error obeys e_{i+1} = (I - H_0^{-1} H(w, y(w))) e_i + O(e_i^2) = O(|w - w_0|) e_i, so
v_p has the value a and the derivatives of y up to order p at w_0, exactly. The lemmas need
y_k to order k (a level's Jacobian needs one more derivative of the level below), and that
is what ``order`` tracks: F_k needed to order p calls the best responses below it at order p,
and a best response at order p evaluates g = D F at order p + 1.

The program is plain JAX (no custom rules), so grad, jvp, vmap and jit compose freely. H_0
and c_m are computed once per level at the anchors, bottom-up, and enter as constants
(stop_gradient); the linear solve with H_0 is a dense Cholesky solve for small blocks and
conjugate gradients on Hessian-vector products (``lax.custom_linear_solve``, so it is
differentiated as a solve) for large ones. No d x d matrix is formed in the matrix-free mode.

``curvature=False`` replaces each lower best response by its tangent map at the anchors,
y(w) ~ a + L (w - w_0) with L = D y from the same (curvature-free) formula: first
derivatives are right, second and higher derivatives of lower best responses are zero,
which drops the terms sum_i (f_z)_i D^2 g_i of Lemma 3.2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve

sg = jax.lax.stop_gradient

Objective = Callable[[tuple], jax.Array]

#: Blocks larger than this use matrix-free CG by default.
DENSE_LIMIT = 200


@dataclass(frozen=True)
class LinearSolve:
    """How to apply H_0^{-1}: ``"dense"`` (Cholesky), ``"cg"`` (to ``tol``; or exactly
    ``iterations`` steps if given), or ``"neumann"`` (``iterations`` terms of the series
    sum_i (I - eta H)^i eta, with eta = ``step``, 1/L by default from a power iteration)."""

    kind: str = "auto"
    iterations: int | None = None
    tol: float = 1e-12
    step: float | None = None

    def resolve(self, size: int) -> LinearSolve:
        if self.kind != "auto":
            return self
        return LinearSolve("dense" if size <= DENSE_LIMIT else "cg", self.iterations, self.tol)


@dataclass(frozen=True)
class LevelOperator:
    """The fixed linear map v -> H_0^{-1} v of one level (a pytree of constants)."""

    kind: str
    factor: object  # Cholesky factor, or the anchors needed for Hessian-vector products
    iterations: int | None
    tol: float
    step: float | None
    hvp: Callable | None = None

    def __call__(self, rhs: jax.Array) -> jax.Array:
        if self.kind == "dense":
            return cho_solve(self.factor, rhs)
        if self.kind == "neumann":
            eta = self.step

            def body(_, carry):
                term, total = carry
                term = term - eta * self.hvp(term)
                return term, total + term

            _, total = jax.lax.fori_loop(0, self.iterations - 1, body, (rhs, rhs))
            return eta * total
        # Conjugate gradients as a linear solve: differentiated as a solve, not unrolled.
        maxiter = self.iterations if self.iterations is not None else 10 * rhs.shape[0] + 50
        tol = 0.0 if self.iterations is not None else self.tol

        def solve(matvec, b):
            return jax.scipy.sparse.linalg.cg(matvec, b, tol=tol, atol=0.0, maxiter=maxiter)[0]

        return jax.lax.custom_linear_solve(self.hvp, rhs, solve, symmetric=True)


class ImplicitCore:
    """The n-level reduced objectives and best responses of one problem, as JAX functions."""

    def __init__(self, objectives: Sequence[Objective], sizes: Sequence[int]):
        self.fs = tuple(objectives)
        self.sizes = tuple(sizes)
        self.n = len(self.fs)

    # --------------------------------------------------------------- the recursion
    def reduced(self, k, blocks, anchors, order, consts, curvature=True):
        """F_k at ``blocks`` = (x_1..x_k), lower levels by their best responses."""
        blocks = list(blocks)
        for m in range(k + 1, self.n):
            blocks.append(self.best_response(m, tuple(blocks), anchors, order, consts, curvature))
        return self.fs[k](tuple(blocks))

    def reduced_gradient(self, m, upper, v, anchors, order, consts, curvature=True):
        """g_m = D_m F_m at (upper, v)."""
        return jax.grad(
            lambda vv: self.reduced(m, tuple(upper) + (vv,), anchors, order, consts, curvature)
        )(v)

    def best_response(self, m, upper, anchors, order, consts, curvature=True):
        """y_m(upper), exact to ``order`` at the anchors (see the module docstring)."""
        a = anchors[m]
        if order == 0:
            return a
        operator, c = consts[m]
        if not curvature:
            u0 = tuple(sg(u) for u in upper)
            du = tuple(u - u0_i for u, u0_i in zip(upper, u0, strict=True))
            _, dg = jax.jvp(
                lambda *us: self.reduced_gradient(m, us, a, anchors, 1, consts, False), u0, du
            )
            return a - operator(dg)
        v = a
        for _ in range(order):
            v = v - operator(self.reduced_gradient(m, upper, v, anchors, order + 1, consts) - c)
        return v

    # --------------------------------------------------------------- constants
    def level_constants(self, anchors, solve: LinearSolve, curvature=True, below=0):
        """H_0 operators and c_m for levels m > ``below``, bottom-up, at the anchors."""
        consts: dict[int, tuple[LevelOperator, jax.Array]] = {}
        anchors = tuple(sg(a) for a in anchors)
        for m in range(self.n - 1, below, -1):
            upper = anchors[:m]
            order = 2 if curvature else 1

            def grad_m(v, m=m, upper=upper, order=order):
                return self.reduced_gradient(m, upper, v, anchors, order, consts, curvature)

            c = grad_m(anchors[m])
            consts[m] = (self._operator(grad_m, anchors[m], solve), sg(c))
        return consts

    def _operator(self, grad_m, a, solve: LinearSolve) -> LevelOperator:
        spec = solve.resolve(a.shape[0])

        # Linear in v with constant coefficients: ``a`` and everything grad_m closes over
        # are stop_gradient'ed, so derivatives flow through v alone.
        def hvp(v):
            return jax.jvp(grad_m, (a,), (v,))[1]

        if spec.kind == "dense":
            hessian = sg(jax.jacfwd(grad_m)(a))
            return LevelOperator("dense", cho_factor(hessian), None, spec.tol, None)
        if spec.kind in ("cg", "neumann"):
            step = spec.step
            if spec.kind == "neumann":
                if spec.iterations is None:
                    raise ValueError("the Neumann series needs iterations=K")
                if step is None:
                    step = 1.0 / _largest_eigenvalue(hvp, a)
            return LevelOperator(spec.kind, None, spec.iterations, spec.tol, step, hvp)
        raise ValueError(f"unknown linear solve {spec.kind!r}: use dense, cg or neumann")

    # --------------------------------------------------------------- hypergradient
    def hypergradient_frozen(self, anchors, solve: LinearSolve, curvature=True):
        """dF_1/dx_1 by the lemmas' formulas evaluated at ``anchors`` (no solve)."""
        anchors = tuple(anchors)
        consts = self.level_constants(anchors, solve, curvature)
        return jax.grad(lambda x1: self.reduced(0, (x1,), anchors, 1, consts, curvature))(
            anchors[0]
        )

    def reduced_gradient_hessian(self, k, anchors, solve: LinearSolve, dense: bool):
        """(D_k F_k, D_kk F_k or its HVP closure) at the anchors, levels below by IFT."""
        anchors = tuple(anchors)
        consts = self.level_constants(anchors, solve, below=k)

        def grad_k(v):
            return self.reduced_gradient(k, anchors[:k], v, anchors, 2, consts)

        g = grad_k(anchors[k])
        if dense:
            return g, jax.jacfwd(grad_k)(anchors[k])
        return g, consts

    def reduced_value(self, k, anchors):
        """F_k at the anchors (the lower blocks in ``anchors`` are taken as solved)."""
        return self.fs[k](tuple(anchors))


def _largest_eigenvalue(hvp, a, iterations: int = 50) -> jax.Array:
    """Power iteration for lambda_max(H_0); used to pick the Neumann step 1/L."""
    v = jnp.ones_like(a) / jnp.sqrt(a.shape[0])

    def body(_, v):
        w = hvp(v)
        return w / jnp.linalg.norm(w)

    v = jax.lax.fori_loop(0, iterations, body, v)
    return sg(1.02 * jnp.vdot(v, hvp(v)))
