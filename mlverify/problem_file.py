"""Problem files for ``mlverify verify``: loading a user's file (``problem``, ``box``,
``family(n)``) or a zoo problem, with every mistake reported as bad input naming
``file:line``, before any long work."""

from __future__ import annotations

import ast
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import one_line

if TYPE_CHECKING:
    from numpy.typing import ArrayLike


class BadInput(Exception):
    """Bad input: a one-line reason, exit status 2."""


@dataclass
class Target:
    """What a run checks: the problem, its box, its family (or why there is none)."""

    problem: object
    box: tuple
    label: str
    family: object = None
    family_reason: str = ""
    members: dict = field(default_factory=dict)
    describe: object = None  # n -> a one-line description of family(n)
    family_label: str = ""


def parse_box(
    lo: ArrayLike | str, hi: ArrayLike | str, d: int, origin: str
) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) as float64 vectors of length d (numbers, sequences, or comma-separated
    strings), or BadInput naming ``origin``.

    Args:
        lo: The lower corner: a number (the same in every coordinate), a sequence of $d$
            numbers, or a string of one or $d$ comma-separated numbers (``"-1,0"``).
        hi: The upper corner, in the same forms.
        d: The size $d_1$ of the top-level block $x_1$.
        origin: Where the box came from (``"--box"``, ``"file.py:3: box"``), to start
            each error message.

    Returns:
        The pair ``(lo, hi)`` of float64 arrays of length ``d``.

    Raises:
        BadInput: A side is not numeric, has neither 1 nor ``d`` entries, or holds NaN or
            inf, or ``lo < hi`` fails in some coordinate.
    """
    sides = []
    for name, side in (("lo", lo), ("hi", hi)):
        if isinstance(side, str):
            try:
                side = [float(v) for v in side.strip().split(",")]
            except ValueError as err:
                raise BadInput(f"{origin}: {name} = {side.strip()!r} is not a number or a "
                               f"comma-separated list of numbers") from err
        try:
            array = np.asarray(side, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as err:
            raise BadInput(f"{origin}: {name} = {side!r} is not numeric") from err
        if array.size == 1:
            array = np.full(d, array[0])
        if array.size != d:
            raise BadInput(f"{origin}: {name} has {array.size} entries but x_1 has {d}")
        if not np.all(np.isfinite(array)):
            raise BadInput(f"{origin}: {name} holds NaN or inf")
        sides.append(array)
    if np.any(sides[0] >= sides[1]):
        raise BadInput(f"{origin}: the box needs lo < hi in every coordinate, got lo = "
                       f"{sides[0].tolist()}, hi = {sides[1].tolist()}")
    return sides[0], sides[1]


def _assignment_lines(source: str) -> dict:
    """Line of the last top-level assignment or definition of each name in the file."""
    lines = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            lines[node.name] = node.lineno
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        lines[sub.id] = node.lineno
    return lines


def _line_in_file(err: BaseException, path: Path):
    """The last line of ``path`` in the traceback of ``err``."""
    line = None
    for frame, lineno in traceback.walk_tb(err.__traceback__):
        if Path(frame.f_code.co_filename).resolve() == path.resolve():
            line = lineno
    return line


def _is_problem(value) -> bool:
    from .numeric import NumericProblem
    from .problem import MultilevelProblem

    return isinstance(value, (MultilevelProblem, NumericProblem))


def load_file(path_text: str, box_option: tuple | None, max_levels: int | None) -> Target:
    r"""The problem file at ``path_text`` as a run's target: its ``problem``, its ``box``
    (``box_option`` overrides it; default $[-2, 2]$ per coordinate) and, where it defines
    ``family(n)``, every member $n = 2, \dots, \text{max\_levels}$ (default 4), each checked
    now. Any mistake raises BadInput naming file:line.

    The file is run as Python (it may import anything); it must assign a
    ``MultilevelProblem`` or ``NumericProblem`` to ``problem``, and may assign ``box = (lo,
    hi)`` and define ``family(n)`` returning an $n$-level problem whose $x_1$ has the size
    of ``problem``'s.

    Args:
        path_text: The problem file's path.
        box_option: ``(lo, hi)`` from ``--box`` (each side as `parse_box` reads it), which
            replaces the file's ``box``; None to use the file's ``box`` or the default.
        max_levels: The largest $n$ of the family members built (default 4 when None);
            must be None when the file defines no ``family``.

    Returns:
        The run's `Target`: the problem, its box, the file as label, and where the file
            defines ``family(n)`` the family and its members by $n$ (else
            ``family_reason`` says there is none).

    Raises:
        BadInput: The file is missing, does not compile or raises when run; ``problem`` is
            missing or not a problem; ``box`` is not a valid ``(lo, hi)``; ``max_levels``
            is given without a family; ``family`` is not callable, raises, or returns
            something other than a problem with $n$ levels and the same $x_1$ size.
    """
    path = Path(path_text)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    source = path.read_text()
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as err:
        raise BadInput(f"{path}:{err.lineno}: syntax error: {err.msg}") from err
    namespace = {"__name__": "__mlverify_problem__", "__file__": str(path)}
    try:
        exec(code, namespace)
    except Exception as err:  # noqa: BLE001 - any error in the user's file is bad input
        raise BadInput(f"{path}:{_line_in_file(err, path) or '?'}: {one_line(err)}") from err
    lines = _assignment_lines(source)
    if "problem" not in namespace:
        raise BadInput(f"{path}: defines no problem (assign a mlverify.MultilevelProblem to "
                       f"the name problem)")
    problem = namespace["problem"]
    where = f"{path}:{lines.get('problem', '?')}"
    if not _is_problem(problem):
        raise BadInput(f"{where}: problem is a {type(problem).__name__}, not a "
                       f"mlverify.MultilevelProblem or NumericProblem")
    d = problem.sizes[0]
    if box_option is not None:
        box = parse_box(*box_option, d, "--box")
    elif "box" in namespace:
        value = namespace["box"]
        origin = f"{path}:{lines.get('box', '?')}: box"
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise BadInput(f"{origin} must be (lo, hi), got {value!r}")
        box = parse_box(*value, d, origin)
    else:
        box = parse_box(-2.0, 2.0, d, "default box")
    target = Target(problem, box, str(path))
    family = namespace.get("family")
    if family is None:
        target.family_reason = f"{path} defines no family(n)"
        if max_levels is not None:
            raise BadInput(f"--max-levels applies to a family, and {path} defines no family(n)")
        return target
    origin = f"{path}:{lines.get('family', '?')}"
    if not callable(family):
        raise BadInput(f"{origin}: family must be a function of n, got {type(family).__name__}")
    target.family = family
    target.family_label = f"family(n) of {path}"
    for n in range(2, (max_levels or 4) + 1):  # build every member now: errors are bad input
        try:
            member = family(n)
        except Exception as err:  # noqa: BLE001 - an error in the user's family(n)
            line = _line_in_file(err, path) or lines.get("family", "?")
            raise BadInput(f"{path}:{line}: family({n}): {one_line(err)}") from err
        if not _is_problem(member):
            raise BadInput(f"{origin}: family({n}) returned a {type(member).__name__}, not a "
                           f"MultilevelProblem or NumericProblem")
        if member.n != n:
            raise BadInput(f"{origin}: family({n}) has {member.n} levels, not {n}")
        if member.sizes[0] != d:
            raise BadInput(f"{origin}: family({n}) has x_1 of size {member.sizes[0]}, but the "
                           f"box is for size {d}")
        target.members[n] = member
    return target


def load_zoo(name: str | None, *, levels: int | None = None, size: int | None = None,
             seed: int | None = None, box_option: tuple | None = None,
             max_levels: int | None = None) -> Target:
    r"""The zoo problem ``name`` (default ``default``) as a run's target: a family's member
    with ``levels`` levels (default 3) and its members $n = 2, \dots, \text{max\_levels}$
    (default 4), or the single problem; its box from ``box_option`` or the zoo's default box.

    Args:
        name: A zoo problem, one of `mlverify.zoo.registry.BOXES`; None for ``"default"``.
        levels: The number of levels of a family's problem (default 3); unused for a single
            problem.
        size: The block size of the ``quadratic`` and ``nonquadratic`` families (default 1).
        seed: The problem's seed (default 0; `mlverify.zoo.registry.RIDGE_SEED` for
            ``ridge``).
        box_option: ``(lo, hi)`` from ``--box`` (each side as `parse_box` reads it); None
            for the zoo's default box (`mlverify.zoo.registry.BOXES`).
        max_levels: The largest $n$ of a family's members (default 4 when None); unused for
            a single problem.

    Returns:
        The run's `Target`: the problem, its box and label, and for a family the family,
            its description and its members by $n$ (else ``family_reason`` says there is
            none).

    Raises:
        ValueError: An unknown ``name``.
        BadInput: ``box_option`` is not a valid box for $x_1$.
    """
    from .zoo import registry

    name = name or "default"
    levels = levels if levels is not None else 3
    zoo_entry = registry.entry(name, size=size if size is not None else 1, seed=seed)
    if zoo_entry.is_family:
        problem = zoo_entry.build(levels)
        target = Target(problem, None, zoo_entry.describe(levels), family=zoo_entry.build,
                        describe=zoo_entry.describe, family_label=zoo_entry.family_label)
    else:
        problem = zoo_entry.build()
        target = Target(problem, None, zoo_entry.label, family_reason=zoo_entry.reason)
    d = problem.sizes[0]
    if box_option is not None:
        target.box = parse_box(*box_option, d, "--box")
    else:
        target.box = parse_box(*registry.BOXES[name], d, f"the box of --zoo {name}")
    if target.family is not None:
        # the problem itself is the member with its number of levels (derived once)
        target.members = {n: problem if n == levels else zoo_entry.build(n)
                          for n in range(2, (max_levels or 4) + 1)}
    return target
