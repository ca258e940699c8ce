"""Edge-of-assumption problems (non-unique, nearly and exactly degenerate, unbounded and
NaN-producing lower levels) with answers derived independently of mlverify.

Like :mod:`reference`, nothing here calls mlverify's derivation code; mlverify is used only
to build the :class:`mlverify.MultilevelProblem` under test from the same objectives.

Each problem has one *bad* level k (1-based): the level that is non-unique or degenerate.
Its minimisers are known in closed form, one per *branch*, as functions of the blocks above
(x_<k) only. A branch is a well-posed multilevel problem: the levels above see level k only
through its best response, so on a branch the nested problem is the original one with
x_k* := the branch's minimiser. Every test problem is built so that the other lower levels'
reduced objectives are quadratic in their own block once the branch is substituted; each
branch then has two independent answers:

* ``closed_form``: bottom-up, substitute the branch minimiser at level k and solve the other
  levels' stationarity exactly with ``sp.linsolve`` (as :func:`reference.
  quadratic_closed_form_hypergradient` does); differentiate F_1(x_1) with sympy.
* ``mp_branch``: :class:`reference.MPNested` (nested Newton + ``mpmath.diff`` at 40 digits)
  on the branch problem in which f_k is replaced by |x_k - b(x_<k)|^2 / 2, a strictly convex
  objective with the same unique minimiser b: the levels above are unchanged and see the
  same best response, so the hypergradient is the branch's.

:func:`self_check` compares the two (and checks that every closed-form minimiser is a
stationary point and a minimiser of the original f_k, and that the branches differ).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mpmath
import sympy as sp
from reference import MPNested, _to_mpf, build_problem


@dataclass(frozen=True)
class Branch:
    """One closed-form minimiser of the bad level: ``minimiser`` is a column Matrix of
    expressions in the blocks above the bad level."""

    name: str
    minimiser: sp.Matrix


@dataclass
class EdgeProblem:
    """A problem whose level ``bad_level`` is non-unique or degenerate, with its branches.

    ``unique``: the bad level has one minimiser (degenerate but unique), else several.
    ``points``: x_1 values (floats, as lists) where the problem is meant to be tested, by
    kind (``"nonunique"``, ``"near"``, ``"exact"``: exactly degenerate there).
    ``inits``: warm starts (lists of blocks for levels 2..n) steering the solver.
    """

    name: str
    blocks: list
    objectives: list
    bad_level: int
    branches: list
    unique: bool = False
    points: dict = field(default_factory=dict)
    inits: list = field(default_factory=lambda: [None])
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return len(self.blocks)

    @property
    def sizes(self) -> tuple:
        return tuple(len(b) for b in self.blocks)

    def problem(self, scale=None):
        """The MultilevelProblem; ``scale`` = (k, factor) multiplies f_k by factor."""
        objectives = list(self.objectives)
        if scale is not None:
            k, factor = scale
            objectives[k - 1] = factor * objectives[k - 1]
        return build_problem(self.blocks, objectives)

    # ------------------------------------------------------------------ closed form
    def closed_form(self, branch: Branch):
        """(manifold, hypergradient): ``manifold`` maps every lower symbol to its branch
        solution as an expression in x_1; ``hypergradient`` is dF_1/dx_1 (column Matrix)."""
        key = ("closed", branch.name)
        if key in self._cache:
            return self._cache[key]
        below: dict = {}
        for k in range(self.n, 1, -1):
            own = self.blocks[k - 1]
            if k == self.bad_level:
                solution = [sp.sympify(e) for e in branch.minimiser]
            else:
                fk = sp.expand(self.objectives[k - 1].xreplace(below))
                stationarity = [sp.expand(sp.diff(fk, s)) for s in own]
                for eq in stationarity:
                    assert sp.Poly(eq, *own).total_degree() <= 1, (self.name, k, "not quadratic")
                solutions = sp.linsolve(stationarity, list(own))
                assert len(solutions) == 1, (self.name, k)
                (solution,) = solutions
                solution = list(solution)
                assert not any(e.free_symbols & set(own) for e in solution), (self.name, k)
            ysub = dict(zip(own, solution, strict=True))
            below = {**ysub, **{s: e.xreplace(ysub) for s, e in below.items()}}
        upper = set(self.blocks[0])
        assert all(e.free_symbols <= upper for e in below.values()), self.name
        f1 = self.objectives[0].xreplace(below)
        hypergradient = sp.Matrix([sp.diff(f1, s) for s in self.blocks[0]])
        self._cache[key] = (below, hypergradient)
        return below, hypergradient

    def branch_solution(self, branch: Branch, x1, dps: int = 40):
        """Levels 2..n of the branch at x1: a list of lists of mpf (closed form, ``dps``)."""
        manifold, _ = self.closed_form(branch)
        sub = dict(zip(self.blocks[0], [sp.nsimplify(v) for v in x1], strict=True))
        with mpmath.workdps(dps):
            return [[_to_mpf(manifold[s].xreplace(sub)) for s in b] for b in self.blocks[1:]]

    def branch_hypergradient(self, branch: Branch, x1, dps: int = 40):
        """The branch's dF_1/dx_1 at x1 (list of mpf), from the sympy closed form."""
        _, hypergradient = self.closed_form(branch)
        sub = dict(zip(self.blocks[0], [sp.nsimplify(v) for v in x1], strict=True))
        with mpmath.workdps(dps):
            return [_to_mpf(e.xreplace(sub)) for e in hypergradient]

    # ------------------------------------------------------------------ second method
    def branch_objectives(self, branch: Branch):
        """The objectives with f_k replaced by |x_k - b(x_<k)|^2 / 2 (same best response)."""
        objectives = list(self.objectives)
        own = self.blocks[self.bad_level - 1]
        objectives[self.bad_level - 1] = sum(
            (s - b) ** 2 for s, b in zip(own, branch.minimiser, strict=True)
        ) / 2
        return objectives

    def mp_branch(self, branch: Branch, x1, dps: int = 40):
        """(lower solution, hypergradient) of the branch at x1 by MPNested (mpmath.diff)."""
        with mpmath.workdps(dps):
            ref = MPNested(self.blocks, self.branch_objectives(branch))
            x1m = [_to_mpf(sp.nsimplify(v)) for v in x1]
            solution = ref.solve_from(2, [x1m])
            gradient = ref.hypergradient(x1m)
            return [[+c for c in b] for b in solution], [+g for g in gradient]


