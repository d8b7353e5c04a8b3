"""Single-image explanations: which training images drove a prediction.

The seed notebook's picture: for one test image, the training images with the
most positive influence (they pull the model towards the image's label) and
the most negative (they pull away; often mislabeled look-alikes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from noise_audit.core import embeddings
from noise_audit.core import features as feats
from noise_audit.core import influence as infl
from noise_audit.errors import NoiseAuditError
from noise_audit.core.auditing import build_backbone
from noise_audit.core.head import LinearHead
from noise_audit.store.runs import load_audit

if TYPE_CHECKING:
    from fiftyone.core.dataset import Dataset


def _audit_model(config, results):
    """The audit's feature extractor (``None`` for features read from a field) and trained head, rebuilt."""
    import torch

    if config.get("embeddings_field"):
        return None, LinearHead.from_state(results.head)
    bb, make_head = build_backbone(config.backbone, config.weights, None, config.image_size, config.seed,
                                   getattr(config, "train_last_block", False), getattr(config, "precision", "fp32"))
    if make_head is None:
        return bb, LinearHead.from_state(results.head)
    head = make_head(len(results.classes))
    head.load_state_dict(torch.load(results.head["path"], weights_only=True))
    return bb, head


def _audit_features(dataset, config, results, ids, bb):
    """The standardised features of ``ids`` as the audit computed them: from its
    embeddings field (unchanged since, see :func:`~noise_audit.core.embeddings.audit_vectors`),
    else from its backbone."""
    if bb is None:
        raw = embeddings.audit_vectors(dataset, config, results.key, results.ids, ids)
    else:
        if bb.cache_id != config.backbone_id:
            raise NoiseAuditError("The backbone's features changed since the audit (weights or code); re-run the audit")
        # ids may repeat (a training sample explained against its own training set):
        # select() would drop the repeat, so look paths up by id instead.
        path_of = dict(zip(*dataset.select(list(dict.fromkeys(ids))).values(["id", "filepath"])))
        raw, _ = feats.extract_features([path_of[i] for i in ids], bb, cache_dir=config.cache_dir, progress=False)
    mean = np.array(results.feature_mean)
    std = np.array([np.inf if v is None else v for v in results.feature_std])  # None: dropped (see audit)
    return (raw - mean) / std


def most_influential(dataset: Dataset, sample_id: str, key: str = "noise_audit", k: int = 3) -> dict[str, Any]:
    """The ``k`` most and least influential training samples for one sample.

    Influence of each training sample of audit ``key`` on ``sample_id`` (its
    label as audited), under the audit's head and solver. Positive = helpful.

    Returns:
        ``{"sample_id", "label", "most": [...], "least": [...]}`` where each
        entry is ``{"id", "filepath", "label", "influence"}``, most helpful
        first in ``most`` and most harmful first in ``least``.
    """
    return most_influential_many(dataset, [sample_id], key, k)[0]


def most_influential_many(dataset: Dataset, sample_ids: Iterable[str], key: str = "noise_audit",
                          k: int = 3) -> list[dict[str, Any]]:
    """:func:`most_influential` for several samples at once.

    The influence model is fitted and the features are read once for all of
    them (fitting dominates the cost), so explaining a handful of images
    costs about as much as explaining one. Returns a list in ``sample_ids``'
    order.
    """
    config, results = load_audit(dataset, key)
    ids = list(results.ids)
    labels = np.array(results.labels)
    is_test = np.array(results.is_test)
    train_ids = [i for i, t in zip(ids, is_test) if not t]
    sample_ids = list(sample_ids)
    targets = []
    for sample_id in sample_ids:
        if sample_id in ids:
            targets.append(int(labels[ids.index(sample_id)]))
            continue
        sample = dataset[sample_id]
        name = sample[config.label_field].label if sample[config.label_field] else None
        if name not in results.classes:
            raise NoiseAuditError(f"Sample {sample_id} has no label among the audit's classes")
        targets.append(results.classes.index(name))
    bb, head = _audit_model(config, results)
    x = _audit_features(dataset, config, results, train_ids + sample_ids, bb)
    x_train, x_targets = x[: len(train_ids)], x[len(train_ids):]
    y_train = labels[~is_test]
    model = infl.fit_influence_model(head, x_train, y_train, config.regularization, config.influence_method)
    values = infl.influences_on(model, x_targets, targets, x_train, y_train)
    paths = dict(zip(*dataset.select(train_ids).values(["id", "filepath"])))

    def entry(i: int, row: np.ndarray) -> dict[str, Any]:
        return {
            "id": train_ids[i], "filepath": paths[train_ids[i]],
            "label": results.classes[int(y_train[i])], "influence": float(row[i]),
        }

    out = []
    for sample_id, label, row in zip(sample_ids, targets, values):
        # A training sample's own influence is its self-influence: leave it out.
        order = np.array([i for i in np.argsort(-row) if train_ids[i] != sample_id])
        out.append({
            "sample_id": sample_id,
            "label": results.classes[label],
            "most": [entry(i, row) for i in order[:k]],
            "least": [entry(i, row) for i in order[::-1][:k]],
        })
    return out
