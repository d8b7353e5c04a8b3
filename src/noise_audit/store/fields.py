"""Sample fields that noise-audit writes, the rule that guards them, and the
lock that keeps concurrent writers from undoing each other's schema changes.

Every field we create carries ``info={"created_by": "noise_audit",
"role": ROLE, ...}``; the role says what the field is for:

- ``"audit:<key>"``: a signal of the audit ``key`` (see :mod:`noise_audit.store.ownership`);
- ``"noise:noisy"`` / ``"noise:flag"``: the noisy copy of a label field and the
  flag of flipped labels written by :func:`noise_audit.inject_label_noise`.

A writer writes only to fields that are absent or carry our mark *with its own
role*, so a user's field, an audit's field and an injection's field are never
overwritten by another writer. Fields written before roles existed (no
``role`` in their info) are matched by their other info (the audit ``key``;
for injections, the field type).

Schema changes (adding, renaming, deleting fields, registering runs) rewrite
the dataset's document, and FiftyOne saves it from each process's in-memory
copy: two processes changing the schema at once can drop each other's fields.
:func:`dataset_lock` serialises our writers across processes (and machines
sharing the database) with a lease document in MongoDB, and reloads the
dataset after taking it, so every change starts from the stored schema.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import fiftyone as fo
from bson import ObjectId
from pymongo import UpdateOne

from noise_audit.errors import NoiseAuditError

if TYPE_CHECKING:
    import numpy.typing as npt
    from fiftyone.core.dataset import Dataset

# legacy(info, field): whether a field written before roles existed has the role asked for
Legacy = Callable[[dict[str, Any], Any], bool]

OWNER = "noise_audit"
LOCKS = "noise_audit_locks"  # collection of lease documents, one per locked dataset
LEASE_S = 600.0  # a lock held longer than this by a process on another host is taken over


def _info(dataset: Dataset, name: str) -> dict[str, Any] | None:
    field = dataset.get_field(name)
    return (getattr(field, "info", None) or {}) if field is not None else None


def field_info(dataset: Dataset, name: str) -> dict[str, Any] | None:
    """The ``info`` dict of field ``name`` (``{}`` if none), or None if absent."""
    return _info(dataset, name)


def is_own_field(dataset: Dataset, name: str, **match: Any) -> bool:
    """Whether ``name`` exists and was created by noise-audit (with ``match``)."""
    info = _info(dataset, name)
    if not info or info.get("created_by") != OWNER:
        return False
    return all(info.get(k) == v for k, v in match.items())


def has_role(dataset: Dataset, name: str, role: str, legacy: Legacy | None = None) -> bool:
    """Whether ``name`` is ours with ``role``; a field without a role (written
    by an older version) passes when ``legacy(info, field)`` says so."""
    info = _info(dataset, name)
    if not info or info.get("created_by") != OWNER:
        return False
    if "role" in info:
        return info["role"] == role
    return bool(legacy and legacy(info, dataset.get_field(name)))


def check_writable(dataset: Dataset, names: Sequence[str], role: str | None = None, legacy: Legacy | None = None,
                   **match: Any) -> None:
    """Raises unless every field in ``names`` is absent or ours (with ``role``
    and ``match``), before anything is written."""
    schema = dataset.get_field_schema()
    taken = [n for n in names if n in schema and not is_own_field(dataset, n)]
    if taken:
        raise NoiseAuditError(
            f"Fields {taken} already exist and were not created by noise-audit"
            + (f" for {match}" if match else "")
            + "; choose another name or key"
        )
    wrong = [n for n in names if n in schema and not (is_own_field(dataset, n, **match)
                                                       and (role is None or has_role(dataset, n, role, legacy)))]
    if wrong:
        roles = {n: (_info(dataset, n) or {}).get("role", "an older noise-audit field") for n in wrong}
        raise NoiseAuditError(
            f"Fields {wrong} were created by noise-audit for another purpose ({roles}), not as "
            f"{role or match}; choose another name or key"
        )


def declare_field(dataset: Dataset, name: str, ftype: type, embedded_doc_type: type | None = None, **info: Any) -> None:
    """Creates ``name`` (if absent) and stamps it with our ownership info."""
    if dataset.get_field(name) is None:
        kwargs = {"embedded_doc_type": embedded_doc_type} if embedded_doc_type else {}
        dataset.add_sample_field(name, ftype, **kwargs)
    field = dataset.get_field(name)
    field.info = {"created_by": OWNER, **info}
    field.save()


def write_values(dataset: Dataset, name: str, ids: Iterable[str], values: Iterable[Any]) -> None:
    """Writes ``values`` to the samples with ``ids`` (other samples untouched)."""
    dataset.set_values(name, dict(zip(ids, values)), key_field="id")


def write_columns(dataset: Dataset, ids: Sequence[str], columns: Mapping[str, Sequence[Any]]) -> None:
    """Writes several declared fields at once: one update per sample, not per field.

    ``columns`` maps a field name to one value per id, already in the form
    MongoDB stores (see :func:`classification_doc`). ``set_values`` validates
    and writes one field per pass, 1.5 s per float field at 50k samples; all
    of an audit's fields in one pass take about a second. The write goes
    through the dataset's own bulk writer, which refreshes samples loaded in
    memory. ``tests/test_fields.py`` checks the stored documents against
    ``set_values``'s.
    """
    names = list(columns)
    now = datetime.now(timezone.utc).replace(tzinfo=None)  # FiftyOne stores naive UTC
    ops = [
        UpdateOne({"_id": ObjectId(_id)}, {"$set": {**dict(zip(names, row)), "last_modified_at": now}})
        for _id, row in zip(ids, zip(*(columns[n] for n in names)))
    ]
    if ops:
        dataset._bulk_write(ops, ids=[ObjectId(i) for i in ids])


_VECTOR = fo.VectorField()


def classification_doc(label: str, confidence: float, logits: npt.ArrayLike) -> dict[str, Any]:
    """An ``fo.Classification`` as stored by FiftyOne, without building the object."""
    return {"_id": ObjectId(), "_cls": "Classification", "tags": [], "label": label,
            "confidence": float(confidence), "logits": _VECTOR.to_mongo(logits)}


def delete_fields(dataset: Dataset, names: Iterable[str], **match: Any) -> list[str]:
    """Deletes those of ``names`` that exist and are ours (with ``match``)."""
    own = [n for n in names if is_own_field(dataset, n, **match)]
    if own:
        dataset.delete_sample_fields(own)
    return own


def unset_raw(dataset: Dataset, names: Sequence[str]) -> None:
    """Removes keys ``names`` from every sample document, declared or not
    (what an interrupted rename or delete can leave behind)."""
    if names:
        dataset._sample_collection.update_many(
            {"$or": [{n: {"$exists": True}} for n in names]}, {"$unset": {n: "" for n in names}})


def has_raw(dataset: Dataset, name: str) -> bool:
    """Whether any sample document has the key ``name``, declared or not."""
    return dataset._sample_collection.find_one({name: {"$exists": True}}, {"_id": 1}) is not None


# -- who is writing: this process, and whether another writer still lives ----

_HOST = socket.gethostname()


def _started(pid: int) -> float:
    import psutil

    return round(psutil.Process(pid).create_time(), 2)


def writer() -> dict[str, Any]:
    """This process as a writer: host, pid and start time (pids are reused)."""
    return {"host": _HOST, "pid": os.getpid(), "started": _started(os.getpid())}


def writer_alive(w: Mapping[str, Any] | None, max_age_s: float | None = None,
                 since: datetime | None = None) -> bool:
    """Whether the writer ``w`` (from :func:`writer`) still runs.

    On this host: its pid runs and started when ``w`` says. On another host we
    cannot look: alive unless ``since`` (when it last showed life) is older
    than ``max_age_s``.
    """
    if not w:
        return False
    if w.get("host") != _HOST:
        if max_age_s is None or since is None:
            return True
        return (datetime.utcnow() - since).total_seconds() < max_age_s
    import psutil

    try:
        p = psutil.Process(int(w["pid"]))
        return p.status() != psutil.STATUS_ZOMBIE and abs(round(p.create_time(), 2) - w["started"]) < 0.05
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


# -- the dataset lock ----------------------------------------------------------

_held = threading.local()  # lock id -> (token, depth), per thread: re-entrant


def _locks():
    import fiftyone.core.odm as foo

    return foo.get_db_conn()[LOCKS]


@contextmanager
def dataset_lock(dataset: Dataset, timeout: float = 900.0) -> Iterator[None]:
    """Holds the noise-audit lock of ``dataset`` (re-entrant in a thread).

    A lease document ``{_id: "dataset:<id>", writer, at}`` in the collection
    :data:`LOCKS`. A holder that died (same host: its process is gone; other
    host: no renewal for :data:`LEASE_S`) is taken over. The dataset is
    reloaded once the lock is taken, so schema changes start from the stored
    schema, not from this process's copy.
    """
    lock_id = f"dataset:{dataset._doc.id}"
    held = getattr(_held, "locks", None)
    if held is None:
        held = _held.locks = {}
    if lock_id in held:
        token, depth = held[lock_id]
        held[lock_id] = (token, depth + 1)
        try:
            yield
        finally:
            held[lock_id] = (token, depth)
        return

    from pymongo.errors import DuplicateKeyError

    coll = _locks()
    token = uuid.uuid4().hex
    me = {"writer": writer(), "token": token, "dataset": dataset.name}
    deadline, delay = time.monotonic() + timeout, 0.01
    while True:
        try:
            coll.insert_one({"_id": lock_id, **me, "at": datetime.utcnow()})
            break
        except DuplicateKeyError:
            pass
        other = coll.find_one({"_id": lock_id})
        if other is not None and not writer_alive(other.get("writer"), LEASE_S, other.get("at")):
            coll.delete_one({"_id": lock_id, "token": other.get("token")})  # its holder died
            continue
        if time.monotonic() > deadline:
            w = (other or {}).get("writer") or {}
            raise NoiseAuditError(f"Dataset {dataset.name!r} is being written by another noise-audit process "
                                  f"(pid {w.get('pid')} on {w.get('host')}); waited {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    held[lock_id] = (token, 1)
    try:
        dataset.reload()
        yield
    finally:
        del held[lock_id]
        coll.delete_one({"_id": lock_id, "token": token})


def renew_lock(dataset: Dataset) -> None:
    """Shows life on a held lock (for long writes seen from another host)."""
    held = getattr(_held, "locks", None) or {}
    entry = held.get(f"dataset:{dataset._doc.id}")
    if entry:
        _locks().update_one({"_id": f"dataset:{dataset._doc.id}", "token": entry[0]},
                            {"$set": {"at": datetime.utcnow()}})
