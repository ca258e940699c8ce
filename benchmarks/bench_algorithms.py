# ruff: noqa: E501  (markdown table rows are long strings)
"""Algorithms: hypergradient accuracy against wall time, time to 1e-6 (implicit-exact vs ITD),
and end-to-end outer runs on the data-poisoning problem.

Usage (from the repository root)::

    python benchmarks/bench_algorithms.py            # full run (~21 min on the shared 2-core machine)
    python benchmarks/bench_algorithms.py --quick    # trilevel / 4-level with blocks of 10 only,
                                                     # short grids, 2 seeds x 5 rounds (~7 min)

Writes ``benchmarks/results/algorithms.md`` and ``benchmarks/results/algorithms.json``
(``--out PREFIX`` to write elsewhere; ``--from-json PATH`` re-renders the markdown).

Problems (part 1 and 2). ``family(n, d, seed)``: a seeded non-quadratic n-level JAX problem with
blocks of size d, levels k = 1..n (0-based in the code):

    f_k(x) = 1/2 |x_k - a_k|^2 + 1/8 sum_i (x_k)_i^4 + sum_{m != k} tanh(x_m)^T W_km x_k,

a_k ~ N(0, 0.5^2), W_km ~ N(0, (0.3/sqrt(d))^2) (so |W_km| ~ 0.6 in spectral norm): unit
curvature own quadratic, quartic own terms, tanh couplings to every other level. Each f_k is
strongly convex in x_k (Hessian >= I); the reduced Hessians D_kk F_k at the solutions we use
have smallest eigenvalues ~0.9-1.0 (measured, reported). The hypergradient is evaluated at
x1 ~ N(0, 0.5^2) (seeded); the "nearby point" for warm starts is x1' = x1 + 0.01 N(0, 0.5^2).

Reference. ``num.solve_lower(x1, tol)`` for the first tol in 1e-12, 3e-12, 1e-11, ..., 1e-8
that the library's nested solver reaches from a cold start, then the ``exact`` hypergradient
there. Checked against ``fd`` (``num.hypergradient(x1, "fd")``, fourth-order central
differences with tightly solved lower levels) for blocks of 10, and for noise by re-solving
from the nearby point's solution (the relative difference of the two exact hypergradients is
the "reference noise"). Error = ||g - g_ref|| / ||g_ref||.

Methods and what is timed (compile always separate: ``jax.jit(f).lower(args)`` then
``.compile()``; run = median of several calls of the compiled function, each ended by
``jax.block_until_ready``; the number of calls adapts to the call's length: 7 under 0.2 s,
5 under 1 s, 3 under 5 s, else 1):

* implicit-exact: ``num.solve_lower(x1, tol=t, init=<solution at x1'>)`` for t in 1e-1 ..
  1e-12 (the library's nested Newton, Python-driven; timed as wall time, median, after one
  untimed warm-up call at the same t), plus the ``exact`` hypergradient
  ``core.hypergradient_frozen(flat, LinearSolve("auto", tol=1e-12), True)`` at the result
  (what ``NumericProblem._frozen_flat`` runs, minus its status checks). Time to accuracy =
  solve + hypergradient.
* no-curvature, cg (K CG iterations), neumann (K Neumann terms): the same lower solves, the
  hypergradient by ``LinearSolve("cg"|"neumann", iterations=K)`` / ``curvature=False``; every
  (t, K) pair is evaluated, time = solve(t) + hypergradient(K).
* itd: ``itd_hypergradient(core, flat, K, lrs)`` (the library's nested unrolled solver),
  K = 1..200, from the fixed start (the declared initial points, zeros): no solve, the K
  unrolled steps are the whole cost. Three variants share one compiled program per K (the
  inner step sizes are an argument): ``itd`` with a uniform inner step eta tuned against the
  reference (the eta in 0.2..1.0 with the smallest error at K = 20, or 10 for n = 4; this
  favours ITD), ``itd-default-lr`` with the library's default steps (1/(1.2 lambda_max(D_kk
  F_k)) at the fixed start, by the lemmas), and ``itd-warm`` (tuned eta, started from the
  solution at x1', the same warm start the implicit solve gets). The K sweep stops when the next K's projected
  run time (last time x (K'/K)^(n-1)) exceeds ``--itd-cap`` seconds, or when the tuned cold
  and warm variants are both below 1e-10.

Head to head (the target). Per problem, the loosest solve tolerance t* at which implicit-exact
reaches 1e-6 and the smallest K* at which ITD (tuned, cold start) does are re-timed in one
process, interleaved (implicit, ITD, implicit, ...), medians; ratio = ITD / implicit. If ITD
never reaches 1e-6, the comparison is made at the best accuracy ITD reaches and flagged.

End to end (part 3). ``mlverify.zoo.data_poisoning(seed)`` (trilevel: theta = log lambda, a
30 x 5 poisoning perturbation, 5 ridge weights), ``mlverify.optimize.optimize(num, method,
steps=T, box=(-5, 2), L=L)`` for implicit-exact, hierarchical, itd, aid-cg, no-curvature
with the library defaults otherwise (inner_steps=10, iterations=10, lower tol 1e-10) and the
same step 1/L for all methods (L estimated once per seed by ``estimate_lipschitz`` at x0). Each
(seed, method) runs in its own process: a 2-round warm-up run first (JIT compilation; its time
is reported as "warm-up"), then the T-round run on the same problem object. Reported:
``trace.F1[-1]`` (for hierarchical this is f_1 at its own iterates), F_1 at the final theta
with the lower levels solved (``num.reduced_objective``), ``trace.time[-1]``, mean and spread
(sample standard deviation) over the seeds.

Every job runs in a fresh subprocess with a time limit (``--timeout-scale`` scales them);
a job past its limit is recorded as "timeout" (with the item it was on); an exception is
recorded with its type and message.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import _machine  # noqa: E402
except ImportError:  # pragma: no cover - the shared helper is optional
    _machine = None

TARGET = 1e-6
THRESHOLDS = (1e-2, 1e-4, 1e-6, 1e-8)
REF_TOLS = (1e-12, 3e-12, 1e-11, 3e-11, 1e-10, 1e-9, 1e-8)
E2E_METHODS = ("implicit-exact", "hierarchical", "itd", "aid-cg", "no-curvature")


def config(quick: bool) -> dict:
    if quick:
        return {
            "problems": [(3, 10), (4, 10)],
            "tols": [1e-2, 1e-4, 1e-6, 1e-8, 1e-10],
            "cg": [1, 3, 10],
            "neumann": [2, 10, 30],
            "itd": [1, 3, 10, 30, 100],
            "eta": [0.4, 0.6, 0.8, 1.0],
            "seeds": [0, 1],
            "T": 5,
            "itd_cap": 5.0,
            "budget_s": 900,
        }
    return {
        "problems": [(3, 10), (3, 100), (3, 1000), (4, 10), (4, 100), (4, 1000)],
        "tols": [1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12],
        "cg": [1, 2, 5, 10, 20],
        "neumann": [2, 5, 10, 20, 50],
        "itd": [1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200],
        "eta": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        "seeds": [0, 1, 2, 3, 4],
        "T": 30,
        "itd_cap": 12.0,
        "budget_s": 3000,
    }


# ----------------------------------------------------------------------------- problems
def family(n: int, d: int, seed: int = 0, condition: float = 1.0):
    """The seeded non-quadratic n-level problem with blocks of d (see the module docstring).

    ``condition`` = kappa > 1 replaces the unit own quadratic by 1/2 sum_i s_i (x_k - a_k)_i^2
    with s log-spaced in [1, kappa] (the same for every level), so each level's Hessian has
    condition number ~kappa; kappa = 1 is the problem above, unchanged."""
    import jax.numpy as jnp
    import numpy as np

    from mlverify.numeric import NumericProblem

    own = jnp.asarray(np.logspace(0.0, np.log10(condition), d) if d > 1 else [condition])
    rng = np.random.default_rng(7919 * seed + 100 * n + d)
    scale = 0.3 / np.sqrt(d)
    a = [jnp.asarray(rng.normal(size=d) * 0.5) for _ in range(n)]
    W = {
        (k, m): jnp.asarray(rng.normal(size=(d, d)) * scale)
        for k in range(n)
        for m in range(n)
        if m != k
    }

    def objective(k):
        def f(xs):
            xk = xs[k]
            value = 0.5 * jnp.sum(own * (xk - a[k]) ** 2) + 0.125 * jnp.sum(xk**4)
            for m in range(n):
                if m != k:
                    value = value + jnp.tanh(xs[m]) @ (W[(k, m)] @ xk)
            return value

        return f

    num = NumericProblem([objective(k) for k in range(n)], [jnp.zeros(d) for _ in range(n)])
    prng = np.random.default_rng(10_000 + 7919 * seed + 100 * n + d)
    x1 = prng.normal(size=d) * 0.5
    x1_near = x1 + 0.01 * prng.normal(size=d) * 0.5
    return num, jnp.asarray(x1), jnp.asarray(x1_near)


# ----------------------------------------------------------------------------- worker tools
class Emitter:
    def __init__(self, path):
        self.fh = open(path, "a")

    def __call__(self, event, **payload):
        self.fh.write(json.dumps({"event": event, **payload}, default=_json_default) + "\n")
        self.fh.flush()


def _json_default(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:
        pass
    return str(obj)


def _reps(seconds: float) -> int:
    if seconds < 0.2:
        return 7
    if seconds < 1.0:
        return 5
    if seconds < 5.0:
        return 3
    return 1


def timed(fn, first=None):
    """(median seconds, min seconds, calls, last output) of fn() after one warm-up call."""
    import jax

    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    warm = time.perf_counter() - t0 if first is None else first
    times = []
    for _ in range(_reps(warm)):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), len(times), out


def compile_fn(fn, *args, options=None):
    """(compiled, lower seconds, compile seconds); XLA's default options unless given."""
    import jax

    jitted = jax.jit(fn, compiler_options=options) if options else jax.jit(fn)
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, t1 - t0, time.perf_counter() - t1


