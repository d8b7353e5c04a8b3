"""The report's sections: the numbers each one shows (see :mod:`noise_audit.reports.summary`).

Each function takes the :class:`~noise_audit.reports.audit_data.AuditedSamples`
(``a``) and returns the JSON-ready dict of its section, which
``summary.json`` stores and the page and the Markdown render.
"""

from __future__ import annotations

import numpy as np

from noise_audit.errors import NoiseAuditError
from noise_audit.metrics import calibration, evaluate, flag_metrics, pr_curve
from noise_audit.signals import SHOWN, suspicion
from noise_audit.store.labels import warn_if_labels_changed
from noise_audit.store.ownership import audit_fields

def _stats(values):
    v = np.asarray(values, float)
    if not len(v):
        return {"n": 0, "mean": None, "median": None, "std": None, "min": None, "max": None}
    return {"n": int(len(v)), "mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std()),
            "min": float(v.min()), "max": float(v.max())}


# The signals the report compares: name -> audit field suffix (noise_audit.signals).
SIGNALS = {s.name: s.field for s in SHOWN}
PR_POINTS = 400  # precision-recall curves are thinned to this many points in summary.json


def overview(a, results):
    n = len(results.ids)
    out = {
        "dataset": a.dataset.name, "key": a.key, "label_field": a.config.get("label_field"),
        "n_samples": n, "n_in_report": len(a), "n_train": int((~a.is_test).sum()), "n_held_out": int(a.is_test.sum()),
        "n_classes": len(a.classes), "classes": a.classes,
        "num_label_issues": int(results.num_label_issues),
        "label_error_rate": float(results.num_label_issues / n) if n else 0.0,
        "influence_method": a.config.get("influence_method"),
        "test_accuracy": float(results.test_accuracy), "test_f1_macro": float(results.test_f1_macro),
        "labels_changed": (warn_if_labels_changed(a.dataset, a.key) or {}).get("message"),  # None: as audited
    }
    return out


def data(a, per_class):
    counts = {}
    for k, c in enumerate(a.classes):
        m = a.labels == k
        counts[c] = {"train": int((m & ~a.is_test).sum()), "held_out": int((m & a.is_test).sum()), "total": int(m.sum())}
    rng = np.random.default_rng(0)
    examples = {}
    for k, c in enumerate(a.classes):
        members = np.flatnonzero((a.labels == k) & ~a.is_test)
        if not len(members):
            members = np.flatnonzero(a.labels == k)
        chosen = np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False)) if len(members) else []
        examples[c] = [a.entry(i) for i in chosen]
    return {"class_counts": counts, "split": a.config.get("split"), "examples": examples}


def model(a, results):
    cm = np.asarray(results.test_confusion)
    per_class = {}
    for k, c in enumerate(a.classes):
        tp, pred, true = cm[k, k], cm[:, k].sum(), cm[k].sum()
        p = float(tp / pred) if pred else 0.0
        r = float(tp / true) if true else 0.0
        per_class[c] = {"precision": p, "recall": r, "f1": (2 * p * r / (p + r)) if p + r else 0.0, "support": int(true)}
    history = dict(results.history or {})
    return {
        "history": {"train_loss": list(history.get("train_loss", [])), "val_loss": list(history.get("val_loss", [])),
                    "grad_norm": history.get("grad_norm"), "steps_per_point": 10,
                    # the linear head starts from zero weights: uniform predictions, loss ln C
                    "initial_loss": None if a.config.get("train_last_block") else float(np.log(len(a.classes)))},
        "regularization": a.config.get("regularization"), "n_parameters": a.config.get("n_parameters"),
        # the ranking's share of average influence and how it was chosen (core/weight_probe.py; None: before the choice)
        "influence_weight": a.config.get("influence_weight"),
        "influence_weight_requested": a.config.get("influence_weight_requested"),
        "influence_weight_probe": a.config.get("influence_weight_probe"),
        "influence_weight_note": a.config.get("influence_weight_note"),
        "test_accuracy": float(results.test_accuracy), "test_f1_macro": float(results.test_f1_macro),
        "test_confusion": cm.tolist(), "per_class": per_class,
    }


def scores(a):
    infl, score = a.signals["average_influence"], a.signals["corruption_score"]
    threshold = float(score[a.suspect].min()) if a.suspect.any() else None
    return {
        "average_influence_train_by_label": {
            c: _stats(infl[(a.labels == k) & ~a.is_test]) for k, c in enumerate(a.classes)},
        "corruption_score_by_label": {c: _stats(score[a.labels == k]) for k, c in enumerate(a.classes)},
        "suspect_threshold": threshold,
        "n_suspects": int(a.suspect.sum()),
    }


