"""noise-audit: find mislabeled images in FiftyOne datasets.

Public API::

    import noise_audit as na
    dataset = na.load_image_folder("path/to/tree")
    na.inject_label_noise(dataset.match_tags("train"), fraction=0.1)
    results = na.audit(dataset, "ground_truth_noisy")
    na.evaluate(dataset, "noise_audit_corruption_score")
    na.report(dataset, "noise_audit", "report/", truth_field="label_flipped")
    na.review(dataset, "noise_audit", suspect_ids, "accept")    # the suggested labels
    na.apply_review(dataset, "noise_audit", "ground_truth_reviewed")
"""

# FiftyOne first: importing it after dask (a pyDVL dependency) fails with
# importlib-metadata>=8 (see pyproject.toml).
import fiftyone  # noqa: F401, I001
import warnings as _warnings

# pyDVL's import announces deprecations inside pyDVL itself (FutureWarnings from
# its own decorators) that no caller can act on: ignored during this import only
# (the filters are restored after it), from those modules only.
with _warnings.catch_warnings():
    _warnings.filterwarnings("ignore", category=FutureWarning, module=r"(pydvl|deprecate)(\.|$)")
    from noise_audit._version import __version__
    from noise_audit.annotation import annotate_suspects, load_annotations
    from noise_audit.core.auditing import AuditResults, audit
    from noise_audit.core.data import load_image_folder
    from noise_audit.errors import NoiseAuditError
    from noise_audit.core.explain import most_influential
    from noise_audit.metrics import detection_metrics, evaluate
    from noise_audit.noise import inject_label_noise, remove_label_noise
    from noise_audit.reports.summary import label_error_rate, report
    from noise_audit.reviewing import apply_review, reaudit, review, review_decisions, review_estimates, undo_review
    from noise_audit.store.ownership import audit_fields
    from noise_audit.store.runs import delete_audit, list_audits, load_audit

__all__ = [
    "AuditResults", "NoiseAuditError", "__version__", "audit", "audit_fields",
    "delete_audit", "detection_metrics", "evaluate", "inject_label_noise", "label_error_rate",
    "list_audits", "load_audit", "load_image_folder", "most_influential", "remove_label_noise", "report",
    "annotate_suspects", "apply_review", "load_annotations", "reaudit", "review", "review_decisions", "review_estimates", "undo_review",
]
