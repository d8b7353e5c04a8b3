"""Review decisions: what people decided about an audit's suspects, one atomic write per sample.

An audit under ``key`` owns the field ``{key}_review`` (declared, empty, by
the audit's own all-or-nothing write; deleted and renamed with the run). A
reviewed sample's value is an ``fo.Classification`` whose ``label`` is the
label the sample should have, with the decision's facts as attributes:

- ``decision``: ``accept`` (the suggested label), ``keep`` (the given label:
  the suggestion is rejected), ``relabel`` (another class) or ``unsure``
  (no label; ``label`` is ``None``);
- ``given``, ``suggested``: the given and the suggested label when the
  decision was made; ``reviewer``, ``reviewed_at`` (UTC);
- ``history``: every decision on the sample, oldest first, the current one
  last (an undo drops the last one).

**Concurrency.** Each decision on each sample is one ``update_one`` of that
sample's document with an aggregation pipeline that sets the review and
appends to its history in the database, never a read-modify-write in this
process; MongoDB applies it atomically to the one document. Two reviewers
(two App sessions, two API calls, a CLI and the App) deciding on different
samples never touch each other's writes; deciding on the same sample, both
decisions land in its history and the later one is current. An undo reverts
a sample only while its current decision is the reviewer's own.

**Never into the wrong field.** Every update matches only documents that
still have the review field, so a decision racing a ``delete_audit`` writes
nothing (and says so); values are passed as ``$literal``, so a class name
that starts with ``$`` is a name, not a field path. The source label field
is never written: corrected labels go to a new field
(:mod:`noise_audit.store.applied`).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo import UpdateOne

from noise_audit import validation
from noise_audit.errors import NoiseAuditError
from noise_audit.store.ownership import belongs, config_fields
from noise_audit.store.runs import is_audit, list_audits, load_audit

if TYPE_CHECKING:
    from fiftyone.core.dataset import Dataset

    from noise_audit.store.runs import AuditResults

DECISIONS = validation.REVIEW_DECISIONS
# Decisions that say the given label is wrong when their label differs from it.
CORRECTING = ("accept", "relabel")
ENTRY_KEYS = ("decision", "label", "given", "suggested", "reviewer", "reviewed_at")


def default_reviewer() -> str:
    """``$NOISE_AUDIT_REVIEWER``, else the login name of this process."""
    name = os.environ.get("NOISE_AUDIT_REVIEWER")
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def review_field(dataset: Dataset, key: str) -> str:
    """The review field of audit ``key``; raises for a missing (deleted) audit, or one
    written before reviews existed."""
    if not is_audit(dataset, key):
        raise NoiseAuditError(f"No noise audit with key {key!r} on dataset {dataset.name!r} (deleted, or never "
                              f"written); nothing was reviewed. Audits: {list_audits(dataset)}")
    config = dataset.get_run_info(key).config
    field = config_fields(config, key).get("review")
    if field is None or not belongs(dataset, field, key, getattr(config, "token", None)):
        raise NoiseAuditError(f"Audit {key!r} was written before review decisions existed (it has no review "
                              f"field); audit again with overwrite=True to review it")
    return field


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None).replace(microsecond=0)  # FiftyOne stores naive UTC, ms


def known_classes(dataset: Dataset, label_field: str, results: AuditResults) -> list[str]:
    """The label schema a decision may use: the audit's classes and the dataset's declared classes."""
    declared = list((dataset.classes or {}).get(label_field) or []) + list(dataset.default_classes or [])
    return sorted(set(results.classes) | set(declared))


def given_labels(results: AuditResults, ids: Sequence[str]) -> dict[str, str]:
    """Each sample's label as the audit read it."""
    pos = {i: k for k, i in enumerate(results.ids)}
    return {i: results.classes[int(results.labels[pos[i]])] for i in ids}


def record(dataset: Dataset, key: str, sample_ids: str | Iterable[str], decision: str, label: str | None = None,
           reviewer: str | None = None) -> dict[str, Any]:
    """Records one decision for each of ``sample_ids`` (see the module doc).

    Args:
        dataset: the audited dataset (or a view of it).
        key: the audit.
        sample_ids: one audited sample id or several.
        decision: ``accept``, ``keep``, ``relabel`` or ``unsure``.
        label: the class, for ``relabel`` only; one of the audited field's classes.
        reviewer: who decided (default :func:`default_reviewer`).

    Returns:
        ``{"key", "decision", "n": samples written, "entries": {id: entry}}``.
    """
    dataset = dataset._dataset
    field = review_field(dataset, key)
    config, results = load_audit(dataset, key)
    decision = validation.review_decision(decision, label)
    ids = validation.audited_sample_ids(sample_ids, results.ids.tolist(), key)
    if decision == "relabel":
        validation.review_label(label, known_classes(dataset, config.label_field, results))
    who = validation.reviewer(reviewer if reviewer is not None else default_reviewer())
    given = given_labels(results, ids)
    suggested = dict(zip(*dataset.select(ids).values(["id", f"{config_fields(config, key)['suggested_label']}.label"])))
    now = _now()
    entries = {}
    for i in ids:
        chosen = {"accept": suggested.get(i), "keep": given[i], "relabel": label, "unsure": None}[decision]
        entries[i] = {"decision": decision, "label": chosen, "given": given[i], "suggested": suggested.get(i),
                      "reviewer": who, "reviewed_at": now}
    ops = [UpdateOne({"_id": ObjectId(i), field: {"$exists": True}}, _set_pipeline(field, entries[i])) for i in ids]
    written = _write(dataset, ops, ids)
    if written < len(ids):
        raise NoiseAuditError(f"Audit {key!r} was deleted while {len(ids)} decisions were written; "
                              f"{written} landed before it went (and went with it)")
    return {"key": key, "decision": decision, "n": written, "entries": entries}


