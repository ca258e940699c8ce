r"""Every level's stationarity condition at once, one linearisation per level.

The lemmas' recursion (Lemmas 2.1, 3.1, 3.2) written on the stacked conditions instead of
on nested best responses. With $\Phi_k = D_k F_k$ the reduced gradient of level $k$ by the
lemmas' formulas at the iterates $x = (x_1, \dots, x_n)$ and $P_k = (\Phi_k, \dots,
\Phi_n)$ the conditions of level $k$ and every level below it:

$$
\Phi_n = D_n f_n, \qquad
\Phi_k = D_k f_k - \big(D_{x_k} P_{k+1}\big)^{\!\top} \lambda_k, \qquad
\big(D_{x_{>k}} P_{k+1}\big)^{\!\top} \lambda_k = D_{x_{>k}} f_k .
$$

This is the implicit function theorem on $P_{k+1} = 0$, which is the solution manifold of
the levels below $k$: along it the total derivative of $x_{>k}$ in $x_k$ is
$-(D_{x_{>k}} P_{k+1})^{-1} D_{x_k} P_{k+1}$, so $\Phi_k$ is the gradient of the reduced
objective $F_k$ there (exact where the levels below are solved), and its value at any
iterate is the lemmas' formula's (the tests compare both to round-off). $P_1$'s first
block is the hypergradient; $P_2 = 0$ is the joint system of the lower levels, and its
Jacobian $J = D P_2$ is Newton's matrix. $H_k = D_{kk} F_k$ is the Schur complement of
$J$'s rows and columns of levels $\ge k$ onto $x_k$ (the levels below following by their
tangents, Lemma 3.1).

Why this form: $P_k$ linearises $P_{k+1}$ once (`jax.linearize`) and uses that one linear
map three ways: its dense Jacobian ($d \times d$ blocks, formed by ``vmap`` and held
constant: it only factors the solve), its transpose (`jax.linear_transpose`) for
$J^\top \lambda$, and, through ``lax.custom_linear_solve``, the derivative of the solve
when a level above differentiates $\Phi_k$ again. So the program for $P_k$ holds the
program for $P_{k+1}$ once, plus its linearisation and transpose: it grows by a constant
factor per level (about 2.7 at blocks of 4, ``benchmarks/results/deep_jax.md``), where the
nested best responses of `mlverify.numeric.implicit` re-trace every lower rule at every
derivative order (about 8 per level). The derivative order needed still grows with $n$
($f_k$ to order $k$), so the run time grows too, but each order is a forward derivative
along one direction, not a dense tensor.

Every lower block must be dense (at most ``DENSE_LIMIT``; `applicable`): the Jacobian
blocks are formed.

`newton` solves the joint system $P_2 = 0$ (all lower levels at once) by Newton's method on
that Jacobian, and `final_status` judges its result by the per-level checks every lower
solve shares (`mlverify.checks`), both driven from Python around the one compiled
`evaluation`: a solve, its checks and the exact hypergradient at the solution compile one
program.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import lu_factor, lu_solve

from .. import checks
from .implicit import DENSE_LIMIT, absolute

sg = jax.lax.stop_gradient


def applicable(sizes: Sequence[int], first: int = 1) -> bool:
    """Whether the stacked form serves the levels below ``first`` (0-based: levels
    ``first .. n-1`` solved): every one of their blocks dense."""
    return all(size <= DENSE_LIMIT for size in sizes[first:])


def evaluation(objectives: Sequence[Callable], sizes: Sequence[int], first: int = 1):
    r"""A pure function ``blocks -> dict`` at the flat ``blocks`` (all $n$), for the levels
    ``first .. n-1`` (0-based) below level ``top = first - 1``:

    - ``gradient``: $\Phi_{top}$, the top level's reduced gradient by the lemmas' formulas
      (the hypergradient for ``first = 1``; exact where the levels below are solved);
    - ``conditions``: the tuple $(\Phi_{first}, \dots, \Phi_{n-1})$;
    - ``jacobian``: $D P_{first}$ in $x_{first}, \dots, x_{n-1}$ (Newton's matrix of the
      joint system);
    - ``hessians``: the tuple of $H_k = D_{kk} F_k$, $k$ = ``first .. n-1`` (Schur
      complements of ``jacobian``; not symmetrised).
    """
    fs, sizes = tuple(objectives), tuple(int(s) for s in sizes)
    n, top = len(fs), first - 1
    if not 1 <= first < n:
        raise ValueError(f"first must be in 1..{n - 1}, got {first}")

    def run(blocks):
        blocks = tuple(blocks)
        gradient, lower, jacobian = _level(fs, sizes, top, blocks)
        square = jacobian[:, sizes[top]:]
        return {"gradient": gradient,
                "conditions": tuple(jnp.split(lower, _offsets(sizes[first:]))),
                "jacobian": square,
                "hessians": schur_hessians(square, sizes[first:], jnp)}

    return run


def packed_evaluation(objectives: Sequence[Callable], sizes: Sequence[int], first: int = 1):
    """`evaluation` on one flat vector of all blocks, returning one flat vector: one
    transfer each way per call (what the Python-driven solve calls again and again; at 3
    levels the per-call overhead of the dict of arrays was most of a call). `unpack`
    turns the result back into `evaluation`'s dict, as NumPy arrays."""
    run = evaluation(objectives, sizes, first)
    split = _offsets(sizes)

    def packed(flat):
        out = run(tuple(jnp.split(flat, split)))
        return jnp.concatenate([out["gradient"], *out["conditions"], out["jacobian"].ravel(),
                                *(h.ravel() for h in out["hessians"])])

    return packed


