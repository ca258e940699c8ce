r"""The assumptions every bound rests on, checked where a verdict claims them.

Theorems 4.1 and 4.2 assume that every lower level has a minimiser, unique and strongly
convex. A solve that converges proves a *local* minimiser only: a level may still fall
without bound elsewhere (for some $x_1$ of the box, or far from where the solve went). So
wherever a verdict says the assumptions hold, the bottom level is also probed here for
unboundedness, at each sampled $x_1$, along rays from its solution.
"""

from __future__ import annotations

import numpy as np

#: Distances of the probe points along a ray, in units of $1 + \lVert x_n^* \rVert$.
PROBE_DISTANCES = 10.0 ** np.arange(0, 9)
#: A ray counts as unbounded below when, from distance $10^4$ on, $f_n$ falls strictly and
#: ends more than this many times $1 + \lvert f_n(x_n^*) \rvert$ below $f_n(x_n^*)$.
PROBE_DROP = 1e6


def probe_directions(h: np.ndarray) -> list[np.ndarray]:
    r"""The rays probed from the solution: $\pm$ each coordinate axis of the block and
    $\pm$ the eigenvector of the smallest eigenvalue of the Hessian $h$ there."""
    d = h.shape[0]
    axes = list(np.eye(d))
    _, vectors = np.linalg.eigh(0.5 * (h + h.T))
    rays = axes + [vectors[:, 0]] if d > 1 else axes
    return [sign * u for u in rays for sign in (1.0, -1.0)]


def bottom_level_unbounded(num, x1, lower, hessian) -> str | None:
    r"""A description if the bottom level's objective $f_n$ is unbounded below for this
    $x_1$, along a ray of `probe_directions` from its solution (levels above at their
    solutions); None when no probed ray falls without bound.

    ``num`` is either backend (its ``objective_value``), ``lower`` the blocks
    $x_2^*, \dots, x_n^*$ (flat float64 arrays), ``hessian`` $D_{nn} f_n$ there. A ray
    counts when $f_n$ decreases strictly at distances $10^4, \dots, 10^8$ times
    $1 + \lVert x_n^* \rVert$ and ends more than ``PROBE_DROP`` times its scale below its
    value at the solution; a NaN or an overflow on a ray decides nothing.
    """
    n = len(lower) + 1
    blocks = [np.asarray(x1, dtype=np.float64)] + [np.asarray(b, dtype=np.float64)
                                                  for b in lower]
    base = float(num.objective_value(n - 1, blocks))
    if not np.isfinite(base):
        return None
    solution = blocks[-1]
    size = 1.0 + float(np.linalg.norm(solution))
    for direction in probe_directions(np.asarray(hessian, dtype=np.float64)):
        values = []
        with np.errstate(all="ignore"):
            for s in PROBE_DISTANCES:
                trial = list(blocks)
                trial[-1] = solution + s * size * direction
                values.append(float(num.objective_value(n - 1, trial)))
        values = np.asarray(values)
        tail = values[PROBE_DISTANCES >= 1e4]
        if (np.all(np.isfinite(tail)) and np.all(np.diff(tail) < 0)
                and tail[-1] < base - PROBE_DROP * (1.0 + abs(base))):
            where = np.round(np.ravel(x1), 6).tolist()
            return (f"level {n} is unbounded below at x1 = {where}: f_{n} falls from "
                    f"{base:.6g} at its local minimiser to {tail[-1]:.3g} at distance "
                    f"{PROBE_DISTANCES[-1] * size:.3g} along "
                    f"{np.round(direction, 3).tolist()} (the solve found a local minimiser only)")
    return None
