"""Reviewing suspects in an annotation tool (Label Studio, CVAT, ...), through FiftyOne's annotation API.

::

    results = na.annotate_suspects(dataset, "noise_audit", top_k=50, backend="labelstudio",
                                   url="http://localhost:8080", api_key=KEY)
    # ... annotators confirm or correct the pre-filled labels in the tool ...
    na.load_annotations(dataset, results.key)        # their answers become review decisions

:func:`annotate_suspects` sends the ``top_k`` most suspicious undecided
samples of an audit to the backend with ``view.annotate()``. What is
annotated is the audit's staging field ``{key}_annotation`` (a field of the
run, deleted with it), filled beforehand with each sample's suggested label,
so the tool shows the suggestion pre-filled (Label Studio: as a prediction;
CVAT: as an existing tag). Neither the audited labels nor the suggestions
are ever sent for editing, so nothing the tool returns can land in them:
FiftyOne's own ``dataset.load_annotations(anno_key)`` writes into the
staging field only.

:func:`load_annotations` loads the run (FiftyOne's ``load_annotations``)
and turns each annotated sample's label into a review decision in
``{key}_review``, like :func:`noise_audit.review`: the given label is
``keep``, the suggested one ``accept``, another class ``relabel``. Only
samples an annotator submitted count: Label Studio returns the pre-filled
prediction for a task nobody touched, so its tasks' ``is_labeled`` flag is
read; other backends return what the task holds, so every loaded label
counts (finish the job before loading).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from noise_audit import validation
from noise_audit.errors import NoiseAuditError
from noise_audit.store.fields import OWNER, field_info, write_columns
from noise_audit.store.ownership import config_fields, role
from noise_audit.store.review import known_classes, record, review_field
from noise_audit.store.runs import load_audit

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection
    from fiftyone.core.dataset import Dataset
    from fiftyone.core.view import DatasetView

LABEL_TYPE = "classification"


def staging_field(dataset: Dataset, key: str) -> str:
    """The audit's ``{key}_annotation`` field (raises for an audit without one)."""
    review_field(dataset, key)  # the audit exists and can be reviewed
    config = dataset.get_run_info(key).config
    field = config_fields(config, key).get("annotation")
    if field is None or field not in dataset.get_field_schema():
        raise NoiseAuditError(f"Audit {key!r} has no annotation field (written by an older noise-audit); audit "
                              "again with overwrite=True to send its suspects to an annotation tool")
    return field


def annotation_request(samples: SampleCollection, key: str, top_k: int = 50,
                       include_decided: bool = False) -> tuple[DatasetView, dict[str, Any]]:
    """``(view, annotate kwargs)`` of :func:`annotate_suspects`, without a server.

    ``view``: the ``top_k`` most suspicious audited samples of ``samples``
    (undecided ones only, unless ``include_decided``), in score order;
    the kwargs: ``label_field`` (the staging field), ``label_type``
    (``classification``) and ``classes`` (the audited field's label schema).
    """
    from noise_audit.app.review_views import undecided

    dataset = samples._dataset
    top_k = validation.integer(top_k, "top_k", 1)
    field = staging_field(dataset, key)
    config, results = load_audit(dataset, key)
    if include_decided:
        fields = config_fields(config, key)
        view = samples.exists(fields["corruption_score"]).sort_by(fields["corruption_score"], reverse=True)
    else:
        view = undecided(samples, key)
    view = view.limit(top_k)
    if len(view) == 0:
        raise NoiseAuditError(f"No {'audited' if include_decided else 'undecided'} sample of audit {key!r} "
                              "in this view: nothing to annotate")
    return view, {"label_field": field, "label_type": LABEL_TYPE,
                  "classes": known_classes(dataset, config.label_field, results)}


def _anno_key(dataset: Dataset, key: str) -> str:
    existing = set(dataset.list_annotation_runs())
    n = 1
    while f"{key}_review{n}" in existing:
        n += 1
    return f"{key}_review{n}"


