"""The per-sample signals of an audit, in one table.

Every part that names, stores, orients or shows a signal reads it from
:data:`SIGNALS`: the results (``AuditResults.signals``), the fields an audit
writes (``{key}_{field}``), the metrics (which way is suspicious), the App's
views and the report (how to read it).

One rule for direction, as in cleanlab: a signal is either *low when
suspicious* (average influence, label quality) or *high when suspicious*
(everything else); :func:`suspicion` turns any of them into "higher = more
likely mislabeled".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np


@dataclass(frozen=True)
class Signal:
    """One per-sample signal.

    Attributes:
        name: its key in ``AuditResults.signals`` and in metrics and reports.
        field: the suffix of the sample field an audit writes it to
            (``{key}_{field}``), or ``None`` when it is kept in the run's
            results only.
        low_is_suspicious: whether low values mark suspects.
        label: how to read it, for plots, tables and the App.
    """

    name: str
    field: str | None
    low_is_suspicious: bool
    label: str


SIGNALS: tuple[Signal, ...] = (
    Signal("average_influence", "influence", True, "average influence (low = suspicious)"),
    Signal("self_influence", "self_influence", False, "self-influence (high = suspicious)"),
    Signal("label_quality", "label_quality", True, "cleanlab label quality (low = suspicious)"),
    Signal("loss", None, False, "in-sample loss (high = suspicious)"),
    Signal("loo_loss", None, False, "leave-one-out loss (high = suspicious)"),
    Signal("corruption_score", "corruption_score", False,
           "corruption score (estimated probability that the given label is wrong)"),
)
BY_NAME: dict[str, Signal] = {s.name: s for s in SIGNALS}
BY_FIELD: dict[str, Signal] = {s.field: s for s in SIGNALS if s.field}
# The signals an audit writes to sample fields, in table order.
FIELD_SIGNALS: tuple[Signal, ...] = tuple(s for s in SIGNALS if s.field)
# The same as shown to users (the App, the report, the CLI): the score first.
SHOWN: tuple[Signal, ...] = (BY_NAME["corruption_score"],) + tuple(
    s for s in FIELD_SIGNALS if s.name != "corruption_score")


def suspicion(name: str, values: np.ndarray) -> np.ndarray:
    """``values`` of signal ``name`` oriented so that higher = more suspicious."""
    values = np.asarray(values, dtype=float)
    return -values if BY_NAME[name].low_is_suspicious else values


def signal_of_field(field_name: str) -> Signal | None:
    """The signal an audit field holds, by its suffix (``{key}_{field}``), or ``None``.

    The longest matching suffix wins, so ``x_self_influence`` is
    self-influence, not average influence.
    """
    matches = [s for s in FIELD_SIGNALS if field_name == s.field or field_name.endswith("_" + cast(str, s.field))]
    return max(matches, key=lambda s: len(cast(str, s.field)), default=None)


def higher_is_suspicious(field_name: str) -> bool:
    """Direction of a score field: that of the audit signal it holds, else high = suspicious."""
    signal = signal_of_field(field_name)
    return signal is None or not signal.low_is_suspicious
