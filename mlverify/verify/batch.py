r"""Theorem 4.1 over a batch of instances in one compiled, vmapped call.

A family is ``objectives_of(params) -> [f_1, ..., f_n]`` (JAX callables of the tuple of
blocks) and a pytree ``params`` whose leaves carry a leading batch axis. Per instance, all
in JAX: the lower levels are solved by the joint solve (at most ``newton_steps`` steps,
residual reported; each round of the run starts from the last round's solution), the
hypergradient is the exact one at its solution (Lemmas 3.1 and 3.2 on the stacked
conditions, `mlverify.numeric.stacked`), $L$ is the largest eigenvalue of the Hessian of
$F_1$ (central differences of the exact hypergradient) over a grid of the box times
``1.01``, $F_1^*$ is the best value seen on a run 4x longer, and
the bound is checked at every $T$. With several devices the batch is sharded over them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ..checks import L_MARGIN, as_box, bound_4_1, bound_holds
from ..numeric import stacked
from ..numeric.problem import compiler_options as deep_options

if TYPE_CHECKING:
    from ..zoo import QuadraticFamily

#: Lower solves whose gradient norm ends above this make the instance not-applicable.
SOLVE_TOL = 1e-9


@dataclass
class BatchReport:
    """Per-instance verdicts and worst ratios of the Theorem 4.1 check."""

    verdicts: np.ndarray  # "pass" / "fail" / "not-applicable"
    worst_ratio: np.ndarray
    L: np.ndarray
    lambda_min: np.ndarray
    F_star: np.ndarray
    residual: np.ndarray

    def counts(self) -> dict:
        """How many instances got each verdict: ``{"pass": ..., "fail": ..., ...}``."""
        values, counts = np.unique(self.verdicts, return_counts=True)
        return dict(zip(values.tolist(), counts.tolist(), strict=True))

    def summary(self) -> str:
        """The verdict counts and the quantiles (0, 0.5, 0.9, 1) of the worst ratio
        left/right over the applicable instances."""
        ok = self.verdicts != "not-applicable"
        ratios = self.worst_ratio[ok]
        quantiles = np.quantile(ratios, [0.0, 0.5, 0.9, 1.0]) if ratios.size else [np.nan] * 4
        return (
            f"Theorem 4.1 over {len(self.verdicts)} instances: {self.counts()}\n"
            f"  worst left/right ratio: min {quantiles[0]:.3g}, median {quantiles[1]:.3g}, "
            f"90% {quantiles[2]:.3g}, max {quantiles[3]:.3g}"
        )


def _instance_check(objectives_of, sizes, box, T, grid, newton_steps, fd_step, warm_start):
    lo, hi = box
    offsets = np.cumsum(sizes)[:-1].tolist()
    init = jnp.zeros(sum(sizes[1:]))

    def check(params):
        fs = objectives_of(params)
        # The joint solve of levels 2..n on the stacked conditions (at most newton_steps
        # steps), every lower level factored densely whatever its size; its evaluation at
        # the solution holds the exact hypergradient and every lower residual D_k F_k.
        solve = stacked.solver(fs, sizes, 1)

        def value_grad(x1, lower=init):
            flat, out, _ = solve(jnp.concatenate([x1, lower]), SOLVE_TOL * 1e-3, newton_steps)
            residual = jnp.max(jnp.stack([jnp.linalg.norm(c) for c in out["conditions"]]))
            return (fs[0](tuple(jnp.split(flat, offsets))), out["gradient"], residual,
                    flat[sizes[0]:])

        def hessian(x1):
            # both sides of every central difference in one vmapped call (one program)
            steps = fd_step * jnp.eye(sizes[0])
            grads = jax.vmap(lambda x: value_grad(x)[1])(jnp.concatenate([x1 + steps,
                                                                          x1 - steps]))
            h = (grads[:sizes[0]] - grads[sizes[0]:]).T / (2 * fd_step)
            return jnp.linalg.eigvalsh(0.5 * (h + h.T))

        eig = jax.vmap(hessian)(grid)
        lam_min, lam_max = jnp.min(eig[:, 0]), jnp.max(eig[:, -1])
        L = L_MARGIN * lam_max

        def step(carry, _):
            # each round's lower solve starts where the last one ended (the warm start of
            # the single-loop algorithm): a few Newton steps instead of a cold solve
            x, lower = carry
            value, grad, residual, lower = value_grad(x, lower if warm_start else init)
            mapping = L * (x - jnp.clip(x - grad / L, lo, hi))
            return ((jnp.clip(x - grad / L, lo, hi), lower),
                    (value, jnp.sum(mapping**2), residual))

        # T rounds, then 4T more from where they end (F_1^*): one scan, one program
        x0 = jnp.asarray(lo, dtype=jnp.float64) * jnp.ones(sizes[0])
        _, (every, squared, residuals) = jax.lax.scan(step, (x0, init), None, length=5 * T)
        values, squared, residuals = every[:T], squared[:T], residuals[:T]
        f_star = jnp.min(every)
        t = jnp.arange(1, T + 1)
        left = jnp.cumsum(squared) / t
        right = bound_4_1(L, values[0] - f_star, t)
        ok = jnp.all(bound_holds(left, right))
        ratio = jnp.max(left / jnp.maximum(right, 1e-300))
        residual = jnp.max(residuals)
        applicable = (lam_min > 0) & (residual <= SOLVE_TOL) & jnp.isfinite(ratio)
        return {"ok": ok, "applicable": applicable, "ratio": ratio, "L": L,
                "lambda_min": lam_min, "F_star": f_star, "residual": residual}

    return check


def instance_check(objectives_of: Callable[[Any], Sequence[Callable]], sizes: Sequence[int],
                   box: tuple, *, T: int = 100, grid_points: int = 5, newton_steps: int = 30,
                   fd_step: float = 1e-5, warm_start: bool = True) -> Callable[[Any], dict]:
    r"""The pure single-instance check ``params -> dict of results`` (jit- and vmap-able).

    Per instance: $L$ is `L_MARGIN` times the largest eigenvalue of the Hessian of $F_1$ over
    the grid, the run is projected gradient descent with step $1/L$ from the box's lower
    corner (lower levels started at 0), and $F_1^*$ is the least value seen on it and on a
    continuation $4T$ rounds long.

    Args:
        objectives_of: ``params -> [f_1, ..., f_n]``: one instance's objectives, each a JAX
            callable of the tuple of blocks.
        sizes: The block sizes $d_1, \dots, d_n$.
        box: ``(lo, hi)``, the box $X$ for $x_1$ (floats or arrays of length $d_1$).
        T: The number of rounds; the bound is checked at every $T$ up to it.
        grid_points: Points per coordinate of the grid of $X$ on which the Hessian of $F_1$
            is evaluated ($\text{grid\_points}^{d_1}$ points).
        newton_steps: The most Newton steps of each lower solve.
        fd_step: The central-difference step of the Hessian of $F_1$.
        warm_start: Start each round's lower solve from the last round's solution (the
            single-loop algorithm's warm start); False: every solve from zero.

    Returns:
        A function of one instance's ``params`` returning a dict of JAX scalars: ``ok``
            (the bound held at every $T$), ``applicable`` (the Hessian of $F_1$ positive
            definite on the grid, every lower solve within `SOLVE_TOL`, the worst ratio
            finite), ``ratio`` (worst left/right), ``L``, ``lambda_min`` (least eigenvalue
            on the grid), ``F_star`` and ``residual`` (largest lower gradient norm).
    """
    sizes = tuple(sizes)
    lo, hi = (jnp.asarray(side) for side in as_box(box, sizes[0]))
    axes = [np.linspace(float(lo[i]), float(hi[i]), grid_points) for i in range(sizes[0])]
    grid = jnp.asarray(np.array(list(itertools.product(*axes))))
    return _instance_check(objectives_of, sizes, (lo, hi), T, grid, newton_steps, fd_step,
                           warm_start)


def theorem_4_1_batch(objectives_of: Callable[[Any], Sequence[Callable]], params: Any,
                      sizes: Sequence[int], box: tuple, *, T: int = 100, grid_points: int = 5,
                      newton_steps: int = 30, fd_step: float = 1e-5,
                      vectorize: bool = True, warm_start: bool = True,
                      compiler_options: dict | str = "auto") -> BatchReport:
    r"""Check Theorem 4.1 on every instance of a batched family (see the module docstring).

    ``vectorize=False`` runs the same compiled single-instance check in a Python loop (the
    baseline of the throughput benchmark). Returns a `BatchReport`.

    Args:
        objectives_of: ``params -> [f_1, ..., f_n]``: one instance's objectives, each a JAX
            callable of the tuple of blocks.
        params: A pytree whose leaves carry a leading batch axis, one entry per instance.
        sizes: The block sizes $d_1, \dots, d_n$.
        box: ``(lo, hi)``, the box $X$ for $x_1$ (floats or arrays of length $d_1$).
        T: The number of rounds; the bound is checked at every $T$ up to it.
        grid_points: Points per coordinate of the grid of $X$ for $L$ and $\lambda_{\min}$.
        newton_steps: The most Newton steps of each lower solve.
        fd_step: The central-difference step of the Hessian of $F_1$.
        vectorize: True checks every instance in one jitted, vmapped call (sharded over the
            devices when there are several and they divide the batch); False loops.
        warm_start: Start each round's lower solve from the last round's solution (False:
            from zero, as the grid's solves do).
        compiler_options: XLA's options for the check's program (as `jax.jit` takes them);
            ``"auto"``: the package's choice for $n$ levels, which compiles about 2.5 times
            faster and runs about 1.8 times slower than XLA's defaults (``{}``) at 3 levels
            (32 instances, T = 50: ``benchmarks/results/batch.md``): pass ``{}`` where the
            batch is large enough that the run outweighs the compile.

    Returns:
        A `BatchReport`: per instance the verdict ("pass", "fail" or "not-applicable"),
            the worst ratio left/right, $L$, $\lambda_{\min}$, $F_1^*$ and the largest
            lower residual, as NumPy arrays.
    """
    if isinstance(compiler_options, str) and compiler_options != "auto":
        raise ValueError(f"compiler_options must be 'auto' or a dict of XLA options, got "
                         f"{compiler_options!r}")
    check = instance_check(objectives_of, sizes, box, T=T, grid_points=grid_points,
                           newton_steps=newton_steps, fd_step=fd_step, warm_start=warm_start)
    options = deep_options(len(sizes)) if compiler_options == "auto" else compiler_options
    if vectorize:
        params = _shard(params)
        out = jax.jit(jax.vmap(check), compiler_options=options)(params)
    else:
        single = jax.jit(check, compiler_options=options)
        count = jax.tree_util.tree_leaves(params)[0].shape[0]
        rows = [single(jax.tree_util.tree_map(lambda a, i=i: a[i], params)) for i in range(count)]
        out = {k: jnp.stack([r[k] for r in rows]) for k in rows[0]}
    out = {k: np.asarray(v) for k, v in out.items()}
    verdicts = np.where(~out["applicable"], "not-applicable", np.where(out["ok"], "pass", "fail"))
    return BatchReport(verdicts, out["ratio"], out["L"], out["lambda_min"], out["F_star"],
                       out["residual"])


def _shard(params):
    """Spread the batch axis over the devices when there are several (and it divides)."""
    devices = jax.devices()
    count = jax.tree_util.tree_leaves(params)[0].shape[0]
    if len(devices) < 2 or count % len(devices):
        return params
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    return jax.tree_util.tree_map(lambda a: jax.device_put(a, spec), params)


def quadratic_family_batch(
    n: int, sizes: Sequence[int] | None, seeds: Iterable[int]
) -> tuple[Callable[[Any], list[Callable]], tuple[jax.Array, jax.Array], list[QuadraticFamily]]:
    r"""(objectives_of, params, members) for the zoo's quadratic family over ``seeds``.

    Args:
        n: The number of levels.
        sizes: The block sizes $d_1, \dots, d_n$ (None: scalar blocks), as
            [`quadratic`][mlverify.zoo.families.quadratic] takes them.
        seeds: One seed per instance.

    Returns:
        The triple ``(objectives_of, params, members)``: the family's objectives as a
            function of ``params``, ``params = (Q, c)`` stacked over the seeds (float64
            arrays of shapes $(B, n, d, d)$ and $(B, n, d)$, $d = \sum_k d_k$, $B$ the
            number of seeds), and the `QuadraticFamily` members themselves, ready for
            `theorem_4_1_batch`.
    """
    from ..zoo import quadratic

    members = [quadratic(n, sizes, seed=s) for s in seeds]
    qs = jnp.asarray(np.stack([np.stack(m.Q) / m.denominator for m in members]))
    cs = jnp.asarray(np.stack([np.stack(m.c) / m.denominator for m in members]))

    def objectives_of(params):
        q, c = params

        def objective(k):
            def f(xs):
                z = jnp.concatenate(xs)
                return 0.5 * z @ q[k] @ z + c[k] @ z

            return f

        return [objective(k) for k in range(n)]

    return objectives_of, (qs, cs), members
