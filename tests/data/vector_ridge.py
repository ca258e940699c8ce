"""Bilevel ridge tuning with a vector block of weights, a box for theta and a family."""

import sympy as sp

import mlverify as mv

theta = sp.Symbol("theta")
w = sp.Matrix(sp.symbols("w0:2"))
X = sp.Matrix([[1, 2], [0, 1], [2, -1]])
y = sp.Matrix([1, -1, 2])
Xv = sp.Matrix([[1, 1], [2, 0]])
yv = sp.Matrix([1, 1])
rv = Xv * w - yv
rt = X * w - y
f1 = (rv.T * rv)[0, 0] / 2 + theta**2 / 20
f2 = (rt.T * rt)[0, 0] / 2 + sp.exp(theta) / 2 * (w.T * w)[0, 0]
problem = mv.MultilevelProblem([mv.Level(theta, f1), mv.Level(w, f2)])
box = ([-1.0], [1.5])


def family(n):
    """theta on top, then n - 1 scalar levels tracking the level above."""
    xs = sp.symbols(f"x1:{n + 1}")
    levels = [mv.Level(xs[0], (xs[0] - 1) ** 2 / 2 + xs[-1] ** 2 / 2)]
    for k in range(1, n):
        levels.append(mv.Level(xs[k], (xs[k] - xs[k - 1] / 2) ** 2 / 2 + xs[k] ** 4 / 12))
    return mv.MultilevelProblem(levels)
