r"""A large traced program compiled as consecutive pieces instead of as one.

XLA:CPU's compile of one computation needs memory that grows faster than the computation:
its instruction fusion was measured quadratic in time and memory (the joint solve's step of
a 6-level family of 55,311 equations: 83 of the 142 s compile in fusion, the process growing
from 0.8 to 5.9 GB while it ran). The deepest exact programs are single computations of
tens of thousands of small operations, so the same program cut into consecutive pieces, each
compiled as its own executable, needs a fraction of that memory, and with the pieces
compiled side by side, of the time: that family's 6 levels traced and compiled in 67 s at a
peak of 1.80 GB instead of 117 s and 5.9 GB, its 7 levels (293,700 equations) in 355 s and
3.77 GB, the benchmark family's 7 levels in 62 s and 1.34 GB instead of 99 s and 3.45 GB
(``benchmarks/results/program_cost.md``).

`split` cuts a closed jaxpr's top-level equations into pieces of about equal size. Each
piece is one ``jax.jit`` function of the program's arguments and of the values earlier
pieces computed and later ones read; those cross from piece to piece packed into one flat
buffer per dtype (thousands of small arrays as arguments would cost more per call than the
program runs). The last piece returns the program's outputs. The operations are the traced
program's own, in its order, so the values are the same to round-off (XLA may contract a
product and a sum differently inside a piece: 1 ulp seen, in the hypergradient at 4 levels).
Before cutting, `deduplicate` computes each repeated equation once: XLA does that within one
computation, not across pieces.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

__all__ = ["IDENTITIES", "compile_all", "deduplicate", "processors", "splittable", "split"]


def _is_var(v) -> bool:
    return not isinstance(v, jex_core.Literal)


class _Unhashable(Exception):
    pass


def _key(value):
    """A hashable stand-in for an equation's parameter or input (by value for literals)."""
    if isinstance(value, jex_core.Literal):
        array = np.asarray(value.val)
        return ("literal", array.dtype.str, array.shape, array.tobytes(),
                getattr(value.aval, "weak_type", False))
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
        raise _Unhashable
    try:
        hash(value)
    except TypeError as err:
        raise _Unhashable from err
    return value


#: Primitives that are the identity in a program that is run, not differentiated again.
IDENTITIES = ("stop_gradient",)


def deduplicate(closed):
    """``closed`` with its top-level equations that repeat an earlier one (the same
    primitive and parameters on the same inputs, no effects) computed once, its
    ``stop_gradient`` equations (`IDENTITIES`: the identity in a program that is only run)
    read through, and the equations whose results nothing reads dropped. The derivative
    programs repeat much (a third of the equations of the joint solve's step at 5 and 6
    levels): XLA removes the repeats of one computation itself, but not across `split`'s
    pieces; and a value and its stopped copy would cross between pieces apart (7 levels of
    the benchmark's family in 4 pieces: 3,807 values crossed, 3,400 with the copies read
    through, and its 40,569 equations became 38,655). Values unchanged: the kept equation
    is the repeated one, and XLA lowers ``stop_gradient`` to its operand."""
    jaxpr = closed.jaxpr
    rename, seen, kept = {}, {}, []

    def read(v):
        return rename.get(v, v) if _is_var(v) else v

    for eqn in jaxpr.eqns:
        invars = [read(v) for v in eqn.invars]
        if (eqn.primitive.name in IDENTITIES and len(invars) == len(eqn.outvars) == 1
                and not eqn.effects and eqn.outvars[0].aval == invars[0].aval):
            if not isinstance(eqn.outvars[0], jex_core.DropVar):
                rename[eqn.outvars[0]] = invars[0]
            continue
        try:
            key = (eqn.primitive, _key(invars), _key(eqn.params)) if not eqn.effects else None
        except _Unhashable:
            key = None
        earlier = seen.get(key) if key is not None else None
        if earlier is not None and not any(isinstance(v, jex_core.DropVar) for v in earlier):
            rename.update(zip(eqn.outvars, earlier, strict=True))
            continue
        kept.append(eqn.replace(invars=invars))
        if key is not None:
            seen[key] = eqn.outvars
    outvars = [read(v) for v in jaxpr.outvars]
    live = {v for v in outvars if _is_var(v)}
    alive = []
    for eqn in reversed(kept):
        if eqn.effects or any(v in live for v in eqn.outvars):
            alive.append(eqn)
            live.update(v for v in eqn.invars if _is_var(v))
    return jex_core.ClosedJaxpr(jaxpr.replace(eqns=alive[::-1], outvars=outvars), closed.consts)


def splittable(closed) -> bool:
    """Whether `split` can cut ``closed`` (a ``ClosedJaxpr``): no effects (the pieces run
    their equations in order, but an ordered effect would need its token carried) and every
    value an array."""
    jaxpr = closed.jaxpr
    if jaxpr.effects or any(eqn.effects for eqn in jaxpr.eqns):
        return False
    values = [*jaxpr.invars, *jaxpr.constvars, *(v for e in jaxpr.eqns for v in e.outvars)]
    return all(hasattr(v.aval, "shape") and hasattr(v.aval, "dtype")
               and not jax.dtypes.issubdtype(v.aval.dtype, jax.dtypes.extended)
               for v in values)


