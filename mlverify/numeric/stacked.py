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

`Newton` solves the joint system $P_2 = 0$ (all lower levels at once) by Newton's method on
that Jacobian: one pure-JAX update, `Newton.iterate` (an evaluation and the step), driven
from Python (`newton`) or looped inside one compiled, vmappable program (`solver`).
`final_status` judges the result by the per-level checks every lower solve shares
(`mlverify.checks`), its curvature probes more calls of the same `Newton.iterate`: a solve,
its checks and the exact hypergradient at the solution compile one program.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import lu_factor, lu_solve

from .. import checks
from .implicit import DENSE_LIMIT

sg = jax.lax.stop_gradient


def applicable(sizes: Sequence[int], first: int = 1) -> bool:
    """Whether the stacked form serves the levels below ``first`` (0-based: levels
    ``first .. n-1`` solved): every one of their blocks dense."""
    return all(size <= DENSE_LIMIT for size in sizes[first:])


def evaluation(objectives: Sequence[Callable], sizes: Sequence[int], first: int = 1, *,
               differentiable: bool = True):
    r"""A pure function ``blocks -> dict`` at the flat ``blocks`` (all $n$), for the levels
    ``first .. n-1`` (0-based) below level ``top = first - 1``:

    - ``gradient``: $\Phi_{top}$, the top level's reduced gradient by the lemmas' formulas
      (the hypergradient for ``first = 1``; exact where the levels below are solved);
    - ``conditions``: the tuple $(\Phi_{first}, \dots, \Phi_{n-1})$;
    - ``jacobian``: $D P_{first}$ in $x_{first}, \dots, x_{n-1}$ (Newton's matrix of the
      joint system);
    - ``hessians``: the tuple of $H_k = D_{kk} F_k$, $k$ = ``first .. n-1`` (Schur
      complements of ``jacobian``; not symmetrised).

    ``differentiable=False``: the values alone, for a caller that does not differentiate
    them (the joint solve). $\Phi_{top}$ is then solved from the Jacobian the evaluation
    forms anyway, where its derivative would need the transposed linear map of $P_{first}$
    (the largest piece of the program: a quarter of it at 6 levels, blocks of 4).
    """
    fs, sizes = tuple(objectives), tuple(int(s) for s in sizes)
    n, top = len(fs), first - 1
    if not 1 <= first < n:
        raise ValueError(f"first must be in 1..{n - 1}, got {first}")

    def run(blocks):
        blocks = tuple(blocks)
        gradient, lower, jacobian = _level(fs, sizes, top, blocks, differentiable)
        square = jacobian[:, sizes[top]:]
        return {"gradient": gradient,
                "conditions": tuple(jnp.split(lower, _offsets(sizes[first:]))),
                "jacobian": square,
                "hessians": schur_hessians(square, sizes[first:], jnp)}

    return run


def packed_evaluation(objectives: Sequence[Callable], sizes: Sequence[int], first: int = 1,
                      *, differentiable: bool = True):
    """`evaluation` on one flat vector of all blocks, returning `pack`'s flat vector: what
    `Newton`'s state carries from step to step, and one transfer back (at 3 levels the
    per-call overhead of a dict of arrays was most of a call). `unpack` turns it back into
    `evaluation`'s dict."""
    run = evaluation(objectives, sizes, first, differentiable=differentiable)
    split = _offsets(sizes)

    def packed(flat):
        return pack(run(tuple(jnp.split(flat, split))))

    return packed


def pack(evaluated) -> jax.Array:
    """`evaluation`'s dict as one flat vector (one transfer; `unpack` reads it back)."""
    return jnp.concatenate([evaluated["gradient"], *evaluated["conditions"],
                            evaluated["jacobian"].ravel(),
                            *(h.ravel() for h in evaluated["hessians"])])


