"""Run documents, their links, and recovery from interrupted writes.

An audit's run document is *linked* when the dataset's ``runs`` map points
at it; linking (:func:`link_run`) is the commit of a write
(:mod:`noise_audit.store.writes`). :func:`recover` finds what interrupted
writes left, by the names and tokens of :mod:`noise_audit.store.ownership`,
and finishes each committed one or rolls each uncommitted one back:

- a write is committed when the run linked under its key carries its token;
- an uncommitted write whose writer is gone is rolled back (new fields
  dropped, the replaced audit's fields moved back), a committed one is
  finished (the replaced audit's leftovers dropped);
- a write still in progress (this process's, or a live writer's elsewhere,
  see :func:`noise_audit.store.fields.writer_alive`) is left alone.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import TYPE_CHECKING

from noise_audit.store import objects as object_attrs
from noise_audit.store.fields import OWNER, dataset_lock, field_info, has_raw, is_own_field, unset_raw, writer_alive
from noise_audit.store.ownership import RUN_METHOD, SIGNAL_FIELDS, TEMP_NAME, TMP, old_name, role, tmp_name

if TYPE_CHECKING:
    from fiftyone.core.dataset import Dataset

STALE_TMP_S = 6 * 3600.0  # temporary fields of a writer on another host count as abandoned after this
ACTIVE_WRITES: set[str] = set()  # tokens of the writes in progress in this process


def link_run(dataset, key, run_id):
    """The commit: points the dataset's run ``key`` at ``run_id`` in one update."""
    import fiftyone.core.odm as foo

    foo.get_db_conn().datasets.update_one({"_id": dataset._doc.id}, {"$set": {f"runs.{key}": run_id}})
    cached = dataset._run_cache.pop(key, None)  # the replaced audit's results
    if cached is not None:
        cached._key = None
    dataset.reload()


def unlink_run(dataset, key):
    import fiftyone.core.odm as foo

    foo.get_db_conn().datasets.update_one({"_id": dataset._doc.id}, {"$unset": {f"runs.{key}": ""}})
    cached = dataset._run_cache.pop(key, None)
    if cached is not None:
        cached._key = None
    dataset.reload()


def delete_run_doc(run_doc):
    """Deletes a run document (a loaded document or its id) and its results."""
    import fiftyone.core.odm as foo

    db = foo.get_db_conn()
    run_id = getattr(run_doc, "id", run_doc)
    raw = db.runs.find_one({"_id": run_id}, {"results": 1})
    if raw is None:
        return
    if raw.get("results") is not None:
        delete_gridfs(raw["results"])
    db.runs.delete_one({"_id": run_id})


def delete_gridfs(file_id):
    import gridfs

    import fiftyone.core.odm as foo

    gridfs.GridFS(foo.get_db_conn(), collection="fs").delete(file_id)


# -- recovery ------------------------------------------------------------------


def linked_audits(dataset):
    """``{key: (run id, token or None)}`` of the noise audits linked to ``dataset``."""
    import fiftyone.core.odm as foo

    raw = foo.get_db_conn().datasets.find_one({"_id": dataset._doc.id}, {"runs": 1}) or {}
    runs = raw.get("runs") or {}
    docs = {d["_id"]: d for d in foo.get_db_conn().runs.find({"_id": {"$in": list(runs.values())}},
                                                             {"config": 1, "results": 1})}
    out = {}
    for key, run_id in runs.items():
        cfg = (docs.get(run_id) or {}).get("config") or {}
        if cfg.get("method") == RUN_METHOD:
            out[key] = (run_id, cfg.get("token"))
    return out, set(runs.values())


def _unlinked_docs(dataset, linked_ids):
    import fiftyone.core.odm as foo

    return list(foo.get_db_conn().runs.find(
        {"_dataset_id": dataset._doc.id, "_id": {"$nin": list(linked_ids)}, "config.method": RUN_METHOD},
        {"config.token": 1, "key": 1, "results": 1}))


def _writes(dataset):
    """``{token: {"key", "tmp": [fields], "old": [fields], "final": [fields], "live"}}`` of
    the writes whose traces are in the dataset, and the orphaned fields of old versions."""
    schema = dataset.get_field_schema()
    linked, linked_ids = linked_audits(dataset)
    writes, orphans = {}, []

    def entry(token):
        return writes.setdefault(token, {"key": None, "tmp": [], "old": [], "final": [], "live": False, "docs": []})

    for name in schema:
        info = field_info(dataset, name) or {}
        if info.get("created_by") != OWNER:
            continue
        m = TEMP_NAME.match(name)
        if m:
            e = entry(m.group(2))
            e["tmp" if m.group(1) == TMP else "old"].append(name)
            e["key"] = e["key"] or info.get("key")  # a field moved aside keeps its audit's key
            if m.group(1) == TMP:
                mine = info.get("writer", {}).get("pid") == os.getpid() and m.group(2) in ACTIVE_WRITES
                since = datetime.fromisoformat(info["since"]) if info.get("since") else None
                other = info.get("writer", {}).get("pid") != os.getpid() and writer_alive(
                    info.get("writer"), STALE_TMP_S, since)
                e["live"] = e["live"] or mine or other
            continue
        key = info.get("key")
        if key is None or "signal" not in info or info.get("role", role(key)) != role(key):
            continue
        token = info.get("token")
        if key in linked and linked[key][1] == token:
            continue  # a committed audit's field
        if token is None:
            if key not in linked:
                orphans.append((key, name))  # an older version's fields left without a run
            continue
        e = entry(token)
        e["key"] = key
        e["final"].append(name)
    for doc in _unlinked_docs(dataset, linked_ids):
        token = (doc.get("config") or {}).get("token")
        e = entry(token or f"doc:{doc['_id']}")
        e["key"] = e["key"] or doc.get("key")
        e["docs"].append(doc["_id"])
    return writes, orphans, linked