def _bad_level_checks(problem: EdgeProblem, x1) -> None:
    """Every branch minimiser is stationary for the original f_k at the branch's own point,
    the f_k Hessian there is positive semi-definite, and the values of f_k agree when the
    problem is non-unique (all branches global)."""
    k = problem.bad_level
    own = problem.blocks[k - 1]
    values = []
    for branch in problem.branches:
        manifold, _ = problem.closed_form(branch)
        sub = dict(zip(problem.blocks[0], [sp.nsimplify(v) for v in x1], strict=True))
        point = {s: manifold[s].xreplace(sub) for s in manifold}
        point.update(sub)
        fk = problem.objectives[k - 1]
        # f_k may depend on the levels below k only in the problems where they are declared
        # below; the bad levels here never do (their F_k is f_k).
        assert not (fk.free_symbols & {s for b in problem.blocks[k:] for s in b}), problem.name
        gradient = [sp.nsimplify(sp.diff(fk, s).xreplace(point)) for s in own]
        assert all(sp.simplify(g) == 0 for g in gradient), (problem.name, branch.name, gradient)
        hessian = sp.Matrix([[sp.diff(fk, a, b) for b in own] for a in own]).xreplace(point)
        eigen = [complex(sp.N(e, 30)).real for e in hessian.eigenvals(multiple=True)]
        assert min(eigen) >= -1e-25, (problem.name, branch.name, eigen)
        values.append(sp.N(fk.xreplace(point), 30))
    if not problem.unique:
        assert max(abs(v - values[0]) for v in values) < 1e-25, (problem.name, values)


def self_check(problem: EdgeProblem, x1, rtol: float = 1e-25, distinct: bool = True) -> None:
    """The closed form and the MPNested branch solve agree (lower solution and
    hypergradient) to ``rtol`` on every branch at x1, each closed-form minimiser is a
    stationary point and a minimiser of f_k, and (when ``distinct`` and not ``unique``) the
    branches' hypergradients differ by more than 1e-3."""
    hypergradients = []
    for branch in problem.branches:
        with mpmath.workdps(40):
            closed_sol = problem.branch_solution(branch, x1)
            closed_grad = problem.branch_hypergradient(branch, x1)
            mp_sol, mp_grad = problem.mp_branch(branch, x1)
            for a, b in zip(closed_sol, mp_sol, strict=True):
                for u, v in zip(a, b, strict=True):
                    assert abs(u - v) <= rtol * max(1, abs(u)), (problem.name, branch.name, u, v)
            scale = max(1, max(abs(g) for g in closed_grad))
            for u, v in zip(closed_grad, mp_grad, strict=True):
                assert abs(u - v) <= rtol * scale, (problem.name, branch.name, u, v)
        hypergradients.append(closed_grad)
    _bad_level_checks(problem, x1)
    if distinct and not problem.unique:
        first = hypergradients[0]
        assert any(
            max(abs(u - v) for u, v in zip(first, other, strict=True)) > 1e-3
            for other in hypergradients[1:]
        ), (problem.name, "branches must have different hypergradients")


