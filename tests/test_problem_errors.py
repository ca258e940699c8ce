"""Bad input (SPEC section 6): each error names the level and the quantity."""

import numpy as np
import pytest
import sympy as sp

import mlverify as mv

x1, x2, x3, y = sp.symbols("x1 x2 x3 y")


def trilevel(f3=None):
    f3 = (x3 - x1 * x2) ** 2 if f3 is None else f3
    return mv.MultilevelProblem(
        [mv.Level(x1, (x1 - 1) ** 2 + x2**2 + x3**2), mv.Level(x2, (x2 - x3) ** 2 + x2**2),
         mv.Level(x3, f3)]
    )


def test_empty_and_single_level_lists():
    with pytest.raises(mv.ProblemDefinitionError, match="at least 2 levels"):
        mv.MultilevelProblem([])
    with pytest.raises(mv.ProblemDefinitionError, match="at least 2 levels"):
        mv.MultilevelProblem([mv.Level(x1, x1**2)])


def test_objective_not_depending_on_own_variable():
    with pytest.raises(mv.ProblemDefinitionError, match="own variable") as err:
        trilevel(f3=(x1 - x2) ** 2)
    assert err.value.level == 3


def test_undeclared_variable():
    with pytest.raises(mv.ProblemDefinitionError, match="undeclared symbol.*y") as err:
        trilevel(f3=(x3 - y) ** 2)
    assert err.value.level == 3


def test_variable_declared_twice():
    with pytest.raises(mv.ProblemDefinitionError, match="also in level 1") as err:
        mv.MultilevelProblem([mv.Level(x1, x1**2), mv.Level(x1, x1**2)])
    assert err.value.level == 2
    with pytest.raises(mv.ProblemDefinitionError, match="twice in this level"):
        mv.MultilevelProblem([mv.Level(x1, x1**2), mv.Level([x2, x2], x2**2)])


def test_non_scalar_objective():
    with pytest.raises(mv.ProblemDefinitionError, match="must be scalar") as err:
        mv.MultilevelProblem([mv.Level(x1, x1**2), mv.Level(x2, sp.Matrix([x2**2, x1]))])
    assert err.value.level == 2


def test_bad_variable_blocks():
    with pytest.raises(mv.ProblemDefinitionError, match="not a plain sympy Symbol"):
        mv.MultilevelProblem([mv.Level(x1, x1**2), mv.Level([x2 + 1], x2**2)])
    with pytest.raises(mv.ProblemDefinitionError, match="2x2 matrix"):
        mv.MultilevelProblem([mv.Level(x1, x1**2), mv.Level(sp.Matrix([[x2, x3], [y, x1]]), x2**2)])


def test_constant_indefinite_hessian_is_rejected_exactly():
    problem = trilevel(f3=-((x3 - x1) ** 2))
    with pytest.raises(mv.HessianError, match="indefinite everywhere") as err:
        problem.hypergradient()
    assert err.value.level == 3
    assert err.value.min_eigenvalue == pytest.approx(-2.0)


def test_constant_singular_hessian_is_rejected_exactly():
    u = sp.Matrix(sp.symbols("u0:2"))
    problem = mv.MultilevelProblem(
        [mv.Level(x1, x1**2 + u[0] ** 2), mv.Level(u, (u[0] + u[1] - x1) ** 2)]
    )
    with pytest.raises(mv.HessianError, match="singular") as err:
        problem.best_response_jacobian(2, 1)
    assert err.value.level == 2


def test_a_stationary_maximum_start_is_left_and_the_wells_are_named():
    # f_3 is concave in x3 for |x3| < 1: the stationary point x3 = 0 (x1 = 0) is a maximum.
    # The solve leaves it to the well at +1; the multistart names the equal one at -1.
    problem = trilevel(f3=x3**4 / 4 - x3**2 / 2 + x1 * x3 * 0 + x2 * x3 * 0 + x3 * x1**3)
    solution = problem.solve_lower(0.0, init=[0.0, 0.0])
    assert solution.xs[1][0] == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(mv.NonUniqueMinimiserError, match="two minimisers of equal value") as err:
        problem.solve_lower(0.0, init=[0.0, 0.0], starts=4)
    assert err.value.level == 3


def test_singular_vector_hessian_at_the_point():
    u = sp.Matrix(sp.symbols("u0:2"))
    f2 = (u[0] + u[1] - x1) ** 2 + x1**2 * (u[0] - u[1]) ** 2
    problem = mv.MultilevelProblem([mv.Level(x1, x1**2 + u[0] ** 2), mv.Level(u, f2)])
    with pytest.raises(mv.HessianError, match="singular at the point") as err:
        problem.hypergradient_at(0.0)
    assert err.value.level == 2
    assert err.value.condition_number > 1e12


def test_lower_solve_that_does_not_converge_reports_its_residual():
    problem = trilevel(f3=sp.exp(x3) - x1 * x3 * 0 + x2 * x3 * 0)  # no minimiser: exp decreases
    with pytest.raises(mv.ConvergenceError) as err:
        problem.solve_lower(0.5, max_iter=20)
    assert err.value.level == 3
    assert err.value.residual > err.value.tolerance


def test_bad_x1_values():
    problem = trilevel()
    with pytest.raises(mv.ProblemDefinitionError, match="has 2 entries but the block has 1") as err:
        problem.hypergradient_at([1.0, 2.0])
    assert err.value.level == 1
    with pytest.raises(mv.NonFiniteError):
        problem.hypergradient_at(np.nan)


def test_level_indices_are_checked():
    problem = trilevel()
    with pytest.raises(mv.ProblemDefinitionError, match="out of range"):
        problem.best_response_jacobian(4, 1)
    with pytest.raises(mv.ProblemDefinitionError, match="1 <= j < k"):
        problem.best_response_jacobian(2, 2)


def test_status_under_jit_and_vmap_reports_indefinite_level():
    import jax
    import jax.numpy as jnp

    def f1(xs):
        return jnp.sum(xs[0] ** 2) + jnp.sum(xs[1] ** 2)

    def f2(xs):
        # Concave in x2 where x1 < 0: the lower Hessian 2 x1 is negative there.
        return xs[0][0] * jnp.sum((xs[1] - 1.0) ** 2)

    num = mv.numeric.NumericProblem([f1, f2], init=[jnp.ones(1), jnp.zeros(1)])
    fn = jax.jit(jax.vmap(num.hypergradient_function("exact")))
    batch = (jnp.array([[1.0], [-1.0]]), jnp.array([[0.5], [0.5]]))
    value, status = fn(batch)
    assert bool(status["cholesky_ok"][1][0]) and not bool(status["cholesky_ok"][1][1])
    with pytest.raises(mv.HessianError) as err:
        num.check_status(status)
    assert err.value.level == 2
    good, good_status = jax.jit(num.hypergradient_function("exact"))(
        (jnp.array([1.0]), jnp.array([0.5])))
    num.check_status(good_status)
    assert np.isfinite(float(good[0]))


@pytest.mark.parametrize(("k", "j"), [(7, 9), (3, 3), (1, 1), (3, 0)])
def test_latex_jacobian_refuses_indices_out_of_range(k, j):
    """D_j y_k exists for 2 <= k <= n and 1 <= j < k, in the abstract form too."""
    from mlverify import zoo
    from mlverify.errors import ProblemDefinitionError

    problem = zoo.default_problem()
    for abstract in (True, False):
        with pytest.raises(ProblemDefinitionError):
            problem.latex_jacobian(k, j, abstract=abstract)
