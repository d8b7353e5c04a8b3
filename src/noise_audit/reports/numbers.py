"""How the reports print a number: one format for the page, the Markdown and the review section."""

from __future__ import annotations


def fnum(x: float | None, kind: str = "g") -> str:
    """A number as printed on the page (summary.json keeps it unrounded)."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if kind == "pct":
        return f"{100 * x:.1f}%"
    if kind == "f":
        return f"{x:.3f}"
    if kind == "s":
        return f"{x:.2f}"
    return f"{x:.3g}"
