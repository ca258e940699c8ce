r"""Implicit differentiation on the JAX core: best responses whose derivatives are the lemmas'.

Blocks are flat float64 vectors here (``NumericProblem`` flattens pytrees). ``anchors`` is
the tuple of all blocks $(x_1, \dots, x_n)$: the point where the formulas are evaluated. With
the lower levels solved it is the solution; "frozen" it is any iterate.

The best response of level m (implicit function theorem; Lemmas 2.1, 3.1, 3.2)
-------------------------------------------
$y_m(x_{<m})$ is a ``jax.custom_jvp`` function whose value is the anchor $x_m$ and whose
tangent is the implicit-function rule

$$
H_m(x, y)\, \dot y = -D_x g_m(x, y)\, \dot x, \qquad g_m = D_m F_m, \quad H_m = D_{mm} F_m,
$$

with $F_m$ the reduced objective (the levels below by their own best responses). The rule
calls $y_m$ itself for its primal, so differentiating it again differentiates $H_m$ and
$D_x g_m$ along the best response: every order is exact (Lemma 3.2 and its induction), at the
anchors with the lower levels solved, and as the formulas evaluated at the iterates when frozen.

The linear system is a ``lax.custom_linear_solve`` whose matvec is the Hessian-vector
product $v \mapsto (D_v g_m)\, v$: higher orders differentiate Hessian-vector products, never a
dense Hessian. Its ``solve`` needs only to be right where the system is posed, which is
always the anchor point (every derivative is taken there), so it is a Cholesky solve with
$H_m$ at the anchors computed once per level ("dense", small blocks), conjugate gradients on
the matvec (large blocks: no $d \times d$ matrix is formed), or, for the approximate methods,
CG or a Neumann series truncated at $K$ terms; JAX differentiates every one of them as a solve.

``curvature=False`` replaces each lower best response by its tangent map at the anchors,
$y(w) \approx a + L (w - w_0)$, with $L$ from the same curvature-free formula: first
derivatives are right, second and higher derivatives of lower best responses are zero, which
drops the terms $\sum_i (f_z)_i\, D^2 g_i$ of Lemma 3.2.

Cost: the derivative order needed grows with $n$ ($f_k$ to order $k$), and each order
differentiates the rule of every level below once more, so trace and compile time grow
steeply with $n$ (about 8x per level from 4 to 5 levels, blocks of 4;
``benchmarks/results/deep_jax.md``). Where every lower block is dense, the exact
hypergradient, the joint solve and the checks use `mlverify.numeric.stacked` instead (the
same formulas, one linearisation per level); these rules serve the approximate methods,
explicit linear-solver options and blocks over ``DENSE_LIMIT``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.scipy.linalg import cho_factor, cho_solve

sg = jax.lax.stop_gradient

Objective = Callable[[tuple], jax.Array]

#: Blocks larger than this use matrix-free CG by default.
DENSE_LIMIT = 200


@dataclass(frozen=True)
class LinearSolve:
    r"""How to solve $H_m u = r$: ``"dense"`` (Cholesky at the anchors), ``"cg"`` (to ``tol``;
    or exactly ``iterations`` steps if given), or ``"neumann"`` (``iterations`` terms of
    $\eta \sum_i (I - \eta H)^i$, $\eta$ = ``step`` or $1/\lambda_{\max}$ by Lanczos).
    ``"auto"``: dense up to blocks of 200, else CG."""

    kind: str = "auto"
    iterations: int | None = None
    tol: float = 1e-12
    step: float | None = None

    #: The valid ``kind`` names.
    KINDS = ("auto", "dense", "cg", "neumann")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(
                f"unknown linear solve {self.kind!r}; the valid kinds are: {', '.join(self.KINDS)}"
            )

    def resolve(self, size: int) -> LinearSolve:
        """The solve for a block of ``size``: ``auto`` becomes ``dense`` (Cholesky) up to
        `DENSE_LIMIT` and ``cg`` above; any other kind is kept."""
        if self.kind != "auto":
            return self
        return LinearSolve("dense" if size <= DENSE_LIMIT else "cg", self.iterations, self.tol)


class ImplicitCore:
    """The n-level reduced objectives and best responses of one problem, as JAX functions.

    ``jit_levels``: compile each level's reduced gradient as its own cached function.
    ``consts`` (from `level_constants`) is a tuple with one dict of arrays per level:
    ``chol`` (the Cholesky factor of $H_m$ at the anchors, dense solves) and ``step`` (the
    Neumann step); it is a pytree, so it passes through jit and custom_jvp.
    """

    def __init__(self, objectives: Sequence[Objective], sizes: Sequence[int], *,
                 jit_levels: bool = True):
        self.fs = tuple(objectives)
        self.sizes = tuple(sizes)
        self.n = len(self.fs)
        self._responses: dict = {}
        # One jitted function per (level, solve, curvature): JAX caches its trace and the
        # JVP of that trace, so the rules re-traced at every derivative order reuse them
        # (halves the trace time at n = 5, blocks of 4). Off for a core whose objectives
        # close over traced values (built inside vmap or jit), which jit cannot close over.
        self._gradient = (jax.jit(self._reduced_gradient, static_argnums=(0, 5, 6))
                          if jit_levels else self._reduced_gradient)

    # --------------------------------------------------------------- the recursion
    def reduced(self, k, blocks, anchors, consts, solve, curvature=True):
        r"""$F_k$ at ``blocks`` $= (x_1, \dots, x_k)$, lower levels by their best responses."""
        blocks = tuple(blocks)
        for m in range(k + 1, self.n):
            blocks = blocks + (self.best_response(m, blocks, anchors, consts, solve, curvature),)
        return self.fs[k](blocks)

    def reduced_gradient(self, m, upper, v, anchors, consts, solve, curvature=True):
        """$g_m = D_m F_m$ at ``(upper, v)``."""
        return self._gradient(m, tuple(upper), v, tuple(anchors), consts, solve, curvature)

    def _reduced_gradient(self, m, upper, v, anchors, consts, solve, curvature):
        return jax.grad(
            lambda vv: self.reduced(m, tuple(upper) + (vv,), anchors, consts, solve, curvature)
        )(v)

    def best_response(self, m, upper, anchors, consts, solve, curvature=True):
        """$y_m$ at ``upper``: value the anchor, derivatives by the implicit-function rule."""
        if not curvature:
            return self._tangent_response(m, tuple(upper), anchors, consts, solve)
        key = (m, solve)
        if key not in self._responses:
            self._responses[key] = self._make_response(m, solve)
        return self._responses[key](tuple(upper), tuple(anchors), consts)

    # ``solve`` is the problem's choice for every level; each level resolves its own kind
    # from it (`LinearSolve.resolve`) and hands ``solve`` itself on to the levels below, so
    # that a dense level above a CG level (or the reverse) keeps each level's own kind.
    def _make_response(self, m, solve):
        spec = solve.resolve(self.sizes[m])

        @jax.custom_jvp
        def response(upper, anchors, consts):
            return anchors[m]

        def rule(primals, tangents):
            upper, anchors, consts = primals
            y = response(upper, anchors, consts)

            def g(u, v):
                return self.reduced_gradient(m, u, v, anchors, consts, solve)

            # Moved anchors move the point where the formulas are evaluated: the response's
            # value moves with its own anchor, and the blocks above move relative to theirs
            # (the derivative of the lemmas' formulas at the iterates). Without anchor
            # tangents (every other use) this is the plain rule.
            anchors_tangent = tangents[1]
            moved = tuple(_difference(t, s, u) for t, s, u in
                          zip(tangents[0], anchors_tangent[:m], upper, strict=True))
            # H_m ydot = -D_x g_m xdot, posed (and solved) at the anchors.
            rhs = -jax.jvp(lambda *u: g(u, y), upper, moved)[1]

            def hvp(t):
                return jax.jvp(lambda v: g(upper, v), (y,), (t,))[1]

            ydot = jax.lax.custom_linear_solve(
                hvp, rhs, self._solver(spec, consts[m]), symmetric=True
            )
            if not isinstance(anchors_tangent[m], SymbolicZero):
                ydot = ydot + anchors_tangent[m]
            return y, ydot

        # Symbolic zeros: a rule called without anchor tangents traces exactly the plain rule.
        response.defjvp(rule, symbolic_zeros=True)
        return response

    def _tangent_response(self, m, upper, anchors, consts, solve):
        spec = solve.resolve(self.sizes[m])
        a = anchors[m]
        u0 = tuple(sg(u) for u in upper)
        du = tuple(u - u0_i for u, u0_i in zip(upper, u0, strict=True))

        def g(u, v):
            return self.reduced_gradient(m, u, v, anchors, consts, solve, False)

        _, dg = jax.jvp(lambda *us: g(us, a), u0, du)

        def hvp(t):
            return jax.jvp(lambda v: g(u0, v), (a,), (t,))[1]

        return a - jax.lax.custom_linear_solve(hvp, dg, self._solver(spec, consts[m]),
                                               symmetric=True)

    @staticmethod
    def _solver(spec: LinearSolve, const: dict):
        if spec.kind == "dense":
            return lambda _matvec, b: cho_solve((const["chol"], False), b)
        if spec.kind == "cg":
            maxiter = spec.iterations
            tol = 0.0 if spec.iterations is not None else spec.tol

            def cg(matvec, b):
                limit = maxiter if maxiter is not None else 10 * b.shape[0] + 50
                return jax.scipy.sparse.linalg.cg(matvec, b, tol=tol, atol=0.0, maxiter=limit)[0]

            return cg
        if spec.kind == "neumann":
            if spec.iterations is None:
                raise ValueError("the Neumann series needs iterations=K")

            def neumann(matvec, b):
                eta = const["step"]

                def body(_, carry):
                    term, total = carry
                    term = term - eta * matvec(term)
                    return term, total + term

                _, total = jax.lax.fori_loop(0, spec.iterations - 1, body, (b, b))
                return eta * total

            return neumann
        raise ValueError(f"unknown linear solve {spec.kind!r}: use dense, cg or neumann")

    # --------------------------------------------------------------- constants
    def level_constants(self, anchors, solve: LinearSolve, curvature=True, below=0, *,
                        hessians: dict | None = None, gradients: dict | None = None):
        r"""Per-level solve data at the anchors (bottom-up; levels $\le$ ``below`` left empty).

        ``hessians`` / ``gradients``: dicts that receive each dense level's
        $H_m = D_{mm} F_m$ and $D_m F_m$ (one linearisation gives both, so that a caller
        needing them does not differentiate again)."""
        anchors = tuple(sg(a) for a in anchors)
        consts = [{"chol": jnp.zeros((0, 0)), "step": jnp.zeros(())} for _ in range(self.n)]
        for m in range(self.n - 1, below, -1):
            spec = solve.resolve(self.sizes[m])
            if spec.kind not in ("dense", "neumann"):
                continue
            frozen = tuple(consts)

            def grad_m(v, m=m, frozen=frozen):
                return self.reduced_gradient(m, anchors[:m], v, anchors, frozen, solve,
                                             curvature)

            if spec.kind == "dense":
                if hessians is None and gradients is None:
                    hessian = jax.jacfwd(grad_m)(anchors[m])
                else:
                    gradient, tangent = jax.linearize(grad_m, anchors[m])
                    hessian = jax.vmap(tangent, out_axes=1)(jnp.eye(anchors[m].shape[0]))
                    if hessians is not None:
                        hessians[m] = hessian
                    if gradients is not None:
                        gradients[m] = gradient
                factor = cho_factor(hessian)[0]
                consts[m] = {"chol": sg(factor), "step": jnp.zeros(())}
            else:
                step = spec.step
                if step is None:
                    step = 1.0 / _largest_eigenvalue(
                        lambda t, grad_m=grad_m, m=m: jax.jvp(grad_m, (anchors[m],), (t,))[1],
                        anchors[m],
                    )
                consts[m] = {"chol": jnp.zeros((0, 0)), "step": sg(jnp.asarray(step, jnp.float64))}
        return tuple(consts)

    # --------------------------------------------------------------- hypergradient
    def hypergradient_frozen(self, anchors, solve: LinearSolve, curvature=True, consts=None):
        """dF_1/dx_1 by the lemmas' formulas evaluated at ``anchors`` (no solve); ``consts``:
        `level_constants` for the same anchors, solve and curvature, if the caller has them."""
        anchors = tuple(anchors)
        if consts is None:
            consts = self.level_constants(anchors, solve, curvature)
        return jax.grad(
            lambda x1: self.reduced(0, (x1,), anchors, consts, solve, curvature)
        )(anchors[0])

    def reduced_gradient_at(self, k, anchors, solve: LinearSolve = LinearSolve()):
        """$D_k F_k$ at the anchors, levels below by the lemmas (what a single-loop step uses)."""
        anchors = tuple(anchors)
        consts = self.level_constants(anchors, solve, below=k)
        return self.reduced_gradient(k, anchors[:k], anchors[k], anchors, consts, solve)

    def reduced_gradient_hessian(self, k, anchors, solve: LinearSolve, dense: bool):
        """$(D_k F_k, D_{kk} F_k)$ at the anchors when ``dense``; else $D_k F_k$ and ``hvp``,
        with ``hvp(v)`` $= D_{kk} F_k v$, for matrix-free Newton."""
        anchors = tuple(anchors)
        consts = self.level_constants(anchors, solve, below=k)

        def grad_k(v):
            return self.reduced_gradient(k, anchors[:k], v, anchors, consts, solve)

        g = grad_k(anchors[k])
        if dense:
            return g, jax.jacfwd(grad_k)(anchors[k])
        return g, lambda t: jax.jvp(grad_k, (anchors[k],), (t,))[1]

    def reduced_hessian_lambda_max(self, k, anchors, lanczos_steps: int | None = None):
        r"""$\lambda_{\max}(D_{kk} F_k)$ at the anchors: exact (``eigvalsh``) for blocks up
        to ``DENSE_LIMIT``, else Lanczos on Hessian-vector products, scaled by 1.02 because it
        approaches $\lambda_{\max}$ from below. Sets gradient-step sizes $1/L_k$.

        ``lanczos_steps=K`` forces $K$ Lanczos steps whatever the block size ($K$
        Hessian-vector products instead of a dense Hessian: ITD's default steps, where a
        slightly low estimate is caught by its divergence check)."""
        anchors = tuple(sg(a) for a in anchors)
        dense = self.sizes[k] <= DENSE_LIMIT and lanczos_steps is None
        _, second = self.reduced_gradient_hessian(k, anchors, LinearSolve(), dense)
        if dense:
            return jnp.linalg.eigvalsh(0.5 * (second + second.T))[-1]
        return _largest_eigenvalue(second, anchors[k], lanczos_steps or 30)


def _difference(t, s, like):
    """The tangent ``t - s`` of one block, either of them possibly a symbolic zero."""
    t_zero, s_zero = isinstance(t, SymbolicZero), isinstance(s, SymbolicZero)
    if t_zero and s_zero:
        return jnp.zeros_like(like)
    if s_zero:
        return t
    return -s if t_zero else t - s


def _largest_eigenvalue(hvp, a, iterations: int = 30) -> jax.Array:
    """lambda_max(H) from Hessian-vector products: the largest Ritz value of ``iterations``
    Lanczos steps (full reorthogonalisation; O(iterations^2 d)), times 1.02.

    A Ritz value approaches lambda_max from below, far faster than power iteration where the
    top eigenvalues cluster (measured on a 250-block: power iteration 50 steps 2.5 % low);
    the 2 % margin makes it an upper bound in practice. Used for step sizes 1/L."""
    d = a.shape[0]
    steps = min(iterations, d)
    start = jnp.ones_like(a) / jnp.sqrt(d)

    def body(j, carry):
        basis, alphas, betas = carry
        w = hvp(basis[j])
        alpha = jnp.vdot(basis[j], w)
        # Full reorthogonalisation against every basis vector found so far (rows > j are 0).
        w = w - basis.T @ (basis @ w)
        w = w - basis.T @ (basis @ w)
        beta = jnp.linalg.norm(w)
        following = jnp.where(beta > 1e-12 * jnp.abs(alpha), w / jnp.maximum(beta, 1e-300), 0.0)
        basis = basis.at[j + 1].set(following)
        return basis, alphas.at[j].set(alpha), betas.at[j].set(beta)

    basis = jnp.zeros((steps + 1, d), a.dtype).at[0].set(start)
    _, alphas, betas = jax.lax.fori_loop(
        0, steps, body, (basis, jnp.zeros(steps, a.dtype), jnp.zeros(steps, a.dtype))
    )
    tridiagonal = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    # With as many steps as the block has entries the Krylov space is the whole space and the
    # largest Ritz value is lambda_max itself: no margin then.
    margin = 1.0 if steps >= d else 1.02
    return sg(margin * jnp.linalg.eigvalsh(tridiagonal)[-1])
