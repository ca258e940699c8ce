"""Reference problems whose answers are derived independently of mlverify.

Nothing here imports or calls mlverify's derivation code (``mlverify.derive``,
``mlverify.symsolve``, ``MultilevelProblem.hypergradient`` ...). mlverify is used for one
thing only: building the :class:`mlverify.MultilevelProblem` under test from the same
objectives. Every reference answer follows from the *definition* of the multilevel
problem (SPEC section 2), not from the lemmas of section 3:

* Quadratic family. The nested argmins are solved exactly, bottom-up, with ``sp.linsolve``
  on the stationarity of each reduced objective F_k in its own block; substituting the
  lower best responses gives F_1(x_1) as an exact polynomial with rational coefficients,
  which is differentiated by sympy. Best-response Jacobians D_j y_k are plain partial
  derivatives of the closed-form best responses y_k(x_<k).

* Non-quadratic families (tanh / sin / exp couplings, quartic own terms). The reference is
  numerical at high precision with mpmath (:class:`MPNested`): the bottom level is solved
  by Newton's method on the sympy gradient of f_n; every level above by Newton's method on
  the gradient of its *reduced* objective F_k, itself computed by ``mpmath.diff`` (central
  differences) of the nested-solved F_k; the hypergradient is ``mpmath.diff`` of the
  nested-solved F_1. ``mpmath.diff`` evaluates its function at about twice the working
  precision with a step of about 2^-(prec+10), so each nesting level automatically runs at
  doubled precision and the finite differences lose nothing at the outer precision.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import mpmath
import sympy as sp

import mlverify as mv

# ----------------------------------------------------------------------------- helpers


def block_symbols(k: int, d: int, prefix: str = "x") -> tuple[sp.Symbol, ...]:
    """The scalar symbols of level k's block (k is 1-based): x3, or x3_0, x3_1, ..."""
    if d == 1:
        return (sp.Symbol(f"{prefix}{k}"),)
    return tuple(sp.symbols(f"{prefix}{k}_0:{d}"))


def level_var(block):
    """How a block is declared to mlverify: a Symbol for d = 1, a column Matrix otherwise."""
    return block[0] if len(block) == 1 else sp.Matrix(block)


def build_problem(blocks, objectives) -> mv.MultilevelProblem:
    return mv.MultilevelProblem(
        [mv.Level(level_var(b), f) for b, f in zip(blocks, objectives, strict=True)]
    )


def _rational(rng: random.Random, lo: int, hi: int, dens=(1, 2)) -> sp.Rational:
    return sp.Rational(rng.randint(lo, hi), rng.choice(dens))


# ----------------------------------------------------------------------------- quadratic


def quadratic_objectives(sizes, seed: int):
    """Blocks and objectives of a seeded random quadratic n-level problem.

    f_k(z) = z^T Q_k z / 2 + c_k^T z over all variables z = (x_1..x_n), with rational
    entries. The principal sub-block of Q_k over the blocks k..n is S = M M^T + s I
    (integer M, s in {1, 3/2, 2}), so it is positive definite; the couplings of those
    blocks to the blocks above (x_<k) are arbitrary. Then F_k is a quadratic in x_k whose
    Hessian P^T S P (P = [I; dY_>k/dx_k], full column rank) is positive definite, and each
    lower argmin is unique.
    """
    rng = random.Random(1000 + 7919 * seed + 31 * len(sizes) + sum(sizes))
    blocks = [block_symbols(k, d) for k, d in enumerate(sizes, start=1)]
    z = sp.Matrix([s for b in blocks for s in b])
    total = len(z)
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    objectives = []
    for k in range(len(sizes)):
        q = sp.zeros(total, total)
        for i in range(total):
            for j in range(i, total):
                q[i, j] = q[j, i] = _rational(rng, -3, 3)
        lo = starts[k]
        m = total - lo
        mm = sp.Matrix(m, m, lambda i, j: rng.randint(-2, 2))
        shift = sp.Rational(rng.choice([2, 3, 4]), 2)
        q[lo:, lo:] = mm * mm.T + shift * sp.eye(m)
        c = sp.Matrix([_rational(rng, -4, 4, (1, 2, 3)) for _ in range(total)])
        objectives.append(sp.expand((z.T * q * z)[0, 0] / 2 + (c.T * z)[0, 0]))
    return blocks, objectives