def unpack(vector, sizes: Sequence[int], first: int = 1, xp=np) -> dict:
    """`pack`'s flat vector as `evaluation`'s dict (``xp``: NumPy, or ``jax.numpy`` inside
    a compiled function)."""
    vector = xp.asarray(vector)
    lower = [int(s) for s in sizes[first:]]
    m, top = sum(lower), int(sizes[first - 1])
    gradient, rest = vector[:top], vector[top:]
    bounds = np.cumsum([0, *lower]).tolist()
    conditions = tuple(rest[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
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


def _level(fs, sizes, k, blocks, differentiable=True):
    r"""$(\Phi_k, P_{k+1}, D P_{k+1})$ at ``blocks``, the Jacobian in $x_k, \dots, x_{n-1}$
    (held constant: it factors the solve; derivatives go through the linear map).
    ``differentiable=False``: $\Phi_k$ from the Jacobian alone (its value, no derivative)."""
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

    held = jax.tree.map(sg, partial)

    def constant(t):
        return held(t)

    jacobian = jax.vmap(constant, out_axes=1)(jnp.eye(z.shape[0], dtype=z.dtype))
    own, rest = jacobian[:, :d], jacobian[:, d:]
    factors = lu_factor(rest)
    gradient_z = jax.grad(lambda w: fs[k](unpack(w)))(z)
    if not differentiable:
        lam = lu_solve(factors, gradient_z[d:], trans=1)
        return gradient_z[:d] - own.T @ lam, lower, jacobian
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


class Newton:
    r"""Newton's method on the joint system $P_{first} = 0$, as a state and one pure-JAX
    update, `iterate` (evaluate at ``state["point"]``, then `advance`). The same update
    drives the solve from Python, one compiled `iterate` per step (`newton`; that program
    is also the evaluation: `evaluate`), and runs inside one compiled, vmappable loop
    (`solver`, the batched Theorem 4.1 check). A ``lax.while_loop`` around the evaluation
    took XLA twice as long to compile as the evaluation alone (5 and 6 levels, blocks of
    4); `iterate` alone, 1.15 times.

    The step is `_block_step`'s. A step $\alpha\delta$ is accepted when the step's size at
    the new point is at most $(1 - \alpha/4)$ times the current one (Deuflhard's natural
    monotonicity test; the size is each level's step relative to
    `mlverify.checks.tolerance`, which does not change when an $f_k$ is scaled), else
    halved, up to `HALVINGS` times; a full step is also taken within the watchdog of
    `RELAXED_STEPS`. Once the size is at most ``tol`` the last step is still taken
    (quadratically closer) where it leaves a finite point, and the result is judged there.
    Stops unconverged at a non-finite step, a failed halving or ``max_iter`` steps:
    `final_status` says which levels passed. ``max_iter = 0``: one evaluation, at the
    start."""

    def __init__(self, objectives: Sequence[Callable], sizes: Sequence[int], first: int = 1):
        self.packed = packed_evaluation(objectives, sizes, first, differentiable=False)
        self.sizes, self.first = tuple(int(s) for s in sizes), first
        self.top = sum(self.sizes[:first])
        self.halvings, self.relaxed_steps = HALVINGS, RELAXED_STEPS
        self.relaxed_growth = RELAXED_GROWTH

    def start(self, flat) -> dict:
        """The state before the first evaluation, at the flat blocks ``flat``: `iterate`
        until ``state["done"]``."""
        return _start(flat, self.sizes, self.first)

    def iterate(self, state: dict, tol, max_iter) -> dict:
        """One evaluation at ``state["point"]`` and the state after it."""
        return self.advance(state, self.packed(state["point"]), tol, max_iter)

    def advance(self, state: dict, packed, tol, max_iter) -> dict:
        """The state after the evaluation ``packed`` (`pack`'s vector) at ``state["point"]``."""
        s, first = state, self.first
        blocks = tuple(jnp.split(s["point"], _offsets(self.sizes)))
        out = unpack(packed, self.sizes, first, jnp)
        delta, size = _block_step(out, blocks, first)
        started, alpha, inf = s["started"], s["alpha"], jnp.inf
        converged = started & (s["size"] <= tol)
        final = converged & _finite(out)
        trying = started & ~converged
        accept = trying & jnp.isfinite(size) & (size <= (1.0 - 0.25 * alpha) * s["size"])
        relax = (trying & ~accept & (alpha == 1.0) & (s["relaxed"] < self.relaxed_steps)
                 & jnp.isfinite(size) & (size <= self.relaxed_growth * s["best"]))
        moved = ~started | accept | relax
        take = moved | final
        new = {
            "base": jnp.where(take, s["point"], s["base"]),
            "out": jnp.where(take, packed, s["out"]),
            "delta": jnp.where(moved, delta, s["delta"]),
            "size": jnp.where(moved, size, s["size"]),
            "best": jnp.where(moved, jnp.minimum(jnp.where(started, s["best"], inf), size),
                              s["best"]),
            "alpha": jnp.where(moved, 1.0, jnp.where(trying, 0.5 * alpha, alpha)),
            "steps": s["steps"] + (take & started).astype(jnp.int32),
            "relaxed": s["relaxed"] + relax.astype(jnp.int32),
            "started": jnp.bool_(True),
        }
        new["done"] = (converged | (new["alpha"] < 2.0**-self.halvings)
                       | ~jnp.isfinite(new["size"]) | (new["steps"] >= max_iter))
        new["point"] = new["base"].at[self.top:].add(new["alpha"] * new["delta"])
        return new


def _start(flat, sizes, first):
    sizes = tuple(int(s) for s in sizes)
    lower = sizes[first:]
    m = sum(lower)
    flat = jnp.asarray(flat, dtype=jnp.float64)
    inf = jnp.asarray(jnp.inf, jnp.float64)
    return {"point": flat, "base": flat,
            "out": jnp.zeros(sizes[first - 1] + m + m * m + sum(d * d for d in lower)),
            "delta": jnp.zeros(m), "size": inf, "best": inf, "alpha": jnp.ones((), jnp.float64),
            "steps": jnp.int32(0), "relaxed": jnp.int32(0), "started": jnp.bool_(False),
            "done": jnp.bool_(False)}


@functools.lru_cache(maxsize=64)
def compiled_start(sizes: tuple, first: int = 1):
    """`Newton.start`, compiled (it depends on the block sizes only: every problem of the
    same shape shares it)."""
    return jax.jit(functools.partial(_start, sizes=tuple(sizes), first=first))


def evaluate(iterate, start, flat):
    """`evaluation` at the flat blocks ``flat`` from the compiled ``iterate`` and ``start``
    of a `Newton` (one step of no move): `pack`'s vector, on the device."""
    return iterate(start(flat), np.float64(0.0), np.int32(0))["out"]


class Evaluator:
    """`evaluation` at given blocks, NumPy in and out, from the compiled ``iterate`` and
    ``start`` of a `Newton` (`evaluate`): at one point (a call) or at several (`many`: every
    point dispatched before the first result is fetched, so the device runs them back to back
    while Python prepares the next; the final checks' curvature probes, two per level)."""

    def __init__(self, iterate, start, sizes: Sequence[int], first: int = 1):
        self.iterate, self.start = iterate, start
        self.sizes, self.first = tuple(int(s) for s in sizes), first

    def __call__(self, blocks) -> dict:
        return self.many([blocks])[0]

    def many(self, points: Sequence) -> list[dict]:
        """`evaluation` at each of ``points`` (each a sequence of all blocks)."""
        packed = [evaluate(self.iterate, self.start, flat_blocks(blocks)) for blocks in points]
        return [unpack(np.asarray(vector), self.sizes, self.first) for vector in packed]


def flat_blocks(blocks) -> np.ndarray:
    """The blocks as one flat float64 NumPy vector (what `Newton.start` takes)."""
    return np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1) for b in blocks])


