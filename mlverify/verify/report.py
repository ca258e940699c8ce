"""Check reports: constants with their provenance, the per-T table, the verdict."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

VERDICTS = ("pass", "fail", "not-applicable")


@dataclass
class Report:
    """The outcome of one theorem check.

    ``constants``: name -> (value, how it was obtained). ``table``: columns of equal length
    (``T``, the left side(s), ``right``, ``ok``). ``reason`` explains a fail or a
    not-applicable verdict ("assumption violated: bound not applicable" and where).
    ``box`` is the region the check sampled its constants on and ran in.
    """

    theorem: str
    verdict: str
    constants: dict
    table: dict
    worst_ratio: float | None = None
    fitted_slope: float | None = None
    reason: str = ""
    extra: dict = field(default_factory=dict)
    #: The region X the check used, [[lo_1..lo_d], [hi_1..hi_d]] (None: not recorded).
    box: list | None = None

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    # ------------------------------------------------------------------ output
    def summary(self) -> str:
        lines = [f"Theorem {self.theorem}: {self.verdict.upper()}"]
        if self.reason:
            lines.append(f"  {self.reason}")
        for name, (value, how) in self.constants.items():
            shown = f"{value:.6g}" if isinstance(value, (int, float)) else str(value)
            lines.append(f"  {name:<14} = {shown:<14} ({how})")
        if self.worst_ratio is not None:
            lines.append(f"  worst left/right ratio = {self.worst_ratio:.4g}")
        if self.fitted_slope is not None:
            lines.append(f"  fitted log-log slope of the left side = {self.fitted_slope:.3f}")
        return "\n".join(lines)

    def format_table(self, rows: int = 8) -> str:
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
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=1)

    def plot(self, path: str | None = None, ax=None):
        """Log-log plot of the measured left side against the bound, with the fitted slope."""
        import matplotlib

        if ax is None:
            matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(5.5, 4))
        else:
            fig = ax.figure
        if not self.table:  # not applicable: no run, so no curves; say why on the axes
            ax.text(0.5, 0.5, f"Theorem {self.theorem}: {self.verdict}\n{self.reason}",
                    ha="center", va="center", wrap=True, transform=ax.transAxes, fontsize=9)
            ax.set_axis_off()
            if path is not None:
                fig.savefig(path, dpi=110)
            return fig
        t = np.asarray(self.table["T"], dtype=float)
        right = np.asarray(self.table["right"], dtype=float)
        # The minimum can reach exactly 0 (converged); show four decades below the bound.
        floor = 1e-4 * min(float(np.min(right)), float(np.min(self.table["left_mean"])))
        for key, style in (("left_mean", "-"), ("left_min", ":")):
            if key in self.table:
                values = np.asarray(self.table[key], dtype=float)
                ax.loglog(
                    t, np.where(values > floor, values, np.nan), style, label=key.replace("_", " ")
                )
        ax.loglog(t, right, "--", label="bound (right side)")
        ax.set_ylim(bottom=floor)
        title = f"Theorem {self.theorem}: {self.verdict}"
        if self.fitted_slope is not None:
            title += f" (slope {self.fitted_slope:.2f})"
        ax.set_title(title)
        ax.set_xlabel("T (rounds)")
        ax.set_ylabel("squared gradient norm")
        ax.legend()
        if path is not None:
            fig.tight_layout()
            fig.savefig(path, dpi=110)
        return fig
