"""Per-object attributes of an audit of a ``Detections`` field, written all or nothing.

An audit of objects (:mod:`noise_audit.core.objects`) stores, besides its
sample fields ``{key}_max_score`` and ``{key}_num_suspects`` (written like
every audit field, :mod:`noise_audit.store.writes`), one attribute per signal
on every audited ``Detection``: ``{key}_corruption_score``,
``{key}_influence``, ``{key}_self_influence``, ``{key}_label_quality``,
``{key}_suspect`` and ``{key}_suggested_label`` (:data:`OBJECT_ATTRS`).

Their values are part of the run's results (``object_values``), so the
attributes are *derived*: :func:`materialise` rewrites them from the run in
one idempotent pass (every attribute of the key removed from every
``Detections`` field, then the run's values set), and the attributes are
declared in the schema (``<field>.detections.<attr>``) with our ownership info
and the ``token`` of the run they show, last. That gives the write its
guarantee without temporary attributes:

- before the run is linked (the commit of :mod:`noise_audit.store.writes`)
  no attribute is touched, so a failed write rolls back as before;
- after it, :func:`materialise` runs; a write interrupted half-way leaves a
  linked run whose declared attributes do not carry its token, and
  :func:`settle` (called by every ``recover``) materialises it again: the
  dataset ends as the whole new audit, like a write interrupted after its
  commit;
- :func:`remove` (``delete_audit``) first drops the declarations, then the
  values, then the run is unlinked: interrupted before the unlink, the run
  is materialised again (the audit is whole, not deleted).

Attributes are never written over one we did not create: :func:`check_free`
refuses before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import fiftyone as fo
from bson import ObjectId
from pymongo import UpdateOne

from noise_audit.errors import NoiseAuditError
from noise_audit.signals import FIELD_SIGNALS
from noise_audit.store.fields import OWNER, writer

if TYPE_CHECKING:
    from fiftyone.core.dataset import Dataset

# attribute suffix -> field type, on every audited Detection
OBJECT_ATTRS: dict[str, type] = {cast(str, s.field): fo.FloatField for s in FIELD_SIGNALS} | {
    "suspect": fo.BooleanField, "suggested_label": fo.StringField}
# sample fields of an object audit (written by store/writes.py like any audit field)
OBJECT_SAMPLE_FIELDS: dict[str, type] = {"max_score": fo.FloatField, "num_suspects": fo.IntField}


def attr_names(key: str) -> dict[str, str]:
    """``{suffix: attribute name}`` of an object audit under ``key``."""
    return {s: f"{key}_{s}" for s in OBJECT_ATTRS}


def detections_fields(dataset: Dataset) -> list[str]:
    return sorted(dataset.get_field_schema(embedded_doc_type=fo.Detections))


def _info(dataset: Dataset, path: str) -> dict[str, Any] | None:
    field = dataset.get_field(path)
    return None if field is None else (getattr(field, "info", None) or {})


def _ours(info: dict[str, Any] | None, key: str) -> bool:
    return bool(info) and info.get("created_by") == OWNER and info.get("role") == f"audit:{key}"  # type: ignore[union-attr]


def _raw_present(dataset: Dataset, field: str, attr: str) -> bool:
    return dataset._sample_collection.find_one({f"{field}.detections.{attr}": {"$exists": True}}, {"_id": 1}) is not None


def check_free(dataset: Dataset, key: str, label_field: str) -> None:
    """Raises unless every attribute of :func:`attr_names` is absent from the boxes of
    ``label_field`` or was written by an object audit under ``key``."""
    taken = []
    for attr in attr_names(key).values():
        path = f"{label_field}.detections.{attr}"
        info = _info(dataset, path)
        if info is not None and not _ours(info, key) or info is None and _raw_present(dataset, label_field, attr):
            taken.append(attr)
    if taken:
        raise NoiseAuditError(f"The boxes of {label_field!r} already have attributes {taken} that noise-audit did "
                              "not write; choose another key")


def _strip_expr(field: str, attrs: Sequence[str]) -> dict[str, Any]:
    """Aggregation expression: the detections of ``field`` without ``attrs``."""
    return {"$map": {"input": f"${field}.detections", "as": "d", "in": {"$arrayToObject": {"$filter": {
        "input": {"$objectToArray": "$$d"}, "as": "kv", "cond": {"$not": [{"$in": ["$$kv.k", list(attrs)]}]}}}}}}


def _declared(dataset: Dataset, key: str) -> dict[str, dict[str, Any]]:
    """``{path: info}`` of the attributes of ``key`` declared on any ``Detections`` field."""
    out = {}
    for field in detections_fields(dataset):
        for attr in attr_names(key).values():
            info = _info(dataset, f"{field}.detections.{attr}")
            if _ours(info, key):
                out[f"{field}.detections.{attr}"] = cast(dict, info)
    return out


def clear(dataset: Dataset, key: str, fields: Sequence[str] = ()) -> None:
    """Removes every value of the attributes of ``key`` from the boxes of ``fields`` and of every
    field where they are declared as ours, then their declarations (in that order: interrupted,
    the declarations are left, and :func:`settle` clears again). Boxes of other fields, where a
    user may have attributes of the same name, are not touched."""
    declared = _declared(dataset, key)
    attrs = list(attr_names(key).values())
    for field in sorted(set(fields) | {p.split(".detections.")[0] for p in declared}):
        has = {"$or": [{f"{field}.detections.{a}": {"$exists": True}} for a in attrs]}
        dataset._sample_collection.update_many(has, [{"$set": {f"{field}.detections": _strip_expr(field, attrs)}}])
    for path in declared:
        dataset.delete_sample_field(path)
    dataset.reload()
    _refresh(dataset)


def _refresh(dataset: Dataset) -> None:
    """Samples loaded in memory see what the raw updates wrote."""
    reload_docs = getattr(dataset, "_reload_docs", None)
    if reload_docs is not None:
        reload_docs(hard=True)


def remove(dataset: Dataset, key: str) -> None:
    """What ``delete_audit`` does before unlinking an audit of boxes: first the declarations stop
    carrying the run's token (interrupted from here on, the still linked run is written again by
    :func:`settle`: the audit stays whole), then values and declarations go (:func:`clear`)."""
    for path, info in _declared(dataset, key).items():
        field = dataset.get_field(path)
        field.info = {**info, "token": None}
        field.save()
    clear(dataset, key)


def materialise(dataset: Dataset, key: str, token: str, label_field: str, object_ids: Sequence[str],
                sample_ids: Sequence[str], values: Mapping[str, Sequence[Any]],
                on_half: Any = None) -> None:
    """Writes the attributes of the run ``key`` (token ``token``) from its values, replacing any earlier ones.

    ``values`` maps each suffix of :data:`OBJECT_ATTRS` to one value per
    object of ``object_ids`` (whose samples are ``sample_ids``).
    """
    clear(dataset, key, [label_field])
    names = attr_names(key)
    per_sample: dict[str, list[int]] = {}
    for row, sid in enumerate(sample_ids):
        per_sample.setdefault(sid, []).append(row)
    ops = []
    for sid, rows in per_sample.items():
        branches = [{"case": {"$eq": ["$$d._id", ObjectId(object_ids[r])]},
                     "then": {"$literal": {names[s]: values[s][r] for s in OBJECT_ATTRS}}} for r in rows]
        merged = {"$map": {"input": f"${label_field}.detections", "as": "d", "in": {"$mergeObjects": [
            "$$d", {"$switch": {"branches": branches, "default": {}}}]}}}
        ops.append(UpdateOne({"_id": ObjectId(sid), f"{label_field}.detections.0": {"$exists": True}},
                             [{"$set": {f"{label_field}.detections": merged}}]))
    half = len(ops) // 2
    if ops[:half]:
        dataset._sample_collection.bulk_write(ops[:half], ordered=False)
    if on_half is not None:
        on_half()
    if ops[half:]:
        dataset._sample_collection.bulk_write(ops[half:], ordered=False)
    info = {"created_by": OWNER, "role": f"audit:{key}", "key": key, "token": token, "writer": writer(),
            "since": datetime.utcnow().isoformat()}
    for suffix, attr in names.items():  # declared last: the sign that the attributes are whole
        path = f"{label_field}.detections.{attr}"
        if dataset.get_field(path) is None:
            dataset.add_sample_field(path, OBJECT_ATTRS[suffix])
        field = dataset.get_field(path)
        field.info = {**info, "signal": suffix}
        field.save()
    dataset.reload()
    _refresh(dataset)


def is_whole(dataset: Dataset, key: str, config: Mapping[str, Any] | None) -> bool:
    """Whether the attributes of ``key`` are those of its linked run (``config``; None: no run)."""
    declared = _declared(dataset, key)
    field = (config or {}).get("object_field")
    if not field:
        return not declared
    want = {f"{field}.detections.{a}" for a in attr_names(key).values()}
    return set(declared) == want and all(i.get("token") == config.get("token") for i in declared.values())  # type: ignore[union-attr]


def settle(dataset: Dataset, key: str, config: Mapping[str, Any] | None, results: Mapping[str, Any] | None,
           on_half: Any = None) -> bool:
    """Makes the attributes of ``key`` those of its linked run again; returns whether anything changed."""
    if is_whole(dataset, key, config) and (config or {}).get("object_field"):
        return False
    if not (config or {}).get("object_field"):
        if not _declared(dataset, key):
            return False
        clear(dataset, key)
        return True
    assert config is not None and results is not None
    materialise(dataset, key, str(config.get("token")), str(config["object_field"]), results["ids"],
                results["sample_ids"], results["object_values"], on_half=on_half)
    return True


def orphan_keys(dataset: Dataset, linked: Sequence[str]) -> list[str]:
    """Keys whose attributes are declared on some box field but that no linked audit has."""
    keys = set()
    for field in detections_fields(dataset):
        sub = dataset.get_field_schema(flat=True)
        for path in sub:
            if path.startswith(f"{field}.detections."):
                info = _info(dataset, path) or {}
                if info.get("created_by") == OWNER and str(info.get("role", "")).startswith("audit:"):
                    keys.add(info.get("key"))
    return sorted(k for k in keys if k and k not in linked)
