"""Four scalar levels with exp, log and sin couplings, a box and no family."""

import sympy as sp

import mlverify as mv

x1, x2, x3, x4 = sp.symbols("x1 x2 x3 x4")
f1 = (x1 - 1) ** 2 / 2 + x2**2 / 2 + x4**2 / 4
f2 = (x2 - sp.sin(x1)) ** 2 / 2 + x2**4 / 12 + x2 * x3 / 5
f3 = sp.exp(x3 / 2) + (x3 - x2) ** 2 / 2 - x3 * sp.log(2 + x1**2) / 4 + x3 * x4 / 6
f4 = (x4 - x1 * x3 / 2) ** 2 / 2 + x4**4 / 8
problem = mv.MultilevelProblem(
    [mv.Level(x1, f1), mv.Level(x2, f2), mv.Level(x3, f3), mv.Level(x4, f4)]
)
box = (-1.0, 1.5)
