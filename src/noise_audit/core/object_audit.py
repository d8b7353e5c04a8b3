"""The audit of a ``Detections`` field: the class of every box, objects as rows.

``na.audit(dataset, "ground_truth")`` on a ``fo.Detections`` field comes here
(:func:`noise_audit.core.auditing.audit` dispatches on the field's type). The
method is the audit of images, row for row: the objects of
:mod:`noise_audit.core.objects` (features of FiftyOne's crops, or a vector
attribute of every box) go through the same standardisation, head, influence,
scores and suggested labels (:mod:`noise_audit.core.stages`). What differs:

- the held-out part and the folds are chosen by sample, so the boxes of one
  image are never both fitted and held out;
- what is stored: on every audited ``Detection`` the attributes of
  :data:`noise_audit.store.objects.OBJECT_ATTRS` (``{key}_corruption_score``,
  ``{key}_influence``, ``{key}_self_influence``, ``{key}_label_quality``,
  ``{key}_suspect``, ``{key}_suggested_label``), and on every sample with
  audited boxes ``{key}_max_score`` and ``{key}_num_suspects``; all written
  with the run, all or nothing (:mod:`noise_audit.store.objects`).

Not audited: where the boxes are (localisation), and boxes that are missing
or should not be there; only the class each box was given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import softmax

from noise_audit import validation
from noise_audit._version import __version__
from noise_audit.core import embeddings, noise_model, objects, scores, suggestions, weight_probe
from noise_audit.core import influence as infl
from noise_audit.core.stages import _Clock, _head_and_influence, _results_doc, _standardized
from noise_audit.errors import NoiseAuditError
from noise_audit.signals import FIELD_SIGNALS
from noise_audit.store import objects as object_attrs
from noise_audit.store.fields import dataset_lock
from noise_audit.store.labels import labels_fingerprint
from noise_audit.store.recovery import recover
from noise_audit.store.runs import AuditResults, check_key
from noise_audit.store.writes import write_audit

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection

    from noise_audit.core.backbones import Backbone


def audit_objects(samples: SampleCollection, label_field: str, *, test: Any, key: str, make_backbone: Callable[[], Backbone] | None,
                  source: dict[str, Any], method: str, regularization: float | str, folds: int, seed: int,
                  batch_size: int, overwrite: bool, progress: bool, on_progress: Callable[[str, float], Any] | None,
                  device: Any, embeddings_attribute: str | None, min_box_size: float,
                  influence_weight: float | str = "auto") -> AuditResults:
    """Audits the class of every box of ``label_field`` (see the module doc).

    ``make_backbone()`` gives the feature extractor (``None`` with
    ``embeddings_attribute``: the boxes' own vectors); ``source`` is what the
    run's config records about the features. Called by
    :func:`noise_audit.core.auditing.audit` once its checks passed.
    """
    dataset = samples._dataset
    with dataset_lock(dataset):  # what an interrupted write left is settled first: then check what is ours
        recover(dataset, key)
        check_key(dataset, key, overwrite)
        object_attrs.check_free(dataset, key, label_field)
    rows = objects.read_objects(samples, label_field, min_box_size, min_per_class=folds)
    is_test, split = objects.object_split(samples, rows, test, seed)
    validation.check_split(rows.classes, rows.labels, is_test)
    clock = _Clock(on_progress)
    t_start = time.perf_counter()

    clock.start("features")
    fold = objects.group_folds(rows.labels, rows.sample_ids, folds, seed)
    columns = {"y": rows.labels, "train": ~is_test, "fold": fold}
    if embeddings_attribute is None:
        assert make_backbone is not None
        bb = make_backbone()
        bb.to(device)
        raw = objects.patch_features(samples, label_field, rows, bb, device, batch_size, progress)
        n_computed = len(raw)
    else:
        raw = objects.attribute_vectors(samples, label_field, rows, embeddings_attribute)
        source = {**source, **embeddings.source_config(embeddings_attribute, raw)}
        n_computed = 0
    features = _standardized(raw, columns, False, n_computed, None)
    del raw
    clock.stop()
    out = _head_and_influence(features, columns, len(rows.classes), regularization, folds, seed, method, clock,
                              None, progress, device)
    clock.start("scores")  # the noise model, then the influence weight: its probe refits heads on the features
    noise_parts = noise_model.noise_model_parts(rows.labels, out.oos_logits, out.clean_oos_logits, is_test)
    true_class = noise_model.true_class_probs(rows.labels, *noise_parts)
    weight = weight_probe.audit_weight(influence_weight, features.x, rows.labels, is_test, fold, out, folds, seed,
                                       device, noise_parts=noise_parts)  # the probe keeps the image-grouped folds
    mean, std = features.mean, features.std
    features = None
    signals, n_issues, suspect = scores.audit_signals(rows.labels, is_test, out.oos_logits, out.clean_oos_logits,
                                                      out.average_influence, out.self_influence, out.loss,
                                                      true_class=true_class, influence_weight=weight.weight)
    best, _, _ = suggestions.suggested_labels(rows.labels, signals["corruption_score"], true_class)
    clock.stop()

    clock.start("write")
    sample_order = list(dict.fromkeys(rows.sample_ids.tolist()))
    pos = {s: k for k, s in enumerate(sample_order)}
    max_score = np.full(len(sample_order), -np.inf)
    n_suspects = np.zeros(len(sample_order), dtype=int)
    for sid, score, sus in zip(rows.sample_ids, signals["corruption_score"], suspect):
        k = pos[sid]
        max_score[k] = max(max_score[k], float(score))
        n_suspects[k] += int(bool(sus))
    object_values: dict[str, list[Any]] = {s.field: [float(v) for v in signals[s.name]] for s in FIELD_SIGNALS}  # type: ignore[misc]
    object_values |= {"suspect": [bool(v) for v in suspect], "suggested_label": [rows.classes[int(c)] for c in best]}
    results_doc = _results_doc(rows, is_test, out, mean, std, n_computed, n_issues, suspect)
    results_doc |= {"head": out.head.state(), "sample_ids": rows.sample_ids.tolist(), "object_values": object_values,
                    "object_predictions": softmax(out.oos_logits, axis=1).tolist(), "skipped_boxes": rows.skipped,
                    "object_folds": fold.tolist()}
    fields = {n: f"{key}_{n}" for n in object_attrs.OBJECT_SAMPLE_FIELDS}
    config = dict(
        label_field=label_field, object_field=label_field, object_attributes=object_attrs.attr_names(key),
        min_box_size=float(min_box_size), **source, influence_method=out.influence_method, method_requested=method,
        regularization=out.l2, regularization_requested=str(regularization), folds=folds, seed=seed, split=split,
        n_samples=len(rows), n_images=len(sample_order), n_train=int((~is_test).sum()), n_test=int(is_test.sum()),
        n_parameters=infl.n_parameters(out.head), fields=fields, version=__version__, cache_dir=None,
        train_last_block=False, device=str(device), dask_workers=None, warm_start=None,
        labels_fingerprint=labels_fingerprint(rows.ids, [rows.classes[k] for k in rows.labels]),
        **weight.config(),  # the influence weight, and the probe's APs when it chose it
    )
    timings = dict(clock.timings)
    config["timings"] = timings

    def finish_timings() -> None:
        clock.stop()
        timings["write"] = clock.timings["write"]
        timings["total"] = round(time.perf_counter() - t_start, 4)

    values = {"max_score": max_score.tolist(), "num_suspects": n_suspects.tolist()}
    results = write_audit(samples, key, sample_order, values, config, results_doc, signals=signals,
                          predictions=softmax(out.oos_logits, axis=1), overwrite=overwrite,
                          before_commit=finish_timings, fields=object_attrs.OBJECT_SAMPLE_FIELDS)
    if on_progress:
        on_progress("done", 1.0)
    return results


def unsupported_settings(**given: Any) -> None:
    """Raises when settings an audit of objects does not have are given."""
    named = [k for k, v in given.items() if v not in (None, False)]
    if named:
        raise NoiseAuditError(f"{', '.join(named)}: not available for an audit of a Detections field (objects)")