def quadratic_problem(n: int, sizes, seed: int):
    """(MultilevelProblem, blocks, objectives) of the seeded quadratic family."""
    sizes = tuple(sizes)
    assert len(sizes) == n, (n, sizes)
    blocks, objectives = quadratic_objectives(sizes, seed)
    return build_problem(blocks, objectives), blocks, objectives


@dataclass
class QuadraticClosedForm:
    """Exact nested solution of a quadratic problem (from the definition, bottom-up).

    ``best_responses[k]``: y_k(x_<k) as a column Matrix (k = 2..n, 1-based), a function of
    the blocks above only. ``manifolds[k]``: {symbol: expression in x_<k} for every symbol
    of the blocks k..n, i.e. Y_>=k(x_<k) = (y_k, y_k+1(x_<k, y_k), ...). ``F1`` the reduced
    upper objective F_1(x_1), ``hypergradient`` its gradient (d_1 x 1).
    """

    blocks: list
    best_responses: dict = field(default_factory=dict)
    manifolds: dict = field(default_factory=dict)
    F1: sp.Expr = sp.S.Zero
    hypergradient: sp.Matrix = None

    def jacobian(self, k: int, j: int) -> sp.Matrix:
        """Closed-form partial D_j y_k (d_k x d_j): y_k differentiated in x_j, x_<k free."""
        return self.best_responses[k].jacobian(sp.Matrix(self.blocks[j - 1]))

    def lower_solution(self, x1_values) -> list[sp.Matrix]:
        """Exact x_2*..x_n* (one column Matrix per level) at rational x_1 values."""
        sub = dict(zip(self.blocks[0], x1_values, strict=True))
        return [
            sp.Matrix([self.manifolds[2][s].xreplace(sub) for s in block])
            for block in self.blocks[1:]
        ]


def quadratic_closed_form_hypergradient(blocks, objectives) -> QuadraticClosedForm:
    """Solve the nested argmins of a quadratic problem exactly and differentiate F_1.

    Bottom-up, for k = n..2: F_k = f_k with the levels below replaced by their closed-form
    responses Y_>k(x_<=k); solve D_k F_k = 0 for x_k with ``sp.linsolve`` (unique, since F_k
    is strictly convex in x_k), giving y_k(x_<k); then Y_>=k(x_<k) is Y_>k with x_k := y_k.
    """
    blocks = [tuple(b) for b in blocks]
    n = len(blocks)
    out = QuadraticClosedForm(blocks=blocks)
    below: dict = {}  # Y_>k(x_<=k) for the current k
    for k in range(n, 1, -1):
        own = blocks[k - 1]
        fk = sp.expand(objectives[k - 1].xreplace(below))
        stationarity = [sp.diff(fk, s) for s in own]
        solutions = sp.linsolve(stationarity, list(own))
        assert len(solutions) == 1, f"level {k}: no unique stationary point"
        (solution,) = solutions
        solution = [sp.expand(e) for e in solution]
        assert not any(e.free_symbols & set(own) for e in solution), f"level {k}: not unique"
        ysub = dict(zip(own, solution, strict=True))
        out.best_responses[k] = sp.Matrix(solution)
        below = {**ysub, **{s: sp.expand(e.xreplace(ysub)) for s, e in below.items()}}
        out.manifolds[k] = below
        # the lower responses must now depend on x_<k only
        upper = {s for b in blocks[: k - 1] for s in b}
        assert all(e.free_symbols <= upper for e in below.values())
    out.F1 = sp.expand(objectives[0].xreplace(below))
    out.hypergradient = sp.Matrix([sp.diff(out.F1, s) for s in blocks[0]])
    return out


