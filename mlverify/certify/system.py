r"""The stacked stationarity system of the lower levels, and the Krawczyk test on it.

For $x_1$ fixed, the lower solutions $z = (x_2, \dots, x_n)$ are a zero of

$$
G(x_1, z) = (D_2 F_2, D_3 F_3, \dots, D_n F_n)
\qquad \text{(each level's reduced gradient)}
$$

with the reduced gradients of the lemmas (Lemmas 2.1, 3.1, 3.2). The Krawczyk operator
over a box $B$ of $x_1$ and a box $Z$ of $z$, centred at $c \in Z$ with a float
preconditioner $Y$,

$$
K(B, Z) = c - Y\, G(B, c) + \bigl(I - Y\, D_z G(B, Z)\bigr)(Z - c),
$$

when it lies in the interior of $Z$, proves that for every $x_1 \in B$, $G(x_1, \cdot)$ has
exactly one zero in $Z$, and that the zero lies in $K(B, Z)$ (Krawczyk 1969; Rump 1983).
Every enclosure is computed in ball arithmetic
([`mlverify.certify.programs`][mlverify.certify.programs]).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import sympy as sp

from ..codegen import compile_graph
from .programs import Program, _as_arb

if TYPE_CHECKING:
    from flint import arb
    from numpy.typing import ArrayLike

    from ..derive import Derivation, DerivationGraph
    from ..problem import MultilevelProblem

#: Attempts of $\varepsilon$-inflation before the Krawczyk test gives up on a box.
INFLATIONS = 6


def total_hessian_F1(graph: DerivationGraph, derivation: Derivation) -> sp.Matrix:
    r"""The Hessian of $F_1$ as graph atoms: $T^1_0$ applied to the hypergradient (see
    [`mlverify.derive`][mlverify.derive]).

    Args:
        graph: The derivation's graph, which the new atoms are added to.
        derivation: The problem's derivation with the curvature terms.

    Returns:
        The $d_1 \times d_1$ Hessian of $F_1$ as a sympy Matrix of graph atoms.
    """
    blocks = derivation.blocks
    n = len(blocks)
    z_cache: dict = {}

    def z(m: int) -> sp.Matrix:  # Z^1_{m,0}: total derivative of x_m in x_1 along M_1
        if m not in z_cache:
            total = derivation.jacobians[(m, 0)]
            for l in range(1, m):
                total = graph.add(total, graph.matmul(derivation.jacobians[(m, l)], z(l)))
            z_cache[m] = total
        return z_cache[m]

    g = derivation.gradients[0]
    result = graph.jacobian(g, blocks[0])
    for m in range(1, n):
        result = graph.add(result, graph.matmul(graph.jacobian(g, blocks[m]), z(m)))
    return result


class CertifiedSystem:
    r"""Every program certification needs, for one problem, compiled once.

    `residual`: $G$; `jacobian`: $D_z G$; `hessians`: each $H_k$ ($k = 2, \dots, n$) and the
    Hessian of $F_1$, flattened; `hypergradient`: $\mathrm{d}F_1/\mathrm{d}x_1$; `objective`:
    $f_1$. Float64 copies of $G$ and $D_z G$ serve the (untrusted) searches for centres.

    $z$ stacks the lower blocks $x_2, \dots, x_n$ into one vector of length ``dim``;
    ``level_of`` gives the (1-based) level of each of its components.

    Args:
        problem: A declared ``MultilevelProblem`` (its derivation with the curvature
            terms is compiled).
        arithmetic: The rigorous arithmetic of the programs, a key of
            `mlverify.certify.programs.ARITHMETICS`: ``"flint"`` (ball arithmetic, the
            default) or ``"mpmath"`` (interval arithmetic: its programs take flint balls as
            the intervals of their end points and return flint balls to `hessian_blocks` and
            the Krawczyk test, so either runs them).

    Raises:
        ProblemDefinitionError: An objective uses a function that has no rigorous
            enclosure in the arithmetic.
        ValueError: An unknown ``arithmetic``.
    """

    def __init__(self, problem: MultilevelProblem, arithmetic: str = "flint"):
        derivation = problem.derivation(True)
        graph = derivation.graph
        self.problem = problem
        self.sizes = problem.sizes
        self.n = problem.n
        self.d1 = self.sizes[0]
        self.lower_indices = [i for block in derivation.blocks[1:] for i in block]
        self.dim = len(self.lower_indices)
        #: the level (1-based) of each component of $z$
        self.level_of = [k + 1 for k in range(1, self.n) for _ in derivation.blocks[k]]
        self.names = [str(graph.variables[i]) for i in self.lower_indices]
        residual = sp.Matrix([e for k in range(1, self.n) for e in derivation.gradients[k]])
        jacobian = graph.jacobian(residual, self.lower_indices)
        hess_f1 = total_hessian_F1(graph, derivation)
        self.hessian_shapes = [self.sizes[k] for k in range(1, self.n)] + [self.d1]
        hessian_entries = [e for k in range(1, self.n) for e in derivation.hessians[k]]
        hessian_entries += list(hess_f1)
        self.residual = Program(graph, list(residual), arithmetic)
        self.jacobian = Program(graph, list(jacobian), arithmetic)
        self.hessians = Program(graph, hessian_entries, arithmetic)
        self.hypergradient = Program(graph, list(derivation.gradients[0]), arithmetic)
        self.objective = Program(graph, [graph.partial(0, ())], arithmetic)
        self.upper_gradient = Program(
            graph, [graph.partial(0, (i,)) for i in range(len(graph.variables))], arithmetic)
        self._residual_float = compile_graph(graph, list(residual))
        self._jacobian_float = compile_graph(graph, list(jacobian))

    # ------------------------------------------------------------------ float helpers
    def residual_float(self, x1: ArrayLike, z: ArrayLike) -> np.ndarray:
        """$G(x_1, z)$ in float64 (for the untrusted searches only).

        Args:
            x1: The top-level block $x_1$, $d_1$ numbers.
            z: The stacked lower blocks, ``dim`` numbers.

        Returns:
            $G(x_1, z)$, a float64 array of length ``dim`` (NaN or inf where the formulas
                overflow).
        """
        return np.asarray(self._residual_float(*x1, *z), dtype=np.float64)

    def jacobian_float(self, x1: ArrayLike, z: ArrayLike) -> np.ndarray:
        """$D_z G(x_1, z)$ in float64, (dim, dim) (for the untrusted searches only).

        Args:
            x1: The top-level block $x_1$, $d_1$ numbers.
            z: The stacked lower blocks, ``dim`` numbers.

        Returns:
            $D_z G(x_1, z)$ as a float64 array of shape ``(dim, dim)``.
        """
        values = np.asarray(self._jacobian_float(*x1, *z), dtype=np.float64)
        return values.reshape(self.dim, self.dim)

    def newton(self, x1: ArrayLike, z0: ArrayLike, iterations: int = 60) -> np.ndarray | None:
        r"""A zero of $G(x_1, \cdot)$ by plain Newton from `z0`, or None: any stationary
        point, maxima and saddles included, for the search for proven violations (the lower
        solve, which seeks minimisers, is `mlverify.nested` and its joint variant).

        Args:
            x1: The top-level block $x_1$, $d_1$ numbers.
            z0: The start, the stacked lower blocks (``dim`` numbers).
            iterations: The most Newton steps taken.

        Returns:
            The float64 zero (untrusted: nothing is proven), once a step is at most
                $10^{-15} (1 + \lVert z \rVert)$, or after ``iterations`` steps when
                $\lVert G \rVert < 10^{-9}$ there; None when a value is not finite, a
                Jacobian is singular or the residual stays larger.
        """
        z = np.asarray(z0, dtype=np.float64).copy()
        for _ in range(iterations):
            with np.errstate(all="ignore"):
                g = self.residual_float(x1, z)
                j = self.jacobian_float(x1, z)
            if not (np.all(np.isfinite(g)) and np.all(np.isfinite(j))):
                return None
            try:
                step = np.linalg.solve(j, g)
            except np.linalg.LinAlgError:
                return None
            z = z - step
            if np.linalg.norm(step) <= 1e-15 * (1 + np.linalg.norm(z)):
                return z
        with np.errstate(all="ignore"):
            g = self.residual_float(x1, z)
        return z if np.all(np.isfinite(g)) and np.linalg.norm(g) < 1e-9 else None

    # ------------------------------------------------------------------ enclosures
    def hessian_blocks(self, x1: Sequence[arb], z: Sequence[arb]) -> list[list[list[arb]]]:
        r"""$[H_2, \dots, H_n, \text{Hessian of } F_1]$ as lists of lists of balls, over the
        given balls.

        Args:
            x1: Balls for $x_1$ ($d_1$ of them: a point or a box).
            z: Balls for the stacked lower blocks (``dim`` of them), for example a Krawczyk
                enclosure.

        Returns:
            $n$ square matrices as lists of rows of balls: $H_k$ ($d_k \times d_k$) for
                $k = 2, \dots, n$, then the Hessian of $F_1$ ($d_1 \times d_1$), each
                enclosing its values over every point of the balls.
        """
        values = self.hessians([*x1, *z])
        out, start = [], 0
        for d in self.hessian_shapes:
            flat = [_as_arb(v) for v in values[start:start + d * d]]
            out.append([flat[r * d:(r + 1) * d] for r in range(d)])
            start += d * d
        return out


@dataclass(frozen=True)
class Enclosure:
    """The outcome of a Krawczyk test: ``ok``, the enclosure ``z`` (balls), or a ``reason``."""

    ok: bool
    z: list | None
    reason: str = ""
    level: int | None = None


def _inside(inner, outer) -> bool:
    return inner.is_finite() and inner.lower() > outer.lower() and inner.upper() < outer.upper()


def krawczyk(system: CertifiedSystem, x1: Sequence[arb], center: ArrayLike, *,
             tighten: int = 2, where: str = "") -> Enclosure:
    r"""Prove a unique zero of $G(x_1, \cdot)$ near `center` for every $x_1$ in the balls
    `x1`.

    `center` is a float64 approximation of the zero at the midpoint of `x1`. The box $Z$
    is grown by $\varepsilon$-inflation from the first Newton correction; on success $Z$ is
    replaced by $K(B, Z) \cap Z$ `tighten` times (each is again an enclosure).

    Args:
        system: The problem's `CertifiedSystem`.
        x1: Balls for $x_1$ ($d_1$ of them): the box $B$, or a point.
        center: The float64 centre $c$, the stacked lower blocks (``dim`` numbers).
        tighten: How many times the proven enclosure is intersected with its Krawczyk
            image.
        where: Text appended to a failure's reason (for example the box, as
            ``" on x1 in [...]"``).

    Returns:
        An `Enclosure`: on success ``ok`` and the balls ``z`` ($Z$, holding exactly one
            zero for every $x_1$ in the balls); otherwise ``ok`` False, the ``reason`` and
            (where one is at fault) the ``level``: the Jacobian singular at the centre or
            not finite over the box, the residual not finite, or no contraction after
            `INFLATIONS` inflations.
    """
    from flint import arb

    dim = system.dim
    c = [arb(float(v)) for v in center]
    x1_mid = [arb(v.mid()) for v in x1]
    jac_mid = np.array([float(_as_arb(v).mid()) for v in system.jacobian([*x1_mid, *c])])
    jac_mid = jac_mid.reshape(dim, dim)
    if not np.all(np.isfinite(jac_mid)):
        level = system.level_of[_deepest_bad_row(np.isfinite(jac_mid).all(axis=1))]
        return Enclosure(False, None, f"level {level}: the Jacobian of the stationarity system "
                                      f"is not finite at the centre{where}", level)
    if np.linalg.cond(jac_mid) > 1e14:
        level = _worst_level(system, jac_mid)
        return Enclosure(False, None, f"level {level}: the Jacobian of the stationarity system "
                                      f"is singular at the centre{where}", level)
    y = np.linalg.inv(jac_mid)
    y_arb = [[arb(float(y[r, s])) for s in range(dim)] for r in range(dim)]
    g_c = [_as_arb(v) for v in system.residual([*x1, *c])]
    yg = [sum((y_arb[r][s] * g_c[s] for s in range(dim)), arb(0)) for r in range(dim)]
    if not all(v.is_finite() for v in g_c):
        level = system.level_of[_deepest_bad_row([v.is_finite() for v in g_c])]
        return Enclosure(False, None, f"level {level}: the stationarity residual is not "
                                      f"finite{where}", level)
    if not all(v.is_finite() for v in yg):
        return Enclosure(False, None, f"the Newton correction is not finite{where}")
    scale = [1e-14 * (1.0 + abs(float(v))) for v in center]
    radius = [2.0 * float(abs(v).upper()) + s for v, s in zip(yg, scale, strict=True)]
    last_bad, contraction = None, None
    for _ in range(INFLATIONS):
        z = [arb(cv, r) for cv, r in zip(c, radius, strict=True)]
        k, contraction, bad_row = _operator(system, x1, c, z, y_arb, yg)
        if k is not None and all(_inside(kv, zv) for kv, zv in zip(k, z, strict=True)):
            for _ in range(tighten):
                z = [kv.intersection(zv) for kv, zv in zip(k, z, strict=True)]
                k_new, _, _ = _operator(system, x1, c, z, y_arb, yg)
                if k_new is None:
                    break
                k = k_new
            z = [kv.intersection(zv) for kv, zv in zip(k, z, strict=True)]
            return Enclosure(True, z)
        if k is None:
            level = system.level_of[bad_row]
            return Enclosure(False, None, f"level {level}: the Jacobian of the stationarity "
                                          f"system is not finite over the box{where}", level)
        last_bad = next(i for i in range(dim) if not _inside(k[i], z[i]))
        radius = [max(2.0 * r, 1.5 * float(abs(kv - cv).upper()) + s)
                  for r, kv, cv, s in zip(radius, k, c, scale, strict=True)]
    i = last_bad if last_bad is not None else 0
    level = system.level_of[i]
    if contraction is not None and contraction >= 1:
        cause = (f"not contracting: ||I - Y D_z G|| >= {contraction:.3g} over the box (the "
                 f"Jacobian enclosure is too wide or contains a singular matrix)")
    else:
        cause = f"the Krawczyk image of {system.names[i]} does not fit inside its box"
    return Enclosure(False, None, f"level {level}: {cause}{where}", level)


def _operator(system, x1, c, z, y_arb, yg):
    from flint import arb

    dim = system.dim
    values = system.jacobian([*x1, *z])
    jac = [[_as_arb(values[r * dim + s]) for s in range(dim)] for r in range(dim)]
    finite = [all(v.is_finite() for v in row) for row in jac]
    if not all(finite):
        return None, None, _deepest_bad_row(finite)
    m = [[(arb(1) if r == s else arb(0))
          - sum((y_arb[r][t] * jac[t][s] for t in range(dim)), arb(0))
          for s in range(dim)] for r in range(dim)]
    contraction = max(sum(float(abs(v).upper()) for v in row) for row in m)
    dz = [zv - cv for zv, cv in zip(z, c, strict=True)]
    k = [c[r] - yg[r] + sum((m[r][s] * dz[s] for s in range(dim)), arb(0)) for r in range(dim)]
    return k, contraction, None


def _deepest_bad_row(finite) -> int:
    """The deepest component (row of $G$ or $D_z G$) that is not finite: a level's
    conditions hold the levels below it (Lemma 3.1), so a value that is not finite below
    spoils every level above."""
    return max(i for i, ok in enumerate(finite) if not ok)


def _worst_level(system, jac) -> int:
    """The level whose diagonal block of $D_z G$ is closest to singular."""
    worst, level, start = -1.0, system.level_of[0], 0
    for k in range(1, system.n):
        d = system.sizes[k]
        block = jac[start:start + d, start:start + d]
        with np.errstate(all="ignore"):
            cond = np.linalg.cond(block) if np.all(np.isfinite(block)) else np.inf
        if cond > worst:
            worst, level = cond, k + 1
        start += d
    return level