def unpack(vector, sizes: Sequence[int], first: int = 1) -> dict:
    """`packed_evaluation`'s flat result as `evaluation`'s dict (NumPy arrays)."""
    vector = np.asarray(vector)
    lower = [int(s) for s in sizes[first:]]
    m, top = sum(lower), int(sizes[first - 1])
    gradient, rest = vector[:top], vector[top:]
    conditions = tuple(np.split(rest[:m], np.cumsum(lower)[:-1]))
    jacobian = rest[m:m + m * m].reshape(m, m)
    hessians, at = [], m + m * m
    for d in lower:
        hessians.append(rest[at:at + d * d].reshape(d, d))
        at += d * d
    return {"gradient": gradient, "conditions": conditions, "jacobian": jacobian,
            "hessians": tuple(hessians)}


def schur_hessians(jacobian, sizes: Sequence[int], xp=np) -> tuple:
    r"""$H_k$ for each block of the stacked Jacobian ``jacobian`` (rows and columns both in
    blocks of ``sizes``, top level first): the Schur complement of its rows and columns of
    blocks $\ge k$ onto block $k$."""
    starts = [0, *np.cumsum(sizes).tolist()]
    hessians = []
    for k in range(len(sizes)):
        lo, mid = starts[k], starts[k + 1]
        own = jacobian[lo:mid, lo:mid]
        if k == len(sizes) - 1:
            hessians.append(own)
            continue
        right, below, rest = jacobian[lo:mid, mid:], jacobian[mid:, lo:mid], jacobian[mid:, mid:]
        hessians.append(own - right @ xp.linalg.solve(rest, below))
    return tuple(hessians)


def _offsets(sizes):
    return np.cumsum(sizes)[:-1].tolist()


def _stack(fs, sizes, k, blocks):
    r"""$P_k = (\Phi_k, \dots, \Phi_{n-1})$ concatenated, at ``blocks``."""
    if k == len(fs) - 1:
        return jax.grad(lambda v: fs[k](blocks[:k] + (v,)))(blocks[k])
    gradient, lower, _ = _level(fs, sizes, k, blocks)
    return jnp.concatenate([gradient, lower])


