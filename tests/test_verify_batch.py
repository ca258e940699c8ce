"""Theorem 4.1 over a batch of seeded instances in one vmapped call."""

import jax.numpy as jnp
import numpy as np
import pytest

from mlverify import verify


def _coupled(sizes, seed, own, coupling):
    """``strength -> [f_1, ..., f_n]``: level k minimises ``own(x_k, k)`` plus ``strength``
    times ``coupling(x_m) @ W_km @ x_k`` for every other level m (W_km seeded normal / 2)."""
    n = len(sizes)
    rng = np.random.default_rng(seed)
    weights = {(k, m): rng.normal(size=(sizes[m], sizes[k])) / 2
               for k in range(n) for m in range(n) if m != k}

    def objectives_of(strength):
        def objective(k):
            def f(xs):
                x = xs[k]
                value = own(x, k)
                for m in range(n):
                    if m != k:
                        value = value + strength * coupling(xs[m]) @ weights[(k, m)] @ x
                return value
            return f
        return [objective(k) for k in range(n)]

    return objectives_of


def test_batched_check_matches_closed_form_constants_and_loop():
    objectives_of, params, members = verify.quadratic_family_batch(3, (1, 1, 1), seeds=range(6))
    report = verify.theorem_4_1_batch(objectives_of, params, (1, 1, 1), box=(-2, 2), T=30,
                                      grid_points=3)
    assert report.counts() == {"pass": 6}
    exact_L = np.array([1.01 * np.linalg.eigvalsh(m.hessian_F1())[-1] for m in members])
    # Central differences of an affine hypergradient are exact up to round-off.
    np.testing.assert_allclose(report.L, exact_L, rtol=1e-8)
    assert np.all(report.residual < 1e-12)
    loop = verify.theorem_4_1_batch(objectives_of, params, (1, 1, 1), box=(-2, 2), T=30,
                                    grid_points=3, vectorize=False)
    np.testing.assert_allclose(loop.worst_ratio, report.worst_ratio, rtol=1e-12)
    assert "6 instances" in report.summary()


def test_batched_check_at_five_levels_agrees_with_each_instance_solved_apart():
    """Five non-quadratic levels, vector blocks, one parameter per instance (the strength of
    the couplings). The batch's L is checked against second differences of F_1 itself (each
    instance a NumericProblem, lower levels solved apart: no hypergradient formula), its
    run against projected gradient descent driven by NumericProblem.hypergradient."""
    from mlverify.numeric import NumericProblem

    sizes = (1, 2, 1, 2, 1)
    objectives_of = _coupled(
        sizes, 3, lambda x, k: jnp.sum((x - 0.3 * (k + 1)) ** 2) + jnp.sum(x**4) / 10,
        jnp.tanh)

    strengths = np.array([0.05, 0.4])
    box, T = (-1.0, 1.0), 6
    report = verify.theorem_4_1_batch(objectives_of, jnp.asarray(strengths), sizes, box,
                                      T=T, grid_points=3)
    assert np.all(report.residual < 1e-10)
    h = 1e-3
    for i, strength in enumerate(strengths):
        problem = NumericProblem(objectives_of(strength), [np.zeros(d) for d in sizes])

        def F1(x, problem=problem):
            x1 = np.array([x])
            lower = problem.solve_lower(x1, tol=1e-14)
            return float(problem.objectives[0]((jnp.asarray(x1), *lower)))

        curvature = max((F1(x + h) - 2 * F1(x) + F1(x - h)) / h**2 for x in (-1.0, 0.0, 1.0))
        np.testing.assert_allclose(report.L[i], 1.01 * curvature, rtol=1e-5)
        # the run: projected gradient descent, step 1/L, from the box's lower corner
        x, values = np.array([-1.0]), []
        for _ in range(5 * T):
            values.append(F1(x[0]))
            g = np.asarray(problem.hypergradient(x, "exact"))
            x = np.clip(x - g / report.L[i], *box)
        np.testing.assert_allclose(report.F_star[i], min(values), rtol=1e-12, atol=1e-12)


def test_warm_started_rounds_reach_the_cold_solves_results():
    """Each round's lower solve starts from the last round's solution by default; from zero
    it reaches the same lower solutions, so every reported number agrees to the solves'
    accuracy (three non-quadratic levels, vector blocks, two instances)."""
    sizes = (2, 2, 1)
    objectives_of = _coupled(
        sizes, 5, lambda x, k: jnp.sum((x - 0.4 * (k + 1)) ** 2) + jnp.sum(jnp.cosh(x)) / 4,
        jnp.sin)

    strengths = jnp.asarray([0.1, 0.5])

    def report(**options):
        return verify.theorem_4_1_batch(objectives_of, strengths, sizes, (-1.0, 1.0), T=8,
                                        grid_points=2, **options)

    # warm started with the package's compiler options; cold; XLA's default options
    warm, cold, defaults = report(), report(warm_start=False), report(compiler_options={})
    for other in (cold, defaults):
        assert np.all(other.residual < 1e-10)
        np.testing.assert_array_equal(warm.verdicts, other.verdicts)
        for field in ("worst_ratio", "L", "F_star"):
            np.testing.assert_allclose(getattr(warm, field), getattr(other, field), rtol=1e-10)
    with pytest.raises(ValueError, match="compiler_options"):
        report(compiler_options="fast")