def rel_err(g, ref):
    import numpy as np

    g = np.asarray(g, dtype=np.float64)
    if not np.all(np.isfinite(g)):
        return float("inf")
    return float(np.linalg.norm(g - ref) / np.linalg.norm(ref))


def hg_function(num, method, K=None):
    from mlverify.numeric import LinearSolve

    core = num.core
    if method in ("exact", "no-curvature"):
        solve = LinearSolve("auto", tol=1e-12)
    elif method in ("cg", "neumann"):
        solve = LinearSolve(method, iterations=int(K))
    else:
        raise ValueError(method)
    curvature = method != "no-curvature"
    return lambda flat: core.hypergradient_frozen(flat, solve, curvature)


def _err_text(exc) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _state_path(state_dir, n, d):
    return os.path.join(state_dir, f"state_n{n}_d{d}.npz")


def load_state(state_dir, n, d):
    import jax.numpy as jnp
    import numpy as np

    with np.load(_state_path(state_dir, n, d)) as z:
        data = {k: z[k] for k in z.files}
    lowers = {}
    for key in data:
        if key.startswith("low_t"):
            idx, level = key[5:].split("_")
            lowers.setdefault(int(idx), {})[int(level)] = jnp.asarray(data[key])
    data["lowers"] = {i: tuple(v[k] for k in sorted(v)) for i, v in lowers.items()}
    return data


def flat_at(x1, lower):
    import jax.numpy as jnp

    return (jnp.asarray(x1),) + tuple(jnp.asarray(b) for b in lower)