def _level(fs, sizes, k, blocks):
    r"""$(\Phi_k, P_{k+1}, D P_{k+1})$ at ``blocks``, the Jacobian in $x_k, \dots, x_{n-1}$
    (held constant: it factors the solve; derivatives go through the linear map)."""
    split = _offsets(sizes[k:])

    def unpack(z):
        return blocks[:k] + tuple(jnp.split(z, split))

    z = jnp.concatenate(blocks[k:])
    d = sizes[k]
    lower, partial = jax.linearize(lambda w: _stack(fs, sizes, k + 1, unpack(w)), z)

    # A plain function, not linearize's Partial: JAX names every function it transforms,
    # and the Partial's name is its whole linearised program, printed (a fifth of the
    # trace time at 5 levels).
    def linear(t):
        return partial(t)

    jacobian = sg(jax.vmap(linear, out_axes=1)(jnp.eye(z.shape[0], dtype=z.dtype)))
    own, rest = jacobian[:, :d], jacobian[:, d:]
    factors = lu_factor(rest)
    transpose = jax.linear_transpose(linear, z)

    # One linear system for (Phi_k, lambda_k): A (phi, lam) = J^T lam + (phi; 0) = D_z f_k.
    def matvec(unknown):
        phi, lam = unknown[:d], unknown[d:]
        return transpose(lam)[0] + jnp.concatenate([phi, jnp.zeros_like(lam)])

    def solve(_matvec, b):
        lam = lu_solve(factors, b[d:], trans=1)
        return jnp.concatenate([b[:d] - own.T @ lam, lam])

    def transpose_solve(_vecmat, c):
        # A^T r = (r_k; J r): r_k = c_phi, then J_rest r_rest = c_lam - J_own c_phi.
        head = c[:d]
        return jnp.concatenate([head, lu_solve(factors, c[d:] - own @ head, trans=0)])

    gradient_z = jax.grad(lambda w: fs[k](unpack(w)))(z)
    unknown = jax.lax.custom_linear_solve(matvec, gradient_z, solve=solve,
                                          transpose_solve=transpose_solve)
    return unknown[:d], lower, jacobian


#: Step halvings of the joint Newton solve before it gives up (the caller then falls back on
#: the nested solve, which names the level at fault).
HALVINGS = 10
#: A full step that fails the monotonicity test is still taken, up to this many times per
#: solve, when its size stays within `RELAXED_GROWTH` times the smallest size so far (a
#: watchdog: the block step's lower errors reach the levels above one step late, so its
#: size need not fall at every step). On the benchmark family (5 and 6 levels, blocks of 4,
#: 16 starts $x_1 \in [-1.5, 2]$) the strict test stalled at $x_1 = -1.5, -1, -0.5$ (5
#: levels) and $0.4$ (6 levels); with the watchdog every start converged in 13 to 17 steps.
RELAXED_STEPS = 8
#: See `RELAXED_STEPS`.
RELAXED_GROWTH = 4.0


def newton(evaluate, blocks, first: int, tol: float, max_iter: int):
    r"""Newton's method on the joint system $P_{first} = 0$ from ``blocks`` (NumPy; the
    blocks above ``first`` held fixed): ``(blocks, evaluation there, steps)``.

    ``evaluate``: `evaluation` for ``first``, compiled, returning NumPy. The step is
    `_newton_step`'s; a step
    $\alpha\delta$ is accepted when the Newton step's size at the new point is at most
    $(1 - \alpha/4)$ times the current one (Deuflhard's natural monotonicity test; the size
    is each level's step relative to `mlverify.checks.tolerance`, which does not change when
    an $f_k$ is scaled), else halved, up to `HALVINGS` times; a full step is also taken
    within the watchdog of `RELAXED_STEPS`. Once the size is at most
    ``tol`` the last step is still taken (quadratically closer) and the result is judged
    there. Stops unconverged at a non-finite step, a failed halving or ``max_iter`` steps:
    `final_status` says which levels passed."""
    base = [np.asarray(b, dtype=np.float64) for b in blocks]
    current = evaluate(base)
    delta, size = _newton_step(current, base, first)
    steps, alpha, best, relaxed = 0, 1.0, size, 0
    while np.isfinite(size) and steps < max_iter:
        candidate = _moved(base, delta, first, alpha)
        trial = evaluate(candidate)
        if size <= tol:
            # converged: the last step is still taken where it leaves a finite point
            if _finite(trial):
                return candidate, trial, steps + 1
            break
        trial_delta, trial_size = _newton_step(trial, candidate, first)
        accept = np.isfinite(trial_size) and trial_size <= (1.0 - 0.25 * alpha) * size
        if (not accept and alpha == 1.0 and relaxed < RELAXED_STEPS
                and np.isfinite(trial_size) and trial_size <= RELAXED_GROWTH * best):
            accept, relaxed = True, relaxed + 1
        if accept:
            base, current, delta, size = candidate, trial, trial_delta, trial_size
            steps, alpha, best = steps + 1, 1.0, min(best, trial_size)
        else:
            alpha *= 0.5
            if alpha < 2.0**-HALVINGS:
                break
    return base, current, steps


