"""The cost of a deep exact hypergradient, predicted before the program is built."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlverify.numeric import NumericProblem, cost


@pytest.mark.parametrize("program", cost.PROGRAMS)
def test_prediction_is_the_measurement_where_measured_and_geometric_beyond(program):
    calibration, bounds = ((cost.CALIBRATION, cost.LOWER_BOUNDS) if program == "stacked"
                           else (cost.NESTED_CALIBRATION, cost.NESTED_LOWER_BOUNDS))
    for n, (seconds, memory) in calibration.items():
        estimate = cost.predict_exact(n, program)
        assert (estimate.seconds, estimate.memory_gb) == (seconds, memory)
        assert "measured" in estimate.basis
    for n, (seconds, memory) in bounds.items():
        estimate = cost.predict_exact(n, program)
        assert (estimate.seconds, estimate.memory_gb) == (seconds, memory)
        assert estimate.basis.startswith("at least")
    points = {**calibration, **bounds}
    deepest = max(points)
    (seconds, memory), previous = points[deepest], points[deepest - 1]
    two_more = cost.predict_exact(deepest + 2, program)
    assert two_more.memory_gb == pytest.approx(memory * (memory / previous[1]) ** 2, rel=1e-12)
    assert two_more.seconds == pytest.approx(seconds * (seconds / previous[0]) ** 2, rel=1e-12)
    assert f"extrapolated from n = {deepest}" in two_more.basis


def test_an_unknown_program_is_named():
    with pytest.raises(ValueError, match="stacked, nested"):
        cost.predict_exact(5, "joint")


def test_memory_limit_reads_the_environment(monkeypatch):
    monkeypatch.setenv(cost.MEMORY_VARIABLE, "3.5")
    assert cost.memory_limit() == 3.5
    monkeypatch.setenv(cost.MEMORY_VARIABLE, "lots")
    with pytest.raises(ValueError, match="MLVERIFY_MEMORY_LIMIT"):
        cost.memory_limit()
    monkeypatch.delenv(cost.MEMORY_VARIABLE)
    assert cost.memory_limit() > 0


def test_memory_limit_respects_the_address_space_limit(monkeypatch):
    """Under ``ulimit -v`` XLA's allocations fail at the cap: plan for a share of it."""
    import resource

    monkeypatch.delenv(cost.MEMORY_VARIABLE, raising=False)
    unlimited = cost.memory_limit()
    monkeypatch.setattr(resource, "getrlimit", lambda which: (
        (2 * 2**30, resource.RLIM_INFINITY) if which == resource.RLIMIT_AS
        else (resource.RLIM_INFINITY, resource.RLIM_INFINITY)))
    assert cost.memory_limit() == pytest.approx(min(unlimited, cost.MEMORY_SHARE * 2.0))


def _levels(n, coupling=jnp.sin):
    """n levels of blocks of 2, each coupled to every other through ``coupling``."""
    def objective(k):
        return lambda xs: 0.5 * jnp.sum(xs[k] ** 2) + 0.1 * jnp.sum(xs[k]) * sum(
            jnp.sum(coupling(x)) for m, x in enumerate(xs) if m != k)

    return NumericProblem([objective(k) for k in range(n)], [jnp.zeros(2) for _ in range(n)])


def test_a_deep_exact_program_past_the_memory_limit_is_refused_before_it_is_built(monkeypatch):
    monkeypatch.setenv(cost.MEMORY_VARIABLE, "0.01")
    problem = _levels(5)
    with pytest.raises(cost.CostError) as info:
        problem.hypergradient(jnp.zeros(2), "exact")
    message = str(info.value)
    assert "exact hypergradient of 5 levels" in message and "sympy" in message
    # a method on the nested rules is refused too, before the solve, and its message points
    # to the exact one
    with pytest.raises(cost.CostError, match="method='exact'"):
        problem.hypergradient(jnp.zeros(2), "no-curvature")
    assert info.value.levels == 5 and info.value.limit_gb == 0.01
    assert isinstance(info.value, MemoryError)
    # nothing was compiled: the refusal came before any program was built
    assert not problem._jit_cache