# ----------------------------------------------------------------------------- jobs
def job_prep(emit, n, d, cfg, state_dir):
    """Reference, the implicit solve sweep, exact and no-curvature."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    num, x1, x1_near = family(n, d)
    emit("start", item="reference")
    ref_tol, ref_lower, ref_info, failures = None, None, {}, []
    t0 = time.perf_counter()
    for tol in REF_TOLS:
        try:
            low = num.solve_lower(x1, tol=tol)
        except Exception as exc:  # noqa: BLE001 - recorded
            failures.append({"tol": tol, "error": _err_text(exc)})
            continue
        ref_tol, ref_lower = tol, low
        ref_info = {"residuals": list(low.residuals), "iterations": low.iterations}
        break
    ref_solver = "library"
    emit(
        "row",
        kind="reference_solve",
        tol=ref_tol,
        solver=ref_solver,
        failures=failures,
        seconds_incl_compile=time.perf_counter() - t0,
        **ref_info,
    )
    if ref_lower is None:
        raise RuntimeError("no reference: the lower solve failed at every tolerance")
    ref_flat = flat_at(x1, ref_lower)
    emit("start", item="exact:compile")
    exact, lo_s, co_s = compile_fn(hg_function(num, "exact"), ref_flat)
    g_ref = np.asarray(exact(ref_flat))
    emit("row", kind="compile", method="exact", lower_s=lo_s, compile_s=co_s)

    # the reduced Hessians' spectra at the reference (dense blocks only)
    if d <= 200:
        try:
            hs = num.lower_hessians(ref_flat)
            eig = [np.linalg.eigvalsh(0.5 * (h + h.T)) for h in hs]
            emit(
                "row",
                kind="lower_hessians",
                min_eig=[float(e[0]) for e in eig],
                max_eig=[float(e[-1]) for e in eig],
            )
        except Exception as exc:  # noqa: BLE001
            emit("row", kind="lower_hessians", error=_err_text(exc))

    # the library's own path (NumericProblem.hypergradient_frozen) agrees with ours
    try:
        lib = np.asarray(num.hypergradient_frozen(ref_flat, "exact"))
        emit("row", kind="check_library_path", rel_diff=rel_err(lib, g_ref))
    except Exception as exc:  # noqa: BLE001
        emit("row", kind="check_library_path", error=_err_text(exc))

    if d <= 10:
        emit("start", item="fd")
        try:
            t0 = time.perf_counter()
            g_fd = np.asarray(num.hypergradient(x1, "fd", solve_options={"tol": ref_tol}))
            emit(
                "row",
                kind="fd_check",
                rel_diff=rel_err(g_fd, g_ref),
                seconds=time.perf_counter() - t0,
            )
        except Exception as exc:  # noqa: BLE001
            emit("row", kind="fd_check", error=_err_text(exc))

    emit("start", item="warm start")
    near_lower = None
    for tol in (ref_tol,) + tuple(t for t in REF_TOLS if t > ref_tol):
        for init in (ref_lower, None):
            try:
                near_lower = num.solve_lower(x1_near, tol=tol, init=init)
                break
            except Exception as exc:  # noqa: BLE001
                emit("row", kind="warm_start_failure", tol=tol, error=_err_text(exc))
        if near_lower is not None:
            emit(
                "row",
                kind="warm_start",
                tol=tol,
                solver="library",
                residuals=list(near_lower.residuals),
            )
            break
    if near_lower is None:
        raise RuntimeError("the lower solve at the nearby point failed at every tolerance")
    again = num.solve_lower(x1, tol=ref_tol, init=near_lower)
    how = "library"
    g_again = np.asarray(exact(flat_at(x1, again)))
    emit("row", kind="reference_noise", solver=how, rel_diff=rel_err(g_again, g_ref))

    state = {
        "x1": np.asarray(x1),
        "x1_near": np.asarray(x1_near),
        "g_ref": g_ref,
        "ref_tol": ref_tol,
    }
    for level, block in enumerate(ref_lower, start=1):
        state[f"ref_{level}"] = np.asarray(block)
    for level, block in enumerate(near_lower, start=1):
        state[f"near_{level}"] = np.asarray(block)

    # the solve sweep (warm start from the nearby point's solution)
    for i, tol in enumerate(cfg["tols"]):
        emit("start", item=f"solve tol={tol:g}")

        def solve(tol=tol):
            return tuple(num.solve_lower(x1, tol=tol, init=near_lower))

        try:
            med, best, calls, low = timed(solve)
            full = num.solve_lower(x1, tol=tol, init=near_lower)
        except Exception as exc:  # noqa: BLE001
            emit("row", kind="solve", index=i, tol=tol, error=_err_text(exc))
            continue
        for level, block in enumerate(low, start=1):
            state[f"low_t{i}_{level}"] = np.asarray(block)
        emit(
            "row",
            kind="solve",
            index=i,
            tol=tol,
            seconds=med,
            min_seconds=best,
            calls=calls,
            iterations=full.iterations,
            residual=full.residual,
        )
    np.savez(_state_path(state_dir, n, d), **state)

    state = load_state(state_dir, n, d)
    for method in ("exact", "no-curvature"):
        emit("start", item=f"{method}")
        if method == "exact":
            fn = exact
        else:
            fn, lo_s, co_s = compile_fn(hg_function(num, method), ref_flat)
            emit("row", kind="compile", method=method, lower_s=lo_s, compile_s=co_s)
        med, best, calls, _ = timed(lambda fn=fn: fn(ref_flat))
        errs = {i: rel_err(fn(flat_at(x1, low)), g_ref) for i, low in state["lowers"].items()}
        emit(
            "row",
            kind="hg",
            method=method,
            K=None,
            seconds=med,
            min_seconds=best,
            calls=calls,
            err_at_ref=rel_err(fn(ref_flat), g_ref),
            err_by_tol=errs,
        )
    _ = jax, jnp


def job_aid(emit, n, d, cfg, state_dir, kind):
    """cg / neumann with K iterations at every solved lower point of the sweep."""
    num, _, _ = family(n, d)
    st = load_state(state_dir, n, d)
    ref_flat = flat_at(st["x1"], [st[f"ref_{k}"] for k in range(1, n)])
    for K in cfg[kind]:
        emit("start", item=f"{kind} K={K}")
        fn, lo_s, co_s = compile_fn(hg_function(num, kind, K), ref_flat)
        med, best, calls, _ = timed(lambda fn=fn: fn(ref_flat))
        errs = {
            i: rel_err(fn(flat_at(st["x1"], low)), st["g_ref"]) for i, low in st["lowers"].items()
        }
        emit(
            "row",
            kind="hg",
            method=kind,
            K=K,
            lower_s=lo_s,
            compile_s=co_s,
            seconds=med,
            min_seconds=best,
            calls=calls,
            err_at_ref=rel_err(fn(ref_flat), st["g_ref"]),
            err_by_tol=errs,
        )


def _itd_fn(num, K):
    from mlverify.numeric.itd import itd_hypergradient

    core = num.core
    return lambda flat, lrs: itd_hypergradient(core, flat, K, lrs)


def _default_lrs(num, flat):
    import numpy as np

    from mlverify.numeric.itd import _learning_rates

    return np.asarray([float(r) for r in _learning_rates(num.core, tuple(flat), None)[1:]])


def job_itd(emit, n, d, cfg, state_dir):
    import jax.numpy as jnp
    import numpy as np

    num, _, _ = family(n, d)
    st = load_state(state_dir, n, d)
    x1, g_ref = st["x1"], st["g_ref"]
    cold = flat_at(x1, [np.asarray(b) for b in num.init[1:]])
    warm = flat_at(x1, [st[f"near_{k}"] for k in range(1, n)])
    default_lrs = _default_lrs(num, cold)
    emit("row", kind="itd_default_lrs", lrs=default_lrs.tolist())

    k_tune = 20 if n == 3 else 10
    emit("start", item=f"eta tuning at K={k_tune}")
    fn, lo_s, co_s = compile_fn(_itd_fn(num, k_tune), cold, jnp.asarray(default_lrs))
    tuning = {}
    for eta in cfg["eta"]:
        tuning[eta] = rel_err(fn(cold, jnp.full(n - 1, eta)), g_ref)
    eta = min(tuning, key=lambda e: tuning[e])
    emit("row", kind="itd_tuning", K=k_tune, errors=tuning, eta=eta)
    tuned = jnp.full(n - 1, eta)
    variants = {
        "itd": (cold, tuned),
        "itd-default-lr": (cold, jnp.asarray(default_lrs)),
        "itd-warm": (warm, tuned),
    }
    last = None
    for K in cfg["itd"]:
        if last is not None:
            projected = last[1] * (K / last[0]) ** (n - 1)
            if projected > cfg["itd_cap"]:
                emit("row", kind="itd_stop", K=K, reason=f"projected run {projected:.1f} s > cap")
                break
        emit("start", item=f"itd K={K}")
        fn, lo_s, co_s = compile_fn(_itd_fn(num, K), cold, tuned)
        row = {"K": K, "lower_s": lo_s, "compile_s": co_s}
        for name, (start, lrs) in variants.items():
            if name == "itd":
                med, best, calls, g = timed(lambda start=start, lrs=lrs, fn=fn: fn(start, lrs))
                row["seconds"], row["min_seconds"], row["calls"] = med, best, calls
            else:
                g = fn(start, lrs)
            row[f"err:{name}"] = rel_err(g, g_ref)
        emit("row", kind="itd", **row)
        last = (K, row["seconds"])
        if row["err:itd"] < 1e-10 and row["err:itd-warm"] < 1e-10:
            emit("row", kind="itd_stop", K=K, reason="tuned cold and warm both < 1e-10")
            break


def job_h2h(emit, n, d, cfg, state_dir, tol, K, eta, eps):
    """implicit-exact at tol against ITD at K, interleaved in one process."""
    import jax.numpy as jnp
    import numpy as np

    num, _, _ = family(n, d)
    st = load_state(state_dir, n, d)
    x1, g_ref = jnp.asarray(st["x1"]), st["g_ref"]
    near = tuple(jnp.asarray(st[f"near_{k}"]) for k in range(1, n))
    ref_flat = flat_at(x1, [st[f"ref_{k}"] for k in range(1, n)])
    cold = flat_at(x1, [np.asarray(b) for b in num.init[1:]])
    lrs = jnp.full(n - 1, eta)
    emit("start", item="compile")
    exact, _, c1 = compile_fn(hg_function(num, "exact"), ref_flat)
    itd, _, c2 = compile_fn(_itd_fn(num, K), cold, lrs)
    head_to_head(
        emit,
        num,
        x1,
        near,
        cold,
        exact,
        itd,
        lrs,
        tol,
        g_ref,
        "xla-default",
        tol=tol,
        K=K,
        eta=eta,
        eps=eps,
        compile_exact_s=c1,
        compile_itd_s=c2,
    )
    # the same with the XLA options the library compiles its own functions with
    try:
        from mlverify.numeric.problem import COMPILER_OPTIONS
    except ImportError:
        return
    emit("start", item="compile (library XLA options)")
    exact, _, c1 = compile_fn(hg_function(num, "exact"), ref_flat, options=COMPILER_OPTIONS)
    itd, _, c2 = compile_fn(_itd_fn(num, K), cold, lrs, options=COMPILER_OPTIONS)
    head_to_head(
        emit,
        num,
        x1,
        near,
        cold,
        exact,
        itd,
        lrs,
        tol,
        g_ref,
        "xla-library",
        tol=tol,
        K=K,
        eta=eta,
        eps=eps,
        compile_exact_s=c1,
        compile_itd_s=c2,
        options=str(COMPILER_OPTIONS),
    )


def head_to_head(emit, num, x1, near, cold, exact, itd, lrs, solve_tol, g_ref, label, **extra):
    import jax
    import numpy as np

    def implicit():
        low = num.solve_lower(x1, tol=solve_tol, init=near)
        return exact(flat_at(x1, low))

    def unrolled():
        return itd(cold, lrs)

    emit("start", item=f"warm-up ({label})")
    g_imp = np.asarray(jax.block_until_ready(implicit()))
    t0 = time.perf_counter()
    g_itd = np.asarray(jax.block_until_ready(unrolled()))
    single = time.perf_counter() - t0
    jax.block_until_ready(implicit())
    reps = 11 if single < 0.05 else max(3, _reps(single))
    ti, tu = [], []
    emit("start", item=f"interleaved timing ({label})")
    for _ in range(reps):
        for fn, acc in ((implicit, ti), (unrolled, tu)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            acc.append(time.perf_counter() - t0)
    emit(
        "row",
        kind="h2h",
        label=label,
        **extra,
        implicit_s=statistics.median(ti),
        itd_s=statistics.median(tu),
        implicit_all=ti,
        itd_all=tu,
        ratio=statistics.median(tu) / statistics.median(ti),
        ratio_min=min(tu) / min(ti),
        err_implicit=rel_err(g_imp, g_ref),
        err_itd=rel_err(g_itd, g_ref),
    )


def job_lipschitz(emit, seed):
    import jax.numpy as jnp

    from mlverify.optimize import estimate_lipschitz
    from mlverify.zoo import data_poisoning

    num = data_poisoning(seed)
    emit("start", item="L")
    L = estimate_lipschitz(num, num.unflatten(0, jnp.asarray(num.init[0])))
    emit("row", kind="lipschitz", seed=seed, L=L)


def job_e2e(emit, seed, method, T, L):
    import jax.numpy as jnp
    import numpy as np

    from mlverify.optimize import optimize
    from mlverify.zoo import data_poisoning

    num = data_poisoning(seed)
    box = (-5.0, 2.0)
    emit("start", item="warm-up")
    t0 = time.perf_counter()
    optimize(num, method, steps=2, L=L, box=box)
    warm = time.perf_counter() - t0
    emit("start", item="run")
    trace = optimize(num, method, steps=T, L=L, box=box)
    theta = float(trace.x1[-1][0])
    try:
        F1_true = num.reduced_objective(num.unflatten(0, jnp.asarray(trace.x1[-1])))
    except Exception as exc:  # noqa: BLE001
        F1_true = _err_text(exc)
    emit(
        "row",
        kind="e2e",
        seed=seed,
        method=method,
        T=T,
        L=L,
        alpha=trace.options["alpha"],
        warmup_s=warm,
        time_s=float(trace.time[-1]),
        F1_trace=float(trace.F1[-1]),
        F1_true=F1_true,
        F1_exact=trace.F1_exact,
        theta_final=theta,
        F1_curve=[float(v) for v in trace.F1],
        evals=float(trace.evals[-1]),
        finite=bool(np.all(np.isfinite(trace.F1))),
    )


def pin_cpu():
    """Pin this process to one CPU (the last one). On a shared 2-core machine, small XLA
    calls of an unpinned process showed 20-200x latency bursts (a 0.45 ms call taking
    20-100 ms) whenever other jobs ran, from its threads being handed between cores;
    pinned, they stay within ~2x. Every method is therefore measured on one core."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[-1]})
        return cpus[-1]
    except (AttributeError, OSError):
        return None


