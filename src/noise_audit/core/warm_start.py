"""Warm start: begin an audit's head where an earlier audit of the same images ended.

After a review the labels change in a few places; the features do not (the
feature cache is keyed by file, so they are read, not computed), and the
head's minimum moves a little. The head's objective is convex, so any start
reaches the same minimum; a start near it saves most of the L-BFGS steps of
the head fit, and the cross-validation folds start from that head as they
always do. What a warm start changes is time, not results (up to the
optimiser's tolerance).

``na.audit(..., warm_start=...)``:

- ``None``/``False`` (the default): the head starts from zero, as before;
- an audit key: that audit's head; it must be a linear head on the same
  backbone and image size (else :class:`NoiseAuditError`);
- ``True``: the newest such audit on the dataset, if any (else a cold start).

The earlier head maps its own standardised features; it is carried over
exactly, as the same function of the raw features, into this audit's
standardisation (which differs when the training rows differ), and class
by class by name (a class it did not know starts at zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from noise_audit.errors import NoiseAuditError

if TYPE_CHECKING:
    from fiftyone.core.dataset import Dataset

    from noise_audit.core.head import LinearHead


def _compatible(config: Any, results: Any, backbone_id: str | None, image_size: int | None,
                embeddings_field: str | None = None) -> str | None:
    """Why the audit's head cannot start this one, or ``None`` if it can."""
    if getattr(config, "train_last_block", False) or not isinstance(results.head, dict) or "weight" not in results.head:
        return "it trained the backbone's last block too (only a linear head can start another)"
    if config.get("embeddings_field") != embeddings_field:  # features from another field, or from pixels
        return (f"its features came from {config.get('embeddings_field') or 'a backbone'}, "
                f"here from {embeddings_field or 'a backbone'}")
    if config.get("image_size") != image_size:
        return f"its image size differs ({config.get('image_size')}, here {image_size})"
    if config.get("backbone_id") != backbone_id:
        return f"its backbone differs ({config.get('backbone_id')}, here {backbone_id})"
    return None


def choose(dataset: Dataset, warm_start: str | bool | None, backbone_id: str | None, image_size: int | None,
           embeddings_field: str | None = None) -> str | None:
    """The audit whose head starts this one (see the module doc), or ``None``."""
    from noise_audit.store.runs import is_audit, list_audits, load_audit

    if warm_start is None or warm_start is False:
        return None
    if warm_start is True:
        keys = sorted(list_audits(dataset), key=lambda k: dataset.get_run_info(k).timestamp, reverse=True)
        for key in keys:
            config, results = load_audit(dataset, key)
            if _compatible(config, results, backbone_id, image_size, embeddings_field) is None:
                return key
        return None
    if not isinstance(warm_start, str) or not is_audit(dataset, warm_start):
        raise NoiseAuditError(f"warm_start must be True, False or the key of an audit on this dataset "
                              f"({list_audits(dataset)}), not {warm_start!r}")
    config, results = load_audit(dataset, warm_start)
    why = _compatible(config, results, backbone_id, image_size, embeddings_field)
    if why:
        raise NoiseAuditError(f"Audit {warm_start!r} cannot warm-start this one: {why}")
    return warm_start


def carried_head(dataset: Dataset, key: str, classes: Sequence[str], mean: np.ndarray,
                 std: np.ndarray) -> LinearHead:
    """Audit ``key``'s head as the same function of the raw features, in this audit's
    standardisation (``mean``, ``std``; an infinite std marks a dropped feature) and classes."""
    from noise_audit.core.head import LinearHead
    from noise_audit.store.runs import load_audit

    _, results = load_audit(dataset, key)
    w_old = np.asarray(results.head["weight"], dtype=float)
    b_old = np.asarray(results.head["bias"], dtype=float)
    if w_old.shape[1] != len(mean):
        raise NoiseAuditError(f"Audit {key!r} has {w_old.shape[1]} features per image, this one {len(mean)}")
    m_old = np.asarray(results.feature_mean, dtype=float)
    s_old = np.array([np.inf if v is None else v for v in results.feature_std], dtype=float)
    s_new = np.asarray(std, dtype=float)
    # logits = W_old (raw - m_old) / s_old + b_old, with raw = x_new s_new + m_new
    used = np.isfinite(s_old)
    scale = np.where(used & np.isfinite(s_new), s_new / np.where(used, s_old, 1.0), 0.0)
    shift = np.where(used, (np.asarray(mean, dtype=float) - m_old) / np.where(used, s_old, 1.0), 0.0)
    w_same, b_same = w_old * scale, b_old + w_old @ shift
    old_index = {c: k for k, c in enumerate(results.classes)}
    head = LinearHead(len(mean), len(classes))
    w, b = np.zeros((len(classes), len(mean))), np.zeros(len(classes))
    for k, c in enumerate(classes):
        if c in old_index:
            w[k], b[k] = w_same[old_index[c]], b_same[old_index[c]]
    import torch

    with torch.no_grad():
        head.fc.weight.copy_(torch.as_tensor(w))
        head.fc.bias.copy_(torch.as_tensor(b))
    return head
