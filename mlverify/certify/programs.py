"""The derivation graph's straight-line programs, evaluated in rigorous arithmetic.

Each program is printed once as Python source (one assignment per intermediate, in the
order of [`straight_line`][mlverify.codegen.straight_line]) and run on the numbers of an
*arithmetic*: ball arithmetic from python-flint (`arb`, the default) or mpmath's interval
context (`iv`, kept for comparison). Every operation of either library returns a set that
contains the exact result, so the value of the program on boxes of inputs encloses the
exact value of the quantity at every point of the boxes.

Constants enter exactly: sympy Integers stay Python integers, Rationals become
`flint.fmpq` (or an `iv` enclosure of $p/q$), Floats their exact binary value. Nothing
passes through a rounded float.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from ..codegen import straight_line
from ..errors import ProblemDefinitionError


@dataclass(frozen=True)
class Arithmetic:
    """How one library's numbers are made: constants, functions, the name of the set type."""

    name: str
    functions: dict
    rational: object  # (p, q) -> exact number or enclosure of p/q
    binary: object  # (mantissa, exponent) -> exact number or enclosure of m * 2^e
    constants: dict  # "pi", "E" -> enclosure
    power: object  # (enclosure, integer e >= 0) -> enclosure of its e-th power
    enclose: object = None  # an input (flint ball or number) -> an enclosure of it


def _flint_arithmetic() -> Arithmetic:
    from flint import arb, fmpq

    unary = ("tanh", "sinh", "cosh", "sin", "cos", "tan", "exp", "log", "sqrt", "atan",
             "asin", "acos", "asinh", "acosh", "atanh", "erf", "sec", "csc", "cot")
    functions = {name: (lambda attr: lambda a: getattr(_as_arb(a), attr)())(name)
                 for name in unary}
    functions["Abs"] = lambda a: abs(_as_arb(a))
    return Arithmetic(
        "arb (python-flint)",
        functions,
        rational=lambda p, q: fmpq(p, q),
        binary=lambda m, e: arb(m) * arb(2) ** e if e < 0 else arb(m * 2**e),
        constants={"pi": lambda: arb.pi(), "E": lambda: arb(1).exp()},
        power=arb_power,
    )


def _as_arb(value):
    """``value`` as a flint ball that contains it: an mpmath interval (the ``"mpmath"``
    arithmetic) becomes the hull of its two end points, each exact (mantissa times a power
    of two), so nothing is rounded inward."""
    from flint import arb

    if isinstance(value, arb):
        return value
    ends = getattr(value, "_mpi_", None)  # an mpmath.iv number: its raw end points
    if ends is not None:
        return _exact_arb(ends[0]).union(_exact_arb(ends[1]))
    return arb(value)


def _exact_arb(raw):
    """A raw mpmath float (``mpmath.libmp`` tuple: sign, mantissa, exponent, bits) as an
    exact flint ball; infinities and NaN as flint's."""
    from flint import arb
    from mpmath import libmp

    sign, man, exp, _ = raw
    if not man and exp:  # inf, -inf, nan
        return arb(libmp.to_float(raw))
    return (-1) ** sign * arb(int(man)) * arb(2) ** int(exp)


def arb_power(value, e: int):
    r"""An enclosure of $a^e$ for every $a$ in the ball `value`, $e \ge 0$ an integer.

    Not python-flint's `value ** e`: Arb's `arb_pow` takes its exact integer-power path
    only when the ball's midpoint is nonzero, and otherwise falls back to
    $\exp(e \log a)$, which is NaN for a ball centred exactly at 0 (e.g. $x_2 - 1$ over a
    box of $x_2$ centred at 1), so every enclosure downstream of it is lost. A ball that
    contains 0 is instead taken to the hull of the powers of its (exact, outward-rounded)
    end points, and of 0 when $e$ is even: $t \mapsto t^e$ is monotone on each side of 0,
    so this encloses the range, and it is also tighter than `value * value` (never
    negative for even $e$).
    """
    from flint import arb

    a = _as_arb(value)
    e = int(e)
    if e < 0:
        raise ValueError(f"arb_power needs an exponent >= 0, got {e}")
    if e == 0:
        return arb(1)
    if e == 1:
        return a
    if not a.is_finite() or a.is_exact() or not a.contains(0):
        return a**e
    low, high = a.lower(), a.upper()  # exact, rounded outward
    result = (low**e).union(high**e)
    return result.union(arb(0)) if e % 2 == 0 else result


def _mpmath_arithmetic() -> Arithmetic:
    from mpmath import iv

    names = ("sin", "cos", "tan", "exp", "log", "sqrt")
    functions = {name: getattr(iv, name) for name in names}
    # iv has no hyperbolic functions: forms in which the argument occurs once (no
    # dependency widening); tanh is increasing, so 1 - 2 / (e^{2a} + 1) encloses it.
    functions["tanh"] = lambda a: 1 - 2 / (iv.exp(2 * a) + 1)
    functions["sinh"] = lambda a: (iv.exp(a) - iv.exp(-a)) / 2
    functions["cosh"] = lambda a: (iv.exp(a) + iv.exp(-a)) / 2
    functions["Abs"] = abs
    return Arithmetic(
        "mpmath iv",
        functions,
        rational=lambda p, q: iv.mpf(p) / q,
        binary=lambda m, e: iv.ldexp(iv.mpf(m), e),
        constants={"pi": lambda: iv.pi, "E": lambda: iv.e},
        power=lambda a, e: a**e,
        enclose=_as_interval,
    )


