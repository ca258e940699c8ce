"""Check reports: constants with their provenance, the per-T table, the verdict."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: The verdicts a check can give; "not-applicable" when an assumption of the theorem fails.
VERDICTS = ("pass", "fail", "not-applicable")


@dataclass
class Report:
    """The outcome of one theorem check.

    ``constants``: name -> (value, how it was obtained). ``table``: columns of equal length
    (``T``, the left side(s), ``right``, ``ok``). ``reason`` explains a fail or a
    not-applicable verdict ("assumption violated: bound not applicable" and where).
    ``certified``: True when every assumption and L are proven on the box (ball arithmetic,
    ``theorem_4_1(..., certify=True)``); ``certificate``: the certified constants as
    intervals with method, number of boxes and time, the label and the reason when
    certification did not succeed (empty when certification was not asked for).
    ``box`` is the region the check sampled its constants on and ran in.

    Attributes:
        theorem: ``"4.1"`` or ``"4.2"``.
        verdict: ``"pass"``, ``"fail"`` or ``"not-applicable"``.
        constants: Name to ``(value, how it was obtained)``: $L$, $F_1^*$, $\alpha$, ...
        table: Columns of equal length against $T$: ``T``, the left side(s), ``right``,
            ``ok`` (per method for Theorem 4.2).
        worst_ratio: The largest left/right over $T$ (above 1 where the bound fails); None
            without a run.
        fitted_slope: The fitted log-log slope of the left side against $T$ (Theorem 4.1's
            rate is $-1$); None without a run.
        reason: Why the verdict is a fail or not applicable (the level and the assumption).
        extra: Further values of the check (the final $x_1$, $F_1(x^0)$, ...).
        certified: Whether every assumption and $L$ are proven on the box.
        certificate: The certified constants as intervals, with method, boxes and time.
        box: The region $X$, ``[[lo_1..lo_d], [hi_1..hi_d]]``; None where not recorded.
    """

    theorem: str
    verdict: str
    constants: dict
    table: dict
    worst_ratio: float | None = None
    fitted_slope: float | None = None
    reason: str = ""
    extra: dict = field(default_factory=dict)
    certified: bool = False
    certificate: dict = field(default_factory=dict)
    box: list | None = None

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def label(self) -> str:
        """The verdict and what it rests on: "pass (certified)", "pass (sampled)", "not
        applicable (certified)", a flagged counterexample; the bare verdict when
        certification was not asked for."""
        return self.certificate.get("label", self.verdict)

    # ------------------------------------------------------------------ output
    def summary(self) -> str:
        """A few lines: the verdict, the reason, the constants with their provenance, the
        worst ratio left/right and the fitted log-log slope."""
        lines = [f"Theorem {self.theorem}: {self.label.upper()}"]
        for note in self.certificate.get("notes", ()):
            lines.append(f"  {note}")
        if self.reason:
            lines.append(f"  {self.reason}")
        if self.box is not None:
            lines.append(f"  box X: lo = {self.box[0]}, hi = {self.box[1]}")
        for name, (value, how) in self.constants.items():
            shown = f"{value:.6g}" if isinstance(value, (int, float)) else str(value)
            lines.append(f"  {name:<14} = {shown:<14} ({how})")
        if self.worst_ratio is not None:
            lines.append(f"  worst left/right ratio = {self.worst_ratio:.4g}")
        if self.fitted_slope is not None:
            lines.append(f"  fitted log-log slope of the left side = {self.fitted_slope:.3f}")
        return "\n".join(lines)

    def format_table(self, rows: int = 8) -> str:
        """The per-$T$ table as text, about ``rows`` rows spaced geometrically in $T$.

        Args:
            rows: The number of rows wanted; the first and the last $T$ are always shown,
                and rows that coincide at small $T$ are shown once (so there may be fewer).

        Returns:
            A header line with the column names, then one line per row picked (numbers in
                ``.4e`` format, booleans and strings as they are); the empty string when the
                report has no table (a not-applicable verdict).
        """
        if not self.table:
            return ""
        keys = list(self.table)
        length = len(self.table[keys[0]])
        picks = sorted({int(i) for i in np.unique(np.geomspace(1, length, rows).astype(int) - 1)})
        header = "  ".join(f"{k:>12}" for k in keys)
        out = [header]
        for i in picks:
            cells = []
            for k in keys:
                v = self.table[k][i]
                cells.append(
                    f"{v!s:>12}" if isinstance(v, (bool, np.bool_, str)) else f"{v:>12.4e}"
                )
            out.append("  ".join(cells))
        return "\n".join(out)

    def __str__(self) -> str:
        return self.summary() + "\n" + self.format_table()

    def to_dict(self) -> dict:
        """The report as plain values for JSON (arrays as lists, NumPy scalars as numbers)."""
        def clean(value):
            if isinstance(value, np.ndarray):
                return value.tolist()
            if isinstance(value, (np.floating, np.integer, np.bool_)):
                return value.item()
            if isinstance(value, dict):
                return {str(k): clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        return clean(asdict(self))

    def save(self, path: str) -> None:
        """Write `to_dict` as JSON to ``path``.

        Args:
            path: The JSON file to write (replaced if it exists).
        """
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=1)

    def plot(self, path: str | None = None, ax: Axes | None = None) -> Figure:
        """Log-log plot of the measured left side(s) against the bound (the right side).

        Theorem 4.1: the mean and the minimum of the squared gradient mapping, and the
        bound. Theorem 4.2: for every method run, the left side, the right side and its
        error term. The y-axis spans the plotted values (a curve that falls far below the
        others, or reaches 0, is cut at the axis floor, and its legend entry says so).
        A report without a table (not applicable) gets its verdict and reason written on
        empty axes instead.

        Args:
            path: An image file to save the figure to (the format by its suffix); None
                saves nothing.
            ax: The matplotlib axes to draw on; None makes a new figure, apart from pyplot
                (the process's backend and pyplot's figures are left as they are; a notebook
                shows the returned figure).

        Returns:
            The matplotlib figure drawn on (the figure of ``ax`` when given); it is not
                closed.
        """
        if ax is None:
            from matplotlib.figure import Figure

            fig = Figure(figsize=(7.5, 6.5))
            ax = fig.subplots()
        else:
            fig = ax.figure
        if not self.table:  # not applicable: no run, so no curves; say why on the axes
            ax.text(0.5, 0.5, f"Theorem {self.theorem}: {self.verdict}\n{self.reason}",
                    ha="center", va="center", wrap=True, transform=ax.transAxes, fontsize=9)
            ax.set_axis_off()
            if path is not None:
                fig.savefig(path, dpi=110)
            return fig
        curves = self._curves()
        t = np.asarray(self.table["T"], dtype=float)
        everything = np.concatenate([np.asarray(c[1], dtype=float) for c in curves])
        positive = everything[everything > 0]
        top = 2.0 * float(np.max(positive))
        # Floor: just below the smallest positive value plotted, but at most 12 decades
        # below the top; a curve cut there (or reaching 0) says so in its legend entry.
        floor = max(0.5 * float(np.min(positive)), 1e-12 * top)
        for label, values, color, style in curves:
            values = np.asarray(values, dtype=float)
            cut = values < floor
            if cut.all():
                label += f" (0 or below {floor:.0e} throughout: not drawn)"
            elif cut.any():
                where = t[cut]
                label += (f" (0 or below {floor:.0e} at T = {int(where[0])}"
                          + (f"..{int(where[-1])}" if where.size > 1 else "") + ": not drawn)")
            width = 2.6 if color == "C0" and len(curves) > 3 else 1.5
            ax.loglog(t, np.where(cut, np.nan, values), style, color=color, label=label,
                      linewidth=width)
        ax.set_ylim(bottom=floor, top=top)
        title = f"Theorem {self.theorem}: {self.verdict}"
        if self.fitted_slope is not None:
            first = next(iter(self.extra.get("methods") or {}), "")
            side = f"{first}'s left side" if first else "the left side"
            title += f" (fitted slope of {side} {self.fitted_slope:.2f})"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("T (rounds)")
        ax.set_ylabel("squared gradient norm")
        ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(0.0, -0.13), frameon=False)
        if len(curves) > 3:
            ax.text(0.99, 0.99, "where the methods' curves coincide, the thick one is the first",
                    ha="right", va="top", transform=ax.transAxes, fontsize=7)
        if path is not None:
            fig.tight_layout()
            fig.savefig(path, dpi=120)
        return fig

    def _curves(self):
        """(label, values, colour, style) for each curve: left sides solid or dotted, right
        sides dashed, error terms dash-dotted."""
        if self.theorem == "4.1":
            g = r"\Vert G(x^t)\Vert^2"
            curves = [
                (rf"left side: $\frac{{1}}{{T}}\sum_{{t<T}} {g}$", self.table["left_mean"],
                 "C0", "-"),
                (rf"left side: $\min_{{t<T}} {g}$", self.table["left_min"], "C0", ":"),
                (r"right side (bound): $2L\,(F_1(x^0) - F_1^*)\,/\,T$", self.table["right"],
                 "C3", "--"),
            ]
            return [c for c in curves if c[1] is not None]
        methods = self.extra.get("methods") or {"": self.table}
        curves = []
        for i, (method, table) in enumerate(methods.items()):
            color = f"C{i}"
            name = f"{method}: " if method else ""
            curves.append((rf"{name}left side $\frac{{1}}{{T}}\sum_{{t<T}}"
                           rf"\Vert\nabla F_1(x^t)\Vert^2$", table["left_mean"], color, "-"))
            curves.append((rf"{name}right side $\frac{{2(F_1(x^0) - F_1^*)}}{{\alpha T}}"
                           rf" + \frac{{1}}{{T}}\sum_{{t<T}}\Vert e_t\Vert^2$",
                           table["right"], color, "--"))
            curves.append((rf"{name}error term $\frac{{1}}{{T}}\sum_{{t<T}}\Vert e_t\Vert^2$",
                           table["error_term"], color, "-."))
        return curves


def plot_rounds_to_epsilon(growth: dict, path: str, label: str) -> None:
    r"""Plot a `rounds_to_epsilon` result to ``path``: $T_\varepsilon(n)$ (a cross where it
    was not reached) and the mean $\lVert e_t \rVert$ against the number of levels, titled
    with ``label`` (the family).

    Args:
        growth: The dict that `rounds_to_epsilon` returns.
        path: The image file written (the format by its suffix).
        label: The family's name, in the title.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ns = np.asarray(growth["n"])
    t_eps = np.asarray(growth["T_eps"], dtype=float)
    fig = Figure(figsize=(9, 3.6))
    ax = fig.subplots(1, 2)
    finite = np.isfinite(t_eps)
    ax[0].plot(ns[finite], t_eps[finite], "o-",
               label=rf"first round with $\Vert\nabla F_1\Vert^2 \leq$ {growth['epsilon']:.0e}")
    if (~finite).any():
        ax[0].plot(ns[~finite], np.full((~finite).sum(), growth["max_rounds"]), "x",
                   color="C3", label=f"not reached in {growth['max_rounds']} rounds"
                   + (" or diverged" if any(growth.get("diverged") or []) else ""))
    ax[0].set_ylim(bottom=0, top=1.15 * max(float(np.max(t_eps[finite], initial=1)),
                                            growth["max_rounds"] if (~finite).any() else 1))
    ax[0].set_xlabel("levels n")
    ax[0].set_ylabel(r"rounds $T_\varepsilon(n)$ (single loop)")
    ax[0].legend(fontsize=8, loc="lower right")
    errors = np.asarray(growth["mean_error"], dtype=float)
    errors = np.where(np.isfinite(errors), errors, np.nan)  # a diverged run: no point
    positive = errors[errors > 0]
    # a log axis needs a positive value (the errors are all 0 where the lower levels are
    # solved exactly in one step, e.g. quadratic ones)
    (ax[1].semilogy if positive.size else ax[1].plot)(ns, errors, "o-", color="C1")
    if positive.size:  # at least two decades, so that a small spread is not blown up
        middle = np.sqrt(positive.min() * positive.max())
        ax[1].set_ylim(min(positive.min() / 2, middle / 10), max(positive.max() * 2, middle * 10))
    ax[1].set_xlabel("levels n")
    ax[1].set_ylabel(r"mean $\Vert e_t\Vert$ over the run (single loop)")
    for a in ax:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Theorem 4.2 against the number of levels: {label}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