# ----------------------------------------------------------------------------- non-quadratic


def _pick(rng: random.Random, choices) -> sp.Rational:
    return sp.Rational(rng.choice(choices))


def nonquadratic_objectives(n: int, seed: int):
    """Blocks and objectives of a non-quadratic n-level problem, scalar blocks (n = 3, 4).

    Every lower objective has a quartic own term x_k^4/4 plus a quadratic A_k x_k^2/2
    (A_k >= 1 at the bottom, >= 2 above, with couplings of size <= 1/2 .. 1), so the bottom
    level is strongly convex everywhere and the reduced objectives above are strongly
    convex on the region the tests visit. The couplings are transcendental (tanh, sin, exp
    of cross terms), so the best responses are curved (D^2 y != 0) and the upper objectives
    depend on the lower variables with non-zero gradient: the curvature terms of Lemma 3.2
    are present.
    """
    rng = random.Random(5003 + 104729 * seed + n)
    xs = sp.symbols(f"x1:{n + 1}")
    r = lambda c: _pick(rng, c)  # noqa: E731
    if n == 3:
        x1, x2, x3 = xs
        f3 = (
            x3**4 / 4
            + r(["1", "3/2", "2"]) * x3**2 / 2
            - x3 * sp.tanh(x1 + r(["1", "3/2", "-1"]) * x2)
            + r(["1/2", "-1/2", "3/4"]) * x3 * sp.sin(x2)
            + r(["1/3", "-1/4", "1/2"]) * x1 * x3
        )
        f2 = (
            x2**4 / 4
            + r(["2", "5/2", "3"]) * (x2 - r(["1/2", "-1", "1"]) * x1) ** 2 / 2
            + r(["1/2", "-1/2", "3/4"]) * x2 * x3
            + r(["1/2", "1/3", "-1/4"]) * sp.exp(x1 * x3 / 2)
            + r(["1/2", "1"]) * x3**2
        )
        f1 = (
            (x1 - r(["1", "1/2", "-1/2"])) ** 2 / 2
            + (x2 - r(["1", "-1/2"])) ** 2
            + r(["1", "-1", "3/4"]) * sp.sin(x2 + 2 * x3)
            + r(["1/2", "1"]) * x3**2
        )
        objectives = [f1, f2, f3]
    elif n == 4:
        x1, x2, x3, x4 = xs
        f4 = (
            x4**4 / 4
            + r(["1", "3/2", "2"]) * x4**2 / 2
            - x4 * sp.tanh(x2 + r(["1", "-1", "3/2"]) * x3)
            + r(["1/2", "-1/2"]) * x4 * sp.sin(x1 + x3)
            + r(["1/4", "-1/3"]) * x1 * x4
        )
        f3 = (
            x3**4 / 4
            + r(["2", "5/2", "3"]) * (x3 - r(["1/2", "-1/2"]) * x2) ** 2 / 2
            + r(["1/2", "-1/2", "3/4"]) * x3 * x4
            + r(["1/3", "-1/4"]) * sp.exp(x1 * x4 / 2)
            - x3 * sp.tanh(x1 - x2) / 2
            + r(["1/2", "1"]) * x4**2
        )
        f2 = (
            x2**4 / 4
            + r(["2", "5/2", "3"]) * (x2 - r(["1/2", "1", "-1"]) * x1) ** 2 / 2
            + r(["1/2", "-1/2"]) * x2 * x3
            + r(["1/2", "-1/2", "1/3"]) * sp.sin(x3 + x4)
            + r(["1/2", "1"]) * x4**2
            + x3**2 / 2
        )
        f1 = (
            (x1 - r(["1", "1/2", "-1/2"])) ** 2 / 2
            + x2**2 / 2
            + r(["1", "-1", "3/4"]) * sp.cos(x2 + x3)
            + x4**2 / 2
            + r(["1/2", "-1/2"]) * x3 * x4
        )
        objectives = [f1, f2, f3, f4]
    else:
        raise ValueError(f"nonquadratic family defined for n = 3, 4 only, got {n}")
    blocks = [(x,) for x in xs]
    return blocks, objectives


