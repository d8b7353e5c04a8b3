"""Stage 7, metrics: how well a score finds known label flips.

Ranking metrics, computed with scikit-learn, for a score where higher means
"more likely flipped":

- AUROC: probability that a random flipped sample outranks a random clean one;
- average precision: area under the precision-recall curve;
- precision@k with ``k`` = number of flipped samples (= recall@k then);
- recall after inspecting the top 5%, 10% and 20% of the data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from noise_audit import validation
from noise_audit.errors import NoiseAuditError
from noise_audit.signals import higher_is_suspicious as _higher_is_suspicious

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection
    from fiftyone.core.dataset import Dataset

INSPECT_FRACTIONS: tuple[float, ...] = (0.05, 0.10, 0.20)


def detection_metrics(scores: npt.ArrayLike, flipped: npt.ArrayLike) -> dict[str, Any]:
    """Detection metrics of ``scores`` (higher = suspicious) against ``flipped``."""
    scores = np.asarray(scores, dtype=float)
    flipped = np.asarray(flipped, dtype=bool)
    if flipped.all() or not flipped.any():
        raise NoiseAuditError("Need both flipped and clean samples to evaluate detection")
    order = np.argsort(-scores, kind="stable")
    k = int(flipped.sum())
    out: dict[str, Any] = {
        "auroc": float(roc_auc_score(flipped, scores)),
        "average_precision": float(average_precision_score(flipped, scores)),
        "precision_at_k": float(flipped[order[:k]].mean()),
        "k": k,
        "n": len(scores),
    }
    for frac in INSPECT_FRACTIONS:
        m = int(np.ceil(frac * len(scores)))
        out[f"recall_at_{int(frac * 100)}pct"] = float(flipped[order[:m]].sum() / k)
    return out


def calibration(probability: npt.ArrayLike, flipped: npt.ArrayLike, bins: int = 10) -> dict[str, Any]:
    """How well a probability of being wrong matches the observed share of flips.

    Returns ``{"ece", "mean_score", "error_rate", "bins": [...]}``: the
    expected calibration error over ``bins`` equal-width bins (the bins'
    ``|mean score - share flipped|``, weighted by their size), the mean score
    against the true share of flips, and per bin its range, count, mean score
    and share flipped (a reliability diagram's points).
    """
    p, t = np.asarray(probability, dtype=float), np.asarray(flipped, dtype=bool)
    which = np.clip((p * bins).astype(int), 0, bins - 1)
    table: list[dict[str, Any]] = []
    ece = 0.0
    for k in range(bins):
        m = which == k
        row: dict[str, Any] = {"low": k / bins, "high": (k + 1) / bins, "n": int(m.sum()), "mean_score": None,
                               "share_flipped": None}
        if m.any():
            row["mean_score"], row["share_flipped"] = float(p[m].mean()), float(t[m].mean())
            ece += m.mean() * abs(row["mean_score"] - row["share_flipped"])
        table.append(row)
    return {"ece": float(ece), "mean_score": float(p.mean()), "error_rate": float(t.mean()), "bins": table}


def flag_metrics(flags: npt.ArrayLike, flipped: npt.ArrayLike) -> dict[str, float]:
    """Precision, recall and F1 of boolean ``flags`` against ``flipped``."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(np.asarray(flipped, bool), np.asarray(flags, bool),
                                                 average="binary", zero_division=0)
    return {"precision": float(p), "recall": float(r), "f1": float(f), "n_flagged": int(np.sum(flags))}


def pr_curve(scores: npt.ArrayLike, flipped: npt.ArrayLike) -> dict[str, list[float]]:
    """Precision-recall curve points ``{"precision": [...], "recall": [...]}``."""
    p, r, _ = precision_recall_curve(np.asarray(flipped, bool), np.asarray(scores, float))
    return {"precision": p.tolist(), "recall": r.tolist()}