def annotate_suspects(samples: SampleCollection, key: str = "noise_audit", top_k: int = 50,
                      anno_key: str | None = None, backend: str | None = None, include_decided: bool = False,
                      launch_editor: bool = False, **backend_kwargs: Any) -> Any:
    """Sends the top suspects of audit ``key``, their suggested labels pre-filled, to an annotation tool.

    Args:
        samples: the audited dataset or a view of it.
        key: the audit.
        top_k: how many suspects (the most suspicious undecided ones).
        anno_key: the FiftyOne annotation run's key (default ``{key}_review<n>``).
        backend: FiftyOne's annotation backend (``"labelstudio"``, ``"cvat"``, ...;
            default FiftyOne's configured one).
        include_decided: also send samples that already have a decision.
        launch_editor: open the tool in a browser.
        **backend_kwargs: the backend's settings (``url``, ``api_key``, ...).

    Returns:
        FiftyOne's annotation results (``results.key`` is the run's key, for
        :func:`load_annotations`).
    """
    dataset = samples._dataset
    view, kwargs = annotation_request(samples, key, top_k, include_decided)
    anno_key = anno_key or _anno_key(dataset, key)
    if not isinstance(anno_key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", anno_key):
        raise NoiseAuditError(f"anno_key must be an identifier (letters, digits, _), not {anno_key!r}")
    if dataset.has_annotation_run(anno_key):
        raise NoiseAuditError(f"An annotation run {anno_key!r} exists on {dataset.name!r}; choose another anno_key")
    config, _ = load_audit(dataset, key)
    suggested = config_fields(config, key)["suggested_label"]
    ids, labels, confidence = view.values(["id", f"{suggested}.label", f"{suggested}.confidence"])
    write_columns(dataset, ids, {kwargs["label_field"]: [
        {"_id": ObjectId(), "_cls": "Classification", "tags": [], "label": lab, "confidence": conf}
        for lab, conf in zip(labels, confidence)]})
    try:
        return view.annotate(anno_key, backend=backend, launch_editor=launch_editor, **kwargs, **backend_kwargs)
    except Exception:
        if dataset.has_annotation_run(anno_key):  # FiftyOne registers the run before it uploads
            dataset.delete_annotation_run(anno_key)
        raise


def _submitted(results: Any) -> set[str] | None:
    """Sample ids whose task an annotator submitted, where the backend can tell (Label Studio); else None."""
    if getattr(results.config, "name", None) != "labelstudio":
        return None
    api = results.connect_to_api()
    project = api._client.get_project(results.project_id)
    tasks = project.get_tasks(selected_ids=list(results.uploaded_tasks))
    return {results.uploaded_tasks[t["id"]] for t in tasks if t.get("is_labeled")}


def load_annotations(samples: SampleCollection, anno_key: str, reviewer: str | None = None,
                     **load_kwargs: Any) -> dict[str, Any]:
    """Loads an :func:`annotate_suspects` run and records its answers as review decisions.

    Args:
        samples: the audited dataset (or a view of it).
        anno_key: the annotation run.
        reviewer: the name the decisions carry (default ``<backend>:<anno_key>``).
        **load_kwargs: for FiftyOne's ``load_annotations`` (e.g. credentials).

    Returns:
        ``{"anno_key", "key", "annotated", "decisions": {decision: n}, "not_annotated",
        "outside_schema": [ids whose label is no class of the audited field]}``.
    """
    dataset = samples._dataset
    if not dataset.has_annotation_run(anno_key):
        raise NoiseAuditError(f"No annotation run {anno_key!r} on dataset {dataset.name!r}; runs: "
                              f"{dataset.list_annotation_runs()}")
    info = dataset.get_annotation_info(anno_key)
    fields = list(info.config.label_schema)
    staged = fields[0] if len(fields) == 1 else ""
    stamp = field_info(dataset, staged) or {} if staged else {}
    key = stamp.get("key")
    if not (key and stamp.get("created_by") == OWNER and stamp.get("role") == role(key)
            and stamp.get("signal") == "annotation"):
        raise NoiseAuditError(f"Annotation run {anno_key!r} was not started by noise_audit.annotate_suspects "
                              f"(its fields: {fields})")
    staging_field(dataset, key)  # the audit still exists
    results = dataset.load_annotation_results(anno_key)
    submitted = _submitted(results)
    dataset.load_annotations(anno_key, unexpected="ignore", progress=False, **load_kwargs)
    view = dataset.load_annotation_view(anno_key)
    config, audit = load_audit(dataset, key)
    ids, loaded, suggested_labels = view.values(
        ["id", f"{staged}.label", f"{config_fields(config, key)['suggested_label']}.label"])
    pos = {str(i): k for k, i in enumerate(audit.ids)}
    suggested = dict(zip(ids, suggested_labels))
    classes = set(known_classes(dataset, config.label_field, audit))
    unknown = []
    groups: dict[tuple[str, str | None], list[str]] = defaultdict(list)
    for sample_id, label in zip(ids, loaded):
        if label is None or (submitted is not None and sample_id not in submitted) or sample_id not in pos:
            continue
        given = audit.classes[int(audit.labels[pos[sample_id]])]
        if label == given:
            groups[("keep", None)].append(sample_id)
        elif label == suggested.get(sample_id):
            groups[("accept", None)].append(sample_id)
        elif label in classes:
            groups[("relabel", label)].append(sample_id)
        else:
            unknown.append(sample_id)  # a class outside the label schema: not a decision
    who = reviewer or f"{results.config.name}:{anno_key}"
    counts: dict[str, int] = defaultdict(int)
    for (decision, label), group in groups.items():
        counts[decision] += record(dataset, key, group, decision, label=label, reviewer=who)["n"]
    annotated = sum(counts.values())
    return {"anno_key": anno_key, "key": key, "annotated": annotated, "decisions": dict(counts),
            "not_annotated": len(ids) - annotated - len(unknown), "outside_schema": unknown}