# =============================================================================== problems
def _common_upper(x, y, z):
    """f_1, f_2 shared by the scalar trilevel problems below (f_2 quadratic in y once a
    z(x, y) affine in y is substituted)."""
    f1 = (x - 1) ** 2 / 2 + y**2 / 2 + z**2 + x * z
    f2 = (y - x) ** 2 / 2 + y * z / 2
    return f1, f2


def product_wells() -> EdgeProblem:
    """f_3 = z^2 (z - x - y)^2 / 2: global minimisers z = 0 and z = x + y (value 0),
    H_3 = (x + y)^2 at both, so level 3 is degenerate at x + y = 0 (f_3 = z^4 / 2).
    Branch z = 0: y = x. Branch z = x + y: y = x / 4, z = 5 x / 4. At x = 0 both branches
    meet (x + y = 0)."""
    x, y, z = sp.symbols("x y z")
    f1, f2 = _common_upper(x, y, z)
    f3 = z**2 * (z - x - y) ** 2 / 2
    return EdgeProblem(
        "product_wells",
        [(x,), (y,), (z,)],
        [f1, f2, f3],
        bad_level=3,
        branches=[Branch("z=0", sp.Matrix([0])), Branch("z=x+y", sp.Matrix([x + y]))],
        points={"nonunique": [[0.8], [-0.6]], "near": [[1e-3], [1e-4]], "exact": [[0.0]]},
        inits=[None, [[0.3], [0.9]], [[-0.2], [-0.7]]],
    )


def double_well() -> EdgeProblem:
    """f_3 = (1 + y^2) (z^2 - a^2)^2 / 4, a = 1 + x^2 / 2 >= 1: minimisers z = +-a (value 0),
    each with H_3 = 2 a^2 (1 + y^2) > 0: two well-conditioned global minimisers."""
    x, y, z = sp.symbols("x y z")
    a = 1 + x**2 / 2
    f3 = (1 + y**2) * (z**2 - a**2) ** 2 / 4
    f2 = (y - x) ** 2 / 2 + y * z
    f1 = (x - sp.Rational(1, 2)) ** 2 / 2 + y**2 + sp.sin(z) + x * z / 2
    return EdgeProblem(
        "double_well",
        [(x,), (y,), (z,)],
        [f1, f2, f3],
        bad_level=3,
        branches=[Branch("z=+a", sp.Matrix([a])), Branch("z=-a", sp.Matrix([-a]))],
        points={"nonunique": [[0.3], [-0.7]]},
        inits=[None, [[0.5], [0.8]], [[-0.5], [-1.2]]],
    )


def vector_wells() -> EdgeProblem:
    """Blocks (1, 1, 2): f_3 = (w0^2 - a^2)^2 / 4 + (w1 - w0 / 2 - y)^2 / 2, a = 1 + x^2 / 4:
    minimisers w = (+-a, +-a / 2 + y), both with value 0 and a positive definite H_3."""
    x, y = sp.symbols("x y")
    w0, w1 = sp.symbols("w0 w1")
    a = 1 + x**2 / 4
    half = sp.Rational(1, 2)
    f3 = (w0**2 - a**2) ** 2 / 4 + (w1 - half * w0 - y) ** 2 / 2
    f2 = (y - x) ** 2 / 2 + y * w0 / 2 + w1**2 / 4
    f1 = (x + half) ** 2 / 2 + y**2 / 2 + sp.cos(w0) + w1**2 / 2 + x * w0
    return EdgeProblem(
        "vector_wells",
        [(x,), (y,), (w0, w1)],
        [f1, f2, f3],
        bad_level=3,
        branches=[
            Branch("w0=+a", sp.Matrix([a, half * a + y])),
            Branch("w0=-a", sp.Matrix([-a, -half * a + y])),
        ],
        points={"nonunique": [[0.4], [-0.5]]},
        inits=[None, [[0.2], [0.9, 0.6]], [[-0.3], [-1.1, -0.4]]],
    )


