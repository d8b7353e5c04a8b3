"""Writing an audit into the dataset, all or nothing.

:func:`write_audit` commits an audit in steps that each leave either the
state before the audit or the complete audit, once the next writer (or
:func:`~noise_audit.store.runs.delete_audit`) has cleaned what an interrupted
write left (:func:`~noise_audit.store.recovery.recover`):

1. ``declared``: fields ``noise_audit_tmp_<token>_<signal>`` are declared;
2. ``written``: the values go into them;
3. ``prepared``: the run document (config and results) is saved, not yet
   linked to the dataset, so no run lists it;
4. ``old_moved``: an audit being replaced moves its fields aside to
   ``noise_audit_old_<token>_<signal>``;
5. ``new_moved``: the temporary fields are renamed to ``{key}_<signal>``;
6. ``linked``: the run is linked under ``key``, one atomic update: the commit;
   then the per-object attributes of an audit of objects are written
   (:mod:`noise_audit.store.objects`; ``objects`` is the step half-way);
7. ``old_deleted``: the replaced audit's fields and run document are deleted.

Each field and run document of a write carries its ``token``. A Python
exception inside the write rolls back at once; a killed process leaves its
temporary fields, recognisable by name and by ``info.role = "audit:<key>"``
with a token no linked run has, for the next :func:`write_audit` or
``delete_audit`` on the dataset to clean. Steps 4-7 run under
:func:`~noise_audit.store.fields.dataset_lock`, as does every schema change of
ours, so concurrent audits of different keys do not undo each other's schema
changes.
"""

from __future__ import annotations

import logging
import os
import signal as signals_
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

import fiftyone as fo

from noise_audit.store import objects as object_attrs
from noise_audit.store.fields import OWNER, dataset_lock, renew_lock, write_columns, writer
from noise_audit.store.ownership import SIGNAL_FIELDS, audit_fields, belongs, old_name, role, tmp_name
from noise_audit.store.recovery import ACTIVE_WRITES, delete_run_doc, link_run, recover, recover_token
from noise_audit.store.runs import AuditResults, AuditRunConfig, check_key

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection

logger = logging.getLogger(__name__)

WRITE_STEPS = ("declared", "written", "prepared", "old_moved", "new_moved", "linked", "old_deleted")
# "objects": half-way through the per-object attributes of an audit of objects (after "linked")
# Test-only: "<step>" raises there, "<step>:kill" SIGKILLs this process, "<step>:pause:<file>" creates <file>
# and waits (at most PAUSE_MAX_S) until it is removed, so a test can act while the write stands at that step.
FAULT_ENV = "NOISE_AUDIT_FAULT_AT"
PAUSE_MAX_S = 600


class InjectedFault(RuntimeError):
    """Raised at a write step named by ``$NOISE_AUDIT_FAULT_AT`` (tests only)."""


def _step(name: str) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    at, _, how = spec.partition(":")
    if at == name:
        if how == "kill":
            os.kill(os.getpid(), signals_.SIGKILL)
        if how.startswith("pause:"):
            _pause(how[len("pause:"):])
            return
        raise InjectedFault(f"fault injected at write step {name!r}")


def _pause(marker: str) -> None:
    """Creates ``marker``, then waits until it is gone (see :data:`FAULT_ENV`)."""
    with open(marker, "w"):
        pass
    deadline = time.monotonic() + PAUSE_MAX_S
    while os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.05)