def nonquadratic_problem(n: int, seed: int):
    """(MultilevelProblem, blocks, objectives): the scalar non-quadratic family."""
    blocks, objectives = nonquadratic_objectives(n, seed)
    return build_problem(blocks, objectives), blocks, objectives


def nonquadratic_vector_objectives(seed: int):
    """A trilevel problem with blocks of sizes (1, 2, 2): x1, u = x2 in R^2, v = x3 in R^2.

    f3 = sum v_i^4/4 + v^T A3 v/2 - v_0 tanh(x1 + u_0) - v_1 sin(u_1 + x1/2) + b v_0 u_1
    (A3 positive definite, so strongly convex in v); f2 is quartic plus a positive definite
    quadratic in u with exp / bilinear couplings to v; f1 is smooth and depends on u, v.
    """
    rng = random.Random(7001 + 15485863 * seed)
    r = lambda c: _pick(rng, c)  # noqa: E731
    x1 = sp.Symbol("x1")
    u = block_symbols(2, 2)
    v = block_symbols(3, 2)
    a3 = sp.Matrix([[r(["2", "3"]), r(["1/2", "-1/2"])], [0, r(["3/2", "2"])]])
    a3[1, 0] = a3[0, 1]
    a2 = sp.Matrix([[r(["3", "4"]), r(["1", "-1/2"])], [0, r(["3", "7/2"])]])
    a2[1, 0] = a2[0, 1]
    vv, uu = sp.Matrix(v), sp.Matrix(u)
    s = sp.Matrix([r(["1", "1/2"]), r(["-1", "-1/2"])])
    f3 = (
        sum(vi**4 for vi in v) / 4
        + (vv.T * a3 * vv)[0, 0] / 2
        - v[0] * sp.tanh(x1 + u[0])
        - v[1] * sp.sin(u[1] + x1 / 2)
        + r(["1/2", "-1/2"]) * v[0] * u[1]
    )
    du = uu - s * x1
    f2 = (
        sum(ui**4 for ui in u) / 4
        + (du.T * a2 * du)[0, 0] / 2
        + r(["1/2", "-1/2"]) * u[0] * v[1]
        + r(["1/3", "-1/4"]) * sp.exp((v[0] + u[1]) / 2)
        + (v[0] ** 2 + v[1] ** 2) / 2
    )
    f1 = (
        (x1 - r(["1", "1/2"])) ** 2 / 2
        + (u[0] ** 2 + u[1] ** 2) / 2
        + r(["1", "-1", "3/4"]) * sp.sin(u[0] + v[1])
        + v[0] * v[1] / 2
        + v[0] ** 2
    )
    blocks = [(x1,), u, v]
    return blocks, [f1, f2, f3]


def nonquadratic_vector_problem(seed: int):
    """(MultilevelProblem, blocks, objectives): the (1, 2, 2) non-quadratic trilevel."""
    blocks, objectives = nonquadratic_vector_objectives(seed)
    return build_problem(blocks, objectives), blocks, objectives


# ----------------------------------------------------------------------------- mpmath


class MPReferenceError(RuntimeError):
    """The high-precision reference itself failed (no convergence, not a minimum)."""


def _to_mpf(value):
    if isinstance(value, sp.Rational):
        return mpmath.mpf(int(value.p)) / int(value.q)
    if isinstance(value, sp.Expr):
        return mpmath.mpf(sp.N(value, mpmath.mp.dps + 10))
    return mpmath.mpf(value)


def _norm(vec):
    return max((abs(c) for c in vec), default=mpmath.mpf(0))


