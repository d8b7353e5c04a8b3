"""Stage 6, fields and run: write an audit into the dataset as a FiftyOne run.

An audit under ``key`` owns exactly the fields :func:`audit_fields` names and a
FiftyOne run registered under ``key`` (config = how it was computed, results =
what later explanations and reports need). :func:`delete_audit` removes both.
"""

from __future__ import annotations

import re

import fiftyone as fo

from .errors import NoiseAuditError
from .fields import check_writable, declare_field, delete_fields, write_columns

RUN_METHOD = "noise_audit"
SIGNAL_FIELDS = {
    "influence": fo.FloatField,
    "self_influence": fo.FloatField,
    "label_quality": fo.FloatField,
    "corruption_score": fo.FloatField,
    "suspect": fo.BooleanField,
    "prediction": fo.EmbeddedDocumentField,
}


def audit_fields(key):
    """``{signal: field name}`` of an audit under ``key``."""
    return {name: f"{key}_{name}" for name in SIGNAL_FIELDS}


def check_key(dataset, key, overwrite=False):
    """Raises unless ``key`` names a new audit (or ours, with ``overwrite``)."""
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise NoiseAuditError(f"key must be an identifier (letters, digits, _), not {key!r}")
    if dataset.has_run(key):
        if not is_audit(dataset, key):
            raise NoiseAuditError(f"Run key {key!r} is taken by a run that is not a noise audit")
        if not overwrite:
            raise NoiseAuditError(f"An audit with key {key!r} exists; pass overwrite=True or another key")
    check_writable(dataset, list(audit_fields(key).values()), key=key)


def is_audit(dataset, key):
    return dataset.has_run(key) and getattr(dataset.get_run_info(key).config, "method", None) == RUN_METHOD


def list_audits(dataset):
    """Keys of the noise audits registered on ``dataset``."""
    return [k for k in dataset.list_runs() if is_audit(dataset, k)]


def write_audit(samples, key, ids, values, config, results):
    """Writes the fields and registers the run (replacing an audit of ``key``).

    ``values`` maps each signal of :data:`SIGNAL_FIELDS` to one stored value
    per id (floats, booleans, :func:`~noise_audit.fields.classification_doc`).
    """
    dataset = samples._dataset
    if dataset.has_run(key):
        delete_audit(dataset, key)
    for name, field in audit_fields(key).items():
        ftype = SIGNAL_FIELDS[name]
        doc = fo.Classification if ftype is fo.EmbeddedDocumentField else None
        declare_field(dataset, field, ftype, doc, key=key, signal=name)
    write_columns(dataset, ids, {field: values[name] for name, field in audit_fields(key).items()})
    run_config = samples.init_run(method=RUN_METHOD, **config)
    samples.register_run(key, run_config)
    samples.save_run_results(key, samples.init_run_results(key, **results))


def load_audit(dataset, key):
    """``(config dict, results)`` of the audit under ``key``."""
    if not is_audit(dataset, key):
        raise NoiseAuditError(f"No noise audit with key {key!r} on dataset {dataset.name!r}; audits: {list_audits(dataset)}")
    config = dataset.get_run_info(key).config
    return config, dataset.load_run_results(key, load_view=False)


def delete_audit(dataset, key):
    """Removes the audit ``key``: its run and exactly its fields."""
    if not is_audit(dataset, key):
        raise NoiseAuditError(f"No noise audit with key {key!r}; audits: {list_audits(dataset)}")
    delete_fields(dataset, list(audit_fields(key).values()), key=key)
    dataset.delete_run(key)
