r"""Rigorous bounds on the eigenvalues of symmetric interval matrices, and outward rounding.

For a symmetric matrix $A$ known only to lie in an interval matrix $[A_c - R, A_c + R]$
($A_c$ a float64 midpoint, $R \ge 0$ the radii), Weyl's inequality gives

$$
\lambda_{\min}(A_c) - \lVert R \rVert \;\le\; \lambda_i(A) \;\le\;
\lambda_{\max}(A_c) + \lVert R \rVert,
$$

with $\lVert R \rVert_2 \le \max_i \sum_j R_{ij}$ ($R$ symmetric). The eigenvalues of $A_c$
are bounded from outside by a Cholesky factorisation in ball arithmetic ($s I - A_c$, resp.
$A_c - s I$, is positive definite when the factorisation succeeds) and from inside by
Rayleigh quotients $v^\top A_c v / v^\top v$, also in ball arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .programs import _as_arb, arb_power

if TYPE_CHECKING:
    from flint import arb


@dataclass(frozen=True)
class EigenBounds:
    r"""Proven: $\lambda_{\min} \in$ [`min_lower`, `min_upper`], $\lambda_{\max} \in$
    [`max_lower`, `max_upper`]."""

    min_lower: float
    min_upper: float
    max_lower: float
    max_upper: float


def float_down(value: arb | float) -> float:
    r"""The largest float64 $\le$ the ball's lower end (exact comparison, then one step down).

    Args:
        value: A ball (python-flint ``arb``), or a number made into an exact ball.

    Returns:
        A float64 at or below every point of the ball; ``-inf`` when the lower end is not
            finite.
    """
    from flint import arb

    low = _as_arb(value).lower()
    f = float(low)
    if not np.isfinite(f):
        return -np.inf
    if arb(f) > low:
        f = float(np.nextafter(f, -np.inf))
    return f


def float_up(value: arb | float) -> float:
    r"""The smallest float64 $\ge$ the ball's upper end.

    Args:
        value: A ball (python-flint ``arb``), or a number made into an exact ball.

    Returns:
        A float64 at or above every point of the ball; ``inf`` when the upper end is not
            finite.
    """
    from flint import arb

    high = _as_arb(value).upper()
    f = float(high)
    if not np.isfinite(f):
        return np.inf
    if arb(f) < high:
        f = float(np.nextafter(f, np.inf))
    return f


def _cholesky_ok(matrix) -> bool:
    """Whether interval Cholesky succeeds: then every symmetric matrix inside is definite."""
    from flint import arb

    d = len(matrix)
    low = [[arb(0)] * d for _ in range(d)]
    for j in range(d):
        pivot = matrix[j][j] - sum((arb_power(low[j][k], 2) for k in range(j)), arb(0))
        if not pivot > 0:
            return False
        low[j][j] = pivot.sqrt()
        for i in range(j + 1, d):
            rest = matrix[i][j] - sum((low[i][k] * low[j][k] for k in range(j)), arb(0))
            low[i][j] = rest / low[j][j]
    return True


def _shifted(center, s, sign):
    r"""$\mathrm{sign} \cdot (A_c - s I)$ as balls."""
    from flint import arb

    d = len(center)
    return [[sign * (arb(center[i][j]) - (arb(s) if i == j else arb(0))) for j in range(d)]
            for i in range(d)]


def _rayleigh(center, v):
    from flint import arb

    d = len(center)
    va = [arb(float(x)) for x in v]
    num = sum((va[i] * arb(center[i][j]) * va[j] for i in range(d) for j in range(d)), arb(0))
    den = sum((x * x for x in va), arb(0))
    return num / den


def symmetric_eigen_bounds(matrix: Sequence[Sequence[arb]]) -> EigenBounds | None:
    """Proven bounds on the extreme eigenvalues of every symmetric matrix in ``matrix``.

    ``matrix`` is a square list of lists of balls (not necessarily symmetric: the symmetric
    part is used, which contains every symmetric matrix of the set). None when an entry is
    not finite.

    Args:
        matrix: The interval matrix, a square list of rows of balls (python-flint ``arb``,
            or numbers).

    Returns:
        The `EigenBounds` (float64, rounded outward), or None when an entry is not finite
            or the interval Cholesky test cannot bound the midpoint's extreme eigenvalues
            (after shifts of up to $10^{-3}$ times their scale).
    """
    from flint import arb

    d = len(matrix)
    sym = [[(_as_arb(matrix[i][j]) + _as_arb(matrix[j][i])) / 2 for j in range(d)]
           for i in range(d)]
    if not all(v.is_finite() for row in sym for v in row):
        return None
    center = [[float(v.mid()) for v in row] for row in sym]
    radius = [[abs(sym[i][j] - arb(center[i][j])).upper() for j in range(d)] for i in range(d)]
    spread = arb(0)  # >= ||R||_2: the largest row sum, compared on exact upper ends
    for row in radius:
        total = sum(row, arb(0)).upper()
        if total > spread:
            spread = total
    a = np.array(center)
    values, vectors = np.linalg.eigh(a)
    scale = max(1.0, float(np.max(np.abs(values))))
    upper_c = lower_c = None
    for delta in (1e-15, 1e-13, 1e-11, 1e-9, 1e-6, 1e-3):
        if upper_c is None and _cholesky_ok(_shifted(center, values[-1] + delta * scale, -1)):
            upper_c = arb(values[-1] + delta * scale)
        if lower_c is None and _cholesky_ok(_shifted(center, values[0] - delta * scale, 1)):
            lower_c = arb(values[0] - delta * scale)
    if upper_c is None or lower_c is None:
        return None
    max_c_lower = _rayleigh(center, vectors[:, -1])
    min_c_upper = _rayleigh(center, vectors[:, 0])
    return EigenBounds(
        min_lower=float_down(lower_c - spread),
        min_upper=float_up(min_c_upper + spread),
        max_lower=float_down(max_c_lower - spread),
        max_upper=float_up(upper_c + spread),
    )
