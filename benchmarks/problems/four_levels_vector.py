"""Four levels with vector blocks (2, 3, 2, 2): tanh, sin and softplus couplings, a box."""

import sympy as sp

import mlverify as mv

x1 = sp.Matrix(sp.symbols("a1:3"))
x2 = sp.Matrix(sp.symbols("b1:4"))
x3 = sp.Matrix(sp.symbols("c1:3"))
x4 = sp.Matrix(sp.symbols("d1:3"))


def sq(v):
    return sum(e**2 for e in v)


f1 = sq(x1 - sp.Matrix([1, -0.5])) / 2 + sq(x2) / 4 + sq(x3) / 4 + sq(x4) / 4
f2 = (sq(x2) / 2 + sum(e**4 for e in x2) / 12
      - x2[0] * sp.tanh(x1[0]) - x2[1] * sp.sin(x1[1]) / 2 + x2[2] * x3[0] / 5
      + x2[0] * x2[2] / 10)
f3 = (sq(x3) / 2 + sp.log(1 + sp.exp(x3[0] - x2[1])) / 2 - x3[1] * sp.tanh(x2[2] + x1[0]) / 3
      + x3[0] * x4[1] / 6)
f4 = sq(x4 - sp.Matrix([x1[0] * x3[0], x2[0] * x3[1]]) / 2) / 2 + sum(e**4 for e in x4) / 8
problem = mv.MultilevelProblem(
    [mv.Level(x1, f1), mv.Level(x2, f2), mv.Level(x3, f3), mv.Level(x4, f4)]
)
box = (-1.0, 1.0)
