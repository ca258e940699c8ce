"""The zoo as ``mlverify verify --zoo NAME`` sees it: each problem's default box, the options
that apply to it, and how to build it (one problem, or a family with one member per n)."""

from __future__ import annotations

from dataclasses import dataclass

#: The zoo problems of ``--zoo`` and the default box of each.
BOXES = {
    "default": (-2.0, 2.0),
    "quadratic": (-2.0, 2.0),
    "nonquadratic": (-1.0, 1.0),
    "compounding": (-2.0, 2.0),
    "ridge": (1.0, 3.5),
    "indefinite": (-1.0, 1.0),
}
#: The ``mlverify verify`` options that apply to each zoo problem.
OPTIONS = {
    "default": set(),
    "quadratic": {"levels", "size", "seed", "max_levels"},
    "nonquadratic": {"levels", "size", "seed", "max_levels"},
    "compounding": {"levels", "seed", "max_levels"},
    "ridge": {"seed"},
    "indefinite": set(),
}
#: The ridge data seed whose validation loss has an interior minimum, $F_1$ strongly convex on
#: the default box $[1, 3.5]$ around it (other seeds: give a `--box` where $F_1$ is convex).
RIDGE_SEED = 5


@dataclass(frozen=True)
class ZooEntry:
    """One zoo problem as built for a run: ``build(n)`` and ``describe(n)`` for a family
    (``build()`` and a fixed ``label`` for a single problem); ``family_label`` names the
    family, ``reason`` says why a single problem has no n-study."""

    name: str
    build: object
    label: str
    describe: object = None
    family_label: str = ""
    reason: str = ""

    @property
    def is_family(self) -> bool:
        """Whether the entry is a family of problems, one per number of levels."""
        return self.describe is not None


def entry(name: str, *, size: int = 1, seed: int | None = None) -> ZooEntry:
    """The zoo problem ``name`` (one of `BOXES`) with its block ``size`` and ``seed``
    (default 0; ``RIDGE_SEED`` for ridge).

    Args:
        name: The zoo problem, one of `BOXES`.
        size: The block size of the ``quadratic`` and ``nonquadratic`` families (unused by
            the others).
        seed: The problem's seed; None for the default (above). Unused by ``default`` and
            ``indefinite``.

    Returns:
        The `ZooEntry`: for a family, ``build(n)`` and ``describe(n)``; for a single
            problem, ``build()``, its ``label`` and the ``reason`` it has no n-study.
            Nothing is built yet.

    Raises:
        ValueError: ``name`` is not a zoo problem.
    """
    from . import (
        compounding,
        default_problem,
        indefinite_problem,
        nonquadratic,
        quadratic,
        ridge_bilevel,
    )

    if name not in BOXES:
        raise ValueError(f"unknown zoo problem {name!r}; the valid ones are {', '.join(BOXES)}")
    seed = seed if seed is not None else (RIDGE_SEED if name == "ridge" else 0)
    families = {
        "quadratic": (lambda n: quadratic(n, (size,) * n, seed=seed).symbolic(),
                      lambda n: f"quadratic n={n} d={size} seed={seed}", f", d={size}"),
        "nonquadratic": (lambda n: nonquadratic(n, size, seed=seed),
                         lambda n: f"non-quadratic n={n} d={size} seed={seed}", f", d={size}"),
        "compounding": (lambda n: compounding(n, seed=seed),
                        lambda n: f"compounding n={n} d=2 seed={seed}", ", d=2"),
    }
    if name in families:
        build, describe, blocks = families[name]
        return ZooEntry(name, build, "", describe=describe,
                        family_label=f"the {name} family{blocks}, seed={seed}")
    singles = {
        "default": (default_problem, "default trilevel (mlverify.zoo.default_problem)"),
        "ridge": (lambda: ridge_bilevel(seed=seed)[0], f"bilevel ridge tuning seed={seed}"),
        "indefinite": (indefinite_problem, "indefinite lower level (zoo)"),
    }
    build, label = singles[name]
    return ZooEntry(name, build, label,
                    reason=f"--zoo {name} is one problem, not a family (the families are "
                    f"{', '.join(families)})")