def recover(dataset: Dataset, key: str | None = None) -> dict[str, list[str]]:
    """Finishes or rolls back what interrupted writes left (under the lock).

    Every write whose writer is gone is finished (if committed) or rolled
    back. Fields that an older version left without a run (it wrote fields,
    then the run) are deleted only for ``key``: the audit about to be written
    or deleted under that key.

    Returns:
        ``{"rolled_back": [keys], "finished": [keys], "orphans": [fields]}``
    """
    out: dict[str, list[str]] = {"rolled_back": [], "finished": [], "orphans": []}
    with dataset_lock(dataset):
        writes, orphans, linked = _writes(dataset)
        orphans = [name for k, name in orphans if k == key]
        if orphans:
            dataset.delete_sample_fields(orphans)
            out["orphans"] = orphans
        for token, e in writes.items():
            if e["live"]:
                continue
            if not (e["tmp"] or e["old"] or e["final"]):  # a run document no dataset links: a replaced audit's
                for run_id in e["docs"]:
                    delete_run_doc(run_id)
                continue
            done = recover_token(dataset, token, e)
            out["finished" if done else "rolled_back"].append(e["key"])
        _settle_objects(dataset)
    return out


def _settle_objects(dataset: Dataset) -> None:
    """Per-object attributes back to their linked runs' (see :mod:`noise_audit.store.objects`)."""
    if not object_attrs.detections_fields(dataset):
        return
    linked, _ = linked_audits(dataset)
    for key in linked:
        config = dataset.get_run_info(key).config
        cfg = {"object_field": getattr(config, "object_field", None), "token": getattr(config, "token", None)}
        if not object_attrs.is_whole(dataset, key, cfg):
            results = dataset.load_run_results(key, cache=False, load_view=False) if cfg["object_field"] else None
            res = None if results is None else {n: getattr(results, n) for n in ("ids", "sample_ids", "object_values")}
            object_attrs.settle(dataset, key, cfg, res)
    for key in object_attrs.orphan_keys(dataset, list(linked)):
        object_attrs.clear(dataset, key)


def recover_token(dataset, token, entry=None):
    """Rolls the write ``token`` back, or finishes it if it was committed.

    Returns whether it was committed. Every step tolerates a state half-way
    through FiftyOne's renames (sample documents first, then the schema).
    """
    if entry is None:
        writes, _, _ = _writes(dataset)
        entry = writes.get(token, {"key": None, "tmp": [], "old": [], "final": [], "docs": []})
    linked, _ = linked_audits(dataset)
    key = entry["key"]
    committed = key is not None and key in linked and linked[key][1] == token
    schema = dataset.get_field_schema()
    if token.startswith("doc:"):
        for run_id in entry["docs"]:
            delete_run_doc(run_id)
        return False
    signal_names = set(SIGNAL_FIELDS) | set(object_attrs.OBJECT_SAMPLE_FIELDS)
    for name in entry["tmp"] + entry["old"]:
        signal_names.add(TEMP_NAME.match(name).group(3))
    if committed:
        olds = [old_name(token, n) for n in signal_names]
        declared = [n for n in olds if n in schema]
        if declared:
            dataset.delete_sample_fields(declared)
        unset_raw(dataset, olds + [tmp_name(token, n) for n in signal_names])
    else:
        for n in sorted(signal_names):
            fin, tmp, old = f"{key}_{n}" if key else None, tmp_name(token, n), old_name(token, n)
            if fin is not None:
                fin_ours = fin in schema and (field_info(dataset, fin) or {}).get("token") == token \
                    and is_own_field(dataset, fin)
                if old in schema:  # the replaced audit was moved aside: what is under fin is new
                    if fin_ours:
                        dataset.delete_sample_fields([fin])
                    elif fin not in schema:
                        unset_raw(dataset, [fin])
                    dataset.rename_sample_fields({old: fin})
                elif has_raw(dataset, old):  # moved aside half-way: move those back
                    dataset._sample_collection.update_many({old: {"$exists": True}}, {"$rename": {old: fin}})
                elif fin_ours:
                    dataset.delete_sample_fields([fin])
                elif fin not in schema:
                    unset_raw(dataset, [fin])  # renamed half-way, schema not yet saved
            if tmp in schema:
                dataset.delete_sample_fields([tmp])
            unset_raw(dataset, [tmp])
            schema = dataset.get_field_schema()
    import fiftyone.core.odm as foo

    db = foo.get_db_conn()
    _, linked_ids = linked_audits(dataset)
    for run_id in entry["docs"]:
        if run_id not in linked_ids:
            delete_run_doc(run_id)
    if not committed:  # results saved but their run document not (killed in between)
        referenced = {d.get("results") for d in db.runs.find({"results": {"$ne": None}}, {"results": 1})} \
            if db.fs.files.find_one({"noise_audit_token": token}) else set()
        for f in db.fs.files.find({"noise_audit_token": token}, {"_id": 1}):
            if f["_id"] not in referenced:
                delete_gridfs(f["_id"])
    dataset.reload()
    return committed
