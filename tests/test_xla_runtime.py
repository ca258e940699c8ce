"""XLA's CPU runtime as mlverify sets it on import (`mlverify._config.CPU_FLAGS`)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from mlverify import _config

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def _run(code: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_importing_mlverify_adds_the_cpu_flags_and_keeps_the_users(monkeypatch):
    monkeypatch.setattr(_config, "_backend_started", lambda: False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert _config._set_xla_flags() == f"{FLAG}=false"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert _config._set_xla_flags().split() == ["--xla_cpu_enable_fast_math=false",
                                                f"{FLAG}=false"]
    monkeypatch.setenv("XLA_FLAGS", f"{FLAG}=true")  # the user's own choice stands
    assert _config._set_xla_flags() == f"{FLAG}=true"
    assert os.environ["XLA_FLAGS"] == f"{FLAG}=true"


def test_importing_mlverify_after_a_computation_says_the_flags_come_too_late():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = _run("""
        import warnings
        import jax.numpy as jnp
        jnp.ones(2).block_until_ready()  # the backend starts here
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import mlverify
        print([str(w.message) for w in caught if w.category is RuntimeWarning])
    """, env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "started before mlverify was imported" in done.stdout
    assert FLAG in done.stdout
    # imported first, nothing to say
    quiet = _run("""
        import warnings
        warnings.simplefilter("error")
        import mlverify
        import jax.numpy as jnp
        print(float(jnp.ones(2).sum()))
    """, env, timeout=120)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "2.0", quiet.stderr[-2000:]


def test_a_joint_solve_vmapped_over_many_starts_finishes():
    """The joint solve of 5 levels (blocks of 4) over 160 starts in one vmapped call: with
    XLA's concurrency-optimised scheduler two batched LAPACK calls waited on each other and
    the call never returned (2 cores, jaxlib 0.10.2). Run in a fresh process, so a hang
    fails the test instead of the suite; the solve must also converge at every start."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = """
        import jax.numpy as jnp, numpy as np
        import mlverify  # sets the flags before the first computation
        import jax
        from mlverify.numeric import stacked

        n, d = 5, 4
        rng = np.random.default_rng(0)
        W = {(k, m): jnp.asarray(rng.integers(-2, 3, size=(d, d)) / 2.0)
             for k in range(n) for m in range(n) if m != k}

        def objective(k):
            def f(xs):
                x = xs[k]
                v = 0.5 * jnp.sum(x ** 2) + jnp.sum(x ** 4) / 8
                for m in range(n):
                    if m != k:
                        v = v + 0.3 * jnp.tanh(xs[m]) @ W[(k, m)] @ x
                return v
            return f

        solve = stacked.solver([objective(k) for k in range(n)], (d,) * n, 1)
        rest = jnp.zeros(d * (n - 1))
        many = jax.jit(jax.vmap(lambda x1: solve(jnp.concatenate([x1, rest]), 1e-13, 30)))
        starts = jnp.asarray(rng.uniform(-1, 1, size=(160, d)))
        flat, out, steps = jax.block_until_ready(many(starts))
        worst = max(float(jnp.max(jnp.abs(c))) for c in out["conditions"])
        print(int(steps.max()), worst)
    """
    try:
        done = _run(code, env, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the vmapped joint solve did not return within 240 s (the LAPACK "
                    "deadlock the CPU flags avoid)")
    assert done.returncode == 0, done.stderr[-2000:]
    steps, worst = done.stdout.split()
    assert int(steps) < 30 and float(worst) < 1e-10
