r"""Certified verification: rigorous enclosures for declared (sympy) problems.

Ball arithmetic (python-flint's `arb`) runs the derivation graph's straight-line
programs on boxes, so every value it returns is an interval proven to contain the exact
one. On top of it:

- [`hypergradient_enclosure`][mlverify.certify.hypergradient.hypergradient_enclosure]:
  $\mathrm{d}F_1/\mathrm{d}x_1$ at a point (Lemmas 2.1, 3.1, 3.2), with the lower solutions
  enclosed by a Krawczyk test on the stacked stationarity system;
- [`certify_constants`][mlverify.certify.constants.certify_constants]: the assumptions and
  constants of Theorem 4.1 on a box of $x_1$ (lower solutions enclosed, every $H_k$ proven
  positive definite, bounds on the extreme eigenvalues of the Hessian of $F_1$), by
  bisection within a stated budget, or a proven violation of an assumption;
- [`mlverify.certify.theorem`][mlverify.certify.theorem]: what
  `theorem_4_1(..., certify=True)` adds to a report.

What is proven: for every $x_1$ in the box, exactly one zero of the stationarity system in
the enclosure, with every $H_k$ positive definite there (a strict local nested solution),
and the stated bounds along it. What is not: that each lower argmin is unique *globally*
(outside the enclosure). See docs/certified.md.
"""

from .bounds import EigenBounds, float_down, float_up, symmetric_eigen_bounds
from .constants import BoxCertificate, certify_constants, search_violation
from .hypergradient import (
    CertificationError,
    HypergradientEnclosure,
    certified_system,
    hypergradient_enclosure,
)
from .programs import Program
from .system import CertifiedSystem, Enclosure, krawczyk

__all__ = [
    "BoxCertificate",
    "CertificationError",
    "CertifiedSystem",
    "EigenBounds",
    "Enclosure",
    "HypergradientEnclosure",
    "Program",
    "certified_system",
    "certify_constants",
    "float_down",
    "float_up",
    "hypergradient_enclosure",
    "krawczyk",
    "search_violation",
    "symmetric_eigen_bounds",
]