def worker(argv):
    spec = json.loads(argv[0])
    emit = Emitter(spec["out"])
    cpu = pin_cpu() if spec.get("pin", True) else None
    import jax

    import mlverify

    jax.config.update("jax_enable_x64", True)
    emit("module", file=os.path.dirname(os.path.abspath(mlverify.__file__)), cpu=cpu)
    try:
        job = spec["job"]
        cfg = spec.get("cfg", {})
        if job == "prep":
            job_prep(emit, spec["n"], spec["d"], cfg, spec["state"])
        elif job == "aid":
            job_aid(emit, spec["n"], spec["d"], cfg, spec["state"], spec["kind"])
        elif job == "itd":
            job_itd(emit, spec["n"], spec["d"], cfg, spec["state"])
        elif job == "h2h":
            job_h2h(
                emit,
                spec["n"],
                spec["d"],
                cfg,
                spec["state"],
                spec["tol"],
                spec["K"],
                spec["eta"],
                spec["eps"],
            )
        elif job == "lipschitz":
            job_lipschitz(emit, spec["seed"])
        elif job == "e2e":
            job_e2e(emit, spec["seed"], spec["method"], spec["T"], spec["L"])
        else:
            raise ValueError(job)
    except Exception as exc:  # noqa: BLE001 - recorded for the parent
        import traceback

        emit("error", error=_err_text(exc), traceback=traceback.format_exc()[-2000:])
        raise
    emit("done")