def influence_extremes(a, k):
    out = {}
    infl = a.signals["average_influence"]
    for c_idx, c in enumerate(a.classes):
        members = np.flatnonzero((a.labels == c_idx) & ~a.is_test)
        order = members[np.argsort(infl[members], kind="stable")]
        out[c] = {"lowest": [a.entry(i) for i in order[:k]], "highest": [a.entry(i) for i in order[::-1][:k]]}
    return out


def suspects(a, results, top_n):
    order = np.argsort(-a.signals["corruption_score"], kind="stable")[:top_n]
    top = [dict(a.entry(i), rank=r + 1) for r, i in enumerate(order)]
    per_class = {c: int(results.label_issues_per_class.get(c, 0)) for c in a.classes}
    out = {"num_label_issues": int(results.num_label_issues), "label_issues_per_class": per_class, "top": top}
    if a.truth is not None:
        out["flipped_per_class"] = {c: int((a.truth & (a.labels == k)).sum()) for k, c in enumerate(a.classes)}
        out["flagged_and_flipped_per_class"] = {
            c: int((a.truth & a.suspect & (a.labels == k)).sum()) for k, c in enumerate(a.classes)}
    return out


def _choose_explained(a, n):
    """Up to ``n`` held-out samples, one per class in turn, drawn with a fixed seed."""
    rng = np.random.default_rng(0)
    pools = [list(rng.permutation(np.flatnonzero((a.labels == k) & a.is_test))) for k in range(len(a.classes))]
    chosen = []
    while len(chosen) < n and any(pools):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop(0)))
    return chosen


def explanations(a, n, k):
    from noise_audit.core.explain import most_influential_many

    chosen = _choose_explained(a, n)
    if not chosen:
        return []

    def enrich(e):
        j = a.index.get(e["id"])
        base = a.entry(j) if j is not None else {key: e[key] for key in ("id", "filepath", "label")}
        return dict(base, influence_on_target=e["influence"])

    explained = most_influential_many(a.dataset, [str(a.ids[i]) for i in chosen], a.key, k=k)
    return [{"target": a.entry(i), "most": [enrich(e) for e in ex["most"]], "least": [enrich(e) for e in ex["least"]]}
            for i, ex in zip(chosen, explained)]


def _thin(curve, n=PR_POINTS):
    m = len(curve["recall"])
    if m <= n:
        return curve
    keep = np.unique(np.linspace(0, m - 1, n).round().astype(int))
    return {k: [v[i] for i in keep] for k, v in curve.items()}


def truth(a, truth_field):
    f = audit_fields(a.key)
    label_field = a.config.get("label_field")
    metrics = {name: evaluate(a.view, f[suffix], truth_field, label_field=label_field, cleaning=False)
               for name, suffix in SIGNALS.items()}
    curves = {}
    for name, suffix in SIGNALS.items():
        curves[name] = _thin(pr_curve(suspicion(name, a.signals[name]), a.truth))
    flagged = a.suspect
    flags = flag_metrics(flagged, a.truth)  # sklearn's precision and recall
    return {
        "field": truth_field, "n_flipped": int(a.truth.sum()), "n_clean": int((~a.truth).sum()),
        "n_flagged": int(flagged.sum()), "n_flagged_and_flipped": int((flagged & a.truth).sum()),
        "flagged_precision": flags["precision"] if flagged.any() else None,
        "flagged_recall": flags["recall"],
        "metrics": metrics, "pr_curves": curves,
        "calibration": calibration(a.signals["corruption_score"], a.truth),
        "cleaning": _cleaning(a),
    }


def _cleaning(a):
    """What cleaning buys (see :mod:`noise_audit.core.cleaning`), or None where it cannot be measured."""
    from noise_audit.core.cleaning import audit_cleaning_gain

    try:
        return audit_cleaning_gain(a.dataset, a.config, a.results, a.truth, a.suspect, ids=a.ids)
    except NoiseAuditError as e:
        return {"unavailable": str(e)}


def run(a):
    timings = dict(a.config.get("timings") or {})
    config = {k: v for k, v in a.config.items() if k not in ("timings", "fields")}
    return {"config": config, "fields": a.config.get("fields"), "audit_timings": timings}


