r"""The lemmas, symbolically: best-response Jacobians and the hypergradient
(Lemmas 2.1, 3.1, 3.2).

Notation (0-based here, 1-based in the public API). Levels $k = 0, \dots, n-1$, blocks
$x_k$. The reduced objectives are $F_k(x_{\le k}) = f_k(x_{\le k}, Y_{>k}(x_{\le k}))$ and
the best responses $y_k(x_{<k}) = \operatorname*{arg\,min}_{x_k} F_k$. Every quantity below
is a function of all of $x_0, \dots, x_{n-1}$, valid on the *solution manifold*
$M_k = \{x_m = y_m(x_{<m}) \text{ for } m \ge k\}$, which $x_{<k}$ parametrises.

Total derivative along $M_k$ (the chain rule the lemmas apply), for $j < k$:

$$
\begin{aligned}
T^k_j E &= D_j E + \sum_{m \ge k} D_m E \; Z^k_{m,j}, \\
Z^k_{k,j} &= D_j y_k, \qquad
Z^k_{m,j} = D_j y_m + \sum_{k \le l < m} D_l y_m \; Z^k_{l,j} \quad (m > k),
\end{aligned}
$$

where $Z^k_{m,j}$ is the total derivative of $x_m$ in $x_j$ along $M_k$. With
$g_k = T^{k+1}_k f_k$ (the gradient of $F_k$), $H_k = T^{k+1}_k g_k$ and
$B_{kj} = T^{k+1}_j g_k$, the implicit function theorem gives

$$
D_j y_k = -H_k^{-1} B_{kj}
$$

and the hypergradient is $g_0 = T^1_0 f_0$. Lemma 2.1 is the case $n = 2$; Lemma 3.1 is the
bottom level (where $T^{k+1}$ is a plain partial); Lemma 3.2 is a level with a lower best
response inside, whose second derivatives enter $H_k$ and $B_{kj}$ when $T$ differentiates
the $Z$'s. Differentiating $y_m$ once more costs one more derivative of $f_m$, so $f_k$ is
needed to order $k$.

Why a graph: differentiating the nested quotients with sympy's ``diff`` re-walks shared
subtrees and grows like a tree (about 60,000 operations at $n = 4$ against 543 after CSE).
Here every derived scalar is an intermediate symbol whose definition is small, and the
derivative of an intermediate in a variable is itself memoised as an intermediate. Each
distinct partial derivative of an $f_k$ is derived once (keyed by its sorted multi-index).
``curvature=False`` freezes the best-response Jacobians while differentiating (their
derivatives, the curvature terms, are taken as zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from .errors import HessianError


class DerivationGraph:
    """Scalar intermediates with small definitions, and their memoised derivatives."""

    def __init__(self, variables, objectives, frozen_kinds=()):
        self.variables = tuple(variables)
        self._var_index = {v: i for i, v in enumerate(self.variables)}
        self.objectives = tuple(objectives)
        self.defs: dict[sp.Symbol, sp.Expr] = {}
        self.order: list[sp.Symbol] = []
        self.kind: dict[sp.Symbol, str] = {}
        self._hashcons: dict[tuple[sp.Expr, str], sp.Symbol] = {}
        self._dcache: dict[tuple[sp.Symbol, int], sp.Expr] = {}
        self._partials: dict[tuple[int, tuple[int, ...]], sp.Expr] = {}
        self._partial_of: dict[sp.Symbol, tuple[int, tuple[int, ...]]] = {}
        self._frozen_kinds = frozenset(frozen_kinds)
        self._expanded: dict[sp.Symbol, sp.Expr] = {}
        self._expanded_ops: dict[sp.Symbol, int] = {}

    # -------------------------------------------------------------- building
    def define(self, expr, kind: str = "tmp") -> sp.Expr:
        """An atom standing for ``expr``: the expression itself when it is a number or symbol."""
        expr = sp.sympify(expr)
        if expr.is_Atom:
            return expr
        sym = self._hashcons.get((expr, kind))
        if sym is None:
            sym = sp.Dummy(kind)
            self.defs[sym] = expr
            self.order.append(sym)
            self.kind[sym] = kind
            self._hashcons[(expr, kind)] = sym
        return sym

    def partial(self, level: int, index: tuple[int, ...]) -> sp.Expr:
        """The partial derivative of f_level in the variables ``index`` (derived once)."""
        index = tuple(sorted(index))
        key = (level, index)
        if key not in self._partials:
            if not index:
                value = self.objectives[level]
            else:
                parent = self.partial(level, index[:-1])
                parent_expr = self.defs.get(parent, parent)
                value = sp.diff(parent_expr, self.variables[index[-1]])
            atom = self.define(value, kind=f"f{level + 1}")
            if atom in self.defs and atom not in self._partial_of:
                self._partial_of[atom] = key
            self._partials[key] = atom
        return self._partials[key]

    def diff(self, expr, var_index: int) -> sp.Expr:
        """Total partial derivative of ``expr`` in variable ``var_index``, through intermediates."""
        expr = sp.sympify(expr)
        var = self.variables[var_index]
        result = expr.diff(var)
        for sym in expr.free_symbols:
            if sym in self.defs:
                dsym = self.dsym(sym, var_index)
                if dsym != 0:
                    result += expr.diff(sym) * dsym
        return result

    def dsym(self, sym: sp.Symbol, var_index: int) -> sp.Expr:
        """The derivative of the intermediate ``sym`` in variable ``var_index`` (memoised).

        Zero for a frozen kind (``curvature=False``); for the partial derivative of an
        objective, the next partial (derived once); otherwise a new intermediate.
        """
        key = (sym, var_index)
        if key not in self._dcache:
            if self.kind[sym] in self._frozen_kinds:
                value = sp.S.Zero
            elif sym in self._partial_of:
                level, index = self._partial_of[sym]
                value = self.partial(level, index + (var_index,))
            else:
                value = self.define(self.diff(self.defs[sym], var_index))
            self._dcache[key] = value
        return self._dcache[key]

    def jacobian(self, column: sp.Matrix, var_indices) -> sp.Matrix:
        """d column / d (variables): shape (len(column), len(var_indices)), entries as atoms."""
        return sp.Matrix(
            len(column),
            len(var_indices),
            lambda r, c: self.define(self.diff(column[r], var_indices[c])),
        )

    def matmul(self, a: sp.Matrix, b: sp.Matrix, kind: str = "tmp") -> sp.Matrix:
        """The product ``a * b``, each entry an intermediate of the given ``kind``."""
        product = a * b
        return product.applyfunc(lambda e: self.define(e, kind))

    def add(self, a: sp.Matrix, b: sp.Matrix, kind: str = "tmp") -> sp.Matrix:
        """The sum ``a + b``, each entry an intermediate of the given ``kind``."""
        return (a + b).applyfunc(lambda e: self.define(e, kind))

    # -------------------------------------------------------------- reading
    def expand(self, expr) -> sp.Expr:
        """``expr`` with every intermediate replaced by its definition (shared in memory)."""
        expr = sp.sympify(expr)
        needed = [s for s in expr.free_symbols if s in self.defs]
        if not needed:
            return expr
        return expr.xreplace({s: self._expand_symbol(s) for s in needed})

    def _expand_symbol(self, sym):
        if sym not in self._expanded:
            # Iterative post-order to stay clear of the recursion limit at large n.
            stack = [sym]
            while stack:
                top = stack[-1]
                pending = [
                    s
                    for s in self.defs[top].free_symbols
                    if s in self.defs and s not in self._expanded
                ]
                if pending:
                    stack.extend(pending)
                    continue
                stack.pop()
                if top not in self._expanded:
                    definition = self.defs[top]
                    inner = {
                        s: self._expanded[s] for s in definition.free_symbols if s in self.defs
                    }
                    self._expanded[top] = definition.xreplace(inner) if inner else definition
        return self._expanded[sym]

    def expand_matrix(self, matrix: sp.Matrix) -> sp.Matrix:
        """``matrix`` with every entry expanded (see `expand`)."""
        return matrix.applyfunc(self.expand)

    def dependencies(self, outputs) -> list[sp.Symbol]:
        """The intermediates the outputs need, in definition (topological) order."""
        needed: set[sp.Symbol] = set()
        stack = [s for e in outputs for s in sp.sympify(e).free_symbols if s in self.defs]
        while stack:
            sym = stack.pop()
            if sym in needed:
                continue
            needed.add(sym)
            stack.extend(s for s in self.defs[sym].free_symbols if s in self.defs)
        return [s for s in self.order if s in needed]

    def is_partial(self, sym) -> bool:
        """Whether ``sym`` stands for a partial derivative of some $f_k$."""
        return sym in self._partial_of

    def size(self, outputs) -> int:
        """Operations in the graph that computes ``outputs`` (what CSE'd code would execute)."""
        deps = self.dependencies(outputs)
        return sum(sp.count_ops(self.defs[s]) for s in deps) + sum(sp.count_ops(e) for e in outputs)

    def expanded_size(self, outputs) -> int:
        """Operations of ``outputs`` written out as formulas (every intermediate replaced by
        its definition, as `expand` gives them), counted on the shared graph without
        expanding it: each intermediate's count is its definition's own operations plus,
        per occurrence, the count of every intermediate it uses (linear in the graph's size;
        an exact Python integer however large the formula would be).

        An upper bound of what `expand` prints: sympy may still merge or cancel terms while
        it substitutes.
        """
        counts = self._expanded_ops
        for sym in self.dependencies(outputs):
            if sym not in counts:
                definition = self.defs[sym]
                counts[sym] = sp.count_ops(definition) + sum(
                    definition.count(s) * counts[s]
                    for s in definition.free_symbols if s in self.defs
                )
        total = 0
        for expr in outputs:
            expr = sp.sympify(expr)
            total += sp.count_ops(expr) + sum(
                expr.count(s) * counts[s] for s in expr.free_symbols if s in self.defs
            )
        return total


@dataclass(frozen=True)
class Derivation:
    r"""What the lemmas give, as matrices of graph atoms (0-based level keys).

    ``jacobians[(k, j)]``: $D_j y_k$ ($d_k \times d_j$), ``gradients[k]``: $g_k = D_k F_k$
    ($d_k \times 1$), ``hessians[k]``: $H_k = D_{kk} F_k$ ($d_k \times d_k$, $k \ge 1$);
    ``gradients[0]`` is the hypergradient.
    """

    graph: DerivationGraph
    blocks: tuple[tuple[int, ...], ...]
    jacobians: dict
    gradients: dict
    hessians: dict
    curvature: bool


def derive(blocks, objectives, curvature: bool = True) -> Derivation:
    """Derive every best-response Jacobian and the hypergradient
(Lemmas 2.1, 3.1, 3.2)."""
    variables = [v for block in blocks for v in block]
    graph = DerivationGraph(variables, objectives, frozen_kinds=() if curvature else ("J",))
    index_blocks, start = [], 0
    for block in blocks:
        index_blocks.append(tuple(range(start, start + len(block))))
        start += len(block)
    n = len(blocks)
    jacobians: dict[tuple[int, int], sp.Matrix] = {}
    gradients: dict[int, sp.Matrix] = {}
    hessians: dict[int, sp.Matrix] = {}
    z_cache: dict[tuple[int, int, int], sp.Matrix] = {}

    def z(k: int, m: int, j: int) -> sp.Matrix:
        r"""$Z^k_{m,j}$: total derivative of $x_m$ in $x_j$ along $M_k$ ($m \ge k > j$)."""
        key = (k, m, j)
        if key not in z_cache:
            total = jacobians[(m, j)]
            for l in range(k, m):
                total = graph.add(total, graph.matmul(jacobians[(m, l)], z(k, l, j)))
            z_cache[key] = total
        return z_cache[key]

    def total(k: int, column: sp.Matrix, j: int) -> sp.Matrix:
        """$T^k_j$ column: total Jacobian of ``column`` in $x_j$ along $M_k$."""
        result = graph.jacobian(column, index_blocks[j])
        for m in range(k, n):
            result = graph.add(
                result, graph.matmul(graph.jacobian(column, index_blocks[m]), z(k, m, j))
            )
        return result

    for k in range(n - 1, 0, -1):
        objective = sp.Matrix([graph.partial(k, ())])
        g = total(k + 1, objective, k).T
        gradients[k] = g
        h = total(k + 1, g, k)
        hessians[k] = h
        _check_constant_hessian(h, level=k + 1)
        for j in range(k):
            b = total(k + 1, g, j)
            jacobians[(k, j)] = _solve_negated(graph, h, b, level=k + 1)
    gradients[0] = total(1, sp.Matrix([graph.partial(0, ())]), 0).T
    return Derivation(graph, tuple(index_blocks), jacobians, gradients, hessians, curvature)


def _solve_negated(graph: DerivationGraph, h: sp.Matrix, b: sp.Matrix, level: int) -> sp.Matrix:
    """-H^{-1} B by LU elimination without pivoting, one intermediate per step.

    No inverse is formed. Without pivoting the elimination is backward stable for the
    symmetric positive definite H the lemmas assume (the pivots are the ratios of leading
    principal minors); where H is not, the numeric checks reject the point first.
    """
    d = h.shape[0]
    lower = [[sp.S.Zero] * d for _ in range(d)]
    upper = [[sp.S.Zero] * d for _ in range(d)]
    for i in range(d):
        for c in range(i, d):
            upper[i][c] = graph.define(h[i, c] - sum(lower[i][p] * upper[p][c] for p in range(i)))
        if upper[i][i] == 0:
            raise HessianError(
                f"the Hessian D_kk F_k is singular: elimination pivot {i} is exactly zero",
                level=level,
                min_eigenvalue=0.0,
                condition_number=float("inf"),
            )
        for r in range(i + 1, d):
            lower[r][i] = graph.define(
                (h[r, i] - sum(lower[r][p] * upper[p][i] for p in range(i))) / upper[i][i]
            )
    columns = []
    for c in range(b.shape[1]):
        forward = []
        for i in range(d):
            forward.append(graph.define(b[i, c] - sum(lower[i][p] * forward[p] for p in range(i))))
        back = [sp.S.Zero] * d
        for i in reversed(range(d)):
            rest = forward[i] - sum(upper[i][p] * back[p] for p in range(i + 1, d))
            back[i] = graph.define(rest / upper[i][i])
        columns.append([graph.define(-e, kind="J") for e in back])
    return sp.Matrix(d, b.shape[1], lambda r, c: columns[c][r])


def _check_constant_hessian(h: sp.Matrix, level: int) -> None:
    """Where H_k is a constant matrix (quadratic levels), decide definiteness exactly."""
    if not all(e.is_number for e in h):
        return
    exact = sp.Matrix(h)
    if exact.is_symmetric() and exact.rows <= 8:
        eigenvalues = [sp.nsimplify(e) for e in exact.eigenvals(multiple=True)]
        numeric = sorted(float(sp.re(sp.N(e, 30))) for e in eigenvalues)
    else:
        import numpy as np

        numeric = sorted(np.linalg.eigvalsh(np.array(exact.evalf(), dtype=float)))
    lo, hi = numeric[0], numeric[-1]
    if lo <= 0:
        kind = "singular" if lo == 0 else "indefinite"
        condition = float("inf") if lo == 0 else abs(hi / lo)
        raise HessianError(
            f"the Hessian D_kk F_k is {kind} everywhere (constant matrix, min eigenvalue "
            f"{lo:.6g}, condition number {condition:.3g}): the lower-level minimiser is not unique",
            level=level,
            min_eigenvalue=lo,
            condition_number=condition,
            everywhere=True,
        )