# ----------------------------------------------------------------------------- parent
class Runner:
    def __init__(self, state_dir, scale, budget_s, env=None, pin=True):
        self.env = env
        self.pin = pin
        self.module_files = set()
        self.state_dir = state_dir
        self.scale = scale
        self.deadline = time.monotonic() + budget_s
        self.jobs = []

    def run(self, label, spec, timeout):
        out = os.path.join(self.state_dir, f"job{len(self.jobs)}.jsonl")
        spec = {**spec, "out": out, "state": self.state_dir, "pin": self.pin}
        record = {"label": label, "spec": {k: v for k, v in spec.items() if k != "cfg"}}
        remaining = self.deadline - time.monotonic()
        if remaining < 30:
            record.update(status="skipped (global time budget spent)", rows=[])
            self.jobs.append(record)
            print(f"[skip] {label}", flush=True)
            return record
        limit = min(timeout * self.scale, remaining)
        t0 = time.monotonic()
        print(f"[run ] {label} (limit {limit:.0f} s)", flush=True)
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        try:
            _, err = proc.communicate(timeout=limit)
            status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            status = f"timeout > {limit:.0f} s"
        events = []
        if os.path.exists(out):
            with open(out) as fh:
                events = [json.loads(line) for line in fh if line.strip()]
        self.module_files.update(e["file"] for e in events if e["event"] == "module")
        rows = [e for e in events if e["event"] == "row"]
        starts = [e["item"] for e in events if e["event"] == "start"]
        errors = [e for e in events if e["event"] == "error"]
        record.update(status=status, rows=rows, wall_s=time.monotonic() - t0)
        if status != "ok" and starts:
            record["during"] = starts[-1]
        if errors:
            record["error"] = errors[-1]["error"]
            record["traceback"] = errors[-1].get("traceback")
        elif status.startswith("exit"):
            record["error"] = (err or "")[-1500:]
        self.jobs.append(record)
        extra = f" during {record.get('during')}" if status != "ok" else ""
        print(f"[{status}] {label} {record['wall_s']:.0f} s{extra}", flush=True)
        if record.get("error"):
            print(f"       {record['error'][:300]}", flush=True)
        return record


def analyse_problem(n, d, cfg, prep, aids, itd):
    """Curves (time, error) per method and times to the thresholds."""
    solves = {
        r["index"]: r for r in prep.get("rows", []) if r["kind"] == "solve" and "seconds" in r
    }
    points = {}  # method -> list of dicts(time, err, setting)
    for rec in [prep] + list(aids):
        for r in rec.get("rows", []):
            if r["kind"] != "hg":
                continue
            name = r["method"] if r["method"] != "exact" else "implicit-exact"
            for i, err in r["err_by_tol"].items():
                s = solves.get(int(i))
                if s is None:
                    continue
                setting = f"tol={s['tol']:g}" + (f", K={r['K']}" if r["K"] is not None else "")
                points.setdefault(name, []).append(
                    {
                        "time": s["seconds"] + r["seconds"],
                        "solve": s["seconds"],
                        "hg": r["seconds"],
                        "err": err,
                        "setting": setting,
                        "tol": s["tol"],
                        "K": r["K"],
                    }
                )
    eta = None
    for r in itd.get("rows", []):
        if r["kind"] == "itd_tuning":
            eta = r["eta"]
        if r["kind"] != "itd":
            continue
        for name in ("itd", "itd-default-lr", "itd-warm"):
            points.setdefault(name, []).append(
                {
                    "time": r["seconds"],
                    "solve": 0.0,
                    "hg": r["seconds"],
                    "err": r[f"err:{name}"],
                    "setting": f"K={r['K']}",
                    "K": r["K"],
                }
            )
    summary = {}
    for name, pts in points.items():
        entry = {"best_err": min(p["err"] for p in pts)}
        best = min(pts, key=lambda p: (p["err"], p["time"]))
        entry["best"] = best
        for thr in THRESHOLDS:
            ok = [p for p in pts if p["err"] <= thr]
            entry[f"{thr:g}"] = min(ok, key=lambda p: p["time"]) if ok else None
        summary[name] = entry
    return {"points": points, "summary": summary, "eta": eta}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--timeout-scale", type=float, default=1.0)
    parser.add_argument("--out", default=None, help="output prefix (default results/algorithms)")
    parser.add_argument("--from-json", default=None)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin each worker to one CPU (see pin_cpu)"
    )
    parser.add_argument(
        "--no-snapshot",
        action="store_true",
        help="workers import the working tree's mlverify, not a copy taken at start",
    )
    parser.add_argument("--only", default=None, help="comma list of n:d, e.g. 3:100,4:100")
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    prefix = args.out or os.path.join(here, "results", "algorithms")
    if args.from_json:
        with open(args.from_json) as fh:
            result = json.load(fh)
        write_markdown(result, prefix + ".md")
        return
    cfg = config(args.quick)
    if args.only:
        cfg["problems"] = [tuple(int(v) for v in p.split(":")) for p in args.only.split(",")]
    info = _machine.describe() if _machine else {}
    command = _machine.command_line() if _machine else " ".join(["python", *sys.argv])
    state_dir = tempfile.mkdtemp(prefix="bench_alg_")
    fingerprint, snapshot, env = None, None, None
    if _machine and hasattr(_machine, "source_fingerprint"):
        fingerprint = _machine.source_fingerprint()
        if not args.no_snapshot:
            snapshot = _machine.snapshot_package()
            env = _machine.worker_env(snapshot)
    runner = Runner(state_dir, args.timeout_scale, cfg["budget_s"], env, pin=not args.no_pin)
    t_start = time.monotonic()
    problems = {}
    small = [p for p in cfg["problems"] if p[1] < 1000]
    large = [p for p in cfg["problems"] if p[1] >= 1000]
    run_problems(runner, small, cfg, state_dir, problems)
    e2e = [] if args.skip_e2e else run_e2e(runner, cfg)
    run_problems(runner, large, cfg, state_dir, problems)
    result = {
        "machine": info,
        "command": command,
        "config": cfg,
        "pinned_to_one_cpu": not args.no_pin,
        "quick": args.quick,
        "total_s": time.monotonic() - t_start,
        "problems": problems,
        "e2e": e2e,
        "code": {
            "fingerprint": fingerprint,
            "snapshot": snapshot,
            "worker_module_dirs": sorted(runner.module_files),
        },
    }
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    with open(prefix + ".json", "w") as fh:
        json.dump(result, fh, indent=1, default=_json_default)
    write_markdown(result, prefix + ".md")
    print(f"wrote {prefix}.md and {prefix}.json ({result['total_s']:.0f} s)")