def test_an_approximate_method_at_six_levels_is_refused_before_the_solve_under_8_gb(
        monkeypatch):
    """The nested rules' program of 6 levels ran out of 12.9 GB when measured: under an 8 GB
    limit `cg` is refused at once (it used to solve first, then spend minutes compiling
    until the memory ran out), also through hypergradient_frozen; nothing is compiled."""
    monkeypatch.setenv(cost.MEMORY_VARIABLE, "8")

    def objective(k):
        return lambda xs: 0.5 * jnp.sum(xs[k] ** 2) + 0.1 * jnp.sum(xs[k]) * sum(
            jnp.sum(jnp.sin(x)) for m, x in enumerate(xs) if m != k)

    problem = NumericProblem([objective(k) for k in range(6)], [jnp.zeros(1)] * 6)
    with pytest.raises(cost.CostError, match="6 levels.*method='exact'") as info:
        problem.hypergradient(jnp.zeros(1), "cg")
    assert info.value.levels == 6 and info.value.predicted_gb >= 12.9
    with pytest.raises(cost.CostError, match="6 levels"):
        problem.hypergradient_frozen([jnp.zeros(1)] * 6, "neumann")
    assert not problem._jit_cache


def test_a_depth_known_only_by_a_lower_bound_is_planned_with_a_margin(monkeypatch):
    """The nested rules at 6 levels ran out of memory at 12.9 GB: what they need beyond that
    is unknown, so a 16 GB limit (more than the bound) still refuses them, saying so; the
    stacked program of 6 levels (measured) fits."""
    estimate = cost.predict_exact(6, "nested")
    assert estimate.lower_bound and estimate.memory_gb == 12.9
    assert cost.predict_exact(7, "nested").lower_bound
    assert not cost.predict_exact(6, "stacked").lower_bound
    monkeypatch.setenv(cost.MEMORY_VARIABLE, "16")
    with pytest.raises(cost.CostError, match=r"more than 12\.9 GB \(planned as 25\.8 GB"):
        cost.check_affordable(6, "nested")
    assert cost.check_affordable(6, "stacked").memory_gb < 16
    monkeypatch.setenv(cost.MEMORY_VARIABLE, "30")
    assert cost.check_affordable(6, "nested").lower_bound


def test_the_program_prediction_is_the_upper_envelope_of_the_measurements():
    envelope_seconds = envelope_memory = 0.0
    for size, seconds, memory in sorted(cost.PROGRAM_CALIBRATION):
        envelope_seconds, envelope_memory = max(envelope_seconds, seconds), max(envelope_memory,
                                                                                memory)
        estimate = cost.predict_program(size, 5)
        assert estimate.seconds == pytest.approx(envelope_seconds, rel=1e-12)
        assert estimate.memory_gb == pytest.approx(envelope_memory, rel=1e-12)
        # never below what this program was measured at
        assert estimate.seconds >= seconds and estimate.memory_gb >= memory
    sizes = [int(s) for s in 10 ** np.linspace(2, 6.5, 60)]
    predictions = [cost.predict_program(s, 5) for s in sizes]
    assert all(a.memory_gb <= b.memory_gb and a.seconds <= b.seconds
               for a, b in itertools.pairwise(predictions))
    largest = max(p[0] for p in cost.PROGRAM_CALIBRATION)
    beyond = cost.predict_program(4 * largest, 7)
    assert beyond.memory_gb > 2 * envelope_memory and "extrapolated" in beyond.basis
    assert beyond.levels == 7


