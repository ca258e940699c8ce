"""The one nested driver (`mlverify.nested.solve`) behind its contract (`nested.Levels`).

A backend written here by hand, in NumPy, for problems whose reduced gradients and Hessians
are closed forms, drives the same solver as the symbolic and JAX backends: it must land on
the closed-form solution and fail with the errors naming the level. Both library backends
then take the same steps on a seeded non-quadratic problem.
"""

import numpy as np
import pytest

from mlverify import nested, zoo
from mlverify.errors import ConvergenceError, UnboundedLevelError


class Trilevel:
    r"""$f_3 = \tfrac14 (x_3 - a x_2)^4 + \tfrac12 c (x_3 - a x_2)^2$ (best response
    $x_3^* = a x_2$), $f_2 = \tfrac12 (x_2 - x_1)^2 + \tfrac12 b\, x_3^2$, so
    $F_2 = \tfrac12 (x_2 - x_1)^2 + \tfrac12 b a^2 x_2^2$ with minimiser
    $x_2^* = x_1 / (1 + b a^2)$; scalar blocks. ``c < 0`` makes level 3 non-convex at its
    solution, ``unbounded`` replaces $f_3$ by $-x_3^2$."""

    n = 3

    def __init__(self, a=2.0, b=0.5, c=1.0, unbounded=False):
        self.a, self.b, self.c, self.unbounded = a, b, c, unbounded

    def objective(self, k, blocks):
        x1, x2, x3 = (float(b[0]) for b in blocks)
        if k == 2:
            if self.unbounded:
                return -(x3**2)
            e = x3 - self.a * x2
            return e**4 / 4 + self.c * e**2 / 2
        if k == 1:
            return 0.5 * (x2 - x1) ** 2 + 0.5 * self.b * x3**2
        raise AssertionError("level 1 is not solved")

    def step(self, k, blocks, method):
        x1, x2, x3 = (float(b[0]) for b in blocks)
        if k == 2:
            if self.unbounded:
                g, h = -2 * x3, -2.0
            else:
                e = x3 - self.a * x2
                g, h = e**3 + self.c * e, 3 * e**2 + self.c
        else:  # F_2 with x_3 = a x_2 (its best response: exact once level 3 is solved)
            g = (x2 - x1) + self.b * self.a**2 * x2
            h = 1 + self.b * self.a**2
        return nested.newton_step(np.array([g]), np.array([[h]]), blocks[k], method)

    def check_level(self, k, blocks):
        h = self.step(k, blocks, "newton").hessian
        from mlverify.checks import check_lower_hessian

        check_lower_hessian(h, k + 1)

    def diagnose_below(self, k, blocks):
        for m in range(self.n - 1, k, -1):
            self.check_level(m, blocks)


def _blocks(x1, x2=0.0, x3=0.0):
    return [np.array([x1]), np.array([x2]), np.array([x3])]