class MPNested:
    """Nested high-precision solve of a multilevel problem, from its definition.

    Levels are 1-based. ``solve_from(k, prefix)`` returns the nested solution
    [x_k*, ..., x_n*] (lists of mpf) for the blocks above, ``prefix`` = [x_1, .., x_k-1].
    ``reduced_objective(k, upto)`` is F_k(x_<=k). All at the current mpmath precision
    (``mpmath.diff`` raises it for the evaluations inside a derivative).
    """

    def __init__(self, blocks, objectives):
        self.blocks = [tuple(b) for b in blocks]
        self.n = len(self.blocks)
        self.sizes = [len(b) for b in self.blocks]
        variables = [s for b in self.blocks for s in b]
        self._f = [sp.lambdify(variables, f, modules="mpmath") for f in objectives]
        bottom = self.blocks[-1]
        gradient = [sp.diff(objectives[-1], s) for s in bottom]
        hessian = [[sp.diff(g, s) for s in bottom] for g in gradient]
        self._gn = sp.lambdify(variables, gradient, modules="mpmath")
        self._hn = sp.lambdify(variables, hessian, modules="mpmath")
        # warm starts, one per lower level (mpmath.diff evaluates at neighbouring points)
        self._warm = {k: [mpmath.mpf(0)] * self.sizes[k - 1] for k in range(2, self.n + 1)}
        self.max_iterations = 100

    @staticmethod
    def _flat(blocks):
        return [c for b in blocks for c in b]

    # ------------------------------------------------------------------ reduced F_k
    def reduced_objective(self, k: int, upto) -> mpmath.mpf:
        """F_k(x_<=k) = f_k(x_<=k, nested solution of the levels below)."""
        lower = self.solve_from(k + 1, upto) if k < self.n else []
        return self._f[k - 1](*self._flat(list(upto) + lower))

    def reduced_gradient(self, k: int, upto):
        """D_k F_k by mpmath.diff (central differences at doubled precision)."""
        if k == self.n:
            return list(self._gn(*self._flat(upto)))
        prefix, own = list(upto[:-1]), list(upto[-1])
        gradient = []
        for i in range(len(own)):

            def phi(t, i=i):
                trial = list(own)
                trial[i] = t
                return self.reduced_objective(k, prefix + [trial])

            gradient.append(mpmath.diff(phi, own[i]))
        return gradient

    def reduced_hessian(self, k: int, upto):
        """D_kk F_k: analytic at the bottom, forward differences of the gradient above."""
        if k == self.n:
            return mpmath.matrix(self._hn(*self._flat(upto)))
        return self._fd_jacobian(k, list(upto[:-1]), list(upto[-1]),
                                 self.reduced_gradient(k, upto))

    def _fd_jacobian(self, k, prefix, own, gradient):
        d = len(own)
        jac = mpmath.matrix(d, d)
        for i in range(d):
            h = mpmath.sqrt(mpmath.mp.eps) * max(1, abs(own[i]))
            trial = list(own)
            trial[i] = own[i] + h
            shifted = self.reduced_gradient(k, prefix + [trial])
            for r_ in range(d):
                jac[r_, i] = (shifted[r_] - gradient[r_]) / h
        return jac

    # ------------------------------------------------------------------ nested solve
    def solve_from(self, k: int, prefix):
        """[x_k*, .., x_n*] for the blocks above fixed (Newton on D_k F_k, damped on its norm)."""
        prefix = [list(b) for b in prefix]
        x = [mpmath.mpf(c) for c in self._warm[k]]
        tol = mpmath.mp.eps * 2**12
        if k == self.n:
            jacobian = lambda x_, g_: mpmath.matrix(self._hn(*self._flat(prefix + [x_])))  # noqa: E731
        else:
            jacobian = lambda x_, g_: self._fd_jacobian(k, prefix, x_, g_)  # noqa: E731
        g = self.reduced_gradient(k, prefix + [x])
        for _ in range(self.max_iterations):
            jac = jacobian(x, g)
            step = mpmath.lu_solve(jac, mpmath.matrix([-c for c in g]))
            step = [step[i] for i in range(len(x))]
            if _norm(step) <= tol * max(1, _norm(x)):
                x = [a + b for a, b in zip(x, step, strict=True)]
                break
            t = mpmath.mpf(1)
            g_norm = _norm(g)
            for _ in range(60):
                trial = [a + t * b for a, b in zip(x, step, strict=True)]
                g_trial = self.reduced_gradient(k, prefix + [trial])
                if _norm(g_trial) < g_norm:
                    break
                t /= 2
            else:
                raise MPReferenceError(f"level {k}: damped Newton stalled at |g| = {g_norm}")
            x, g = trial, g_trial
        else:
            raise MPReferenceError(f"level {k}: no convergence in {self.max_iterations} steps")
        self._warm[k] = x
        lower = self.solve_from(k + 1, prefix + [x]) if k < self.n else []
        return [x] + lower

    def check_minimum(self, k: int, upto) -> mpmath.mpf:
        """Smallest eigenvalue of the (symmetrised) reduced Hessian; must be > 0."""
        h = self.reduced_hessian(k, upto)
        sym = (h + h.T) / 2
        return min(mpmath.eigsy(sym)[0])

    # ------------------------------------------------------------------ derivatives
    def hypergradient(self, x1):
        """dF_1/dx_1 by mpmath.diff of the nested-solved F_1."""
        x1 = [_to_mpf(c) for c in x1]
        gradient = []
        for i in range(len(x1)):

            def phi(t, i=i):
                trial = list(x1)
                trial[i] = t
                return self.reduced_objective(1, [trial])

            gradient.append(mpmath.diff(phi, x1[i]))
        return gradient

    def best_response_jacobian(self, k: int, j: int, prefix):
        """D_j y_k at x_<k = prefix, by mpmath.diff of the nested solve y_k(x_<k)."""
        prefix = [[_to_mpf(c) for c in b] for b in prefix]
        jac = mpmath.matrix(self.sizes[k - 1], self.sizes[j - 1])
        for c in range(self.sizes[j - 1]):
            for r_ in range(self.sizes[k - 1]):

                def phi(t, c=c, r_=r_):
                    trial = [list(b) for b in prefix]
                    trial[j - 1][c] = t
                    return self.solve_from(k, trial)[0][r_]

                jac[r_, c] = mpmath.diff(phi, prefix[j - 1][c])
        return jac


