"""Numbers a reviewer can plan with: how many labels are wrong, where, and how many are left.

Every estimate rests on the corruption score, each sample's estimated
probability that its given label is wrong (:mod:`noise_audit.core.scores`),
over the samples the audit counts (its training rows; held-out labels are
taken as right, as the audit's own ``num_label_issues`` does).

- **Expected number of wrong labels** ``E = sum_i p_i`` with an interval
  from the **Poisson-binomial** distribution of the count: if each label is
  wrong independently with probability ``p_i``, the count has variance
  ``sum_i p_i (1 - p_i)``; the interval is the normal approximation
  ``E +- 1.96 sd`` (Lyapunov's central limit theorem), clipped to
  ``[0, n]``. It says how much the count varies *given* the scores, not how
  wrong the scores might be (their calibration is measured on the quality
  grid, ``docs/benchmarks.md``).
- **Per class**: the noise rate of a given label (the mean score of the
  samples that carry it) and its difficulty, the share of the class's
  held-out samples (whose labels the audit trusts) that the head gets wrong:
  a class both noisy and difficult needs the reviewer's closest look.
- **The review so far**: reviewed samples, confirmed errors (a decision
  whose label differs from the given one), kept labels, unsure ones; the
  precision of the review (confirmed errors per decided sample) beside the
  precision the audit expected (the mean score of the decided samples);
  and the errors still expected among the samples not decided (unreviewed
  or unsure), with their interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Z95 = 1.959963984540054  # the normal distribution's 97.5% quantile


def expected_count(p: npt.ArrayLike) -> dict[str, float]:
    """``{"expected", "sd", "low", "high"}`` of the number of wrong labels among rows with scores ``p``."""
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    expected, sd = float(p.sum()), float(np.sqrt((p * (1.0 - p)).sum()))
    return {"expected": expected, "sd": sd, "low": max(0.0, expected - Z95 * sd),
            "high": min(float(len(p)), expected + Z95 * sd)}


def class_difficulty(test_confusion: npt.ArrayLike | None, n_classes: int) -> list[float | None]:
    """Per class, the share of its held-out samples the head predicts wrong (``None``: no held-out samples)."""
    if test_confusion is None:
        return [None] * n_classes
    cm = np.asarray(test_confusion, dtype=float)
    support = cm.sum(1)
    return [float(1.0 - cm[k, k] / support[k]) if support[k] else None for k in range(n_classes)]


def review_estimates(scores: npt.ArrayLike, labels: npt.ArrayLike, is_test: npt.ArrayLike, classes: Sequence[str],
                     ids: Sequence[str], decided: Mapping[str, Mapping[str, Any]],
                     test_confusion: npt.ArrayLike | None = None) -> dict[str, Any]:
    """The estimates of the module doc for an audit and its current decisions.

    Args:
        scores, labels, is_test, classes, ids: the audit's, per sample (``labels`` index ``classes``).
        decided: ``{sample id: decision}`` (:func:`noise_audit.store.review.decisions`).
        test_confusion: the head's held-out confusion matrix (rows: given label).

    Returns:
        a JSON-ready dict: ``n_samples``, ``errors`` (:func:`expected_count`),
        ``rate``, ``per_class`` rows, and ``review``: ``reviewed``,
        ``decided``, ``confirmed_errors``, ``kept``, ``unsure``, ``precision``,
        ``expected_precision``, ``errors_left``, ``estimated_errors_after``,
        ``reviewed_held_out``.
    """
    p = np.asarray(scores, dtype=float)
    labels, counted = np.asarray(labels), ~np.asarray(is_test, dtype=bool)
    state = np.array([(decided.get(str(i)) or {}).get("decision") or "" for i in ids], dtype=object)
    confirmed = np.array([_confirms_error(decided.get(str(i))) for i in ids], dtype=bool)
    reviewed = state != ""
    decided_mask = reviewed & (state != "unsure")
    errors = expected_count(p[counted])
    difficulty = class_difficulty(test_confusion, len(classes))
    per_class = []
    for k, c in enumerate(classes):
        rows = counted & (labels == k)
        n = int(rows.sum())
        per_class.append({"class": c, "n": n, "expected_errors": float(p[rows].sum()),
                          "noise_rate": float(p[rows].mean()) if n else None, "difficulty": difficulty[k],
                          "confirmed_errors": int((rows & confirmed).sum()),
                          "reviewed": int((rows & reviewed).sum())})
    n_decided = int((counted & decided_mask).sum())
    n_confirmed = int((counted & confirmed).sum())
    left = expected_count(p[counted & ~decided_mask])
    review = {
        "reviewed": int((counted & reviewed).sum()), "decided": n_decided, "confirmed_errors": n_confirmed,
        "kept": n_decided - n_confirmed, "unsure": int((counted & (state == "unsure")).sum()),
        "precision": n_confirmed / n_decided if n_decided else None,
        "expected_precision": float(p[counted & decided_mask].mean()) if n_decided else None,
        "errors_left": left,
        "estimated_errors_after": {k: (n_confirmed + v if k in ("expected", "low", "high") else v)
                                   for k, v in left.items()},
        "reviewed_held_out": int((~counted & reviewed).sum()),
    }
    n_counted = int(counted.sum())
    return {"n_samples": n_counted, "errors": errors, "rate": errors["expected"] / n_counted if n_counted else 0.0,
            "interval": "95%, normal approximation of the Poisson-binomial count (variance sum p(1-p))",
            "per_class": per_class, "review": review}


def _confirms_error(decision: Mapping[str, Any] | None) -> bool:
    """Whether a decision says the given label is wrong: a label other than the given one."""
    if not decision or decision.get("decision") not in ("accept", "relabel"):
        return False
    return decision.get("label") is not None and decision.get("label") != decision.get("given")
