r"""Iterative differentiation (ITD; Sato et al. 2021), the paper's baseline.

Each argmin is replaced by $K$ gradient steps from the given start, nested: one gradient
step of level $k$ differentiates through level $k+1$'s unrolled solver, which itself unrolls
level $k+2$'s, ... The hypergradient is the derivative of the whole unrolled program; its cost
grows like $K^{n-1}$.

Divergence is detected, not guessed at: gradient descent with a step $\eta \le 1/L$ lowers
the objective it descends by at least $\tfrac{\eta}{2} \lVert g \rVert^2$, so an unrolled step of
level $k$ that fails to lower $f_k$ by `ARMIJO` times $\eta \lVert g \rVert^2$ (a rise, or the
stall of a two-cycle, where the step is near $2/L$) means the step was too large for the
curvature met there. Each level's flag is returned beside the
hypergradient (``NumericProblem`` halves the default step and retries, or raises
``DivergenceError`` naming the level).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import stacked

#: A rise of $f_k$ by more than this (relative to $1 + |f_k|$) between unrolled steps counts
#: as divergence; float64 round-off in $f_k$ is about $10^{-16}$ relative.
RISE_TOLERANCE = 1e-10
#: The fraction of the descent lemma's decrease $\eta \lVert g \rVert^2$ each unrolled step must
#: achieve; less flags the step as too large.
ARMIJO = 1e-4
#: Lanczos steps (Hessian-vector products) for $L_k$ in ITD's default steps $1/(1.2 L_k)$
#: where some lower block is over the dense limit (otherwise $L_k$ is exact, from the stacked
#: conditions): a dense reduced Hessian of a block of 100 by the nested rules cost 10x ITD
#: itself; a Lanczos estimate that is a little low is caught by the divergence check, which
#: halves the step.
DEFAULT_LANCZOS_STEPS = 10
#: Up to this many levels ITD's default steps take $L_k$ from Lanczos on the nested rules;
#: deeper (every lower block dense), exactly from the stacked conditions. Per call the
#: Lanczos estimate is cheaper for large blocks (3 levels, blocks (10, 100, 100): 1.2x the
#: call with the steps given, against 1.6x from the stacked conditions' 200 x 200 Jacobian),
#: but the nested rules' program grows about 8x per level: ITD on 5 levels, blocks
#: (2, 3, 1, 4, 2), took 348 s and 2.8 GB for three outer steps on that estimate and 6 levels
#: exhausted 8 GB; from the stacked conditions its first call takes 17 s (4 levels: 8.6 ->
#: 3.6 s, the same value).
LANCZOS_MAX_LEVELS = 3
#: Up to this many unrolled steps per level are written out as straight-line code instead of
#: a ``fori_loop``: differentiating a loop nested in loops re-traces every inner body
#: several times per nesting depth, which dominated ITD's first call at four levels.
UNROLL_STEPS = 4


def _unrolled_tail(core, k, upper, starts, steps, lrs):
    """((x_k, ..., x_n) after K unrolled steps at level k for the blocks above held fixed,
    per-level rise flags (n booleans) of every unrolled run inside)."""
    no_rise = jnp.zeros(core.n, bool)

    def tail_from(xk):
        if k + 1 < core.n:
            return _unrolled_tail(core, k + 1, tuple(upper) + (xk,), starts, steps, lrs)
        return (), no_rise

    def objective(xk):
        tail, rose = tail_from(xk)
        return core.fs[k](tuple(upper) + (xk,) + tail), rose

    value_and_grad = jax.value_and_grad(objective, has_aux=True)
    this_level = jnp.arange(core.n) == k

    def body(_, carry):
        xk, previous, promised, rose = carry
        (value, lower_rose), grad = value_and_grad(xk)
        # The previous step promised a decrease of ARMIJO * eta ||g||^2 (descent lemma).
        risen = value > previous - promised + RISE_TOLERANCE * (1 + jnp.abs(previous))
        promised = ARMIJO * lrs[k] * jnp.vdot(grad, grad)
        return xk - lrs[k] * grad, value, promised, rose | lower_rose | (this_level & risen)

    zero = jnp.zeros((), starts[k].dtype)
    start = (starts[k], jnp.asarray(jnp.inf, starts[k].dtype), zero, no_rise)
    if steps <= UNROLL_STEPS:  # a Python loop: no scan to linearise at every nesting depth
        carry = start
        for i in range(steps):
            carry = body(i, carry)
        xk, _, _, rose = carry
    else:
        xk, _, _, rose = jax.lax.fori_loop(0, steps, body, start)
    tail, lower_rose = tail_from(xk)
    return (xk,) + tail, rose | lower_rose


def itd_hypergradient_and_flags(core, anchors, steps: int, inner_lr=None, lr_scale=1.0):
    r"""($\mathrm{d}F_1/\mathrm{d}x_1$ through $K$ unrolled steps per lower level started from
    ``anchors[1:]``, rise flags: ``flags[k]`` is True where level $k+1$'s unrolled steps
    raised $f_{k+1}$)."""
    if steps < 1:
        raise ValueError("ITD needs steps >= 1")
    lrs = tuple(None if lr is None else lr * lr_scale
                for lr in _learning_rates(core, anchors, inner_lr))

    def top(x1):
        tail, rose = _unrolled_tail(core, 1, (x1,), anchors, steps, lrs)
        return core.fs[0]((x1,) + tail), rose

    return jax.grad(top, has_aux=True)(anchors[0])


def itd_hypergradient(core, anchors, steps: int, inner_lr=None):
    """dF_1/dx_1 through K unrolled steps per lower level, started from ``anchors[1:]``."""
    return itd_hypergradient_and_flags(core, anchors, steps, inner_lr)[0]


def _learning_rates(core, anchors, inner_lr):
    """Per-level steps: given, or 1/(1.2 L_k) with L_k = lambda_max(D_kk F_k) at the start,
    inside the compiled call.

    The steps descend the (unrolled) reduced objective F_k, whose curvature includes the
    levels below; the partial Hessian D_kk f_k can understate it badly (and ITD then
    diverges), so L_k is that of the reduced Hessian, by the lemmas at the start. Where every
    lower block is dense, from more than `LANCZOS_MAX_LEVELS` levels, it is exact, from one
    evaluation of the stacked conditions (`mlverify.numeric.stacked`: every H_k as a Schur
    complement); else ``DEFAULT_LANCZOS_STEPS`` Lanczos steps on Hessian-vector products of
    the nested rules.
    """
    if inner_lr is not None:
        if np.ndim(inner_lr) == 0:
            return (None,) + (inner_lr,) * (core.n - 1)
        rates = tuple(jnp.reshape(jnp.asarray(inner_lr, jnp.float64), (-1,)))
        if len(rates) != core.n - 1:
            raise ValueError(
                f"inner_lr holds {len(rates)} step sizes; ITD needs one per lower level "
                f"(levels 2..{core.n}: {core.n - 1}) or a single float"
            )
        return (None,) + rates
    anchors = tuple(jax.lax.stop_gradient(a) for a in anchors)
    if core.n < 2:
        return (None,)
    if core.n > LANCZOS_MAX_LEVELS and stacked.applicable(core.sizes):
        evaluated = stacked.evaluation(core.fs, core.sizes, 1, differentiable=False)(anchors)
        largest = [jnp.linalg.eigvalsh(0.5 * (h + h.T))[-1] for h in evaluated["hessians"]]
    else:
        largest = [core.reduced_hessian_lambda_max(k, anchors, lanczos_steps=DEFAULT_LANCZOS_STEPS)
                   for k in range(1, core.n)]
    return (None,) + tuple(jax.lax.stop_gradient(1.0 / jnp.maximum(1.2 * lam, 1e-12))
                           for lam in largest)
