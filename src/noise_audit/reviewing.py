"""The review loop's public functions: decide on suspects, apply the decisions, see what is left.

::

    na.review(dataset, "noise_audit", [id1, id2], "accept")          # the suggested labels
    na.review(dataset, "noise_audit", id3, "relabel", label="truck")  # another class
    na.review(dataset, "noise_audit", id4, "keep")                    # the given label is right
    na.undo_review(dataset, "noise_audit", id4)
    na.review_estimates(dataset, "noise_audit")                       # errors expected, confirmed, left
    na.apply_review(dataset, "noise_audit", out_field="ground_truth_reviewed")
    na.audit(dataset, "ground_truth_reviewed", key="reviewed", warm_start="noise_audit")

Decisions are stored per sample in the audit's ``{key}_review`` field, one
atomic database update per sample (:mod:`noise_audit.store.review`); the
corrected labels go to a new field (:mod:`noise_audit.store.applied`); the
estimates are :mod:`noise_audit.core.review_stats`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from noise_audit.core.review_stats import review_estimates as _estimates
from noise_audit.store import applied as _applied
from noise_audit.store import review as _review
from noise_audit.store.runs import load_audit

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection


def review(samples: SampleCollection, key: str, sample_ids: str | Iterable[str], decision: str,
           label: str | None = None, reviewer: str | None = None) -> dict[str, Any]:
    """Records a review decision for each of ``sample_ids`` of audit ``key``.

    Args:
        samples: the audited dataset (or a view of it).
        key: the audit.
        sample_ids: one audited sample's id, or several.
        decision: ``"accept"`` (the suggested label, ``{key}_suggested_label``),
            ``"keep"`` (the given label is right; the suggestion is rejected),
            ``"relabel"`` (another class: ``label=``) or ``"unsure"``.
        label: the class for ``"relabel"``, one of the audited field's classes.
        reviewer: who decided (default ``$NOISE_AUDIT_REVIEWER`` or the login name).

    Returns:
        ``{"key", "decision", "n", "entries"}``; the decisions are in
        ``{key}_review`` (never in the audited label field). Bad input (an
        unknown or deleted audit, a sample the audit did not score, a class
        outside the label schema) raises before anything is written.
    """
    return _review.record(samples, key, sample_ids, decision, label, reviewer)


def undo_review(samples: SampleCollection, key: str, sample_ids: str | Iterable[str],
                reviewer: str | None = None) -> dict[str, Any]:
    """Reverts each sample's current decision if it is ``reviewer``'s (see
    :func:`noise_audit.store.review.undo`); returns ``{"undone", "skipped"}``."""
    return _review.undo(samples, key, sample_ids, reviewer)


def review_decisions(samples: SampleCollection, key: str) -> dict[str, dict[str, Any]]:
    """``{sample id: current decision}`` of the reviewed samples of audit ``key``."""
    return _review.decisions(samples, key)


def review_estimates(samples: SampleCollection, key: str) -> dict[str, Any]:
    """Estimated wrong labels (with a 95% interval), per-class noise rate and difficulty,
    the review so far and the errors still left (see :mod:`noise_audit.core.review_stats`)."""
    dataset = samples._dataset
    _, results = load_audit(dataset, key)
    decided = _review.decisions(dataset, key)
    return _estimates(results.corruption_score, results.labels, results.is_test, list(results.classes),
                      [str(i) for i in results.ids], decided, getattr(results, "test_confusion", None))


def apply_review(samples: SampleCollection, key: str = "noise_audit",
                 out_field: str = "ground_truth_reviewed") -> dict[str, Any]:
    """Writes ``out_field``: the audited labels with the accepted corrections.

    The source field is never written; unsure and kept samples carry the
    label tags ``review:unsure`` and ``review:kept``, corrected ones
    ``review:corrected``; applying twice writes the same field; a field
    noise-audit did not create (or made for another purpose or audit) is
    refused. See :mod:`noise_audit.store.applied`.
    """
    return _applied.apply_review(samples, key, out_field)


def reaudit(samples: SampleCollection, key: str, label_field: str, new_key: str | None = None,
            overwrite: bool = False, **kwargs: Any) -> Any:
    """Audits ``label_field`` (e.g. the applied review) on the samples audit ``key`` scored,
    with ``key``'s settings and held-out set, warm-started from ``key``'s head.

    The features come from the feature cache (same backbone, image size and
    files), the head starts where ``key``'s ended
    (:mod:`noise_audit.core.warm_start`): a re-audit takes seconds where the
    first audit computed features for minutes (``docs/benchmarks.md``,
    "Re-audit after a review"). ``kwargs`` override settings (e.g.
    ``progress=False``).

    Returns:
        the new audit's :class:`~noise_audit.store.runs.AuditResults`, under
        ``new_key`` (default ``{key}_reviewed``).
    """
    from noise_audit.core.auditing import audit

    dataset = samples._dataset
    config, results = load_audit(dataset, key)
    ids = [str(i) for i in results.ids]
    held_out = [i for i, t in zip(ids, results.is_test) if t]
    settings: dict[str, Any] = {
        "backbone": config.get("backbone"), "image_size": config.get("image_size"),
        "method": config.get("method_requested") or "auto", "folds": config.get("folds"), "seed": config.get("seed"),
        "regularization": config.get("regularization_requested") or config.get("regularization"),
        "weights": config.get("weights"), "cache_dir": config.get("cache_dir"),
        "train_last_block": bool(config.get("train_last_block")),
        "test": dataset.select(held_out), "warm_start": key,
        # as asked for ("auto" chooses again); audits from before the choice had 0.5
        "influence_weight": config.get("influence_weight_requested", 0.5),
    }
    settings.update(kwargs)
    return audit(dataset.select(ids, ordered=True), label_field, key=new_key or f"{key}_reviewed",
                 overwrite=overwrite, **settings)
