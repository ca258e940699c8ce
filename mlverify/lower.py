"""Lowering declared (sympy) problems to the JAX core.

Path chosen: sympy's own JAX printer (``lambdify(..., modules="jax")``) with a small table
of functions it prints wrongly for ``jit`` (``erf``, ``loggamma``, ... print as ``math.*``;
sympy issue 27895). Objectives are lowered as written, one scalar function of all
variables, and the numeric core differentiates them. ``sympy2jax`` was not chosen: it has no
common-subexpression elimination and compiled and ran 2-3x slower in the measurements in
NOTES.md, and its trainable constants are not wanted here.

Derived formulas (best-response Jacobians, the hypergradient) are lowered from the
derivation graph as straight-line code, one assignment per intermediate (see
`mlverify.codegen`), which is how the symbolic and numeric cores are compared under
``jit`` and ``vmap``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import sympy as sp

from .codegen import compile_graph
from .numeric import NumericProblem

#: Functions sympy's JAX printer gets wrong under jit.
JAX_FUNCTIONS = {
    "erf": jsp.erf,
    "erfc": jsp.erfc,
    "loggamma": jsp.gammaln,
    "gamma": lambda x: jnp.exp(jsp.gammaln(x)),
}

#: The ``modules`` argument of ``sympy.lambdify`` for JAX: the fixes above, then ``jax``.
MODULES = [JAX_FUNCTIONS, "jax"]


def lower_expression(variables, expr):
    """A JAX function of the flat vector of ``variables`` returning the float64 scalar ``expr``."""
    fn = sp.lambdify(list(variables), expr, modules=MODULES)
    count = len(variables)

    def lowered(flat):
        flat = jnp.asarray(flat, dtype=jnp.float64)
        return jnp.asarray(fn(*(flat[i] for i in range(count))), dtype=jnp.float64)

    return lowered


def lower_problem(problem, init=None) -> NumericProblem:
    """``problem`` as a NumericProblem: each $f_k$ as ``f(xs)``, ``xs`` the tuple of blocks."""
    variables = problem.variables
    lowered = [lower_expression(variables, f) for f in problem.objectives]

    def objective(fk):
        return lambda xs: fk(jnp.concatenate([jnp.ravel(x) for x in xs]))

    if init is None:
        init = [jnp.asarray(x, dtype=jnp.float64) for x in problem.inits]
    names = tuple(str(b[0]) if len(b) == 1 else f"x{k}" for k, b in enumerate(problem.blocks, 1))
    return NumericProblem([objective(f) for f in lowered], init, names=names)


def lower_formula(problem, which: str = "hypergradient", curvature: bool = True):
    """The derived formula as a jit/vmap-able JAX function of the flat vector of all variables.

    ``which``: ``"hypergradient"`` or ``"jacobian k j"`` (1-based levels).
    """
    derivation = problem.derivation(curvature)
    if which == "hypergradient":
        outputs = list(derivation.gradients[0])
        shape = (problem.sizes[0],)
    else:
        _, k, j = which.split()
        k, j = int(k), int(j)
        outputs = list(derivation.jacobians[(k - 1, j - 1)])
        shape = (problem.sizes[k - 1], problem.sizes[j - 1])
    fn = compile_graph(derivation.graph, outputs, modules=MODULES)
    count = len(problem.variables)

    def lowered(flat):
        flat = jnp.asarray(flat, dtype=jnp.float64)
        values = fn(*(flat[i] for i in range(count)))
        return jnp.stack([jnp.asarray(v, dtype=jnp.float64) + 0 * flat[0] for v in values]).reshape(
            shape
        )

    return jax.jit(lowered)