def newton(iterate, state: dict, tol: float, max_iter: int):
    """`Newton` driven from Python from ``state`` (`Newton.start`), ``iterate`` its compiled
    `Newton.iterate`, until the state is done: ``(solution, packed evaluation there,
    steps)``, on the device."""
    while not bool(state["done"]):  # a start state is never done
        state = iterate(state, tol, max_iter)
    return state["base"], state["out"], state["steps"]


def solver(objectives: Sequence[Callable], sizes: Sequence[int], first: int = 1):
    r"""The joint solve (`Newton`) as one pure function ``(flat, tol, max_iter) -> (flat,
    evaluation there as `evaluation`'s dict, steps)``: a compiled loop around `evaluation`,
    jit- and vmap-able (the batched Theorem 4.1 check runs it per instance)."""
    method = Newton(objectives, sizes, first)

    def program(flat, tol, max_iter):
        end = jax.lax.while_loop(lambda s: ~s["done"],
                                 lambda s: method.iterate(s, tol, max_iter), method.start(flat))
        return end["base"], unpack(end["out"], method.sizes, first, jnp), end["steps"]

    return program


def newton_by_levels(newton_for, blocks, first: int, tol: float, max_iter: int):
    r"""Continuation over the levels: the joint solve (`solver`) of the bottom level alone,
    then of the two lowest from there, and so on up to every level below ``first``; each
    stage starts with the levels below it solved, where the block step is Newton's step for
    the new level with the rest following by their tangents. The second attempt where the
    joint solve from ``blocks`` stalls (a non-quadratic 5-level family with strong
    couplings, 13 starts: 7 stalled, all 13 converged this way). ``newton_for(f)``:
    ``(blocks, tol, max_iter) -> (blocks, evaluation, steps)``, the compiled solve for
    ``first = f``. Returns ``(blocks, evaluation for first there, steps over all stages)``."""
    steps = 0
    for f in range(len(blocks) - 1, first - 1, -1):
        blocks, evaluated, taken = newton_for(f)(blocks, tol, max_iter)
        steps += taken
    return blocks, evaluated, steps


