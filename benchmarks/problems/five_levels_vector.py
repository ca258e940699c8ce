"""Five levels with vector blocks (1, 2, 2, 1, 2): tanh, sin and softplus couplings, a box."""

import sympy as sp

import mlverify as mv

x1 = sp.Symbol("x1")
x2 = sp.Matrix(sp.symbols("y1:3"))
x3 = sp.Matrix(sp.symbols("z1:3"))
x4 = sp.Symbol("u")
x5 = sp.Matrix(sp.symbols("v1:3"))


def sq(v):
    return sum(e**2 for e in v)


def softplus(t):
    return sp.log(1 + sp.exp(t))


f1 = (x1 - 0.5) ** 2 / 2 + sq(x2) / 4 + sq(x3) / 4 + x4**2 / 4 + sq(x5) / 4
f2 = sq(x2) / 2 + x2[0] ** 4 / 12 - x2[0] * sp.tanh(x1) + x2[1] * sp.sin(x3[0]) / 4
f3 = sq(x3) / 2 + softplus(x3[0] - x2[0]) / 2 - x3[1] * sp.tanh(x2[1] + x1) / 3 + x3[0] * x4 / 6
f4 = x4**2 / 2 + x4**4 / 12 - x4 * sp.sin(x3[1]) / 2 + x4 * x5[0] / 5
f5 = sq(x5 - sp.Matrix([x1 * x4, sp.tanh(x3[0])]) / 2) / 2 + softplus(x5[1]) / 4
problem = mv.MultilevelProblem(
    [mv.Level(x1, f1), mv.Level(x2, f2), mv.Level(x3, f3), mv.Level(x4, f4), mv.Level(x5, f5)]
)
box = (-1.0, 1.0)
