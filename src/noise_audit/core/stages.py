"""The stages an audit of images and an audit of objects share: the clock, standardised
features, the head and influence, and what the run's results keep.

:mod:`noise_audit.core.auditing` (images) and :mod:`noise_audit.core.object_audit`
(the boxes of a ``Detections`` field) run the same method on different rows;
these are the steps between their rows and their stores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score

from noise_audit.core import distributed, pipeline
from noise_audit.core import features as feats
from noise_audit.core.blocks import Blocks

STAGES = ("features", "head", "cross_validation", "influence", "scores", "write")


class _Clock:
    def __init__(self, on_progress):
        self.timings, self.on_progress, self._t, self._reported = {}, on_progress, None, -1.0

    def start(self, stage):
        self._stage, self._t = stage, time.perf_counter()
        fraction = STAGES.index(stage) / len(STAGES)
        if self.on_progress and fraction >= self._reported:  # progress only moves forward
            self._reported = fraction
            self.on_progress(stage, fraction)

    def stop(self):
        elapsed = time.perf_counter() - self._t
        self.timings[self._stage] = round(self.timings.get(self._stage, 0.0) + elapsed, 4)


@dataclass
class _Features:
    """Standardised float64 features: ``x`` in memory, or ``blocks`` on Dask workers."""

    x: np.ndarray | None
    blocks: Blocks | None
    mean: np.ndarray
    std: np.ndarray
    n_computed: int


def _features(paths, bb, columns, raw_maps, batch_size, cache_dir, progress, on_progress, client):
    """Stage 2: the backbone's features of ``paths``, standardised on the training rows."""
    if client is not None:
        blocks, mean, std, n_computed = distributed.feature_blocks(client, paths, bb, columns, batch_size, cache_dir)
        return _Features(None, blocks, mean, std, n_computed)
    raw, n_computed = feats.extract_features(
        paths, bb, batch_size, cache_dir, progress,
        on_progress=(lambda f: on_progress("features", f / len(STAGES))) if on_progress else None,
    )
    return _standardized(raw, columns, raw_maps, n_computed, None)


def _standardized(raw, columns, raw_maps, n_computed, client):
    """Raw features (the backbone's, or an embeddings field's) standardised on the training rows."""
    if client is not None:
        blocks, mean, std = distributed.array_blocks(client, raw, columns)
        return _Features(None, blocks, mean, std, n_computed)
    if raw_maps:  # a fine-tuned block's own batch norm expects the raw maps
        mean, std = np.zeros(raw.shape[1]), np.ones(raw.shape[1])
    else:
        mean, std = feats.standardization(raw, rows=columns["train"])
    x = np.subtract(raw, mean, dtype=np.float64)  # the one float64 copy of the features
    x /= std
    return _Features(x, None, mean, std, n_computed)


def _head_and_influence(features, columns, n_classes, l2, folds, seed, method, clock, make_head, progress, device,
                        init=None):
    """Stages 3-4: the linear head's closed form on row blocks, else pyDVL (the reference)."""
    if make_head is None and method in ("auto", "linear"):
        blocks = features.blocks
        if blocks is None:
            blocks = Blocks.from_arrays({"x": features.x, **columns}, device=device)
        return pipeline.linear_signals(blocks, len(features.mean), n_classes, l2, folds, clock, progress, device,
                                       init=init)
    return pipeline.reference_signals(features.x, columns["y"], ~columns["train"], columns["fold"], n_classes, l2,
                                      folds, seed, method, clock, make_head, progress, device)


def _results_doc(data, is_test, out, mean, std, n_computed, n_issues, suspect):
    """What the run's results keep besides the fields (the head is added by the caller)."""
    y, te = data.labels, is_test
    classes = np.array(data.classes)
    return dict(
        classes=data.classes, ids=data.ids.tolist(), labels=y.tolist(), is_test=is_test.tolist(), head=None,
        # None marks a feature dropped as constant on the training set (scale inf)
        feature_mean=mean.tolist(), feature_std=[float(v) if np.isfinite(v) else None for v in std],
        history=out.history, l2_scores={str(k): v for k, v in (out.l2_scores or {}).items()},
        num_label_issues=n_issues, label_issues_per_class={c: int(((classes[y] == c) & suspect).sum()) for c in data.classes},
        test_accuracy=float((out.test_pred == y[te]).mean()),
        test_f1_macro=float(f1_score(y[te], out.test_pred, average="macro")),
        test_confusion=confusion_matrix(y[te], out.test_pred, labels=range(len(classes))).tolist(),
        features_computed=n_computed,
    )
