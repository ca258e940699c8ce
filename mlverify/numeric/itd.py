"""Iterative differentiation (ITD; Sato et al. 2021), the paper's baseline (SPEC section 4).

Each argmin is replaced by K gradient steps from the given start, nested: one gradient
step of level k differentiates through level k+1's unrolled solver, which itself unrolls
level k+2's, ... The hypergradient is the derivative of the whole unrolled program; its cost
grows like K^(n-1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _unrolled_tail(core, k, upper, starts, steps, lrs):
    """(x_k, ..., x_n) after K unrolled steps at level k, for the blocks above held fixed."""

    def tail_from(xk):
        lower = (
            _unrolled_tail(core, k + 1, tuple(upper) + (xk,), starts, steps, lrs)
            if k + 1 < core.n
            else ()
        )
        return lower

    def objective(xk):
        return core.fs[k](tuple(upper) + (xk,) + tail_from(xk))

    grad = jax.grad(objective)

    def body(_, xk):
        return xk - lrs[k] * grad(xk)

    xk = jax.lax.fori_loop(0, steps, body, starts[k])
    return (xk,) + tail_from(xk)


def itd_hypergradient(core, anchors, steps: int, inner_lr=None):
    """dF_1/dx_1 through K unrolled steps per lower level, started from ``anchors[1:]``."""
    if steps < 1:
        raise ValueError("ITD needs steps >= 1")
    lrs = _learning_rates(core, anchors, inner_lr)

    def top(x1):
        return core.fs[0]((x1,) + _unrolled_tail(core, 1, (x1,), anchors, steps, lrs))

    return jax.grad(top)(anchors[0])


def _learning_rates(core, anchors, inner_lr):
    """Per-level steps: given, or 1/(1.2 L_k) with L_k = lambda_max(D_kk F_k) at the start.

    The steps descend the (unrolled) reduced objective F_k, whose curvature includes the
    levels below; the partial Hessian D_kk f_k can understate it badly (and ITD then
    diverges), so L_k is that of the reduced Hessian, by the lemmas at the start.
    """
    if inner_lr is not None:
        if jnp.ndim(inner_lr) == 0:
            return (None,) + (inner_lr,) * (core.n - 1)
        return (None,) + tuple(inner_lr)
    from .implicit import DENSE_LIMIT, LinearSolve

    anchors = tuple(jax.lax.stop_gradient(a) for a in anchors)
    rates = [None]
    for k in range(1, core.n):
        dense = core.sizes[k] <= DENSE_LIMIT
        _, second = core.reduced_gradient_hessian(k, anchors, LinearSolve(), dense)
        if dense:
            lam = jnp.linalg.eigvalsh(0.5 * (second + second.T))[-1]
        else:
            v = jnp.ones_like(anchors[k]) / jnp.sqrt(anchors[k].shape[0])
            for _ in range(30):
                w = second(v)
                v = w / jnp.maximum(jnp.linalg.norm(w), 1e-300)
            lam = jnp.vdot(v, second(v))
        rates.append(jax.lax.stop_gradient(1.0 / jnp.maximum(1.2 * lam, 1e-12)))
    return tuple(rates)