def run_problems(runner, todo, cfg, state_dir, problems):
    for n, d in todo:
        key = f"n={n}, d={d}"
        big = (2 if n == 4 else 1) * (2 if d >= 1000 else 1)
        prep = runner.run(
            f"{key}: reference + implicit", {"job": "prep", "n": n, "d": d, "cfg": cfg}, 300 * big
        )
        entry = {"n": n, "d": d, "prep": prep, "aid": [], "itd": {}, "h2h": None}
        problems[key] = entry
        if not os.path.exists(_state_path(state_dir, n, d)):
            continue
        for kind in ("cg", "neumann"):
            entry["aid"].append(
                runner.run(
                    f"{key}: {kind}",
                    {"job": "aid", "n": n, "d": d, "kind": kind, "cfg": cfg},
                    150 * big,
                )
            )
        entry["itd"] = runner.run(
            f"{key}: itd", {"job": "itd", "n": n, "d": d, "cfg": cfg}, 300 * big
        )
        analysis = analyse_problem(n, d, cfg, prep, entry["aid"], entry["itd"])
        entry["analysis"] = analysis
        spec = h2h_spec(analysis)
        entry["h2h_plan"] = spec
        if spec is not None:
            entry["h2h"] = runner.run(
                f"{key}: head to head",
                {"job": "h2h", "n": n, "d": d, "cfg": cfg, **spec},
                200 * big,
            )


def run_e2e(runner, cfg):
    e2e = []
    for seed in cfg["seeds"]:
        lip = runner.run(f"poisoning seed {seed}: L", {"job": "lipschitz", "seed": seed}, 120)
        L = next((r["L"] for r in lip["rows"] if r["kind"] == "lipschitz"), None)
        if L is None:
            e2e.append(lip)
            continue
        for method in E2E_METHODS:
            e2e.append(
                runner.run(
                    f"poisoning seed {seed}: {method}",
                    {"job": "e2e", "seed": seed, "method": method, "T": cfg["T"], "L": L},
                    240,
                )
            )
    return e2e


def h2h_spec(analysis):
    s = analysis["summary"]
    imp, itd = s.get("implicit-exact"), s.get("itd")
    if not imp or not itd or analysis["eta"] is None:
        return None
    eps = TARGET
    if itd[f"{TARGET:g}"] is None:
        eps = itd["best_err"] * 1.0001  # ITD's best accuracy: compare there
    ok_itd = [p for p in analysis["points"]["itd"] if p["err"] <= eps]
    ok_imp = [p for p in analysis["points"]["implicit-exact"] if p["err"] <= eps]
    if not ok_itd or not ok_imp:
        return None
    p_itd = min(ok_itd, key=lambda p: p["time"])
    p_imp = min(ok_imp, key=lambda p: p["time"])
    return {"tol": p_imp["tol"], "K": p_itd["K"], "eta": analysis["eta"], "eps": eps}


# ----------------------------------------------------------------------------- markdown
def _fmt_t(seconds):
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def _fmt_e(err):
    if err is None:
        return "-"
    if isinstance(err, str):
        return err
    if err == 0:
        return "0"
    if not math.isfinite(err):
        return "non-finite"
    return f"{err:.1e}"


def _job_status(rec):
    if not rec:
        return "not run"
    text = rec.get("status", "?")
    if rec.get("during") and text != "ok":
        text += f" (during {rec['during']})"
    if rec.get("error"):
        text += f": {rec['error'][:160]}"
    return text