def four_level_bottom_wells() -> EdgeProblem:
    """n = 4, level 4 non-unique: f_4 = (x4^2 - b^2)^2 / 4, b = 1 + x1^2 / 2: x4 = +-b."""
    x1, x2, x3, x4 = sp.symbols("x1:5")
    b = 1 + x1**2 / 2
    f4 = (x4**2 - b**2) ** 2 / 4
    f3 = (x3 - x2) ** 2 / 2 + x3 * x4 / 2
    f2 = (x2 - x1) ** 2 / 2 + x2 * x3 / 4 + x4**2
    f1 = (x1 - sp.Rational(1, 2)) ** 2 / 2 + x2**2 + x3 * x4 + x4
    return EdgeProblem(
        "four_level_bottom_wells",
        [(x1,), (x2,), (x3,), (x4,)],
        [f1, f2, f3, f4],
        bad_level=4,
        branches=[Branch("x4=+b", sp.Matrix([b])), Branch("x4=-b", sp.Matrix([-b]))],
        points={"nonunique": [[0.3]]},
        inits=[None, [[0.1], [0.1], [0.9]], [[0.1], [0.1], [-0.9]]],
    )


def four_level_middle_wells() -> EdgeProblem:
    """n = 4, level 3 non-unique: f_3 = (1 + x2^2 / 2) (x3^2 - b^2)^2 / 4, b = 1 + x1^2 / 2
    (F_3 = f_3: it does not depend on x4), x3 = +-b; level 4 unique below it."""
    x1, x2, x3, x4 = sp.symbols("x1:5")
    b = 1 + x1**2 / 2
    f4 = (x4 - x3 - x2) ** 2 / 2 + x4**2 / 2
    f3 = (1 + x2**2 / 2) * (x3**2 - b**2) ** 2 / 4
    f2 = (x2 - x1) ** 2 / 2 + x2 * x3 / 2 + x4**2 / 2
    f1 = (x1 - sp.Rational(1, 2)) ** 2 / 2 + x2**2 / 2 + x3 + x4**2
    return EdgeProblem(
        "four_level_middle_wells",
        [(x1,), (x2,), (x3,), (x4,)],
        [f1, f2, f3, f4],
        bad_level=3,
        branches=[Branch("x3=+b", sp.Matrix([b])), Branch("x3=-b", sp.Matrix([-b]))],
        points={"nonunique": [[0.2]]},
        inits=[None, [[0.1], [0.9], [0.5]], [[0.1], [-0.9], [-0.5]]],
    )


def quartic_contact(power: int) -> EdgeProblem:
    """Unique but degenerate: f_3 = x^p (z - y)^2 / 2 + (z - y)^4 / 4, minimiser z = y for
    every x >= 0, H_3 = x^p (zero at x = 0: f_3 = (z - y)^4 / 4, a 1x1 zero Hessian)."""
    x, y, z = sp.symbols("x y z")
    f1, f2 = _common_upper(x, y, z)
    f3 = x**power * (z - y) ** 2 / 2 + (z - y) ** 4 / 4
    near = [[1e-3], [1e-4]] if power == 2 else [[1e-2], [1e-3]]
    return EdgeProblem(
        f"quartic_contact_p{power}",
        [(x,), (y,), (z,)],
        [f1, f2, f3],
        bad_level=3,
        branches=[Branch("z=y", sp.Matrix([y]))],
        unique=True,
        points={"near": near, "exact": [[0.0]]},
        inits=[None, [[0.3], [0.9]]],
    )


def rank_one_block() -> EdgeProblem:
    """Blocks (1, 1, 2): f_3 = (w0 + w1 - y)^2 / 2 + x^2 (w0 - w1)^2 / 2. Unique minimiser
    w0 = w1 = y / 2 for x != 0; at x = 0 H_3 = [[1, 1], [1, 1]] has rank 1 (a line of
    minimisers); near x = 0 its smallest eigenvalue is 2 x^2."""
    x, y = sp.symbols("x y")
    w0, w1 = sp.symbols("w0 w1")
    f3 = (w0 + w1 - y) ** 2 / 2 + x**2 * (w0 - w1) ** 2 / 2
    f2 = (y - x) ** 2 / 2 + y * w0 / 2 + w1**2 / 2
    f1 = (x - 1) ** 2 / 2 + y**2 / 2 + w0**2 + x * w1
    return EdgeProblem(
        "rank_one_block",
        [(x,), (y,), (w0, w1)],
        [f1, f2, f3],
        bad_level=3,
        branches=[Branch("w=y/2", sp.Matrix([y / 2, y / 2]))],
        unique=True,
        points={"near": [[1e-3], [1e-4]], "exact": [[0.0]]},
        inits=[None, [[0.3], [0.9, -0.2]]],
    )


