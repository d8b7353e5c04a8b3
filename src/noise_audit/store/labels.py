"""The labels an audit read: their fingerprint, and whether they changed since.

An audit's scores describe the labels it read. Labels edited afterwards (in
the App, by an annotation tool, by another process while the audit ran) make
them stale without anything failing. So an audit records a fingerprint of
what it read in its run config (``labels_fingerprint``: SHA-1 over the
audited samples' ``(id, label)`` pairs, in the audited order), and
:func:`labels_changed` compares it with the dataset as it is now. The audit
itself, ``na.evaluate`` of an audit's corruption score (and the ``evaluate``
command), the report (its Overview) and the App's panel (its header) say so
when they differ: one warning (:func:`warn_if_labels_changed`) and a note.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fiftyone.core.dataset import Dataset

_log = logging.getLogger(__name__)
_warned: set[tuple[str, str, str]] = set()  # (dataset id, key, labels now): each change is logged once per process


def labels_fingerprint(ids: Iterable[Any], labels: Iterable[Any]) -> str:
    """SHA-1 (hex) over the ``(sample id, label)`` pairs in the given order.

    Each pair is hashed as one line of JSON, so no two different sequences of
    pairs (any ids, any label text, ``None`` for a missing label) share their
    hashed bytes.
    """
    h = hashlib.sha1()
    for i, label in zip(ids, labels):
        h.update(json.dumps([str(i), label], ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def _current_labels(dataset: Dataset, label_field: str, ids: list[str]) -> list[Any]:
    """The labels of ``ids`` in ``label_field`` now; ``None`` where the sample, its label or the field is gone."""
    if label_field not in dataset.get_field_schema():
        return [None] * len(ids)
    now = dict(zip(*dataset.values(["id", f"{label_field}.label"])))
    return [now.get(i) for i in ids]


def labels_changed(dataset: Dataset, key: str) -> dict[str, Any] | None:
    """How the labels audit ``key`` read differ from the dataset's now, or ``None`` if they do not.

    Returns:
        ``{"message", "n_changed", "n_missing", "label_field", "fingerprint_now"}``:
        how many audited samples carry another label now, how many lost theirs
        (sample, label or field deleted), and the fingerprint of the labels now.
    """
    from noise_audit.store.runs import load_audit

    config, results = load_audit(dataset, key)
    label_field = config.get("label_field")
    ids = [str(i) for i in results.ids]
    read = [results.classes[int(k)] for k in results.labels]
    recorded = config.get("labels_fingerprint") or labels_fingerprint(ids, read)  # audits before the fingerprint
    now = _current_labels(dataset, label_field, ids)
    fingerprint_now = labels_fingerprint(ids, now)
    if fingerprint_now == recorded:
        return None
    n_missing = sum(v is None for v in now)
    n_changed = sum(v is not None and v != r for v, r in zip(now, read))
    what = [f"{n_changed} of {len(ids)} audited samples have another label"] if n_changed else []
    what += [f"{n_missing} have no label any more"] if n_missing else []
    message = (f"the labels in {label_field!r} changed since audit {key!r} read them ({', '.join(what) or 'labels differ'}); "
               "its scores describe the old labels: audit again (overwrite=True) to score the current ones")
    return {"message": message, "n_changed": n_changed, "n_missing": n_missing, "label_field": label_field,
            "fingerprint_now": fingerprint_now}


def warn_if_labels_changed(dataset: Dataset, key: str) -> dict[str, Any] | None:
    """:func:`labels_changed`, and one logged warning when they changed.

    Logged once per change and process: a command that looks at an audit
    several times (the report, the App's panel on every refresh) says it once.
    """
    changed = labels_changed(dataset, key)
    if changed is not None:
        seen = (str(dataset._doc.id), key, changed["fingerprint_now"])
        if seen not in _warned:
            _warned.add(seen)
            _log.warning("%s", changed["message"])
    return changed
