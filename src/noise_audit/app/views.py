"""What the App shows of an audit: grid views, histograms, the suspect table.

The FiftyOne plugin's panel and operators are thin shells over these
functions, so everything they display can be computed (and tested) from
Python:

- :func:`top_suspects`, :func:`flagged`, :func:`flipped` and :func:`score_bin`
  return the views the panel's buttons and histogram clicks load into the grid;
- :func:`histogram` bins a signal by given label, split clean/flipped when a
  truth field exists (the seed's ``plot_influence_distribution_by_label``),
  and :func:`histogram_traces` turns it into plotly bar traces;
- :func:`suspects_table` lists the top-N samples with their scores;
- :func:`summary` gathers the run's facts and, with a truth field, the
  detection metrics of the corruption score and of each single signal;
  :func:`summary_markdown` is the panel's header text made of them.

Names from the data reach the App escaped for where they are shown: Markdown
through :func:`noise_audit.reports.markdown.md`, plotly's legend (which reads
HTML) through :func:`noise_audit.reports.html.esc`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import fiftyone as fo
from fiftyone import ViewField as F

from noise_audit import validation
from noise_audit.errors import NoiseAuditError
from noise_audit.signals import SHOWN
from noise_audit.store.fields import is_own_field
from noise_audit.store.labels import labels_changed
from noise_audit.metrics import evaluate
from noise_audit.reports.html import esc
from noise_audit.reports.markdown import md
from noise_audit.store.ownership import audit_fields
from noise_audit.store.runs import load_audit

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection
    from fiftyone.core.dataset import Dataset
    from fiftyone.core.view import DatasetView

# The signals a histogram or a metric row can show (by field suffix), with how to read them.
SIGNALS: dict[str, str] = {cast(str, s.field): s.label for s in SHOWN}
CLEAN, FLIPPED = "clean", "flipped"
# Bar colours per truth group; labels get plotly's default palette.
GROUP_COLORS = {CLEAN: "#4c78a8", FLIPPED: "#e45756"}
LABEL_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac", "#72b7b2", "#eeca3b", "#e45756")


def _field(key: str, signal: str) -> str:
    fields = audit_fields(key)
    if signal not in fields:
        raise NoiseAuditError(f"Unknown signal {signal!r}; one of {sorted(SIGNALS)}")
    return fields[signal]


def truth_fields(dataset: Dataset) -> list[str]:
    """Boolean sample fields that can mark known flips (not an audit's own ``*_suspect``)."""
    schema = dataset.get_field_schema(ftype=fo.BooleanField)
    return sorted(n for n, f in schema.items() if not (is_own_field(dataset, n) and (f.info or {}).get("signal")))


def default_truth_field(dataset: Dataset) -> str | None:
    """``label_flipped`` if present, else the only candidate, else ``None``."""
    names = truth_fields(dataset)
    if "label_flipped" in names:
        return "label_flipped"
    return names[0] if len(names) == 1 else None


def audited(samples: SampleCollection, key: str) -> DatasetView:
    """The samples of ``samples`` that audit ``key`` scored."""
    return samples.exists(_field(key, "corruption_score"))


def top_suspects(samples: SampleCollection, key: str) -> DatasetView:
    """Audited samples, most suspicious first (by corruption score)."""
    return audited(samples, key).sort_by(_field(key, "corruption_score"), reverse=True)


def flagged(samples: SampleCollection, key: str) -> DatasetView:
    """Samples the audit flagged as suspects, most suspicious first."""
    return top_suspects(samples, key).match(F(_field(key, "suspect")) == True)  # noqa: E712


def flipped(samples: SampleCollection, key: str, truth_field: str) -> DatasetView:
    """Samples whose label is known to be flipped, most suspicious first."""
    validation.truth_field(samples, truth_field, optional=True)
    return top_suspects(samples, key).match(F(truth_field) == True)  # noqa: E712


def score_bin(samples: SampleCollection, key: str, signal: str, low: float, high: float, label: str | None = None,
              group: str | None = None, truth_field: str | None = None) -> DatasetView:
    """Samples in one histogram bar: ``low <= signal < high``, one label, one group."""
    field = _field(key, signal)
    view = audited(samples, key).match((F(field) >= low) & (F(field) < high))
    if label is not None:
        view = view.match(F(f"{_label_field(samples, key)}.label") == label)
    if group in (CLEAN, FLIPPED):
        validation.truth_field(samples, truth_field, optional=True)
        view = view.match(F(truth_field) == (group == FLIPPED))
    return view.sort_by(_field(key, "corruption_score"), reverse=True)


def _label_field(samples: SampleCollection, key: str) -> str:
    config, _ = load_audit(samples._dataset, key)
    return config.label_field


def histogram(samples: SampleCollection, key: str, signal: str = "corruption_score", truth_field: str | None = None,
              bins: int = 30) -> dict[str, Any]:
    """Counts of ``signal`` per given label (and clean/flipped), on shared bins.

    Returns:
        ``{"signal", "field", "edges", "series": [{"label", "group", "counts",
        "n"}]}`` where ``group`` is ``"clean"``/``"flipped"`` with a truth
        field and ``None`` without.
    """
    validation.truth_field(samples, truth_field, optional=True)
    view = audited(samples, key)
    field = _field(key, signal)
    lo, hi = view.bounds(field)
    if lo is None:
        raise NoiseAuditError(f"No sample in the view has {field!r}")
    # FiftyOne's histogram per series, on bins shared by all of them; the upper
    # edge is nudged up so that the maximum falls in the last bin.
    hi = math.nextafter(max(hi, lo + 1e-9), math.inf)
    label_path = f"{_label_field(samples, key)}.label"
    groups = [(CLEAN, False), (FLIPPED, True)] if truth_field else [(None, None)]
    series, edges = [], None
    for label in sorted(view.distinct(label_path)):
        for group, flag in groups:
            part = view.match(F(label_path) == label)
            if flag is not None:
                part = part.match(F(truth_field) == flag)
            counts, edges, _ = part.histogram_values(field, bins=bins, range=(lo, hi))
            series.append({"label": label, "group": group, "counts": list(counts), "n": int(sum(counts))})
    edges = np.asarray(edges, dtype=float)
    return {"signal": signal, "field": field, "edges": edges.tolist(), "series": series}


def histogram_traces(hist: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Plotly bar traces of :func:`histogram`; each bar's id is ``label|group|bin``."""
    edges = np.asarray(hist["edges"])
    centers, widths = ((edges[:-1] + edges[1:]) / 2).tolist(), np.diff(edges).tolist()
    labels = sorted({s["label"] for s in hist["series"]})
    traces = []
    for s in hist["series"]:
        color = LABEL_COLORS[labels.index(s["label"]) % len(LABEL_COLORS)]
        name = f"{s['label']} · {s['group']}" if s["group"] else s["label"]
        marker = {"color": color, "opacity": 0.8}
        if s["group"] == FLIPPED:  # flipped bars: hatched, outlined in red
            marker.update(pattern={"shape": "x", "fgcolor": "#ffffff"}, line={"color": GROUP_COLORS[FLIPPED], "width": 1.5})
        traces.append({  # plotly shows a trace's name as HTML: escaped
            "type": "bar", "name": esc(f"{name} ({s['n']})"), "x": centers, "y": s["counts"], "width": widths,
            "ids": [f"{s['label']}|{s['group'] or ''}|{i}" for i in range(len(centers))], "marker": marker,
        })
    return traces


def bin_of(hist: Mapping[str, Any], bar_id: str) -> tuple[float, float, str, str | None]:
    """``(low, high, label, group)`` of the bar ``bar_id`` of :func:`histogram_traces`."""
    label, group, index = bar_id.rsplit("|", 2)
    i = int(index)
    return hist["edges"][i], hist["edges"][i + 1], label, group or None


def suspects_table(samples: SampleCollection, key: str, n: int = 25,
                   truth_field: str | None = None) -> list[dict[str, Any]]:
    """The ``n`` most suspicious samples as rows for a table.

    Each row: ``id``, ``filepath``, ``given`` and ``predicted`` label, the
    prediction's confidence, ``corruption_score``, ``label_quality``,
    ``influence``, ``self_influence``, ``suspect`` and, with a truth field,
    ``flipped``.
    """
    validation.truth_field(samples, truth_field, optional=True)
    fields = audit_fields(key)
    label_field = _label_field(samples, key)
    view = top_suspects(samples, key).limit(n)
    paths = ["id", "filepath", f"{label_field}.label", f"{fields['prediction']}.label", f"{fields['prediction']}.confidence",
             fields["corruption_score"], fields["label_quality"], fields["influence"], fields["self_influence"], fields["suspect"]]
    if truth_field:
        paths.append(truth_field)
    columns = view.values(paths)
    names = ["id", "filepath", "given", "predicted", "confidence", "corruption_score", "label_quality",
             "influence", "self_influence", "suspect"] + (["flipped"] if truth_field else [])
    return [dict(zip(names, row)) for row in zip(*columns)]


def summary(samples: SampleCollection, key: str, truth_field: str | None = None) -> dict[str, Any]:
    """Facts of audit ``key`` and, with ``truth_field``, detection metrics per signal."""
    validation.truth_field(samples, truth_field, optional=True)
    config, results = load_audit(samples._dataset, key)
    fields = audit_fields(key)
    view = audited(samples, key)
    out = {
        "key": key, "label_field": config.label_field, "backbone": config.backbone,
        "embeddings_field": config.get("embeddings_field"),  # None: features from the backbone
        "influence_method": config.influence_method, "n_samples": len(view),
        "n_flagged": len(view.match(F(fields["suspect"]) == True)),  # noqa: E712
        "num_label_issues": int(results.num_label_issues),
        "test_accuracy": getattr(results, "test_accuracy", None),
        "classes": list(results.classes), "timings": dict(getattr(config, "timings", {}) or {}),
        "truth_field": truth_field, "metrics": {},
        "labels_changed": (labels_changed(samples._dataset, key) or {}).get("message"),  # None: as audited
    }
    if truth_field:
        for signal in SIGNALS:
            m = evaluate(view, fields[signal], truth_field, cleaning=False)
            out["metrics"][signal] = {k: m[k] for k in ("auroc", "average_precision", "precision_at_k", "k", "n", "recall_at_10pct")}
    return out


def summary_markdown(s: Mapping[str, Any]) -> str:
    """The panel's header: the facts of :func:`summary` as Markdown, every name escaped."""
    share = s["num_label_issues"] / max(s["n_samples"], 1)
    acc = f", test accuracy {s['test_accuracy']:.1%}" if s.get("test_accuracy") is not None else ""
    lines = [f"**{s['n_samples']}** samples audited on {md(s['label_field'])} ({len(s['classes'])} classes){acc}. "
             f"The audit estimates **{s['num_label_issues']}** label errors ({share:.1%}, the sum of the scores); "
             f"**{s['n_flagged']}** samples flagged as suspects.",
             "The corruption score is the estimated probability that the given label is wrong "
             "(0.7: about seven in ten labels scored so are wrong).",
             (f"Features from the field {md(s['embeddings_field'])}" if s.get("embeddings_field")
              else f"Backbone {md(s['backbone'])}") + f", influence by {md(s['influence_method'])}."]
    if s.get("labels_changed"):
        lines.insert(0, f"**Warning:** {md(s['labels_changed'])}")
    if s["truth_field"]:
        m = s["metrics"]["corruption_score"]
        lines.append(f"Against {md(s['truth_field'])} ({m['k']} flipped): corruption score AUROC **{m['auroc']:.3f}**, "
                     f"AP **{m['average_precision']:.3f}**, precision@k **{m['precision_at_k']:.3f}**.")
    return "\n\n".join(lines)
