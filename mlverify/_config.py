"""The one place where numeric precision and XLA's CPU runtime are set.

mlverify computes everything in float64. JAX defaults to float32, so importing mlverify
enables ``jax_enable_x64`` before any array is made. Every array mlverify creates is also
given ``dtype=float64`` explicitly, so nothing depends on JAX's weak-type promotion.

Importing mlverify also adds `CPU_FLAGS` to ``XLA_FLAGS`` (a flag the user set there
already is kept as set). XLA reads them when its CPU backend starts, at the first
computation of the process: import mlverify before computing anything with JAX.
"""

import os
import warnings

import jax

jax.config.update("jax_enable_x64", True)

FLOAT = "float64"

#: XLA:CPU's concurrency-optimised scheduler lets batched LAPACK calls (LU and eigh under
#: ``vmap``, which jaxlib splits over the intra-op thread pool) run at once, each holding a
#: pool thread while it waits for work only another thread could run: on a 2-core machine
#: the joint solve of 5 levels, vmapped over 127 or more starts, deadlocked (every thread
#: asleep; jaxlib 0.10.2). Without it the same call takes 7 s, and the single programs
#: compile, run and return the same values as before (5 and 6 levels, blocks of 4).
CPU_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)


def _set_xla_flags(flags=CPU_FLAGS) -> str:
    current = os.environ.get("XLA_FLAGS", "")
    added = [flag for flag in flags if flag.split("=")[0] not in current]
    current = " ".join([current, *added]).strip()
    os.environ["XLA_FLAGS"] = current
    if added and _backend_started():
        warnings.warn(
            "JAX's backend started before mlverify was imported, so XLA ignores "
            f"{' '.join(added)} in XLA_FLAGS: a vmapped solve may then hang on a small CPU "
            "(batched LAPACK calls waiting on each other). Import mlverify before the first "
            "JAX computation, or set the flag in XLA_FLAGS yourself.",
            RuntimeWarning, stacklevel=3)
    return current


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without it: nothing to warn about
        return False


_set_xla_flags()