def passed(status: dict) -> bool:
    """Whether every level of a `final_status` converged with $H_k$ surely positive
    definite."""
    return bool(np.all(status["converged"]) and np.all(status["hessian_ok"]))


def final_status(evaluate: Evaluator, blocks, evaluated, first: int, tol: float) -> dict:
    r"""The per-level checks of a solve of the levels ``first .. n-1`` at its final ``blocks``
    (``evaluated``: ``evaluate(blocks)``), as every lower solve judges its result:
    ``residual`` ($\lVert D_k F_k \rVert$), ``distance`` (Newton's step
    $\lVert H_k^{-1} D_k F_k \rVert$, inf where $H_k$ does not factor), ``converged``
    (`mlverify.checks.solved`) and ``hessian_ok`` ($H_k$ surely positive definite and not
    degenerate against the level's curvature scale: its norm and the curvature probes of
    `mlverify.checks` at $x_k \pm r u$, levels below frozen, two more evaluations per level,
    all dispatched at once: `Evaluator.many`).
    False leaves the verdict to the exact check, which names the level."""
    levels = range(first, len(blocks))
    conditions = [np.asarray(evaluated["conditions"][k - first]) for k in levels]
    probes = probe_scales(evaluate, blocks, first, levels, conditions)
    residual, distance, converged, hessian_ok = [], [], [], []
    for i, (k, g, probe) in enumerate(zip(levels, conditions, probes, strict=True)):
        h = symmetric(evaluated["hessians"][i])
        factor = _cholesky(h)
        step = (np.full_like(g, np.inf) if factor is None
                else np.linalg.solve(factor.T, np.linalg.solve(factor, g)))
        dist = float(np.linalg.norm(step)) if np.all(np.isfinite(step)) else np.inf
        residual.append(float(np.linalg.norm(g)))
        distance.append(dist)
        converged.append(checks.solved(dist, blocks[k], tol))
        scale = max(float(np.linalg.norm(h)), probe)
        shifted = h - checks.DEGENERATE_RATIO * scale * np.eye(h.shape[0])
        hessian_ok.append(bool(scale > 0 and _cholesky(shifted) is not None))
    return {"residual": np.array(residual), "distance": np.array(distance),
            "converged": np.array(converged), "hessian_ok": np.array(hessian_ok)}