def _as_x1_list(x1, d1):
    if isinstance(x1, (list, tuple)):
        values = list(x1)
    elif isinstance(x1, sp.MatrixBase):
        values = list(x1)
    else:
        values = [x1]
    assert len(values) == d1, (values, d1)
    return values


def mp_hypergradient(blocks, objectives, x1, dps: int = 40):
    """High-precision reference hypergradient at x1: a list of mpf (at ``dps`` digits)."""
    with mpmath.workdps(dps):
        ref = MPNested(blocks, objectives)
        values = ref.hypergradient(_as_x1_list(x1, len(blocks[0])))
        return [+v for v in values]


def mp_lower_solution(blocks, objectives, x1, dps: int = 40):
    """x_2*..x_n* at x1 (lists of mpf), by the nested mpmath solve; also checks minimality.

    Returns (solution, min_eigenvalues): the smallest eigenvalue of each reduced Hessian
    D_kk F_k at the solution (all must be positive for a strict local minimum).
    """
    with mpmath.workdps(dps):
        ref = MPNested(blocks, objectives)
        x1 = [_to_mpf(c) for c in _as_x1_list(x1, len(blocks[0]))]
        solution = ref.solve_from(2, [x1])
        full = [x1] + solution
        eigen = [ref.check_minimum(k, full[:k]) for k in range(2, ref.n + 1)]
        return solution, eigen


def mp_best_response_jacobian(blocks, objectives, k: int, j: int, prefix, dps: int = 40):
    """D_j y_k at x_<k = prefix (lists per block), and the nested solution [x_k*..x_n*]."""
    with mpmath.workdps(dps):
        ref = MPNested(blocks, objectives)
        prefix = [[_to_mpf(c) for c in b] for b in prefix]
        solution = ref.solve_from(k, prefix)
        jac = ref.best_response_jacobian(k, j, prefix)
        return jac, solution
