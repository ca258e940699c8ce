"""A large program compiled in pieces computes what the one program computes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import jaxpr_as_fun

from mlverify.numeric import NumericProblem, cost, pieces, stacked
from mlverify.numeric.problem import compiler_options


def _coupled(sizes, seed=0):
    """Own quadratic and quartic terms, every level coupled to every other through tanh and
    sin of a seeded bilinear form."""
    rng = np.random.default_rng(seed)
    n = len(sizes)
    w = {(k, m): jnp.asarray(rng.normal(size=(sizes[m], sizes[k])) / 3)
         for k in range(n) for m in range(n) if m != k}

    def objective(k):
        def f(xs):
            x = xs[k]
            value = 0.5 * jnp.sum(x**2) + 0.05 * jnp.sum(x**4)
            for m in range(n):
                if m != k:
                    near = xs[m] @ w[(k, m)]
                    value = value + 0.2 * jnp.sum(jnp.tanh(near) * x) + 0.1 * jnp.sin(near @ x)
            return value

        return f

    return NumericProblem([objective(k) for k in range(n)], [jnp.zeros(d) for d in sizes])


def _step(sizes, seed=0):
    """The joint solve's step (`stacked.Newton.iterate`), its arguments at the declared start
    and its trace there: a program that mixes float, integer and boolean values."""
    problem = _coupled(sizes, seed)
    flat = jnp.concatenate([jnp.full(sizes[0], 0.2), *(jnp.zeros(d) for d in sizes[1:])])
    args = (stacked.compiled_start(tuple(sizes), 1)(flat), np.float64(1e-12), np.int32(50))
    fn = jax.jit(stacked.Newton(problem.core.fs, sizes, 1).iterate,
                 compiler_options=compiler_options(len(sizes)))
    return fn, args, fn.trace(*args)


def test_deduplicate_computes_each_repeat_once_and_drops_what_nothing_reads():
    def f(x, y):
        a, b = jnp.sin(x) * y, jnp.sin(x) * y          # a repeat
        c, d = jnp.cos(x) + 2.0, jnp.cos(x) + 2.0      # a repeat with a literal
        e = jnp.cos(x) + 3.0                           # another literal: not a repeat
        jnp.exp(y)                                     # read by nothing
        return a + b + c * d + e, a

    closed = jax.make_jaxpr(f)(1.0, 2.0)
    once = pieces.deduplicate(closed)
    names = [eqn.primitive.name for eqn in once.jaxpr.eqns]
    assert names.count("sin") == 1 and names.count("cos") == 1 and "exp" not in names
    before = [eqn.primitive.name for eqn in closed.jaxpr.eqns]
    assert before.count("add") == 6 and before.count("mul") == 3 and "exp" in before
    # c's repeat d gone: c, e, a + b, (..) + c d, (..) + e; and a's repeat b
    assert names.count("add") == 5 and names.count("mul") == 2
    for x, y in [(0.3, 0.7), (-2.0, 5.0)]:
        assert [float(v) for v in jaxpr_as_fun(once)(x, y)] == [float(v) for v in f(x, y)]


def test_deduplicate_reads_stop_gradient_through():
    """A stopped copy is its operand in a program that is only run: the copy's readers read
    the operand, so the copy and a repeat it hid are gone and an output copied from an input
    is that input."""
    def f(x, y):
        s = jax.lax.stop_gradient(jnp.sin(x))
        t = jnp.sin(x) * y                              # a repeat once s reads sin(x)
        return s * y + t, jax.lax.stop_gradient(y), s

    closed = jax.make_jaxpr(f)(1.0, 2.0)
    before = [eqn.primitive.name for eqn in closed.jaxpr.eqns]
    assert before.count("stop_gradient") == 2 and before.count("mul") == 2
    once = pieces.deduplicate(closed)
    names = [eqn.primitive.name for eqn in once.jaxpr.eqns]
    assert "stop_gradient" not in names and names.count("sin") == 1
    assert names.count("mul") == 1 and once.jaxpr.outvars[1] is once.jaxpr.invars[1]
    for x, y in [(0.3, 0.7), (-2.0, 5.0)]:
        assert [float(v) for v in jaxpr_as_fun(once)(x, y)] == [float(v) for v in f(x, y)]


@pytest.mark.parametrize("count", [1, 2, 5])
def test_a_program_cut_into_pieces_gives_the_programs_values(count):
    """Each piece its own executable, the values between them packed per dtype: the joint
    solve's step of 4 levels (floats, the step counters, the done flag) gives the values of
    the one compiled program to round-off (XLA may contract a product and a sum differently
    in a piece: seen 1 ulp)."""
    fn, args, traced = _step((2, 3, 1, 2))
    closed = traced.jaxpr
    whole = jax.tree.leaves(fn(*args))
    once = pieces.deduplicate(closed)
    assert len(once.jaxpr.eqns) < 0.8 * len(closed.jaxpr.eqns)
    run, compilers = pieces.split(once, count, compiler_options(4))
    assert len(compilers) == count
    pieces.compile_all(compilers, workers=2)
    got = run(*jax.tree.leaves(args))
    assert len(got) == len(whole)
    for a, b in zip(got, whole, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-14, atol=1e-15)
    # the next step runs from the pieces' own state, as the solve drives it
    state = jax.tree.unflatten(jax.tree.structure(traced.out_info), got)
    after = run(*jax.tree.leaves((state, *args[1:])))
    for a, b in zip(after, jax.tree.leaves(fn(state, *args[1:])), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=1e-15)


def test_past_the_split_size_the_solve_and_hypergradient_run_in_pieces(monkeypatch):
    """`CheckedProgram` compiles a program of at least `SPLIT_FROM` equations in pieces:
    the lower solve, its checks and the exact hypergradient agree with the one program's to
    round-off, over two points; its memory is planned from `SPLIT_CALIBRATION`."""
    x1 = [jnp.asarray([0.1, -0.3]), jnp.asarray([0.5, 0.2])]
    monkeypatch.setattr(cost, "SPLIT_FROM", 10**9)
    one = _coupled((2, 3, 1, 2), seed=3)
    want = [one.solve_and_hypergradient(x) for x in x1]
    monkeypatch.setattr(cost, "SPLIT_FROM", 0)
    monkeypatch.setattr(cost, "PIECE_EQUATIONS", 400)
    cut = _coupled((2, 3, 1, 2), seed=3)
    got = [cut.solve_and_hypergradient(x) for x in x1]
    (program,) = [p for p in cut._jit_cache.values() if isinstance(p, cost.CheckedProgram)]
    assert program.pieces is not None and program.pieces >= 3
    assert program.jitted._cache_size() == 0  # the one program was never compiled
    assert program.estimate == cost.predict_program(program.equations, 4, split=True)
    for (value, lower), (wanted, wanted_lower) in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(value), np.asarray(wanted), rtol=1e-13,
                                   atol=1e-15)
        for block, wanted_block in zip(lower, wanted_lower, strict=True):
            np.testing.assert_allclose(np.asarray(block), np.asarray(wanted_block),
                                       rtol=1e-13, atol=1e-15)
    assert lower.iterations == wanted_lower.iterations
    with pytest.raises(TypeError, match="compiled in pieces"):
        program({"point": jnp.zeros(8)}, np.float64(1e-12), np.int32(5))


def test_the_split_prediction_is_the_envelope_of_its_own_measurements():
    for size, seconds, memory in cost.SPLIT_CALIBRATION:
        estimate = cost.predict_program(size, 7, split=True)
        assert estimate.seconds >= seconds and estimate.memory_gb >= memory
    # compiled in pieces, the largest measured program needs less than in one piece
    largest = max(p[0] for p in cost.PROGRAM_CALIBRATION)
    assert (cost.predict_program(largest, 7, split=True).memory_gb
            < cost.predict_program(largest, 7).memory_gb)


def test_pieces_pass_on_inputs_literals_empty_and_mixed_dtype_values():
    """What crosses a cut may be an input returned as it is, a literal output, an empty
    array, a boolean or an integer, or a value read by every later piece."""
    def f(x, flags, k):
        early = jnp.sin(x) * 2.0                       # read by every later piece
        empty = x[:0] * 3.0                            # zero elements
        mask = flags & (x > 0.0)                       # boolean
        count = k + jnp.sum(mask.astype(jnp.int32))    # integer
        values = [early]
        for i in range(12):
            values.append(jnp.cos(values[-1]) + early * i)
        return x, 1.0, empty, mask, count, values[-1] + early, jnp.where(mask, early, -early)

    args = (jnp.linspace(-1.0, 1.0, 5), jnp.array([True, False, True, True, False]),
            jnp.int32(4))
    closed = jax.make_jaxpr(f)(*args)
    want = jax.tree.leaves(jax.jit(f)(*args))
    for count in (2, 3, 7):
        run, compilers = pieces.split(closed, count)
        pieces.compile_all(compilers, workers=1)
        got = run(*args)
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert np.shape(a) == np.shape(b) and np.asarray(a).dtype == np.asarray(b).dtype
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-15, atol=0)
