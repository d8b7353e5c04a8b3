"""Applying a review: a new label field, the source labels with the reviewed corrections.

:func:`apply_review` never writes the audited (source) label field. It writes
``out_field``, a copy of the source labels of every sample of the dataset in
which:

- a sample whose current decision is ``accept`` or ``relabel`` with a label
  other than the given one carries that label (its ``confidence`` and
  ``logits``, which described the old label, are dropped) and the label tag
  ``review:corrected``;
- a sample kept (``keep``: the suggestion rejected) carries the label tag
  ``review:kept``, an ``unsure`` one ``review:unsure`` and its given label;
- a decision about a label that has changed in the source field since it
  was made is stale: the sample keeps its current source label, untagged.

The field is a function of the source labels and the decisions only (each
label's id is derived from the source label's id and ``out_field``), so
applying twice writes the same field. It carries
``info = {"created_by": "noise_audit", "role": "review:applied", "key", "source"}``
and is only ever replaced by an apply of the same audit: a field noise-audit
did not create, the source field, and fields ours for another purpose are
refused before anything is written.

All or nothing: the values go into a temporary field
``noise_audit_apply_<token>`` that is marked complete once written; under
the dataset lock the old ``out_field`` (if any) is dropped and the temporary
field renamed to it. A crash before the mark leaves the old field as it was
(the next apply drops the incomplete temporary field); a crash after it is
finished by the next apply (:func:`recover_applies`).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from copy import deepcopy
from datetime import datetime
from typing import TYPE_CHECKING, Any

import fiftyone as fo
from bson import ObjectId

from noise_audit.errors import NoiseAuditError
from noise_audit.store.fields import OWNER, check_writable, dataset_lock, field_info, write_columns, writer, writer_alive
from noise_audit.store.review import decisions
from noise_audit.store.runs import load_audit

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection
    from fiftyone.core.dataset import Dataset

ROLE = "review:applied"
TAGS = {"corrected": "review:corrected", "kept": "review:kept", "unsure": "review:unsure"}
APPLY_TMP = "noise_audit_apply"
APPLY_NAME = re.compile(rf"^{APPLY_TMP}_([0-9a-f]{{12}})$")


def check_out_field(dataset: Dataset, key: str, label_field: str, out_field: Any) -> str:
    """Raises unless ``out_field`` may receive the applied review of audit ``key``."""
    if not isinstance(out_field, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", out_field):
        raise NoiseAuditError(f"out_field must be a field name (letters, digits, _), not {out_field!r}")
    if out_field == label_field:
        raise NoiseAuditError(f"apply_review never writes the audited labels: {out_field!r} is the source field of "
                              f"audit {key!r}; choose a new out_field (e.g. {label_field}_reviewed)")
    info = field_info(dataset, out_field) or {}
    if info.get("created_by") == OWNER and info.get("role") == ROLE and info.get("key") != key:
        raise NoiseAuditError(f"Field {out_field!r} holds the applied review of audit {info.get('key')!r}, not of "
                              f"{key!r}; choose another out_field")
    check_writable(dataset, [out_field], role=ROLE, key=key)
    return out_field


def _label_id(source_id: Any, out_field: str) -> ObjectId:
    """A label id derived from the source label's and the field's: the same on every apply."""
    return ObjectId(hashlib.sha1(f"{source_id}/{out_field}".encode()).digest()[:12])


def applied_label(source: dict[str, Any] | None, decision: dict[str, Any] | None, out_field: str) -> tuple[Any, str]:
    """The stored ``out_field`` value of one sample and what happened to it
    (``corrected``, ``kept``, ``unsure``, ``stale``, ``unreviewed``)."""
    if source is None:
        return None, "unreviewed"
    out = deepcopy(source)
    out["_id"] = _label_id(source.get("_id"), out_field)
    if decision is None:
        return out, "unreviewed"
    if decision["given"] != source.get("label"):
        return out, "stale"
    if decision["decision"] == "unsure":
        outcome = "unsure"
    elif decision["label"] is not None and decision["label"] != source.get("label"):
        outcome = "corrected"
        out["label"] = decision["label"]
        out["confidence"] = None
        out.pop("logits", None)
    else:
        outcome = "kept"  # keep, or a suggestion/relabel equal to the given label
    out["tags"] = [t for t in out.get("tags") or [] if t not in TAGS.values()] + [TAGS[outcome]]
    return out, outcome


def apply_review(samples: SampleCollection, key: str = "noise_audit",
                 out_field: str = "ground_truth_reviewed") -> dict[str, Any]:
    """Writes ``out_field``: the audited labels with the review's corrections (see the module doc).

    Args:
        samples: the audited dataset (or a view of it: the whole dataset is written).
        key: the audit whose review is applied.
        out_field: the new label field; absent, or written by an earlier
            apply of this audit.

    Returns:
        ``{"key", "source_field", "out_field", "n_samples", "corrected",
        "kept", "unsure", "stale"}``.
    """
    dataset = samples._dataset
    config, _ = load_audit(dataset, key)
    label_field = config.label_field
    check_out_field(dataset, key, label_field, out_field)
    decided = decisions(dataset, key)
    ids, values, counts = [], [], {"corrected": 0, "kept": 0, "unsure": 0, "stale": 0, "unreviewed": 0}
    for doc in dataset._sample_collection.find({}, {label_field: 1}):
        sid = str(doc["_id"])
        value, outcome = applied_label(doc.get(label_field), decided.get(sid), out_field)
        ids.append(sid)
        values.append(value)
        counts[outcome] += 1
    _write_field(dataset, key, label_field, out_field, ids, values)
    counts.pop("unreviewed")
    return {"key": key, "source_field": label_field, "out_field": out_field, "n_samples": len(ids), **counts}


def _write_field(dataset: Dataset, key: str, label_field: str, out_field: str, ids: list[str], values: list[Any]) -> None:
    token = uuid.uuid4().hex[:12]
    tmp = f"{APPLY_TMP}_{token}"
    info = {"created_by": OWNER, "role": ROLE, "key": key, "source": label_field}
    with dataset_lock(dataset):
        recover_applies(dataset)
        dataset.add_sample_field(tmp, fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification,
                                 info=dict(info, target=out_field, complete=False, token=token, writer=writer(),
                                           since=datetime.utcnow().isoformat()))
    try:
        write_columns(dataset, ids, {tmp: values})
        _set_info(dataset, tmp, complete=True)
        with dataset_lock(dataset):
            check_out_field(dataset, key, label_field, out_field)  # another writer may have taken it meanwhile
            _finish(dataset, tmp, out_field)
    except BaseException:
        with dataset_lock(dataset):
            if field_info(dataset, tmp) is not None and not (field_info(dataset, tmp) or {}).get("complete"):
                dataset.delete_sample_fields([tmp])
        raise


def _set_info(dataset: Dataset, name: str, **changes: Any) -> None:
    field = dataset.get_field(name)
    field.info = {**(field.info or {}), **changes}
    field.save()


def _finish(dataset: Dataset, tmp: str, out_field: str) -> None:
    """The commit: the old field goes, the complete temporary field takes its name."""
    if out_field in dataset.get_field_schema():
        dataset.delete_sample_fields([out_field])
    dataset.rename_sample_fields({tmp: out_field})
    dataset.reload()
    info = {k: v for k, v in (field_info(dataset, out_field) or {}).items() if k not in ("target", "complete")}
    field = dataset.get_field(out_field)
    field.info = info
    field.save()


def recover_applies(dataset: Dataset) -> list[str]:
    """Finishes complete temporary fields of interrupted applies, drops incomplete ones
    whose writer is gone. Returns the fields finished."""
    finished = []
    with dataset_lock(dataset):
        for name in list(dataset.get_field_schema()):
            info = field_info(dataset, name) or {}
            if not APPLY_NAME.match(name) or info.get("created_by") != OWNER or info.get("role") != ROLE:
                continue
            if info.get("complete"):
                target = str(info.get("target"))
                schema = dataset.get_field_schema()
                if target in schema and not (field_info(dataset, target) or {}).get("role") == ROLE:
                    dataset.delete_sample_fields([name])  # its target was taken by someone else: drop it
                    continue
                _finish(dataset, name, target)
                finished.append(target)
            elif not writer_alive(info.get("writer")):
                dataset.delete_sample_fields([name])
    return finished