@pytest.mark.parametrize("x1", [-3.0, 0.2, 7.5])
def test_a_hand_written_backend_lands_on_the_closed_form(x1):
    levels = Trilevel()
    blocks = _blocks(x1, 1.0, -1.0)
    residuals, distances, iterations = nested.solve(levels, blocks, 1e-12, 100)
    x2 = x1 / (1 + levels.b * levels.a**2)
    np.testing.assert_allclose(blocks[1], [x2], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(blocks[2], [levels.a * x2], rtol=1e-10, atol=1e-12)
    assert len(residuals) == len(distances) == 2
    assert all(d <= 1e-12 * (1 + 10) for d in distances)
    assert iterations > 0
    # F_2 at the solution, through the driver's own re-solve of the level below
    value = nested.reduced_value(levels, 1, [b.copy() for b in blocks], 1e-12, 100)
    assert value == pytest.approx(0.5 * (x2 - x1) ** 2 + 0.5 * levels.b * (levels.a * x2) ** 2,
                                  rel=1e-12, abs=1e-15)


def test_the_errors_name_the_level_at_fault():
    with pytest.raises(UnboundedLevelError) as info:
        nested.solve(Trilevel(unbounded=True), _blocks(0.3, 0.0, 1.0), 1e-12, 100)
    assert info.value.level == 3
    # f_3 = e^4/4 - e^2/2 has minimisers e = +-1 where f_3'' = 2 > 0, and a maximum at e = 0:
    # from e = 0 exactly the driver leaves the maximum (negative curvature) and solves
    blocks = _blocks(0.0, 0.0, 0.0)
    nested.solve(Trilevel(c=-1.0), blocks, 1e-12, 100)
    assert abs(abs(float(blocks[2][0] - 2.0 * blocks[1][0])) - 1.0) < 1e-12
    # too few steps: ConvergenceError naming the level that stopped short
    with pytest.raises(ConvergenceError) as info:
        nested.solve(Trilevel(), _blocks(50.0, 0.0, 30.0), 1e-12, 2)
    assert info.value.level in (2, 3)


def test_a_refinement_sweep_takes_one_step_per_level_and_raises_nothing():
    levels = Trilevel()
    x2 = 0.7 / (1 + levels.b * levels.a**2)
    blocks = _blocks(0.7, x2 + 1e-3, levels.a * x2 - 1e-3)
    residuals, distances, iterations = nested.solve(levels, blocks, 0.0, 1, strict=False)
    assert residuals == distances == []
    # level 2's Newton step is exact (F_2 is quadratic once level 3 is solved)
    np.testing.assert_allclose(blocks[1], [x2], rtol=1e-12)
    assert abs(float(blocks[2][0]) - levels.a * x2) < 1e-3
    # and an unbounded level only stops short there, without an error
    nested.solve(Trilevel(unbounded=True), _blocks(0.3, 0.0, 1.0), 0.0, 1, strict=False)


@pytest.mark.parametrize(("n", "size", "seed"), [(3, 2, 0), (3, 1, 5), (4, 1, 3)])
def test_both_backends_drive_the_one_solver_to_the_same_point(n, size, seed):
    """The symbolic evaluator and the JAX core as `nested.Levels`: the same point, and at 3
    levels the same steps (same count). At 4 levels the nested solve's count follows
    rounding: moving x_1 by 1e-15 (relative) changes the symbolic backend's count on seeds
    0, 1 and 2 of this family (256 against 77 steps on seed 0), so there the count is not a
    property of the mathematics, and the backends round differently."""
    from mlverify.numeric.solvers import _Levels

    problem = zoo.nonquadratic(n, size, seed=seed)
    x1 = np.random.default_rng(seed).uniform(-1, 1, size)
    symbolic = [x1] + [np.zeros(size) for _ in range(n - 1)]
    jax_blocks = [b.copy() for b in symbolic]
    _, d_sym, steps_sym = nested.solve(problem.numeric(), symbolic, 1e-12, 100)
    _, d_jax, steps_jax = nested.solve(_Levels(problem.lower()), jax_blocks, 1e-12, 100)
    for a, b in zip(symbolic[1:], jax_blocks[1:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
    if n == 3:
        assert steps_sym == steps_jax
    assert max(d_sym) <= 1e-11 and max(d_jax) <= 1e-11


def test_the_nested_solves_count_at_four_levels_follows_rounding():
    """Why the test above compares counts at 3 levels only: at 4 levels a 1e-15 relative
    move of x_1 changes the count of the same backend, the point it reaches staying put."""
    problem = zoo.nonquadratic(4, 1, seed=0).numeric()
    x1 = np.random.default_rng(0).uniform(-1, 1, 1)
    runs = []
    for eps in (0.0, 1e-15):
        blocks = [x1 * (1 + eps)] + [np.zeros(1) for _ in range(3)]
        _, _, steps = nested.solve(problem, blocks, 1e-12, 100)
        runs.append((steps, blocks))
    (a, blocks_a), (b, blocks_b) = runs
    assert a != b
    for u, v in zip(blocks_a[1:], blocks_b[1:], strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)
