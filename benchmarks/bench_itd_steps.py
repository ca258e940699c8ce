"""ITD with its default inner steps against ITD with the steps given, blocks of 100.

ITD's default step per lower level is 1/(1.2 L_k), L_k = lambda_max of the reduced Hessian at
the start. It used to be computed from a dense reduced Hessian of every level inside the
compiled call: 20-40 ms per call at blocks of 100, against 5 ms with ``inner_lr`` given. Up
to ``itd.LANCZOS_MAX_LEVELS`` levels it takes 10 Lanczos steps (Hessian-vector products of the
nested rules); deeper, every H_k from one evaluation of the stacked conditions (the nested
rules' program grows about 8x per level). Target: default within 1.5x of given.

Both variants run in this one process, compiled first, then timed in A-B-A blocks (median of
``REPEATS`` calls each, ``block_until_ready``).

    python benchmarks/bench_itd_steps.py        # under a minute on one core

Writes ``benchmarks/results/itd_steps.md``.
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _machine  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mlverify.numeric.itd import LANCZOS_MAX_LEVELS  # noqa: E402
from mlverify.zoo import quadratic  # noqa: E402

REPEATS = 15
STEPS = 10


def median_time(call) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    info = _machine.describe()
    rows = []
    for n, sizes in [(3, (10, 100, 100)), (3, (10, 50, 50)), (4, (5, 20, 20, 20)),
                     (5, (2, 3, 1, 4, 2))]:
        num = quadratic(n, sizes=sizes, seed=0).numeric()
        x1 = jnp.full(sizes[0], 0.1)
        start = (x1,) + tuple(num.unflatten(k, num.init[k]) for k in range(1, n))
        given = tuple(1.0 / (1.2 * lam) for lam in num.lower_lipschitz(start))
        default = lambda: num.hypergradient(x1, "itd", steps=STEPS)  # noqa: E731
        fixed = lambda: num.hypergradient(x1, "itd", steps=STEPS, inner_lr=given)  # noqa: E731
        compile_start = time.perf_counter()
        jax.block_until_ready(default())
        compile_default = time.perf_counter() - compile_start
        compile_start = time.perf_counter()
        jax.block_until_ready(fixed())
        compile_fixed = time.perf_counter() - compile_start
        a1, b, a2 = median_time(default), median_time(fixed), median_time(default)
        rows.append((n, sizes, compile_default, compile_fixed, min(a1, a2), b))
        agree = np.max(np.abs(np.asarray(default()) - np.asarray(fixed())))
        print(f"n={n} sizes={sizes}: default {min(a1, a2) * 1e3:.2f} ms, given {b * 1e3:.2f} ms,"
              f" ratio {min(a1, a2) / b:.2f}, |difference| {agree:.1e}", flush=True)
    lines = [
        "# ITD: default inner steps against given steps",
        "",
        _machine.markdown(info, "python benchmarks/bench_itd_steps.py"),
        "",
        f"`num.hypergradient(x1, 'itd', steps={STEPS})` with the default steps (inside the "
        f"compiled call: up to {LANCZOS_MAX_LEVELS} levels 10 Lanczos steps per level on the "
        "nested rules, deeper every H_k from the stacked conditions) against the same call "
        "with `inner_lr` "
        "given (1/(1.2 L_k) from `lower_lipschitz`). Quadratic family, median of "
        f"{REPEATS} warm calls, A-B-A, one process.",
        "",
        "| n | block sizes | first call, default (s) | first call, given (s) | default (ms) | "
        "given (ms) | default / given |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n, sizes, ca, cb, a, b in rows:
        lines.append(f"| {n} | {sizes} | {ca:.2f} | {cb:.2f} | {a * 1e3:.2f} | {b * 1e3:.2f} | "
                     f"{a / b:.2f} |")
    text = "\n".join(lines) + "\n"
    (ROOT / "benchmarks" / "results" / "itd_steps.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
