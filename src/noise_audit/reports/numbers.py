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


def influence_weight_text(m: dict) -> str:
    """The ranking's influence weight and how it was chosen, in words, from the report's model
    section (an audit from before the choice ranked with ½)."""
    weight, probe = m.get("influence_weight"), m.get("influence_weight_probe")
    if weight is None:
        return "ranking: average influence weighted 0.5 (fixed: an audit from before the weight was chosen)"
    if probe:
        aps = ", ".join(f"{float(w):g}: {fnum(ap, 'f')}" for w, ap in probe["average_precision"].items())
        return (f"ranking: average influence weighted {weight:g}, chosen by {probe['plantings']} plantings of "
                f"{fnum(probe['planted'])} flips (AP of each weight at finding them: {aps})")
    if m.get("influence_weight_requested") == "auto":
        return f"ranking: average influence weighted {weight:g} (not probed: {m.get('influence_weight_note')})"
    return f"ranking: average influence weighted {weight:g} (fixed by the caller)"
