"""Why the exact program grows about 4x per level: the stacked conditions' linear map against
nested forward mode, in equations, on one family.

The family is ``bench_deep_jax.family(n)`` (blocks of 4; tanh couplings, quartic and sine
terms). Two series, each counted as top-level jaxpr equations after `pieces.deduplicate`
(repeats computed once, unused equations dropped), so that they count work, not tracing
noise:

- ``linear map``: the linearisation of $P_k$ (`stacked._stack`, the conditions of the
  bottom $D$ levels, $D = 2, \\dots, n$) in all its blocks: what the level above batches
  into its dense Jacobian and differentiates through its transpose;
- ``nested forward``: $f_n$ differentiated ``order`` times by nested ``jax.jvp``, one
  direction per order (each direction a function of the point, so each order also
  differentiates the directions below it: an upper bound on a mixed directional derivative).

No time is measured (the machine's noise does not enter): the counts are what the tracer
builds, the same on every machine.

    python benchmarks/bench_algebra_growth.py --n 6 --max-order 7
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _machine import describe, markdown  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def linear_map_equations(n: int) -> dict[int, int]:
    """Equations of the stacked linear map of the bottom ``D`` levels, ``D = 2 .. n``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from bench_deep_jax import family

    from mlverify.numeric import pieces, stacked

    fs, sizes = family(n).core.fs, [4] * n
    blocks = tuple(jnp.full(4, 0.1 + 0.05 * i) for i in range(n))
    counts = {}
    for k in range(n - 2, -1, -1):
        z = jnp.concatenate(blocks[k:])
        split = np.cumsum(sizes[k:])[:-1].tolist()

        def stack(w, k=k, split=split):
            return stacked._stack(fs, sizes, k, blocks[:k] + tuple(jnp.split(w, split)))

        _, linear = jax.linearize(stack, z)
        closed = jax.make_jaxpr(lambda t, linear=linear: linear(t))(z)
        counts[n - k] = len(pieces.deduplicate(closed).jaxpr.eqns)
    return counts


def nested_forward_equations(n: int, max_order: int) -> dict[int, int]:
    """Equations of $f_n$ differentiated 1 .. ``max_order`` times by nested ``jax.jvp``."""
    import jax
    import jax.numpy as jnp
    from bench_deep_jax import family

    from mlverify.numeric import pieces

    fs = family(n).core.fs
    z = jnp.concatenate([jnp.full(4, 0.1 + 0.05 * i) for i in range(n)])

    def bottom(w):
        return fs[n - 1](tuple(jnp.split(w, n)))

    counts, g = {}, bottom
    for order in range(1, max_order + 1):
        def g(w, inner=g, c=order + 1):
            return jax.jvp(inner, (w,), (jnp.sin(c * w),))[1]

        counts[order] = len(pieces.deduplicate(jax.make_jaxpr(g)(z)).jaxpr.eqns)
    return counts


def _growth(counts: dict[int, int]) -> list[str]:
    keys = sorted(counts)
    pairs = zip(keys[:-1], keys[1:], strict=True)
    return [""] + [f"x{counts[b] / counts[a]:.2f}" for a, b in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6, help="levels of the family")
    parser.add_argument("--max-order", type=int, default=7)
    args = parser.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    info = describe()
    linear = linear_map_equations(args.n)
    forward = nested_forward_equations(args.n, args.max_order)
    command = (f"python benchmarks/bench_algebra_growth.py --n {args.n} "
               f"--max-order {args.max_order}")
    lines = ["# Growth of the derivative algebra: the stacked linear map against nested "
             "forward mode",
             "",
             "Top-level jaxpr equations after `pieces.deduplicate`, on the family of "
             f"`bench_deep_jax.py` with {args.n} levels, blocks of 4 (see the script's "
             "docstring). Counts, not times: the same on every machine.",
             "",
             markdown(info, command),
             "",
             "## The stacked conditions' linear map of the bottom D levels",
             "",
             "| D | equations | growth |",
             "| --- | --- | --- |"]
    lines += [f"| {d} | {linear[d]:,} | {g} |"
              for d, g in zip(sorted(linear), _growth(linear), strict=True)]
    lines += ["",
              f"## f_{args.n} by nested forward mode",
              "",
              "| order | equations | growth |",
              "| --- | --- | --- |"]
    lines += [f"| {o} | {forward[o]:,} | {g} |"
              for o, g in zip(sorted(forward), _growth(forward), strict=True)]
    text = "\n".join(lines) + "\n"
    out = ROOT / "benchmarks" / "results" / "algebra_growth.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