def write_markdown(result, path):
    lines = ["# Algorithms: hypergradient accuracy vs wall time, and end-to-end runs", ""]
    lines.append(
        "Generated by `benchmarks/bench_algorithms.py` (see its docstring for the exact "
        "definitions). Times are wall-clock on a shared machine: compare ratios measured in "
        "the same run; each time is a median of several calls after warm-up, compile excluded "
        "and reported separately. "
        + (
            "Every worker process was pinned to one CPU (`os.sched_setaffinity`): unpinned, "
            "small XLA calls showed 20-200x latency bursts whenever other jobs used the "
            "machine, so all methods are measured single-core."
            if result.get("pinned_to_one_cpu")
            else "Workers were not pinned to a CPU."
        )
    )
    lines.append("")
    if result.get("machine") and _machine:
        lines += ["## Machine", "", _machine.markdown(result["machine"], result["command"]), ""]
    else:
        lines += [
            "## Machine",
            "",
            "```",
            json.dumps(result.get("machine"), indent=1),
            "```",
            "",
            "Command: `" + result["command"] + "`",
            "",
        ]
    code = result.get("code") or {}
    if code.get("fingerprint") and _machine and hasattr(_machine, "code_markdown"):
        lines += [
            _machine.code_markdown(
                code["fingerprint"], code.get("snapshot"), set(code.get("worker_module_dirs", []))
            ),
            "",
        ]
    lines.append(
        f"Total run time: {result['total_s'] / 60:.1f} min"
        + (" (`--quick`)" if result.get("quick") else "")
        + "."
    )
    lines.append("")

    # ---- headline
    lines += ["## Time to 1e-6 relative accuracy: implicit-exact vs ITD", ""]
    lines.append(
        "Head to head: both re-timed interleaved in one process (medians). implicit-exact = "
        "warm-started nested lower solve at tolerance t* + exact hypergradient; ITD = K* "
        "unrolled steps per level from the fixed start (inner step tuned, see below). "
        "ratio = ITD time / implicit-exact time (> 1: implicit-exact faster), of the medians "
        "(and of the minima, less sensitive to other jobs on the machine). Our jitted "
        "functions use XLA's default options; the library compiles its own functions with "
        "`mlverify.numeric.problem.COMPILER_OPTIONS` (optimisation level 0), so the ratio is "
        "also given with both compiled that way. 'From the sweeps' divides the two sweep "
        "jobs' times (measured minutes apart)."
    )
    lines.append("")
    lines.append(
        "| problem | accuracy compared | implicit-exact (t*) | ITD (K*) | ratio | errors (imp / ITD) | ratio, library XLA options | from the sweeps: ratio |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    ratios = {}
    for key, p in result["problems"].items():
        h = p.get("h2h")
        hrows = [r for r in (h or {}).get("rows", []) if r["kind"] == "h2h"]
        row = next((r for r in hrows if r.get("label") == "xla-default"), None)
        lib = next((r for r in hrows if r.get("label") == "xla-library"), None)
        lib_text = (
            "-"
            if lib is None
            else (f"{lib['ratio']:.3g} ({_fmt_t(lib['implicit_s'])} vs {_fmt_t(lib['itd_s'])})")
        )
        an = p.get("analysis", {})
        s = an.get("summary", {})
        sweep_ratio = "-"
        imp6 = (s.get("implicit-exact") or {}).get(f"{TARGET:g}")
        itd6 = (s.get("itd") or {}).get(f"{TARGET:g}")
        if imp6 and itd6:
            sweep_ratio = f"{itd6['time'] / imp6['time']:.2g}"
        if row is None:
            why = "not run"
            if p.get("h2h") is not None:
                why = _job_status(p["h2h"])
            elif not s.get("implicit-exact") or s["implicit-exact"].get(f"{TARGET:g}") is None:
                why = "implicit-exact did not reach the accuracy (see below)"
            lines.append(f"| {key} | - | - | - | {why} | - | - | {sweep_ratio} |")
            continue
        flag = (
            "1e-6"
            if row["eps"] <= TARGET * 1.0001
            else f"{row['eps']:.1e} (ITD's best; never 1e-6)"
        )
        ratios[key] = row["ratio"]
        lines.append(
            f"| {key} | {flag} | {_fmt_t(row['implicit_s'])} (t={row['tol']:g}) | "
            f"{_fmt_t(row['itd_s'])} (K={row['K']}) | **{row['ratio']:.3g}** "
            f"(of minima: {row.get('ratio_min', float('nan')):.3g}) | "
            f"{_fmt_e(row['err_implicit'])} / {_fmt_e(row['err_itd'])} | {lib_text} | {sweep_ratio} |"
        )
    lines.append("")
    verdict = []
    r3 = ratios.get("n=3, d=100")
    if r3 is not None:
        verdict.append(
            f"Target (implicit-exact >= 10x faster than ITD at equal accuracy, trilevel, blocks of "
            f"100): measured ratio {r3:.3g} -> **{'met' if r3 >= 10 else 'not met'}**."
        )
    for d in (10, 100, 1000):
        a, b = ratios.get(f"n=3, d={d}"), ratios.get(f"n=4, d={d}")
        if a is not None and b is not None:
            verdict.append(
                f"Blocks of {d}: ratio n=3 {a:.3g}, n=4 {b:.3g} -> gap "
                f"{'widens' if b > a else 'does not widen'} with n."
            )
    lines += [" ".join(verdict) if verdict else "No complete head-to-head comparison.", ""]

    # ---- per problem
    lines += ["## Accuracy against time, per problem", ""]
    lines.append(
        "Per method: the least total time (lower solve + hypergradient, or ITD's unrolled "
        "program) over its settings that reaches each relative error, and the best error "
        "reached. Settings: implicit-exact / no-curvature over solve tolerances t; cg / "
        "neumann over (t, K); ITD over K."
    )
    lines.append("")
    for key, p in result["problems"].items():
        lines += [f"### {key}", ""]
        prep = p.get("prep") or {}
        rows = prep.get("rows", [])
        notes = []
        for r in rows:
            if r["kind"] == "reference_solve":
                fails = "; ".join(f"tol {f['tol']:g}: {f['error'][:90]}" for f in r["failures"])
                solver = r.get("solver", "library")
                notes.append(
                    (
                        "**reference by the benchmark's own nested Newton (the library's solver "
                        "failed at every tolerance)**; "
                        if solver == "robust"
                        else ""
                    )
                    + f"reference: lower solve at tol {r['tol']} (residuals "
                    f"{', '.join(f'{v:.1e}' for v in r.get('residuals', []))})"
                    + (f"; failed first at {fails}" if fails else "")
                )
            elif r["kind"] == "robust_vs_library":
                notes.append(
                    "benchmark's own nested Newton vs the library's solution: relative difference "
                    f"{_fmt_e(r['rel_diff_solution'])}"
                    if "rel_diff_solution" in r
                    else f"own solver check: {r['error']}"
                )
            elif r["kind"] == "reference_noise_library":
                notes.append(f"re-solve from the nearby point by the library: {r['error'][:120]}")
            elif r["kind"] == "warm_start_failure":
                notes.append(
                    f"library solve at the nearby point, tol {r['tol']:g}: {r['error'][:120]}"
                )
            elif r["kind"] == "fd_check":
                notes.append(
                    f"fd check: {_fmt_e(r['rel_diff'])}"
                    if "rel_diff" in r
                    else f"fd check: {r['error']}"
                )
            elif r["kind"] == "reference_noise":
                notes.append(
                    f"reference noise (re-solved from the nearby point): {_fmt_e(r['rel_diff'])}"
                    if "rel_diff" in r
                    else f"reference noise: {r['error']}"
                )
            elif r["kind"] == "check_library_path":
                notes.append(
                    f"NumericProblem.hypergradient_frozen vs our jit: {_fmt_e(r['rel_diff'])}"
                    if "rel_diff" in r
                    else f"library path: {r['error']}"
                )
            elif r["kind"] == "lower_hessians" and "min_eig" in r:
                notes.append(
                    "reduced Hessian eigenvalues at the reference, levels 2..n: "
                    + ", ".join(f"[{a:.2f}, {b:.2f}]" for a, b in zip(r["min_eig"], r["max_eig"], strict=True))
                )
            elif r["kind"] == "workaround":
                notes.append(f"**{r['note']}** (the error: `{r['error']}`)")
            elif r["kind"] == "compile":
                notes.append(
                    f"compile {r['method']}: trace {r['lower_s']:.1f} s + XLA {r['compile_s']:.1f} s"
                )
        jobs = [prep] + list(p.get("aid", [])) + [p.get("itd")]
        for rec in jobs:
            if rec and rec.get("status") != "ok":
                notes.append(f"job {rec['label']}: {_job_status(rec)}")
        for n_ in notes:
            lines.append(f"- {n_}")
        lines.append("")
        an = p.get("analysis")
        if not an:
            continue
        lines.append(
            "| method | "
            + " | ".join(f"to {t:g}" for t in THRESHOLDS)
            + " | best error (time, setting) |"
        )
        lines.append("|---|" + "---|" * (len(THRESHOLDS) + 1))
        order = [
            "implicit-exact",
            "no-curvature",
            "cg",
            "neumann",
            "itd",
            "itd-warm",
            "itd-default-lr",
        ]
        for name in order:
            e = an["summary"].get(name)
            if not e:
                lines.append(
                    f"| {name} | " + " | ".join("-" for _ in THRESHOLDS) + " | not measured |"
                )
                continue
            cells = []
            for t in THRESHOLDS:
                q = e[f"{t:g}"]
                cells.append(f"{_fmt_t(q['time'])} ({q['setting']})" if q else "never")
            b = e["best"]
            cells.append(f"{_fmt_e(b['err'])} ({_fmt_t(b['time'])}, {b['setting']})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        # implicit sweep
        solves = [r for r in rows if r["kind"] == "solve"]
        hg = {r["method"]: r for r in rows if r["kind"] == "hg"}
        if solves:
            lines.append(
                "Lower solve sweep (warm start from the nearby point's solution) and the exact / no-curvature hypergradients there:"
            )
            lines.append("")
            lines.append(
                "| solve tol | solve time | Newton iterations | exact: total time | exact: error | no-curvature: error |"
            )
            lines.append("|---|---|---|---|---|---|")
            for r in solves:
                if "error" in r:
                    lines.append(f"| {r['tol']:g} | {r['error'][:120]} | - | - | - | - |")
                    continue
                ex, nc = hg.get("exact"), hg.get("no-curvature")
                e_ex = (
                    ex["err_by_tol"].get(str(r["index"]), ex["err_by_tol"].get(r["index"]))
                    if ex
                    else None
                )
                e_nc = (
                    nc["err_by_tol"].get(str(r["index"]), nc["err_by_tol"].get(r["index"]))
                    if nc
                    else None
                )
                tot = r["seconds"] + ex["seconds"] if ex else None
                lines.append(
                    f"| {r['tol']:g} | {_fmt_t(r['seconds'])} | {r['iterations']} | {_fmt_t(tot)} | "
                    f"{_fmt_e(e_ex)} | {_fmt_e(e_nc)} |"
                )
            if hg:
                lines.append("")
                lines.append(
                    "Hypergradient alone at the reference point: "
                    + "; ".join(
                        f"{m} {_fmt_t(r['seconds'])} (error {_fmt_e(r['err_at_ref'])})"
                        for m, r in hg.items()
                    )
                    + "."
                )
            lines.append("")
        aid_rows = [r for rec in p.get("aid", []) for r in rec.get("rows", []) if r["kind"] == "hg"]
        if aid_rows:
            lines.append(
                "Truncated AID at the reference lower solution (error of the linear solve alone) and compile:"
            )
            lines.append("")
            lines.append(
                "| method | K | hypergradient time | error at reference | compile (trace + XLA) |"
            )
            lines.append("|---|---|---|---|---|")
            for r in aid_rows:
                lines.append(
                    f"| {r['method']} | {r['K']} | {_fmt_t(r['seconds'])} | {_fmt_e(r['err_at_ref'])} | "
                    f"{r['lower_s']:.1f} + {r['compile_s']:.1f} s |"
                )
            lines.append("")
        itd_rows = [r for r in (p.get("itd") or {}).get("rows", [])]
        sweep = [r for r in itd_rows if r["kind"] == "itd"]
        if itd_rows:
            for r in itd_rows:
                if r["kind"] == "itd_tuning":
                    lines.append(
                        f"ITD inner step tuned at K={r['K']}: eta = {r['eta']} (errors "
                        + ", ".join(f"{k}: {_fmt_e(v)}" for k, v in r["errors"].items())
                        + ")."
                    )
                elif r["kind"] == "itd_default_lrs":
                    lines.append(
                        "Library default ITD steps (1/(1.2 lambda_max(D_kk F_k)) at the fixed start, as the library computes it): "
                        + ", ".join(f"{v:.3g}" for v in r["lrs"])
                        + "."
                    )
                elif r["kind"] == "itd_stop":
                    lines.append(
                        f"ITD sweep stopped before K={r['K']}: {r['reason']}."
                        if "projected" in r["reason"]
                        else f"ITD sweep stopped after K={r['K']}: {r['reason']}."
                    )
            lines.append("")
        if sweep:
            lines.append(
                "| K | run time | compile (trace + XLA) | error: itd (tuned, cold) | itd-warm | itd-default-lr |"
            )
            lines.append("|---|---|---|---|---|---|")
            for r in sweep:
                lines.append(
                    f"| {r['K']} | {_fmt_t(r['seconds'])} | {r['lower_s']:.1f} + {r['compile_s']:.1f} s | "
                    f"{_fmt_e(r['err:itd'])} | {_fmt_e(r['err:itd-warm'])} | {_fmt_e(r['err:itd-default-lr'])} |"
                )
            lines.append("")
        if p.get("h2h") and p["h2h"].get("status") != "ok":
            lines += [f"Head to head: {_job_status(p['h2h'])}", ""]

    # ---- e2e
    e2e = result.get("e2e", [])
    if e2e:
        lines += ["## End to end: data poisoning (`mlverify.zoo.data_poisoning`)", ""]
        cfg = result["config"]
        lines.append(
            f"`optimize(num, method, steps={cfg['T']}, L=L, box=(-5, 2))`, seeds {cfg['seeds']}; "
            "mean +- sample std over the seeds that finished. `trace.F1[-1]` is F_1 with the lower "
            "levels solved except for hierarchical (f_1 at its own iterates); 'F_1 solved' "
            "re-solves the lower levels at the final theta for every method. Time = "
            "`trace.time[-1]` (the algorithm alone, after a 2-round warm-up run that compiled "
            "everything; warm-up time reported separately)."
        )
        lines.append("")
        lines.append(
            "| method | seeds ok | F1[-1] (trace) | F_1 solved at final theta | final theta | time (T rounds) | warm-up (compile) |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        by = {}
        failures = []
        for rec in e2e:
            row = next((r for r in rec.get("rows", []) if r["kind"] == "e2e"), None)
            if row is None:
                failures.append(rec)
                continue
            by.setdefault(row["method"], []).append(row)

        def ms(vals, fmt):
            vals = [v for v in vals if isinstance(v, (int, float))]
            if not vals:
                return "-"
            m = statistics.mean(vals)
            s = statistics.stdev(vals) if len(vals) > 1 else 0.0
            return f"{fmt(m)} +- {fmt(s)}"

        for method in E2E_METHODS:
            rows = by.get(method, [])
            nseeds = len(cfg["seeds"])
            lines.append(
                f"| {method} | {len(rows)}/{nseeds} | {ms([r['F1_trace'] for r in rows], lambda v: f'{v:.4g}')} | "
                f"{ms([r['F1_true'] for r in rows], lambda v: f'{v:.4g}')} | "
                f"{ms([r['theta_final'] for r in rows], lambda v: f'{v:.3g}')} | "
                f"{ms([r['time_s'] for r in rows], lambda v: f'{v:.3g} s')} | "
                f"{ms([r['warmup_s'] for r in rows], lambda v: f'{v:.3g} s')} |"
            )
        lines.append("")
        if by:
            lines.append("Per seed (F_1 solved at final theta / time):")
            lines.append("")
            lines.append("| method | " + " | ".join(f"seed {s}" for s in cfg["seeds"]) + " |")
            lines.append("|---|" + "---|" * len(cfg["seeds"]))
            for method in E2E_METHODS:
                cells = []
                for s in cfg["seeds"]:
                    r = next((r for r in by.get(method, []) if r["seed"] == s), None)
                    cells.append(
                        "-"
                        if r is None
                        else f"{r['F1_true']:.4g} / {r['time_s']:.2f} s"
                        if isinstance(r["F1_true"], float)
                        else f"{r['F1_true'][:60]} / {r['time_s']:.2f} s"
                    )
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
        for rec in failures:
            lines.append(f"- {rec['label']}: {_job_status(rec)}")
        if failures:
            lines.append("")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        main()