def undo(dataset: Dataset, key: str, sample_ids: str | Iterable[str], reviewer: str | None = None) -> dict[str, Any]:
    """Reverts the current decision of each of ``sample_ids`` where it is ``reviewer``'s.

    The sample's previous decision (by anyone) becomes current again, or none.

    Returns:
        ``{"key", "undone": [ids], "skipped": [ids]}``: ``skipped`` had no
        decision, or a current one by another reviewer (left as it is).
    """
    dataset = dataset._dataset
    field = review_field(dataset, key)
    _, results = load_audit(dataset, key)
    ids = validation.audited_sample_ids(sample_ids, results.ids.tolist(), key)
    who = validation.reviewer(reviewer if reviewer is not None else default_reviewer())
    undone: list[str] = []
    skipped: list[str] = []
    for i in ids:  # one atomic update each; the filter is the check, so no other write slips in between
        op = UpdateOne({"_id": ObjectId(i), f"{field}.reviewer": who, f"{field}.decision": {"$ne": None}},
                       _undo_pipeline(field))
        (undone if _write(dataset, [op], [i]) else skipped).append(i)
    return {"key": key, "undone": undone, "skipped": skipped}


def _write(dataset: Dataset, ops: list[UpdateOne], ids: Sequence[str]) -> int:
    """Runs ``ops`` (each atomic on its document); returns how many documents matched."""
    import fiftyone.core.sample as fos

    if not ops:
        return 0
    result = dataset._sample_collection.bulk_write(ops, ordered=False)
    fos.Sample._reload_docs(dataset._sample_collection_name, sample_ids=list(ids))  # samples held in memory
    return int(result.matched_count)


def _literal(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: {"$literal": v} for k, v in entry.items()}


def _set_pipeline(field: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Sets the current decision and appends it to the history, in the database."""
    current = f"${field}"
    value = {"$mergeObjects": [
        {"_id": {"$ifNull": [f"{current}._id", ObjectId()]}, "_cls": "Classification",
         "tags": {"$ifNull": [f"{current}.tags", []]}},
        _literal(entry),
        {"history": {"$concatArrays": [{"$ifNull": [f"{current}.history", []]}, [_literal(entry)]]}},
    ]}
    return [{"$set": {field: value, "last_modified_at": "$$NOW"}}]


def _undo_pipeline(field: str) -> list[dict[str, Any]]:
    """Drops the last decision of the history; the one before it (or none) becomes current."""
    current = f"${field}"
    history = {"$ifNull": [f"{current}.history", []]}
    rest = {"$slice": [history, {"$max": [{"$subtract": [{"$size": history}, 1]}, 0]}]}
    value = {"$let": {"vars": {"rest": rest}, "in": {"$cond": [
        {"$gt": [{"$size": "$$rest"}, 0]},
        {"$mergeObjects": [{"_id": f"{current}._id", "_cls": "Classification", "tags": f"{current}.tags"},
                           {"$arrayElemAt": ["$$rest", -1]}, {"history": "$$rest"}]},
        None]}}}
    return [{"$set": {field: value, "last_modified_at": "$$NOW"}}]


def decisions(dataset: Dataset, key: str) -> dict[str, dict[str, Any]]:
    """``{sample id: current decision}`` of the reviewed samples of audit ``key``.

    Each decision: the entry's keys (``decision``, ``label``, ``given``,
    ``suggested``, ``reviewer``, ``reviewed_at``) and ``n_decisions``, the
    length of its history.
    """
    dataset = dataset._dataset
    field = review_field(dataset, key)
    out = {}
    for doc in dataset._sample_collection.find({f"{field}.decision": {"$in": list(DECISIONS)}}, {field: 1}):
        r = doc[field]
        out[str(doc["_id"])] = {k: r.get(k) for k in ENTRY_KEYS} | {"n_decisions": len(r.get("history") or [])}
    return out


def carried_decisions(dataset: Dataset, key: str, ids: Sequence[str], labels: Sequence[str]) -> list[Any]:
    """The review values an audit replacing ``key`` keeps: one per id, ``None`` for most.

    A decision is about a given label; it stays when the sample's label (in
    the replacing audit's label field) is still the one it was made about,
    e.g. a re-audit with another backbone. A decision about a label since
    corrected is done with and is not carried over.
    """
    dataset = dataset._dataset
    try:
        field = review_field(dataset, key)
    except NoiseAuditError:  # no audit under key yet, or one without reviews
        return [None] * len(ids)
    current = {str(d["_id"]): d.get(field) for d in dataset._sample_collection.find(
        {f"{field}.decision": {"$in": list(DECISIONS)}}, {field: 1})}
    return [current[i] if i in current and current[i].get("given") == lab else None for i, lab in zip(ids, labels)]
