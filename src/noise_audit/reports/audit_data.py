"""Reading an audit for the report: its samples as arrays, in the view's order.

:func:`audited_view` finds the audit and the audited samples within the
samples asked about (checking that its fields are all there);
:class:`AuditedSamples` reads every field the report shows in one query.
The report never writes to the dataset.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from noise_audit.errors import NoiseAuditError
from noise_audit.store.ownership import audit_fields, config_fields
from noise_audit.store.runs import load_audit


def audited_view(samples, key):
    """``(dataset, config, results, view)``: the audit and its samples within ``samples``."""
    if samples is None or not hasattr(samples, "_dataset"):
        raise NoiseAuditError("samples must be a FiftyOne dataset or view")
    dataset = samples._dataset
    config, results = load_audit(dataset, key)
    if config.get("object_field"):  # rows are boxes: the report and the panel show images (issue 26, item 3)
        raise NoiseAuditError(f"{key!r} audits the boxes of {config.object_field!r}: the report and the App's panel "
                              "do not show audits of boxes yet; use na.evaluate and the boxes' attributes")
    view = samples.select(list(results.ids), ordered=True)
    if len(view) == 0:
        raise NoiseAuditError(f"None of the samples audited under {key!r} are in this view")
    schema = dataset.get_field_schema()
    missing = [f for f in config_fields(config, key).values() if f not in schema]  # older audits own fewer
    if missing:
        raise NoiseAuditError(f"The audit {key!r} lacks its fields {missing}; re-run the audit")
    return dataset, config, results, view


class AuditedSamples:
    """The audited samples as arrays (view order) plus the run's config and results."""

    def __init__(self, dataset, config, results, view, key, truth_field):
        f = audit_fields(key)
        self.dataset, self.key, self.results, self.view = dataset, key, results, view
        serial = json.loads(json.dumps(config.serialize(), default=str))  # OrderedDicts -> plain JSON
        self.config = {k: v for k, v in serial.items() if k not in ("cls", "type", "method")}
        self.classes = list(results.classes)
        names = ["id", "filepath", f["influence"], f["self_influence"], f["label_quality"],
                 f["corruption_score"], f["suspect"], f"{f['prediction']}.label", f"{f['prediction']}.confidence"]
        if truth_field:
            names.append(truth_field)
        values = view.values(names)
        self.ids = np.array(values[0])
        self.filepaths = np.array(values[1])
        self.signals = {
            "average_influence": np.array(values[2], float), "self_influence": np.array(values[3], float),
            "label_quality": np.array(values[4], float), "corruption_score": np.array(values[5], float),
        }
        self.suspect = np.array([bool(v) for v in values[6]])
        self.predicted = np.array([p if p is not None else "" for p in values[7]], dtype=object)
        self.confidence = np.array([c if c is not None else np.nan for c in values[8]], float)
        self.truth = np.array([bool(v) for v in values[9]]) if truth_field else None
        pos = {i: k for k, i in enumerate(results.ids)}
        idx = np.array([pos[i] for i in self.ids])
        self.labels = np.array(results.labels)[idx]
        self.is_test = np.array(results.is_test, dtype=bool)[idx]
        self.index = {i: k for k, i in enumerate(self.ids)}

    def __len__(self):
        return len(self.ids)

    def label_name(self, i):
        return self.classes[int(self.labels[i])]

    def entry(self, i):
        """One sample as shown on the page (and stored in summary.json)."""
        e = {
            "id": str(self.ids[i]), "filepath": str(self.filepaths[i]),
            "split": "held-out" if self.is_test[i] else "train",
            "label": self.label_name(i), "predicted": str(self.predicted[i]),
            "confidence": as_number(self.confidence[i]),
            **{name: as_number(v[i]) for name, v in self.signals.items()},
            "suspect": bool(self.suspect[i]),
        }
        if self.truth is not None:
            e["flipped"] = bool(self.truth[i])
        return e


def as_number(x: Any) -> float | None:
    """``x`` as a float for JSON, ``None`` for NaN."""
    x = float(x)
    return None if np.isnan(x) else x