def per_label_table(scores: npt.ArrayLike, flipped: npt.ArrayLike, labels: npt.ArrayLike) -> list[dict[str, Any]]:
    """The seed's table: per given label, mean score of clean and flipped samples."""
    scores, flipped, labels = np.asarray(scores, float), np.asarray(flipped, bool), np.asarray(labels)
    rows = []
    for label in sorted(set(labels.tolist())):
        m = labels == label
        rows.append(
            {
                "label": label,
                "n_clean": int((m & ~flipped).sum()),
                "n_flipped": int((m & flipped).sum()),
                "mean_clean": float(scores[m & ~flipped].mean()) if (m & ~flipped).any() else None,
                "mean_flipped": float(scores[m & flipped].mean()) if (m & flipped).any() else None,
            }
        )
    return rows


def evaluate(samples: SampleCollection, score_field: str, truth_field: str = "label_flipped",
             label_field: str | None = None, higher_is_suspicious: bool | None = None,
             cleaning: bool = True) -> dict[str, Any]:
    """Detection metrics of a score field against a boolean truth field.

    Args:
        samples: a FiftyOne collection (e.g. the audited view).
        score_field: a numeric field, e.g. ``"noise_audit_corruption_score"``.
        truth_field: a ``BooleanField``, ``True`` where the label was
            flipped (any other field type is an error).
        label_field: optional label field for the per-label table
            (``"<field>.label"`` values); default: none.
        higher_is_suspicious: direction of the score; by default that of the
            audit signal the field holds (:func:`noise_audit.signals.higher_is_suspicious`:
            ``False`` for ``*_influence`` and ``*_label_quality``).

        cleaning: for an audit's corruption score, also refit the audit's head
            without its suspects, random samples and the flipped ones (what
            cleaning buys; seconds).

    On the boxes of a ``Detections`` field, ``score_field`` and ``truth_field``
    name attributes of the boxes (e.g. an audit's ``{key}_corruption_score``
    and the ``label_flipped`` that :func:`noise_audit.inject_label_noise`
    wrote on the noisy copy's boxes): one row per box (see
    :func:`object_paths`); no cleaning refit.

    Returns:
        the metrics of :func:`detection_metrics`, plus ``per_label`` when
        ``label_field`` is given; for an audit's corruption score also
        ``calibration`` (:func:`calibration`), ``cleaning``
        (:func:`noise_audit.core.cleaning.audit_cleaning_gain`) and
        ``labels_changed``: ``None``, or how the labels differ from those the
        audit read (:func:`noise_audit.store.labels.labels_changed`; also
        logged as one warning).
    """
    validation.non_empty(samples, "The view is empty")
    schema = samples.get_field_schema()
    paths = object_paths(samples, score_field, truth_field) if score_field not in schema else None
    if paths is not None:  # attributes of the boxes of a Detections field: one row per box
        return _evaluate_objects(samples, paths, higher_is_suspicious, bool(label_field))
    if score_field not in schema:
        raise NoiseAuditError(f"Field {score_field!r} not found")
    validation.truth_field(samples, truth_field)  # a BooleanField, or one clear error
    scores, truth = samples.values([score_field, truth_field])
    keep = [i for i, (s, t) in enumerate(zip(scores, truth)) if s is not None and t is not None]
    if not keep:
        raise NoiseAuditError(f"No sample has both {score_field!r} and {truth_field!r}")
    scores = np.array([scores[i] for i in keep], dtype=float)
    truth = np.array([truth[i] for i in keep], dtype=bool)
    if higher_is_suspicious is None:
        higher_is_suspicious = _higher_is_suspicious(score_field)
    signed = scores if higher_is_suspicious else -scores
    out = detection_metrics(signed, truth)
    if label_field:
        labels = samples.values(f"{label_field}.label")
        out["per_label"] = per_label_table(scores, truth, [labels[i] for i in keep])
    out["score_field"], out["truth_field"] = score_field, truth_field
    key = _audit_of_score(samples._dataset, score_field)
    if key is not None:  # an audit's corruption score: a probability, and a head to refit
        from noise_audit.store.labels import warn_if_labels_changed

        out["labels_changed"] = warn_if_labels_changed(samples._dataset, key)  # scores of labels edited since?
        out["calibration"] = calibration(scores, truth)
        if cleaning:
            out["cleaning"] = _cleaning(samples, key, truth_field)
    return out


