"""What an audit owns: its fields, their roles, and the names of a write in progress.

An audit under ``key`` owns exactly the fields :func:`audit_fields` names
(``{key}_<signal>``), each marked ``info.role = "audit:<key>"`` and with the
``token`` of the write that made it (see :mod:`noise_audit.store.fields` for
the ownership rules every writer of ours follows). While a write is in
progress its values live in temporary fields ``noise_audit_tmp_<token>_<signal>``,
and a replaced audit's fields are moved aside to
``noise_audit_old_<token>_<signal>`` (:mod:`noise_audit.store.writes`); those
names are how :mod:`noise_audit.store.recovery` finds what an interrupted
write left. The run that ties the fields together is marked by
:data:`RUN_METHOD` (:mod:`noise_audit.store.runs`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

import fiftyone as fo

from noise_audit.signals import FIELD_SIGNALS
from noise_audit.store.fields import OWNER, field_info

if TYPE_CHECKING:
    from fiftyone.core.dataset import Dataset

RUN_METHOD = "noise_audit"
# The fields of an audit (``{key}_{suffix}``) and their types: the signals the
# table of noise_audit.signals writes to fields, the suspect flag, the prediction,
# the suggested label (noise_audit.core.suggestions), the review decisions
# (noise_audit.store.review; empty until someone reviews) and the staging field
# an annotation tool edits (noise_audit.annotation; empty until suspects are
# sent). Embedded documents are fo.Classification.
SIGNAL_FIELDS: dict[str, type] = {cast(str, s.field): fo.FloatField for s in FIELD_SIGNALS} | {
    "suspect": fo.BooleanField,
    "prediction": fo.EmbeddedDocumentField,
    "suggested_label": fo.EmbeddedDocumentField,
    "review": fo.EmbeddedDocumentField,
    "annotation": fo.EmbeddedDocumentField,
}
# AuditResults.signals that are read back from the fields (the rest are stored in the results)
SIGNAL_OF_FIELD: dict[str, str] = {s.name: cast(str, s.field) for s in FIELD_SIGNALS}
TMP, OLD = "noise_audit_tmp", "noise_audit_old"
TEMP_NAME = re.compile(rf"^({TMP}|{OLD})_([0-9a-f]{{12}})_(\w+)$")


def audit_fields(key: str) -> dict[str, str]:
    """``{signal: field name}`` of an audit under ``key``."""
    return {name: f"{key}_{name}" for name in SIGNAL_FIELDS}


def tmp_name(token: str, name: str) -> str:
    """Where the write ``token`` puts signal ``name`` until it commits."""
    return f"{TMP}_{token}_{name}"


def old_name(token: str, name: str) -> str:
    """Where the write ``token`` moves the replaced audit's signal ``name``."""
    return f"{OLD}_{token}_{name}"


def role(key: str) -> str:
    """The ``info.role`` of the fields of the audit ``key``."""
    return f"audit:{key}"


def is_reserved(key: str) -> bool:
    """Whether ``key`` would collide with the temporary names of a write."""
    return key.startswith((TMP + "_", OLD + "_"))


def config_fields(config: Any, key: str) -> dict[str, str]:
    """The fields a run's config says it owns (older configs: the names of :func:`audit_fields`)."""
    fields = getattr(config, "fields", None)
    return dict(fields) if isinstance(fields, dict) and fields else audit_fields(key)


def belongs(dataset: Dataset, name: str, key: str, token: str | None) -> bool:
    """Whether field ``name`` is a signal field of the audit ``key`` written by ``token``."""
    info = field_info(dataset, name)
    if not info or info.get("created_by") != OWNER or info.get("key") != key:
        return False
    return info.get("token") == token and info.get("role", role(key)) == role(key)