def test_a_traced_program_past_the_memory_limit_is_refused_before_xla_compiles_it(monkeypatch):
    """Below 5 levels the depth alone rules nothing out; the traced program is measured
    before it is compiled, whatever its objectives."""
    monkeypatch.setenv(cost.MEMORY_VARIABLE, "0.05")
    problem = _levels(3, jnp.tanh)
    with pytest.raises(cost.CostError) as info:
        problem.hypergradient(jnp.zeros(2), "exact")
    assert info.value.levels == 3 and info.value.limit_gb == 0.05
    assert "3 levels" in str(info.value) and "equations" in str(info.value)
    (program,) = [p for p in problem._jit_cache.values() if isinstance(p, cost.CheckedProgram)]
    assert program.jitted._cache_size() == 0  # traced, never compiled
    # within the limit the same program compiles once and is measured once
    monkeypatch.setenv(cost.MEMORY_VARIABLE, "8")
    value = problem.hypergradient(jnp.zeros(2), "exact")
    assert program.jitted._cache_size() == 1 and program.estimate is not None
    assert "equations" in program.estimate.basis
    # the count the estimate rests on is kept for whoever reports it
    assert program.equations > 0 and f"{program.equations:,}" in program.estimate.basis
    assert program.estimate == cost.predict_program(program.equations, 3)
    assert value.shape == (2,)


def test_itd_is_measured_before_it_compiles_refused_past_the_limit_and_split_when_large(
        monkeypatch):
    """ITD's program (unrolled steps at every level, differentiated through; its first call
    grew about 7x per level: 6 levels of blocks (2, 3, 1, 4, 2, 3) peaked at 4.3 GB) goes
    through the same check as the stacked program, with a message of its own; its value,
    whole or compiled in pieces, is the pure program's."""
    problem = _levels(3, jnp.tanh)
    xs = [jnp.asarray([0.3, -0.2]), jnp.asarray([0.1, 0.4]), jnp.asarray([-0.5, 0.2])]
    flat = tuple(problem.flatten(k, x) for k, x in enumerate(xs))
    reference, _ = jax.jit(problem.hypergradient_function("itd", steps=3, inner_lr=0.2))(flat)
    monkeypatch.setenv(cost.MEMORY_VARIABLE, "0.05")
    with pytest.raises(cost.CostError) as info:
        problem.hypergradient_frozen(xs, "itd", steps=3, inner_lr=0.2)
    message = str(info.value)
    assert "ITD's hypergradient" in message and "3 levels" in message
    assert "method='exact'" in message and info.value.levels == 3
    monkeypatch.setenv(cost.MEMORY_VARIABLE, "8")
    whole = problem.hypergradient_frozen(xs, "itd", steps=3, inner_lr=0.2)
    np.testing.assert_array_equal(np.asarray(whole), np.asarray(reference))
    (checked,) = [p for p in problem._jit_cache.values() if isinstance(p, cost.CheckedProgram)]
    # planned with ITD's own margin over the stacked programs' calibration
    plain = cost.predict_program(checked.equations, 3)
    assert checked.estimate.memory_gb == pytest.approx(plain.memory_gb * cost.ITD_MEMORY_FACTOR)
    # in pieces (a fresh problem: programs are cached per problem), default steps too
    monkeypatch.setattr(cost, "SPLIT_FROM", 0)
    split = _levels(3, jnp.tanh)
    value = split.hypergradient_frozen(xs, "itd", steps=3, inner_lr=0.2)
    (program,) = [p for p in split._jit_cache.values() if isinstance(p, cost.CheckedProgram)]
    assert program.pieces is not None and program.pieces >= 2
    np.testing.assert_allclose(np.asarray(value), np.asarray(reference), rtol=1e-13, atol=1e-15)
    default, _ = jax.jit(split.hypergradient_function("itd", steps=3))(flat)
    np.testing.assert_allclose(np.asarray(split.hypergradient_frozen(xs, "itd", steps=3)),
                               np.asarray(default), rtol=1e-13, atol=1e-15)