def object_paths(samples: SampleCollection, score_field: str, truth_field: str) -> tuple[str, str, str] | None:
    """``(Detections field, score path, truth path)`` when ``score_field`` is an attribute of the boxes of a
    ``Detections`` field (its name, e.g. ``"noise_audit_corruption_score"``, or its path
    ``"<field>.detections.<name>"``) whose boxes also carry ``truth_field``; None when no box field has it."""
    import fiftyone as fo

    flat = samples.get_field_schema(flat=True)
    for field in sorted(samples.get_field_schema(embedded_doc_type=fo.Detections)):
        prefix = f"{field}.detections."
        name = score_field[len(prefix):] if score_field.startswith(prefix) else score_field
        if prefix + name not in flat:
            continue
        truth = truth_field[len(prefix):] if truth_field.startswith(prefix) else truth_field
        if prefix + truth not in flat:
            raise NoiseAuditError(f"The boxes of {field!r} have {name!r} but no {truth!r} attribute to compare it to")
        if not isinstance(flat[prefix + truth], fo.BooleanField):
            raise NoiseAuditError(f"{prefix + truth!r} is a {type(flat[prefix + truth]).__name__}, not a boolean "
                                  "attribute (True where the box's class was flipped)")
        return field, prefix + name, prefix + truth
    return None


def _evaluate_objects(samples: SampleCollection, paths: tuple[str, str, str], higher_is_suspicious: bool | None,
                      per_label: bool) -> dict[str, Any]:
    """:func:`evaluate` over the boxes: every box with both a score and a truth is one row."""
    field, score_path, truth_path = paths
    scores, truth, labels = samples.values([score_path, truth_path, f"{field}.detections.label"])
    rows = [(s, t, lab) for ss, ts, ls in zip(scores, truth, labels) for s, t, lab in zip(ss or [], ts or [], ls or [])
            if s is not None and t is not None]
    if not rows:
        raise NoiseAuditError(f"No box has both {score_path!r} and {truth_path!r}")
    score = np.array([r[0] for r in rows], dtype=float)
    flipped = np.array([r[1] for r in rows], dtype=bool)
    name = score_path.rsplit(".", 1)[1]
    if higher_is_suspicious is None:
        higher_is_suspicious = _higher_is_suspicious(name)
    out = detection_metrics(score if higher_is_suspicious else -score, flipped)
    if per_label:
        out["per_label"] = per_label_table(score, flipped, [r[2] for r in rows])
    out["score_field"], out["truth_field"], out["objects"] = score_path, truth_path, True
    if name.endswith("_corruption_score"):
        out["calibration"] = calibration(score, flipped)
    return out


def _audit_of_score(dataset: Dataset, score_field: str) -> str | None:
    """The key of the audit whose corruption score ``score_field`` is, else None."""
    from noise_audit.store.fields import field_info, is_own_field

    info = field_info(dataset, score_field) or {}
    key = info.get("key")
    if key and info.get("signal") == "corruption_score" and is_own_field(dataset, score_field) \
            and dataset.has_run(key):
        return key
    return None


def _cleaning(samples: SampleCollection, key: str, truth_field: str) -> dict[str, Any]:
    """What cleaning buys for audit ``key`` (see :mod:`noise_audit.core.cleaning`)."""
    import json

    from noise_audit.core.cleaning import audit_cleaning_gain
    from noise_audit.store.ownership import audit_fields
    from noise_audit.store.runs import load_audit

    dataset = samples._dataset
    config, results = load_audit(dataset, key)
    config = json.loads(json.dumps(config.serialize(), default=str))
    suspect_field = audit_fields(key)["suspect"]
    audited = samples.select(list(results.ids))
    ids, truth, suspect = audited.values(["id", truth_field, suspect_field])
    try:
        return audit_cleaning_gain(dataset, config, results, [bool(t) for t in truth], [bool(v) for v in suspect],
                                   ids=ids)
    except NoiseAuditError as e:
        return {"unavailable": str(e)}