def newton_by_levels(evaluate_for, blocks, first: int, tol: float, max_iter: int):
    r"""Continuation over the levels: `newton` on the bottom level alone, then on the two
    lowest from there, and so on up to every level below ``first``; each stage starts with
    the levels below it solved, where the block step is Newton's step for the new level
    with the rest following by their tangents. The second attempt where `newton` from
    ``blocks`` stalls (a non-quadratic 5-level family with strong couplings, 13 starts:
    7 stalled, all 13 converged this way). ``evaluate_for(f)``: the compiled evaluation for
    ``first = f``. Returns ``(blocks, evaluation for first there, steps over all stages)``."""
    steps = 0
    for f in range(len(blocks) - 1, first - 1, -1):
        blocks, evaluated, taken = newton(evaluate_for(f), blocks, f, tol, max_iter)
        steps += taken
    return blocks, evaluated, steps


def passed(status: dict) -> bool:
    """Whether every level of a `final_status` converged with $H_k$ surely positive
    definite."""
    return bool(np.all(status["converged"]) and np.all(status["hessian_ok"]))


def final_status(evaluate, blocks, evaluated, first: int, tol: float) -> dict:
    r"""The per-level checks of a solve of the levels ``first .. n-1`` at its final ``blocks``
    (``evaluated``: ``evaluate(blocks)``), as every lower solve judges its result:
    ``residual`` ($\lVert D_k F_k \rVert$), ``distance`` (Newton's step
    $\lVert H_k^{-1} D_k F_k \rVert$, inf where $H_k$ does not factor), ``converged``
    (`mlverify.checks.solved`) and ``hessian_ok`` ($H_k$ surely positive definite and not
    degenerate against the level's curvature scale: its norm and the curvature probes of
    `mlverify.checks` at $x_k \pm r u$, levels below frozen, each one more ``evaluate``).
    False leaves the verdict to the exact check, which names the level."""
    residual, distance, converged, hessian_ok = [], [], [], []
    for i, k in enumerate(range(first, len(blocks))):
        g = np.asarray(evaluated["conditions"][i])
        h = symmetric(evaluated["hessians"][i])
        factor = _cholesky(h)
        step = (np.full_like(g, np.inf) if factor is None
                else np.linalg.solve(factor.T, np.linalg.solve(factor, g)))
        dist = float(np.linalg.norm(step)) if np.all(np.isfinite(step)) else np.inf
        residual.append(float(np.linalg.norm(g)))
        distance.append(dist)
        converged.append(checks.solved(dist, blocks[k], tol))
        scale = max(float(np.linalg.norm(h)), probe_scale(evaluate, blocks, first, k, g))
        shifted = h - checks.DEGENERATE_RATIO * scale * np.eye(h.shape[0])
        hessian_ok.append(bool(scale > 0 and _cholesky(shifted) is not None))
    return {"residual": np.array(residual), "distance": np.array(distance),
            "converged": np.array(converged), "hessian_ok": np.array(hessian_ok)}


