"""Stage 2 from a vector field: the embeddings a user already has as the audit's features.

A team that ran ``dataset.compute_embeddings(model, embeddings_field="clip")``
(or ``fob.compute_visualization(..., points_field=...)``, or stored vectors of
its own with ``set_values``) audits on them with
``na.audit(dataset, label_field, embeddings_field="clip")``: the field's
vectors are the feature matrix, no image is opened and no backbone runs. From
there on nothing differs: the same standardisation on the training rows, the
same head, influence and scores.

This module owns the three things that needs:

- **reading** a vector field as a float32 matrix in a given sample order
  (:func:`read_vectors`), with every check of its values in
  :mod:`noise_audit.validation` (a missing field, samples without a vector,
  ragged lengths, NaN or inf, a field that holds no vectors);
- a **fingerprint** of the audited matrix (:func:`fingerprint`), recorded in
  the run's config beside the field's name (:func:`source_config`);
- **reading an audit's features again** (:func:`audit_vectors`), for
  explanations and what-cleaning-buys refits: from the field, never from a
  backbone, and only while the field still holds the vectors the audit used.
  Vectors changed since would pair the audit's head with features it was
  never fit on, so they are refused with one message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from noise_audit import validation
from noise_audit.errors import NoiseAuditError
from noise_audit.validation import vector_fields  # noqa: F401 (what a form offers: the rule's own list)

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection


def read_vectors(samples: SampleCollection, field: str, ids: Sequence[str] | np.ndarray | None = None) -> np.ndarray:
    """The vectors of ``field`` as an ``(n, d)`` float32 matrix.

    Args:
        samples: the collection to read from.
        field: a vector field of ``samples`` (see :func:`~noise_audit.validation.vector_fields`).
        ids: the samples, in the order of the rows (repeats allowed); default
            every sample of ``samples`` in its own order.

    Raises:
        NoiseAuditError: the field is missing or holds no vectors, a sample
            has no vector, the vectors differ in length, or one holds NaN/inf
            (:func:`~noise_audit.validation.embedding_vectors`).
    """
    validation.embeddings_field(samples, field)
    if ids is None:
        ids, values = samples.values(["id", field])
    else:
        ids = list(ids)
        wanted = list(dict.fromkeys(ids))
        # All of samples (an audit's own view) is read as it is: selecting every id would only
        # add a match on a list of all ids to the query.
        chosen = samples if len(wanted) == len(samples) else samples.select(wanted)
        by_id = dict(zip(*chosen.values(["id", field])))
        values = [by_id.get(i) for i in ids]
    return validation.embedding_vectors(field, ids, values)


def fingerprint(matrix: np.ndarray) -> str:
    """sha1 of the matrix's shape and float32 bytes (rows in the audited samples' order).

    Any changed value, row order or shape changes it; reading the same stored
    vectors again gives the same one (float32 is what every read converts to).
    """
    m = np.ascontiguousarray(matrix, dtype=np.float32)
    h = hashlib.sha1(f"{m.shape[0]}x{m.shape[1]}|".encode())
    h.update(m.tobytes())
    return h.hexdigest()


def source_config(field: str, matrix: np.ndarray) -> dict[str, Any]:
    """What the run's config records about features read from ``field``."""
    return {"embeddings_field": field, "embeddings_fingerprint": fingerprint(matrix),
            "embeddings_shape": [int(matrix.shape[0]), int(matrix.shape[1])]}


def audit_vectors(samples: SampleCollection, config: Mapping[str, Any], key: str, audited_ids: Sequence[str],
                  ids: Sequence[str]) -> np.ndarray:
    """The raw feature rows of ``ids`` for an audit that read them from a field.

    Reads the audit's field for every audited sample (to check its
    fingerprint) and for ``ids`` (which may repeat, and may name samples
    outside the audit, e.g. one explained against the audit's training set).

    Args:
        samples: the audited dataset.
        config: the audit's run config (``embeddings_field``, ``embeddings_fingerprint``).
        key: the audit's key, for the message.
        audited_ids: the audited samples in the audit's order (``results.ids``).
        ids: the samples whose rows are wanted.

    Raises:
        NoiseAuditError: the field no longer passes the checks of
            :func:`read_vectors`, or its vectors of the audited samples differ
            from the audit's (the fingerprint).
    """
    field = str(config.get("embeddings_field"))
    audited = list(audited_ids)
    row = {i: k for k, i in enumerate(audited)}
    others = list(dict.fromkeys(i for i in ids if i not in row))
    matrix = read_vectors(samples, field, audited + others)  # one read: one check of lengths for all
    if fingerprint(matrix[: len(audited)]) != config.get("embeddings_fingerprint"):
        raise NoiseAuditError(f"The embeddings in field {field!r} changed since the audit {key!r}; audit again")
    row.update({i: len(audited) + k for k, i in enumerate(others)})
    return matrix[[row[i] for i in ids]]