def four_level_contact() -> EdgeProblem:
    """n = 4, level 3 degenerate: f_3 = x1^2 (x3 - x2)^2 / 2 + (x3 - x2)^4 / 4 (F_3 = f_3),
    minimiser x3 = x2, H_3 = x1^2; levels 2 and 4 well conditioned."""
    x1, x2, x3, x4 = sp.symbols("x1:5")
    f4 = (x4 - x3) ** 2 / 2 + x4**2 / 2 + x1 * x4
    f3 = x1**2 * (x3 - x2) ** 2 / 2 + (x3 - x2) ** 4 / 4
    f2 = (x2 - x1) ** 2 / 2 + x2 * x3 / 4 + x4**2 / 2
    f1 = (x1 - 1) ** 2 / 2 + x2**2 / 2 + x3**2 + x1 * x4
    return EdgeProblem(
        "four_level_contact",
        [(x1,), (x2,), (x3,), (x4,)],
        [f1, f2, f3, f4],
        bad_level=3,
        branches=[Branch("x3=x2", sp.Matrix([x2]))],
        unique=True,
        points={"near": [[1e-3]], "exact": [[0.0]]},
        inits=[None],
    )


NONUNIQUE = [product_wells, double_well, vector_wells, four_level_bottom_wells,
             four_level_middle_wells]
DEGENERATE = [product_wells, lambda: quartic_contact(2), lambda: quartic_contact(3),
              rank_one_block, four_level_contact]


# ================================================================ problems with no answer
def no_answer_problems():
    """(name, problem, x1, init, bad level): lower levels with no minimiser at x1, where any
    number returned is wrong. Unbounded below (a concave level; log(y) -> -inf), or a
    minimum only on the boundary of the domain (sqrt(y) at y = 0, where NaN lies beyond)."""
    x, y, z = sp.symbols("x y z")
    f1, f2_common = _common_upper(x, y, z)

    def tri(f2, f3):
        return build_problem([(x,), (y,), (z,)], [f1, f2, f3])

    return [
        # F_2 = -y^2 + x y: concave, unbounded below in y.
        ("concave_level2", tri(-(y**2) + x * y, (z - y) ** 2 / 2), [0.5], None, 2),
        # F_3 = -z^2 + y z: concave at the bottom of a trilevel.
        ("concave_level3", tri(f2_common, -(z**2) + y * z), [0.5], None, 3),
        # F_2 = y^2/2 + log(y) at x = -1: -> -inf as y -> 0+, NaN for y < 0.
        ("log_level2", tri(y**2 / 2 - x * sp.log(y), (z - y) ** 2 / 2), [-1.0],
         [[1.0], [1.0]], 2),
        # F_2 = (sqrt(y) + 1/2)^2/2 at x = -1/2: infimum at the boundary y = 0 (derivative
        # infinite there), NaN for y < 0.
        ("sqrt_level2", tri((sp.sqrt(y) - x) ** 2 / 2, (z - y) ** 2 / 2), [-0.5],
         [[1.0], [1.0]], 2),
        # The same at level 3: F_3 = (sqrt(z) - y)^2 / 2 with y < 0 below.
        # Level 3 at y = x / 2 = -1/4 (f_2 does not see z): F_3 = (sqrt(z) + 1/4)^2 / 2 has
        # its infimum at the boundary z = 0, NaN for z < 0.
        ("sqrt_level3", tri((y - x) ** 2 / 2 + y**2 / 2, (sp.sqrt(z) - y) ** 2 / 2),
         [-0.5], [[-0.25], [1.0]], 3),
    ]


def log_recoverable():
    """f_2 = (log y - x)^2 / 2 (unique minimiser y = e^x), f_3 = (z - y)^2 / 2, started at
    y = 0.05 where Newton's full step leaves the domain (NaN beyond y = 0). Closed form:
    y = z = e^x, F_1 = (x - 1)^2 / 2 + e^x + e^(2x) / 2, dF_1/dx = x - 1 + e^x + e^(2x)."""
    x, y, z = sp.symbols("x y z")
    f1 = (x - 1) ** 2 / 2 + y + z**2 / 2
    f2 = (sp.log(y) - x) ** 2 / 2
    f3 = (z - y) ** 2 / 2
    problem = build_problem([(x,), (y,), (z,)], [f1, f2, f3])
    closed = x - 1 + sp.exp(x) + sp.exp(2 * x)
    return problem, [x], closed, [[0.05], [0.0]]
