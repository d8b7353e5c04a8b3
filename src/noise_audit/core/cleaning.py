"""What cleaning buys: the held-out accuracy of the head refit without some samples.

The seed notebook's point is that fixing flipped labels improves the model.
:func:`refit_accuracy` measures it for any removal: the audit's top suspects,
as many random samples, or exactly the flipped ones (when the truth is known).
The head is the audit's (same features, standardisation and L2), refit on
the training rows that remain and scored on the untouched held-out rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt
import torch

from noise_audit.core import head as heads
from noise_audit.core.blocks import Blocks
from noise_audit.core.head import class_logits

if TYPE_CHECKING:
    from fiftyone.core.dataset import Dataset

    from noise_audit.store.runs import AuditResults


def refit_accuracy(blocks: Blocks, n_features: int, n_classes: int, l2: float, removals: Mapping[str, npt.ArrayLike],
                   init: torch.nn.Module | None = None,
                   device: torch.device | str | None = None) -> dict[str, float]:
    """Held-out accuracy of the head refit on the training rows minus each removal.

    Args:
        blocks: the audit's row blocks (columns ``x``, ``y``, ``train``).
        n_features, n_classes, l2: the audit's head.
        removals: ``{name: boolean mask (n,)}`` of training rows to leave out.
        init: a head to start from (the audit's: a few steps instead of many).

    Returns:
        ``{name: accuracy}`` (nothing removed: the audit's own head, fit the
        same way, so its held-out accuracy is not recomputed here).
    """
    train = blocks.map_concat(_column, "train").astype(bool)
    y = blocks.map_concat(_column, "y")
    out: dict[str, float] = {}
    for name, removed in removals.items():
        kept = blocks.with_column("train", train & ~np.asarray(removed, dtype=bool))
        head, _ = heads.fit_linear_head(kept, n_features, n_classes, l2, rows="train", init=init, device=device)
        w, b = kept.arg(head.fc.weight.detach()), kept.arg(head.fc.bias.detach())
        pred = blocks.map_concat(class_logits, w, b, "all").argmax(1)
        out[name] = float((pred[~train] == y[~train]).mean())
    return out


def random_removal(candidates: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """``k`` of the ``candidates`` (boolean mask) chosen at random, as a mask."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(np.flatnonzero(candidates), size=min(k, int(np.sum(candidates))), replace=False)
    mask = np.zeros(len(candidates), dtype=bool)
    mask[pick] = True
    return mask


def _column(block: dict[str, Any], name: str) -> Any:
    return block[name]


def _audited_features(dataset: Dataset, config: Mapping[str, Any], results: AuditResults) -> np.ndarray:
    """The raw features of the audited samples, in the audit's order, as the audit
    had them: its embeddings field's vectors (unchanged since), else its backbone's."""
    from noise_audit.core import embeddings
    from noise_audit.core import features as feats
    from noise_audit.core.auditing import build_backbone
    from noise_audit.errors import NoiseAuditError

    audited = list(results.ids)
    if config.get("embeddings_field"):
        return embeddings.audit_vectors(dataset, config, results.key, audited, audited)
    bb, _ = build_backbone(config["backbone"], config.get("weights"), None, config["image_size"], config["seed"], False,
                           config.get("precision", "fp32"))
    if bb.cache_id != config.get("backbone_id"):
        raise NoiseAuditError("The backbone's features changed since the audit; re-run the audit")
    path_of = dict(zip(*dataset.select(audited).values(["id", "filepath"])))
    raw, _ = feats.extract_features([path_of[i] for i in audited], bb, cache_dir=config.get("cache_dir"),
                                    progress=False)
    return cast(np.ndarray, raw)


def audit_cleaning_gain(dataset: Dataset, config: Mapping[str, Any], results: AuditResults, truth: npt.ArrayLike,
                        suspect: npt.ArrayLike, ids: npt.ArrayLike | None = None, seed: int = 0) -> dict[str, Any]:
    """What cleaning buys for a stored audit, against the known truth.

    Refits the audit's head (its features from the cache or its embeddings field, its standardisation
    and L2) on the training samples minus: the flagged suspects; as many
    random training samples; exactly the flipped ones. Held-out accuracy of
    each, and of the audit's head as it is (``none``).

    Args:
        dataset: the audited dataset.
        config: the audit's run config as a dict.
        results: the audit's results (ids, labels, is_test, head, feature_mean, feature_std).
        truth, suspect: booleans per sample of ``ids`` (default ``results.ids``).
    """
    x = audit_features(dataset, config, results, "What cleaning buys")
    audited = np.asarray(results.ids)
    pos = {i: k for k, i in enumerate(audited)}
    ids = audited if ids is None else np.asarray(ids)
    flipped, flagged = np.zeros(len(audited), bool), np.zeros(len(audited), bool)
    where = np.array([pos[i] for i in ids])
    flipped[where], flagged[where] = np.asarray(truth, bool), np.asarray(suspect, bool)
    y, is_test = np.asarray(results.labels), np.asarray(results.is_test, bool)
    blocks = Blocks.from_arrays({"x": x, "y": y, "train": ~is_test})
    head = heads.LinearHead.from_state(results.head)
    train_flagged = flagged & ~is_test
    removals = {"suspects": train_flagged, "random": random_removal(~is_test, int(train_flagged.sum()), seed),
                "flipped": flipped & ~is_test}
    out: dict[str, Any] = refit_accuracy(blocks, x.shape[1], len(results.classes), float(config["regularization"]),
                                         removals, init=head)
    pred = heads.predict_logits(head, x[is_test]).argmax(1)
    out["none"] = float((pred == y[is_test]).mean())
    out["removed"] = {k: int(v.sum()) for k, v in removals.items()}
    return out


def audit_features(dataset: Dataset, config: Mapping[str, Any], results: AuditResults, what: str) -> np.ndarray:
    """The audit's standardised features of its samples, in its order: from its
    embeddings field (unchanged since the audit) or its backbone's feature cache.

    ``what`` names the measurement in the error raised for an audit whose
    features cannot be had again (a fine-tuned block, a changed backbone or field).
    """
    from noise_audit.errors import NoiseAuditError

    if config.get("train_last_block"):
        raise NoiseAuditError(f"{what} is measured for the linear head only (not train_last_block)")
    raw = _audited_features(dataset, config, results)
    std = np.array([np.inf if v is None else v for v in results.feature_std])
    return (cast(np.ndarray, raw) - np.array(results.feature_mean)) / std
