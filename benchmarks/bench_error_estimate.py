"""Calibration of the hypergradient's a-posteriori error estimate (``with_error=True``).

For seeded quadratic (closed form, exact rationals) and non-quadratic (mpmath at 40 digits)
problems the estimate is compared with the true error against the independent reference, in
three settings:

- ``newton``: the lower levels solved by damped Newton from a far start to tolerances
  1e-4 .. 1e-12 (``MultilevelProblem.hypergradient_at`` and ``NumericProblem.hypergradient``
  with ``with_error=True``). Newton's last step is taken, so the solution is usually far
  better than ``tol`` and the true error is often round-off.
- ``gd``: the JAX path with the gradient-descent inner solver, which converges linearly and
  so stops at a distance near ``tol`` (a real solve error to estimate).
- ``perturbed``: the solution moved by ``tol (1 + |x_k|)`` in a seeded direction at every
  level, then the estimate (``SymbolicEvaluator.hypergradient_error``) at that point: an
  inner solve stopped at exactly that distance.

What must hold: the estimate is never below the true error, and it is within a factor of
100 of it wherever the true error is above round-off (1e-13).

    python benchmarks/bench_error_estimate.py      # about 2 minutes on one core

Writes ``benchmarks/results/error_estimate.md`` and ``.json``.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _machine  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import reference  # noqa: E402

import mlverify  # noqa: E402, F401  (float64 on)

TOLERANCES = (1e-4, 1e-6, 1e-8, 1e-10, 1e-12)
ROUND_OFF = 1e-13
X1 = 0.35
START = 1.5


def problems():
    """(name, MultilevelProblem, exact reference hypergradient as float64 array)."""
    for n, sizes, seed in [(3, (1, 1, 1), 1), (3, (1, 2, 2), 2), (4, (1, 1, 1, 1), 3)]:
        prob, blocks, objectives = reference.quadratic_problem(n, sizes, seed)
        closed = reference.quadratic_closed_form_hypergradient(blocks, objectives)
        x1 = {s: X1 for s in blocks[0]}
        exact = np.array([float(v.xreplace(x1)) for v in closed.hypergradient], dtype=np.float64)
        yield f"quadratic n={n} d={sizes}", prob, exact
    for n, seed in [(3, 0), (4, 1)]:
        prob, blocks, objectives = reference.nonquadratic_problem(n, seed)
        exact = np.array([float(v) for v in reference.mp_hypergradient(blocks, objectives, X1)])
        yield f"non-quadratic n={n} scalar", prob, exact
    prob, blocks, objectives = reference.nonquadratic_vector_problem(0)
    exact = np.array([float(v) for v in reference.mp_hypergradient(blocks, objectives, X1)])
    yield "non-quadratic n=3 d=(1,2,2)", prob, exact


def run():
    rows = []
    for name, prob, exact in problems():
        x1 = np.full(prob.sizes[0], X1)
        init = [np.full(d, START) for d in prob.sizes[1:]]
        num = prob.lower()
        solved = prob.solve_lower(x1, tol=1e-14)
        rng = np.random.default_rng(0)
        directions = [rng.standard_normal(d) for d in prob.sizes[1:]]
        directions = [u / np.linalg.norm(u) for u in directions]
        for tol in TOLERANCES:
            for path in ("symbolic newton", "jax newton", "jax gd", "symbolic perturbed"):
                if path == "symbolic newton":
                    value, estimate = prob.hypergradient_at(x1, tol=tol, init=init,
                                                            with_error=True)
                elif path == "symbolic perturbed":
                    blocks = [x1] + [x + tol * (1 + np.linalg.norm(x)) * u
                                     for x, u in zip(solved.xs, directions, strict=True)]
                    evaluator = prob.numeric()
                    value = evaluator.hypergradient_frozen(blocks)
                    estimate = evaluator.hypergradient_error(blocks)
                else:
                    options = {"tol": tol, "init": [jnp.asarray(b) for b in init]}
                    if path == "jax gd":
                        options.update(method="gd", max_iter=20000)
                    value, estimate = num.hypergradient(
                        jnp.asarray(x1), "exact", with_error=True, solve_options=options)
                true = float(np.max(np.abs(np.asarray(value) - exact)))
                est = float(np.max(np.asarray(estimate)))
                rows.append({"problem": name, "path": path, "tol": tol, "true": true,
                             "estimate": est, "bounds": est >= true,
                             "within_100": true <= ROUND_OFF or est <= 100 * true})
                print(f"{name:32s} {path:8s} tol {tol:.0e}  true {true:.2e}  est {est:.2e}",
                      flush=True)
    return rows


def markdown(rows, info, seconds) -> str:
    lines = [
        "# Error estimate of the exact hypergradient: calibration",
        "",
        _machine.markdown(info, "python benchmarks/bench_error_estimate.py"),
        "",
        f"x_1 = {X1}, lower levels started from {START} and solved to `tol` (the stopping test "
        "bounds Newton's distance estimate by tol (1 + |x_k|)); true error = max |value - "
        "reference| against the closed form (quadratic) or mpmath at 40 digits (non-quadratic). "
        f"Round-off: true error at most {ROUND_OFF:.0e}. Run time {seconds:.0f} s.",
        "",
        "| problem | path | tol | true error | estimate | estimate / true | bounds it | "
        "within 100x (above round-off) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = r["estimate"] / r["true"] if r["true"] > 0 else float("inf")
        lines.append(
            f"| {r['problem']} | {r['path']} | {r['tol']:.0e} | {r['true']:.2e} | "
            f"{r['estimate']:.2e} | {ratio:.3g} | {'yes' if r['bounds'] else '**no**'} | "
            f"{'yes' if r['within_100'] else '**no**'} |"
        )
    bounded = sum(r["bounds"] for r in rows)
    tight = sum(r["within_100"] for r in rows)
    lines += ["", f"The estimate bounds the true error in {bounded} of {len(rows)} rows and is "
              f"within 100x of it (above round-off) in {tight} of {len(rows)}."]
    return "\n".join(lines) + "\n"


def main():
    info = _machine.describe()
    start = time.perf_counter()
    rows = run()
    seconds = time.perf_counter() - start
    out = ROOT / "benchmarks" / "results"
    (out / "error_estimate.json").write_text(json.dumps({"machine": info, "rows": rows},
                                                        indent=1))
    (out / "error_estimate.md").write_text(markdown(rows, info, seconds))
    print(markdown(rows, info, seconds))


if __name__ == "__main__":
    main()
