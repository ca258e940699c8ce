import sympy as sp

import mlverify as mv

x1, x2 = sp.symbols("x1 x2")
problem = mv.MultilevelProblem([mv.Level(x1, x1**2 + x2**2), mv.Level(x2, -(x2**2) + x1 * x2)])
box = (-1, 1)