def write_audit(samples: SampleCollection, key: str, ids: Sequence[str], values: Mapping[str, Sequence[Any]],
                config: Mapping[str, Any], results: Mapping[str, Any],
                signals: Mapping[str, np.ndarray] | None = None, predictions: np.ndarray | None = None,
                overwrite: bool = False, before_commit: Callable[[], Any] | None = None,
                fields: Mapping[str, type] | None = None) -> AuditResults:
    """Writes the fields and registers the run, all or nothing (see the module doc).

    ``values`` maps each signal of :data:`SIGNAL_FIELDS` to one stored value
    per id (floats, booleans, :func:`~noise_audit.store.fields.classification_doc`);
    ``results`` is the dict of what the run's results keep; ``signals`` and
    ``predictions`` the in-memory arrays. ``before_commit()`` is called once
    the values are written, before the config is stored (to finish timings).
    ``fields`` maps each stored signal to its field type (default
    :data:`SIGNAL_FIELDS`; an audit of objects passes
    :data:`~noise_audit.store.objects.OBJECT_SAMPLE_FIELDS`). Once the run is
    linked, the per-object attributes of the key are made those of the new run
    (:func:`noise_audit.store.objects.settle`: written for an audit of objects,
    removed when it replaces one).

    Returns:
        the :class:`AuditResults`, as later loaded
    """
    dataset = samples._dataset
    token = uuid.uuid4().hex[:12]
    ftypes = dict(fields) if fields is not None else SIGNAL_FIELDS
    names = {n: f"{key}_{n}" for n in ftypes} if fields is not None else audit_fields(key)
    ACTIVE_WRITES.add(token)
    try:
        with dataset_lock(dataset):
            recover(dataset, key)
            check_key(dataset, key, overwrite)
            for name, field in names.items():
                ftype = ftypes[name]
                doc = fo.Classification if ftype is fo.EmbeddedDocumentField else None
                kwargs = {"embedded_doc_type": doc} if doc else {}
                dataset.add_sample_field(tmp_name(token, name), ftype, info={
                    "created_by": OWNER, "role": role(key), "key": key, "signal": name, "token": token,
                    "writer": writer(), "since": datetime.utcnow().isoformat()}, **kwargs)
        _step("declared")
        write_columns(dataset, ids, {tmp_name(token, name): values[name] for name in names})
        _step("written")
        if before_commit is not None:
            before_commit()
        run_config = AuditRunConfig(**config, token=token)
        out = AuditResults(samples, run_config, key, signals=signals, predictions=predictions, **results)
        run_doc = _prepare_run_doc(samples, key, run_config, out, token)
        _step("prepared")
        with dataset_lock(dataset):
            check_key(dataset, key, overwrite)  # another process may have committed this key meanwhile
            old = dataset._doc.runs.get(key) if dataset.has_run(key) else None
            old_token = getattr(dataset.get_run_info(key).config, "token", None) if old is not None else None
            moving = {f: old_name(token, n) for n, f in names.items()
                      if old is not None and f in dataset.get_field_schema() and belongs(dataset, f, key, old_token)}
            if moving:
                dataset.rename_sample_fields(moving)
            _step("old_moved")
            renew_lock(dataset)
            dataset.rename_sample_fields({tmp_name(token, n): f for n, f in names.items()})
            _step("new_moved")
            renew_lock(dataset)
            link_run(dataset, key, run_doc.id)
            _step("linked")
            object_attrs.settle(dataset, key, {**config, "token": token}, results, on_half=lambda: _step("objects"))
            if moving:
                dataset.delete_sample_fields(list(moving.values()))
            if old is not None:
                delete_run_doc(old)
            _step("old_deleted")
    except BaseException:
        try:
            with dataset_lock(dataset):
                recover_token(dataset, token)
                recover(dataset)  # e.g. the replaced audit's run document, when it failed after the commit
        except Exception:  # the next writer cleans up (see recover)
            logger.warning("Could not roll back the interrupted audit write %s", token, exc_info=True)
        raise
    finally:
        ACTIVE_WRITES.discard(token)
    dataset._run_cache[key] = out
    return out


def _prepare_run_doc(samples, key, config, results, token):
    """Saves the run document with its results, linked to no dataset yet."""
    from bson import json_util
    import fiftyone.constants as foc
    import fiftyone.core.view as fov
    from fiftyone.core.odm.runs import RunDocument

    dataset = samples._dataset
    view_stages = None
    if isinstance(samples, fov.DatasetView):
        view_stages = [json_util.dumps(s) for s in samples._serialize(include_uuids=False)]
    run_doc = RunDocument(dataset_id=dataset._doc.id, key=key, version=foc.VERSION, timestamp=datetime.utcnow(),
                          config=deepcopy(config.serialize()), view_stages=view_stages, results=None)
    run_doc.results.put(json_util.dumps(results.serialize()).encode(), content_type="application/json",
                        noise_audit_token=token)
    run_doc.results_meta = {"noise_audit_token": token}
    run_doc.save(upsert=True)
    return run_doc