def probe_scale(evaluate: Evaluator, blocks, first: int, k: int, g0) -> float:
    r"""The largest finite curvature probe of level ``k`` (`mlverify.checks`): $u^\top H_k u$
    and the secant slope $\lVert D_k F_k(x + r u) - D_k F_k(x) \rVert / r$ at
    $x_k \pm r u$, levels below frozen (the formulas at the moved iterates)."""
    return probe_scales(evaluate, blocks, first, [k], [g0])[0]


def probe_scales(evaluate: Evaluator, blocks, first: int, levels, conditions) -> list[float]:
    """`probe_scale` of each of ``levels`` (``conditions``: $D_k F_k$ at ``blocks`` for
    each), its evaluations dispatched together (`Evaluator.many`)."""
    points, moves = [], []
    for k in levels:
        x = np.asarray(blocks[k])
        u = checks.probe_direction(x.shape[0])
        r = checks.probe_radius(x)
        moves.append((u, r))
        for sign in (1.0, -1.0):
            moved = list(blocks)
            moved[k] = x + sign * r * u
            points.append(moved)
    evaluations = iter(evaluate.many(points))
    scales = []
    for k, g0, (u, r) in zip(levels, conditions, moves, strict=True):
        i, probes = k - first, []
        for at in (next(evaluations), next(evaluations)):
            probes += [abs(float(u @ np.asarray(at["hessians"][i]) @ u)),
                       float(np.linalg.norm(np.asarray(at["conditions"][i]) - g0) / r)]
        finite = [p for p in probes if np.isfinite(p)]
        scales.append(max(finite, default=0.0))
    return scales


def _block_step(evaluated, blocks, first):
    r"""(the joint step of the solved levels, one flat vector; its size relative to each
    block's tolerance at tol = 1: inf where it is not finite), in JAX.

    Block elimination from the top: level $k$ takes its own Newton step
    $c_k = -H_k^{-1} \Phi_k$ and follows the moves above it by its best-response tangent
    (Lemma 3.1), $\delta_k = c_k + \dot y_k(\delta_{<k})$, the tangent from the
    Jacobian's rows and columns of levels $\ge k$. The own step is taken with
    $V \max(\lvert\Lambda\rvert, 10^{-12} \lVert H_k \rVert) V^\top$ from $H_k = V \Lambda
    V^\top$: Newton's step where $H_k$ is positive definite (and not degenerate), a descent
    step where it is not (the globalisation, never a formula's value; the solved levels are
    checked positive definite). Unlike Newton's step on the whole stacked system, a lower
    level's error reaches the levels above one step late; from a cold start that is what
    converges (blocks of 4, 5 levels: the full step stalled)."""
    conditions, jacobian = evaluated["conditions"], evaluated["jacobian"]
    delta, at, size = [], 0, jnp.zeros((), jnp.float64)
    for i, (k, phi) in enumerate(zip(range(first, len(blocks)), conditions, strict=True)):
        h = evaluated["hessians"][i]
        eigenvalues, vectors = jnp.linalg.eigh(0.5 * (h + h.T))
        floor = 1e-12 * jnp.maximum(jnp.max(jnp.abs(eigenvalues)), 1e-300)
        step = -vectors @ ((vectors.T @ phi) / jnp.maximum(jnp.abs(eigenvalues), floor))
        if i:
            follow = lu_solve(lu_factor(jacobian[at:, at:]),
                              -jacobian[at:, :at] @ jnp.concatenate(delta))
            step = step + follow[:phi.size]
        delta.append(step)
        at += phi.size
        size = jnp.maximum(size, jnp.linalg.norm(step) / checks.tolerance(blocks[k], 1.0, jnp))
    delta = jnp.concatenate(delta)
    finite = jnp.all(jnp.isfinite(delta)) & jnp.isfinite(size)
    return delta, jnp.where(finite, size, jnp.inf)


def _finite(evaluated):
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(c)) for c in evaluated["conditions"]]
                             + [jnp.all(jnp.isfinite(evaluated["gradient"]))]))


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