def probe_scale(evaluate, blocks, first: int, k: int, g0) -> float:
    r"""The largest finite curvature probe of level ``k`` (`mlverify.checks`): $u^\top H_k u$
    and the secant slope $\lVert D_k F_k(x + r u) - D_k F_k(x) \rVert / r$ at
    $x_k \pm r u$, levels below frozen (the formulas at the moved iterates)."""
    x = np.asarray(blocks[k])
    u = checks.probe_direction(x.shape[0])
    r = checks.probe_radius(x)
    probes = []
    for sign in (1.0, -1.0):
        moved = list(blocks)
        moved[k] = x + sign * r * u
        at = evaluate(moved)
        i = k - first
        probes += [abs(float(u @ np.asarray(at["hessians"][i]) @ u)),
                   float(np.linalg.norm(np.asarray(at["conditions"][i]) - g0) / r)]
    finite = [p for p in probes if np.isfinite(p)]
    return max(finite, default=0.0)


def _newton_step(evaluated, blocks, first):
    r"""(the joint step per solved level, its size relative to each block's tolerance at
    tol = 1: inf where it is not finite).

    Block elimination from the top: level $k$ takes its own Newton step
    $c_k = -H_k^{-1} \Phi_k$ and follows the moves above it by its best-response tangent
    (Lemma 3.1), $\delta_k = c_k + \dot y_k(\delta_{<k})$, the tangent from the
    Jacobian's rows and columns of levels $\ge k$. Where $H_k$ is not positive definite it
    steps with $V \lvert\Lambda\rvert V^\top$ instead. Unlike Newton's step on the whole
    stacked system, a lower level's error reaches the levels above one step late; from a
    cold start that is what converges (blocks of 4, 5 levels: the full step stalled)."""
    conditions = [np.asarray(c, dtype=np.float64) for c in evaluated["conditions"]]
    jacobian = np.asarray(evaluated["jacobian"], dtype=np.float64)
    if not (all(np.all(np.isfinite(c)) for c in conditions)
            and np.all(np.isfinite(jacobian))):
        return None, np.inf
    starts = np.cumsum([0] + [c.size for c in conditions]).tolist()
    delta = []
    try:
        for i, phi in enumerate(conditions):
            step = -np.linalg.solve(_modified(evaluated["hessians"][i]), phi)
            if i:
                lo = starts[i]
                follow = np.linalg.solve(jacobian[lo:, lo:],
                                         -jacobian[lo:, :lo] @ np.concatenate(delta))
                step = step + follow[:phi.size]
            delta.append(step)
    except np.linalg.LinAlgError:
        return None, np.inf
    if not all(np.all(np.isfinite(d)) for d in delta):
        return None, np.inf
    size = max(float(np.linalg.norm(d)) / checks.tolerance(blocks[k], 1.0)
               for k, d in zip(range(first, len(blocks)), delta, strict=True))
    return delta, size


def _modified(h):
    r"""$H$ (symmetrised) where it is positive definite, else $V \max(\lvert\Lambda\rvert,
    10^{-12} \lVert H \rVert) V^\top$: the joint solve's globalisation, never a formula's
    value (the solved levels are checked positive definite)."""
    h = symmetric(h)
    return h if _cholesky(h) is not None else absolute(h, np)


def _moved(blocks, delta, first, alpha):
    return list(blocks[:first]) + [b + alpha * d for b, d in zip(blocks[first:], delta,
                                                                  strict=True)]


def _finite(evaluated) -> bool:
    return all(np.all(np.isfinite(np.asarray(c))) for c in evaluated["conditions"]) and bool(
        np.all(np.isfinite(np.asarray(evaluated["gradient"]))))


def symmetric(h):
    """The symmetric part of ``h`` as a float64 NumPy array."""
    h = np.asarray(h, dtype=np.float64)
    return 0.5 * (h + h.T)


def _cholesky(h):
    """The lower Cholesky factor of ``h``, or None where it is not positive definite (or
    not finite)."""
    if not np.all(np.isfinite(h)):
        return None
    try:
        return np.linalg.cholesky(h)
    except np.linalg.LinAlgError:
        return None


def positive_definite(h) -> bool:
    """Whether the symmetric part of ``h`` has a Cholesky factor (finite, positive
    definite)."""
    return _cholesky(symmetric(h)) is not None