def split(closed, pieces: int, compiler_options=None) -> tuple[Callable, list]:
    """``closed`` (a ``ClosedJaxpr`` of $m$ top-level equations) as ``pieces`` consecutive
    programs of about $m$ / ``pieces`` equations each, jit with ``compiler_options``.
    Returns ``(run, compile)``: ``run(*flat_args)`` gives the program's flat outputs (as
    ``jax.core.eval_jaxpr`` would), ``compile`` is the list of zero-argument functions that
    compile one piece each, ahead of the first run (any order, any thread)."""
    jaxpr, consts = closed.jaxpr, list(closed.consts)
    eqns = jaxpr.eqns
    total = len(eqns)
    pieces = max(1, min(int(pieces), total))
    bounds = [round(i * total / pieces) for i in range(pieces + 1)]
    sources = [*jaxpr.constvars, *jaxpr.invars]
    position = {v: i for i, v in enumerate(sources)}
    made_in = {}  # value -> piece that computes it
    for p, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        for eqn in eqns[a:b]:
            for v in eqn.outvars:
                made_in[v] = p
    needs = [[] for _ in range(pieces)]  # per piece, the values it reads from elsewhere
    for p, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        seen = set()
        reads = [v for eqn in eqns[a:b] for v in eqn.invars]
        if p == pieces - 1:
            reads += list(jaxpr.outvars)
        for v in reads:
            if _is_var(v) and v not in seen and made_in.get(v, -1) != p:
                seen.add(v)
                needs[p].append(v)
    # what each piece hands on: its values another piece reads, packed per dtype
    exported, handed_on = [[] for _ in range(pieces)], set()
    for p in range(pieces):
        for v in needs[p]:
            if v in made_in and v not in handed_on:
                handed_on.add(v)
                exported[made_in[v]].append(v)
    layout = {}  # value -> (piece, dtype, offset, size, shape)
    buffers = []  # per piece, its buffers' dtypes and sizes, in order
    for p in range(pieces):
        offsets = {}
        for v in exported[p]:
            dtype = np.dtype(v.aval.dtype)
            size = int(np.prod(v.aval.shape, dtype=np.int64))
            layout[v] = (p, dtype, offsets.get(dtype, 0), size, tuple(v.aval.shape))
            offsets[dtype] = offsets.get(dtype, 0) + size
        buffers.append(offsets)  # the offsets past the last value: the sizes

    programs, reads_from = [], []
    for p, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        last = p == pieces - 1
        inputs = needs[p]
        name = jex_core.DebugInfo("split", f"piece {p + 1} of {pieces}", None, None)
        piece = jex_core.ClosedJaxpr(jex_core.Jaxpr(
            [], inputs, list(jaxpr.outvars) if last else exported[p], eqns[a:b],
            debug_info=name), [])
        used = sorted({layout[v][0] for v in inputs if v in layout})
        reads_from.append(used)
        programs.append(jax.jit(
            _piece(piece, inputs, layout, used, buffers, None if last else p),
            compiler_options=compiler_options))
    # each piece takes the program's arguments it reads, by their position in `sources`
    takes = [[position[v] for v in needs[p] if v not in layout] for p in range(pieces)]
    arguments = [tuple(_abstract(sources[i].aval) for i in takes[p]) for p in range(pieces)]
    handed = [tuple(jax.ShapeDtypeStruct((size,), d) for d, size in buffers[p].items())
              for p in range(pieces)]

    def compile_piece(p):
        programs[p] = programs[p].lower(arguments[p], tuple(handed[j] for j in reads_from[p])
                                        ).compile()

    def run(*args):
        values, out = (*consts, *args), [None] * pieces
        for p in range(pieces):
            out[p] = programs[p](tuple(values[i] for i in takes[p]),
                                 tuple(out[j] for j in reads_from[p]))
        return out[-1]

    return run, [lambda p=p: compile_piece(p) for p in range(pieces)]


def _abstract(aval):
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=aval.weak_type)


def _piece(piece, inputs: Sequence, layout: dict, used: Sequence[int], buffers: list,
           exports: int | None):
    """The function of one piece: ``(program arguments, buffers of the pieces in used) ->
    its packed buffers`` (``exports``: its index), or the program's outputs (None)."""
    slot = {j: i for i, j in enumerate(used)}

    def evaluate(values, handed):
        read, values = [], iter(values)  # the program's arguments in the order read
        for v in inputs:
            if v in layout:
                p, dtype, offset, size, shape = layout[v]
                buffer = handed[slot[p]][list(buffers[p]).index(dtype)]
                read.append(buffer[offset:offset + size].reshape(shape))
            else:
                read.append(next(values))
        outputs = jex_core.jaxpr_as_fun(piece)(*read)
        if exports is None:
            return outputs
        packed = {}
        for v, value in zip(piece.jaxpr.outvars, outputs, strict=True):
            packed.setdefault(np.dtype(v.aval.dtype), []).append(jnp.ravel(value))
        return tuple(jnp.concatenate(packed[d]) if len(packed[d]) > 1 else packed[d][0]
                     for d in buffers[exports])

    return evaluate


def processors() -> int:
    """The processors this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def compile_all(compilers: Sequence[Callable], workers: int | None = None) -> None:
    """Run `split`'s compile functions on ``workers`` threads (default: `processors`); XLA
    compiles outside Python's global lock, so pieces compile side by side (7 levels of the
    benchmark's family, 8 pieces before `deduplicate`: 26 s on two threads against 44 s on
    one)."""
    workers = min(len(compilers), workers or processors())
    if workers <= 1:
        for compile_piece in compilers:
            compile_piece()
        return
    with ThreadPoolExecutor(workers) as pool:
        for done in [pool.submit(compile_piece) for compile_piece in compilers]:
            done.result()
