"""What the review's corrections buy: the head's held-out accuracy before and after them.

The audit's head is refit (its features from the cache, its standardisation
and L2, started from its own weights) on the training labels with the
review's confirmed corrections applied, the way :mod:`noise_audit.core.cleaning`
refits without suspects. Both heads are scored on the held-out samples, with
the corrections applied there too (a reviewed held-out label is the best
truth there is), so the two accuracies differ only by what the corrected
training labels taught the head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from noise_audit.core import head as heads
from noise_audit.core.blocks import Blocks
from noise_audit.core.cleaning import audit_features

if TYPE_CHECKING:
    from fiftyone.core.dataset import Dataset

    from noise_audit.store.runs import AuditResults


def corrected_labels(results: AuditResults, decided: Mapping[str, Mapping[str, Any]]) -> tuple[np.ndarray, int]:
    """The audit's labels with each confirmed correction (a decision whose label is another
    of the audit's classes) applied, and how many were applied."""
    labels = np.array(results.labels, dtype=int, copy=True)
    index = {c: k for k, c in enumerate(results.classes)}
    pos = {str(i): k for k, i in enumerate(results.ids)}
    n = 0
    for sample_id, d in decided.items():
        new = index.get(str(d.get("label"))) if d.get("decision") in ("accept", "relabel") else None
        if sample_id in pos and new is not None and new != labels[pos[sample_id]]:
            labels[pos[sample_id]] = new
            n += 1
    return labels, n


def correction_gain(dataset: Dataset, config: Mapping[str, Any], results: AuditResults,
                    decided: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{"n_corrected", "n_corrected_train", "before", "after", "n_held_out"}``: held-out accuracy of
    the audit's head and of the head refit on the corrected labels (see the module doc)."""
    y, n_corrected = corrected_labels(results, decided)
    is_test = np.asarray(results.is_test, bool)
    x = audit_features(dataset, config, results, "What the corrections buy")
    head = heads.LinearHead.from_state(results.head)
    before = float((heads.predict_logits(head, x[is_test]).argmax(1) == y[is_test]).mean())
    n_train = int((y != np.asarray(results.labels))[~is_test].sum())
    after = before
    if n_train:
        blocks = Blocks.from_arrays({"x": x, "y": y, "train": ~is_test})
        refit, _ = heads.fit_linear_head(blocks, x.shape[1], len(results.classes), float(config["regularization"]),
                                         rows="train", init=head)
        after = float((heads.predict_logits(refit, x[is_test]).argmax(1) == y[is_test]).mean())
    return {"n_corrected": n_corrected, "n_corrected_train": n_train, "before": before, "after": after,
            "n_held_out": int(is_test.sum())}