def _as_interval(value):
    """An input as an mpmath interval that contains it: a flint ball becomes the interval of
    its exact end points (a ball passed as is would enter an interval operation as its
    midpoint alone)."""
    from flint import arb
    from mpmath import iv

    if not isinstance(value, arb):
        return value
    return iv.mpf([_exact_mpf(value.lower()), _exact_mpf(value.upper())])


def _exact_mpf(point):
    """An exact flint ball of radius 0 as an mpmath float (exactly; infinities as floats)."""
    import mpmath

    if not point.is_finite():
        return mpmath.mpf(float(point))
    man, exp = point.man_exp()
    return mpmath.mpf((int(man), int(exp)))


#: The arithmetics a `Program` runs on, by name, each a function making its `Arithmetic`:
#: `"flint"` (python-flint's ball arithmetic `arb`, the default) and `"mpmath"` (mpmath's
#: interval context `iv`, kept for comparison).
ARITHMETICS = {"flint": _flint_arithmetic, "mpmath": _mpmath_arithmetic}


class _Printer:
    """Python source for a sympy expression; constants collected into a table."""

    def __init__(self, names: dict, arithmetic: Arithmetic):
        self.names = names
        self.arithmetic = arithmetic
        self.constants: list = []
        self._constant_index: dict = {}

    def constant(self, key, make) -> str:
        if key not in self._constant_index:
            self._constant_index[key] = len(self.constants)
            self.constants.append(make())
        return f"_c[{self._constant_index[key]}]"

    def __call__(self, expr) -> str:
        if expr in self.names:
            return self.names[expr]
        if expr.is_Integer:
            return f"({int(expr)})"
        if expr.is_Rational:
            p, q = int(expr.p), int(expr.q)
            return self.constant(("q", p, q), lambda: self.arithmetic.rational(p, q))
        if expr.is_Float:
            sign, man, exp, _ = expr._mpf_
            man = -man if sign else man
            return self.constant(("f", man, exp), lambda: self.arithmetic.binary(man, exp))
        if expr is sp.pi or expr is sp.E:
            key = str(expr)
            return self.constant(key, self.arithmetic.constants["pi" if expr is sp.pi else "E"])
        if expr.is_Add:
            return "(" + " + ".join(self(a) for a in expr.args) + ")"
        if expr.is_Mul:
            return "(" + " * ".join(self(a) for a in expr.args) + ")"
        if expr.is_Pow:
            base, exponent = expr.args
            if exponent.is_Integer:
                e = int(exponent)
                if e >= 0:
                    return f"_pow({self(base)}, {e})"
                return f"(1 / _pow({self(base)}, {-e}))"
            if exponent == sp.Rational(1, 2):
                return f"_f['sqrt']({self(base)})"
            if exponent == -sp.Rational(1, 2):
                return f"(1 / _f['sqrt']({self(base)}))"
            return f"_f['exp']({self(exponent)} * _f['log']({self(base)}))"
        if isinstance(expr, sp.Function):
            name = type(expr).__name__
            if name not in self.arithmetic.functions or len(expr.args) != 1:
                raise ProblemDefinitionError(
                    f"the function {name} has no rigorous enclosure in {self.arithmetic.name}",
                    quantity="objective",
                )
            return f"_f[{name!r}]({self(expr.args[0])})"
        raise ProblemDefinitionError(
            f"cannot evaluate {expr!r} ({type(expr).__name__}) in interval arithmetic",
            quantity="objective",
        )


class Program:
    """A straight-line program of the derivation graph, run on enclosures.

    ``program(values)`` takes one enclosure (or exact number) per variable of the problem,
    in the order of ``problem.variables``, and returns the list of the outputs' enclosures.
    """

    def __init__(self, graph, outputs, arithmetic: str = "flint"):
        if arithmetic not in ARITHMETICS:
            raise ValueError(f"unknown arithmetic {arithmetic!r}; the arithmetics are: "
                             f"{', '.join(ARITHMETICS)}")
        self.arithmetic = ARITHMETICS[arithmetic]()
        assignments, exprs = straight_line(graph, list(outputs))
        names = {v: f"_x{i}" for i, v in enumerate(graph.variables)}
        for i, (sym, _) in enumerate(assignments):
            names[sym] = f"_t{i}"
        printer = _Printer(names, self.arithmetic)
        lines = [f"def _program({', '.join(f'_x{i}' for i in range(len(graph.variables)))}):"]
        for sym, expr in assignments:
            lines.append(f"    {names[sym]} = {printer(sp.sympify(expr))}")
        lines.append("    return [" + ", ".join(printer(sp.sympify(e)) for e in exprs) + "]")
        self.source = "\n".join(lines)
        self.size = len(assignments)
        namespace = {"_c": printer.constants, "_f": self.arithmetic.functions,
                     "_pow": self.arithmetic.power}
        exec(compile(self.source, "<mlverify.certify program>", "exec"), namespace)  # noqa: S102
        self._function = namespace["_program"]

    def __call__(self, values):
        enclose = self.arithmetic.enclose
        return self._function(*(values if enclose is None else map(enclose, values)))
