"""Stage 6, fields and run: write an audit into the dataset as a FiftyOne run.

An audit under ``key`` owns exactly the fields :func:`audit_fields` names and a
FiftyOne run registered under ``key`` of its own type (:class:`AuditRunConfig`,
:class:`AuditRun`, :class:`AuditResults`), so FiftyOne's own run operations
keep the two in step: ``dataset.delete_run(key)`` (and the App's runs panel)
also deletes the audit's fields, ``dataset.rename_run(key, new)`` renames
them, and ``dataset.load_run_results(key)`` returns the same
:class:`AuditResults` that :func:`noise_audit.core.auditing` returned.

**All or nothing.** :func:`write_audit` commits an audit in steps that each
leave either the state before the audit or the complete audit, once the next
writer (or :func:`delete_audit`) has cleaned what an interrupted write left:

1. ``declared``: fields ``noise_audit_tmp_<token>_<signal>`` are declared;
2. ``written``: the values go into them;
3. ``prepared``: the run document (config and results) is saved, not yet
   linked to the dataset, so no run lists it;
4. ``old_moved``: an audit being replaced moves its fields aside to
   ``noise_audit_old_<token>_<signal>``;
5. ``new_moved``: the temporary fields are renamed to ``{key}_<signal>``;
6. ``linked``: the run is linked under ``key``, one atomic update: the commit;
7. ``old_deleted``: the replaced audit's fields and run document are deleted.

Each field and run document of a write carries its ``token``. A write is
committed when the run linked under its key has its token; an uncommitted
write whose writer is gone is rolled back (new fields dropped, the replaced
audit's fields moved back), a committed one is finished (the replaced audit's
leftovers dropped). A Python exception inside the write rolls back at once;
a killed process leaves its temporary fields, recognisable by name and by
``info.role = "audit:<key>"`` with a token no linked run has, for the next
:func:`write_audit` or :func:`delete_audit` on the dataset to clean
(:func:`recover`). Steps 4-7 run under :func:`~noise_audit.store.fields.dataset_lock`,
as does every schema change of ours, so concurrent audits of different keys
do not undo each other's schema changes.

Audits written before this format (a plain ``fiftyone.core.runs.RunConfig``
with ``method="noise_audit"``) still list, load, report and delete; FiftyOne's
``delete_run`` of such an old run removes only the run (its fields stay until
``na.delete_audit``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal as signals_
import uuid
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import numpy as np

import fiftyone as fo
import fiftyone.core.runs as fors

from noise_audit.errors import NoiseAuditError
from noise_audit.signals import BY_NAME, FIELD_SIGNALS, SHOWN, SIGNALS, suspicion
from noise_audit.store.fields import (OWNER, check_writable, dataset_lock, field_info, has_raw, is_own_field,
                     renew_lock, unset_raw, write_columns, writer, writer_alive)

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection
    from fiftyone.core.dataset import Dataset

logger = logging.getLogger(__name__)

RUN_METHOD = "noise_audit"
FORMAT = 2  # 1: plain RunConfig/RunResults (before the run classes)
# The fields of an audit (``{key}_{suffix}``) and their types: the signals the
# table of noise_audit.signals writes to fields, the suspect flag, the prediction.
SIGNAL_FIELDS: dict[str, type] = {cast(str, s.field): fo.FloatField for s in FIELD_SIGNALS} | {
    "suspect": fo.BooleanField,
    "prediction": fo.EmbeddedDocumentField,
}
# AuditResults.signals that are read back from the fields (the rest are stored in the results)
SIGNAL_OF_FIELD: dict[str, str] = {s.name: cast(str, s.field) for s in FIELD_SIGNALS}
TMP, OLD = "noise_audit_tmp", "noise_audit_old"
_TEMP = re.compile(rf"^({TMP}|{OLD})_([0-9a-f]{{12}})_(\w+)$")
WRITE_STEPS = ("declared", "written", "prepared", "old_moved", "new_moved", "linked", "old_deleted")
FAULT_ENV = "NOISE_AUDIT_FAULT_AT"  # test-only: "<step>" raises there, "<step>:kill" SIGKILLs this process
STALE_TMP_S = 6 * 3600.0  # temporary fields of a writer on another host count as abandoned after this

_active: set[str] = set()  # tokens of the writes in progress in this process


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
        raise InjectedFault(f"fault injected at write step {name!r}")


def audit_fields(key: str) -> dict[str, str]:
    """``{signal: field name}`` of an audit under ``key``."""
    return {name: f"{key}_{name}" for name in SIGNAL_FIELDS}


def _tmp(token: str, name: str) -> str:
    return f"{TMP}_{token}_{name}"


def _old(token: str, name: str) -> str:
    return f"{OLD}_{token}_{name}"


def _role(key: str) -> str:
    return f"audit:{key}"


# -- the run type ------------------------------------------------------------


class AuditRunConfig(fors.RunConfig):
    """How an audit was computed: the config of its FiftyOne run.

    Attributes are the audit's settings (``label_field``, ``backbone``,
    ``influence_method``, ``split``, ``timings``, ``fields`` ...); read them as
    attributes or, as from a dict, ``config["label_field"]``.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs["method"] = RUN_METHOD
        super().__init__(**kwargs)

    @property
    def run_cls(self) -> type[AuditRun]:
        return AuditRun

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self.keys()

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)

    def keys(self) -> list[str]:
        return [a for a in vars(self) if not a.startswith("_")]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain JSON dict (no class bookkeeping)."""
        d = json.loads(json.dumps(self.serialize(), default=str))
        for k in ("cls", "type"):
            d.pop(k, None)
        return d

    @classmethod
    def from_legacy(cls, config: fors.RunConfig) -> AuditRunConfig:
        d = deepcopy(config.serialize())
        for k in ("cls", "type", "method"):
            d.pop(k, None)
        return cls(format=1, **d)


class AuditRun(fors.Run):
    """The audit as a FiftyOne run: which fields it owns, how to delete and rename them."""

    def get_fields(self, samples: SampleCollection, key: str) -> list[str]:
        return list(_config_fields(self.config, key).values())

    def cleanup(self, samples: SampleCollection, key: str) -> None:
        dataset = samples._dataset
        with dataset_lock(dataset):
            token = getattr(self.config, "token", None)
            names = list(_config_fields(self.config, key).values())
            own = [n for n in names if _belongs(dataset, n, key, token)]
            if own:
                dataset.delete_sample_fields(own)

    def rename(self, samples: SampleCollection, key: str, new_key: str) -> None:
        _rename_audit(samples._dataset, key, new_key, self.config)


def _config_fields(config: Any, key: str) -> dict[str, str]:
    fields = getattr(config, "fields", None)
    return dict(fields) if isinstance(fields, dict) and fields else audit_fields(key)


def _belongs(dataset: Dataset, name: str, key: str, token: str | None) -> bool:
    """Whether field ``name`` is a signal field of the audit ``key`` written by ``token``."""
    info = field_info(dataset, name)
    if not info or info.get("created_by") != OWNER or info.get("key") != key:
        return False
    return info.get("token") == token and info.get("role", _role(key)) == _role(key)


class AuditResults(fors.RunResults):
    """What an audit computed, per sample in the audited view's order.

    Returned by :func:`noise_audit.core.auditing` and, equal in content, by
    :func:`load_audit` and ``dataset.load_run_results(key)``.

    Attributes:
        key, dataset: the run key and the dataset's name
        config: the :class:`AuditRunConfig` (``config["influence_method"]``)
        ids, classes, labels, is_test: the audited samples, class names,
            label indices and held-out mask
        signals: ``{name: array}`` (``average_influence``, ``self_influence``,
            ``label_quality``, ``loss``, ``loo_loss``, ``corruption_score``)
        predictions: out-of-sample probabilities ``(n, C)``
        num_label_issues, timings, history, features_computed, head,
        feature_mean, feature_std, test_accuracy, ... as the audit stored them

    The signals stored in fields and the predictions (from the logits of
    ``{key}_prediction``) are read from the dataset on first use; the others
    are kept in the results.
    """

    ids: np.ndarray
    labels: np.ndarray
    is_test: np.ndarray
    classes: list[str]
    num_label_issues: int
    stored_signals: dict[str, dict[str, Any]]  # the signals not in fields, encoded

    def __init__(self, samples: SampleCollection, config: AuditRunConfig, key: str, backend: Any = None,
                 signals: Mapping[str, np.ndarray] | None = None, predictions: np.ndarray | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("format", FORMAT)
        super().__init__(samples, config, key, backend=backend, **kwargs)
        self.ids = np.asarray(self.ids)
        self.labels = np.asarray(self.labels, dtype=int)
        self.is_test = np.asarray(self.is_test, dtype=bool)
        self._signals = dict(signals) if signals is not None else None
        self._predictions = predictions
        if signals is not None:
            self.stored_signals = {n: _encode(v) for n, v in signals.items() if n not in SIGNAL_OF_FIELD}
        elif not hasattr(self, "stored_signals"):
            self.stored_signals = {}

    @property
    def dataset(self) -> str:
        return self.samples._root_dataset.name

    @property
    def timings(self) -> dict[str, float]:
        return dict(getattr(self.config, "timings", None) or {})

    @property
    def fields(self) -> dict[str, str]:
        return _config_fields(self.config, self.key)

    def _column(self, path: str) -> list[Any]:
        ds = self.samples._root_dataset
        ids, values = ds.values(["id", path])
        pos = dict(zip(ids, range(len(ids))))
        missing = [i for i in self.ids if i not in pos]
        if missing:
            raise NoiseAuditError(f"{len(missing)} audited samples are no longer in dataset {ds.name!r}")
        return [values[pos[i]] for i in self.ids]

    @property
    def signals(self) -> dict[str, np.ndarray]:
        if self._signals is None:
            out = {n: _decode(v) for n, v in (self.stored_signals or {}).items()}
            for name, field in SIGNAL_OF_FIELD.items():
                out[name] = np.array(self._column(self.fields[field]), dtype=float)
            order = [s.name for s in SIGNALS]
            self._signals = {n: out[n] for n in order if n in out} | {n: v for n, v in out.items() if n not in order}
        return self._signals

    @property
    def predictions(self) -> np.ndarray:
        if self._predictions is None:
            from scipy.special import softmax

            logits = self._column(f"{self.fields['prediction']}.logits")
            self._predictions = softmax(np.stack([np.asarray(v) for v in logits]), axis=1)
        return self._predictions

    @property
    def corruption_score(self) -> np.ndarray:
        return self.signals["corruption_score"]

    def suspicion(self) -> dict[str, np.ndarray]:
        """The signals compared in evaluations (the fields' and the in-sample loss),
        each oriented so that higher = more suspicious."""
        s = self.signals
        return {x.name: suspicion(x.name, s[x.name]) for x in SHOWN + (BY_NAME["loss"],) if x.name in s}

    def attributes(self) -> list[str]:
        return ["cls"] + [a for a in vars(self) if not a.startswith("_")]


def _encode(values):
    a = np.ascontiguousarray(values)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def _decode(d):
    return np.frombuffer(bytes(d["data"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


# -- keys, listing, loading ---------------------------------------------------


def check_key(dataset: Dataset, key: str, overwrite: bool = False) -> None:
    """Raises unless ``key`` names a new audit (or ours, with ``overwrite``)."""
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise NoiseAuditError(f"key must be an identifier (letters, digits, _), not {key!r}")
    if key.startswith((TMP + "_", OLD + "_")):
        raise NoiseAuditError(f"keys starting with {TMP}_ or {OLD}_ are reserved for audits being written")
    if dataset.has_run(key):
        if not is_audit(dataset, key):
            raise NoiseAuditError(f"Run key {key!r} is taken by a run that is not a noise audit")
        if not overwrite:
            raise NoiseAuditError(f"An audit with key {key!r} exists; pass overwrite=True or another key")
    check_writable(dataset, list(audit_fields(key).values()), role=_role(key),
                   legacy=lambda info, field: info.get("key") == key, key=key)


def is_audit(dataset: Dataset, key: str) -> bool:
    return dataset.has_run(key) and getattr(dataset.get_run_info(key).config, "method", None) == RUN_METHOD


def list_audits(dataset: Dataset) -> list[str]:
    """Keys of the noise audits registered on ``dataset``."""
    return [k for k in dataset.list_runs() if is_audit(dataset, k)]


def load_audit(dataset: Dataset, key: str) -> tuple[AuditRunConfig, AuditResults]:
    """``(config, results)`` of the audit under ``key``: an :class:`AuditRunConfig`
    and the :class:`AuditResults` that :func:`noise_audit.core.auditing` returned."""
    if not is_audit(dataset, key):
        raise NoiseAuditError(f"No noise audit with key {key!r} on dataset {dataset.name!r}; audits: {list_audits(dataset)}")
    config = dataset.get_run_info(key).config
    results = dataset.load_run_results(key, load_view=False)
    linked = _linked(dataset)[0].get(key)
    if isinstance(results, AuditResults) and linked is not None and linked[1] != getattr(results.config, "token", None):
        dataset.reload()  # cached results of an audit that another write has replaced since
        results = dataset.load_run_results(key, cache=False, load_view=False)
        dataset._run_cache[key] = results
    if results is None:
        raise NoiseAuditError(f"The audit {key!r} has no results (an older noise-audit was interrupted while "
                              f"writing it): delete it with na.delete_audit(dataset, {key!r}) or audit again "
                              "with overwrite=True")
    if isinstance(results, AuditResults):
        return results.config, results
    # written before the run classes (format 1): the same content, but no stored loss/loo_loss
    config = AuditRunConfig.from_legacy(config)
    d = {k: getattr(results, k) for k in results.attributes() if k not in ("cls", "format")}
    return config, AuditResults(dataset, config, key, format=1, **d)


# -- writing -------------------------------------------------------------------


def write_audit(samples: SampleCollection, key: str, ids: Sequence[str], values: Mapping[str, Sequence[Any]],
                config: Mapping[str, Any], results: Mapping[str, Any],
                signals: Mapping[str, np.ndarray] | None = None, predictions: np.ndarray | None = None,
                overwrite: bool = False, before_commit: Callable[[], Any] | None = None) -> AuditResults:
    """Writes the fields and registers the run, all or nothing (see the module doc).

    ``values`` maps each signal of :data:`SIGNAL_FIELDS` to one stored value
    per id (floats, booleans, :func:`~noise_audit.store.fields.classification_doc`);
    ``results`` is the dict of what the run's results keep; ``signals`` and
    ``predictions`` the in-memory arrays. ``before_commit()`` is called once
    the values are written, before the config is stored (to finish timings).

    Returns:
        the :class:`AuditResults`, as later loaded
    """
    dataset = samples._dataset
    token = uuid.uuid4().hex[:12]
    names = audit_fields(key)
    _active.add(token)
    try:
        with dataset_lock(dataset):
            recover(dataset, key)
            check_key(dataset, key, overwrite)
            for name, field in names.items():
                ftype = SIGNAL_FIELDS[name]
                doc = fo.Classification if ftype is fo.EmbeddedDocumentField else None
                kwargs = {"embedded_doc_type": doc} if doc else {}
                dataset.add_sample_field(_tmp(token, name), ftype, info={
                    "created_by": OWNER, "role": _role(key), "key": key, "signal": name, "token": token,
                    "writer": writer(), "since": datetime.utcnow().isoformat()}, **kwargs)
        _step("declared")
        write_columns(dataset, ids, {_tmp(token, name): values[name] for name in names})
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
            moving = {f: _old(token, n) for n, f in names.items()
                      if old is not None and f in dataset.get_field_schema() and _belongs(dataset, f, key, old_token)}
            if moving:
                dataset.rename_sample_fields(moving)
            _step("old_moved")
            renew_lock(dataset)
            dataset.rename_sample_fields({_tmp(token, n): f for n, f in names.items()})
            _step("new_moved")
            renew_lock(dataset)
            _link(dataset, key, run_doc.id)
            _step("linked")
            if moving:
                dataset.delete_sample_fields(list(moving.values()))
            if old is not None:
                _delete_run_doc(old)
            _step("old_deleted")
    except BaseException:
        try:
            with dataset_lock(dataset):
                _recover_token(dataset, token)
                recover(dataset)  # e.g. the replaced audit's run document, when it failed after the commit
        except Exception:  # the next writer cleans up (see recover)
            logger.warning("Could not roll back the interrupted audit write %s", token, exc_info=True)
        raise
    finally:
        _active.discard(token)
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


def _link(dataset, key, run_id):
    """The commit: points the dataset's run ``key`` at ``run_id`` in one update."""
    import fiftyone.core.odm as foo

    foo.get_db_conn().datasets.update_one({"_id": dataset._doc.id}, {"$set": {f"runs.{key}": run_id}})
    cached = dataset._run_cache.pop(key, None)  # the replaced audit's results
    if cached is not None:
        cached._key = None
    dataset.reload()


def _unlink(dataset, key):
    import fiftyone.core.odm as foo

    foo.get_db_conn().datasets.update_one({"_id": dataset._doc.id}, {"$unset": {f"runs.{key}": ""}})
    cached = dataset._run_cache.pop(key, None)
    if cached is not None:
        cached._key = None
    dataset.reload()


def _delete_run_doc(run_doc):
    """Deletes a run document (a loaded document or its id) and its results."""
    import fiftyone.core.odm as foo

    db = foo.get_db_conn()
    run_id = getattr(run_doc, "id", run_doc)
    raw = db.runs.find_one({"_id": run_id}, {"results": 1})
    if raw is None:
        return
    if raw.get("results") is not None:
        _delete_gridfs(raw["results"])
    db.runs.delete_one({"_id": run_id})


def _delete_gridfs(file_id):
    import gridfs

    import fiftyone.core.odm as foo

    gridfs.GridFS(foo.get_db_conn(), collection="fs").delete(file_id)


# -- recovery ------------------------------------------------------------------


def _linked(dataset):
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
    linked, linked_ids = _linked(dataset)
    writes, orphans = {}, []

    def entry(token):
        return writes.setdefault(token, {"key": None, "tmp": [], "old": [], "final": [], "live": False, "docs": []})

    for name in schema:
        info = field_info(dataset, name) or {}
        if info.get("created_by") != OWNER:
            continue
        m = _TEMP.match(name)
        if m:
            e = entry(m.group(2))
            e["tmp" if m.group(1) == TMP else "old"].append(name)
            e["key"] = e["key"] or info.get("key")  # a field moved aside keeps its audit's key
            if m.group(1) == TMP:
                mine = info.get("writer", {}).get("pid") == os.getpid() and m.group(2) in _active
                since = datetime.fromisoformat(info["since"]) if info.get("since") else None
                other = info.get("writer", {}).get("pid") != os.getpid() and writer_alive(
                    info.get("writer"), STALE_TMP_S, since)
                e["live"] = e["live"] or mine or other
            continue
        key = info.get("key")
        if key is None or "signal" not in info or info.get("role", _role(key)) != _role(key):
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
                    _delete_run_doc(run_id)
                continue
            done = _recover_token(dataset, token, e)
            out["finished" if done else "rolled_back"].append(e["key"])
    return out


def _recover_token(dataset, token, entry=None):
    """Rolls the write ``token`` back, or finishes it if it was committed.

    Returns whether it was committed. Every step tolerates a state half-way
    through FiftyOne's renames (sample documents first, then the schema).
    """
    if entry is None:
        writes, _, _ = _writes(dataset)
        entry = writes.get(token, {"key": None, "tmp": [], "old": [], "final": [], "docs": []})
    linked, _ = _linked(dataset)
    key = entry["key"]
    committed = key is not None and key in linked and linked[key][1] == token
    schema = dataset.get_field_schema()
    if token.startswith("doc:"):
        for run_id in entry["docs"]:
            _delete_run_doc(run_id)
        return False
    signal_names = set(SIGNAL_FIELDS)
    for name in entry["tmp"] + entry["old"]:
        signal_names.add(_TEMP.match(name).group(3))
    if committed:
        olds = [_old(token, n) for n in signal_names]
        declared = [n for n in olds if n in schema]
        if declared:
            dataset.delete_sample_fields(declared)
        unset_raw(dataset, olds + [_tmp(token, n) for n in signal_names])
    else:
        for n in sorted(signal_names):
            fin, tmp, old = f"{key}_{n}" if key else None, _tmp(token, n), _old(token, n)
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
    _, linked_ids = _linked(dataset)
    for run_id in entry["docs"]:
        if run_id not in linked_ids:
            _delete_run_doc(run_id)
    if not committed:  # results saved but their run document not (killed in between)
        referenced = {d.get("results") for d in db.runs.find({"results": {"$ne": None}}, {"results": 1})} \
            if db.fs.files.find_one({"noise_audit_token": token}) else set()
        for f in db.fs.files.find({"noise_audit_token": token}, {"_id": 1}):
            if f["_id"] not in referenced:
                _delete_gridfs(f["_id"])
    dataset.reload()
    return committed


# -- deleting and renaming ------------------------------------------------------


def delete_audit(dataset: Dataset, key: str) -> None:
    """Removes the audit ``key``: its run and exactly its fields.

    Also cleans what interrupted writes left on the dataset (see
    :func:`recover`); with nothing under ``key`` to delete or clean, raises.
    """
    with dataset_lock(dataset):
        cleaned = recover(dataset, key)
        if not is_audit(dataset, key):
            if key in cleaned["rolled_back"] + cleaned["finished"] or any(
                    f.startswith(f"{key}_") for f in cleaned["orphans"]):
                return
            raise NoiseAuditError(f"No noise audit with key {key!r}; audits: {list_audits(dataset)}")
        config = dataset.get_run_info(key).config
        token = getattr(config, "token", None)
        run_id = dataset._doc.runs[key].id
        names = list(_config_fields(config, key).values())
        _unlink(dataset, key)  # from here the audit is gone; a crash leaves fields recover() drops
        own = [n for n in names if _belongs(dataset, n, key, token)]
        if own:
            dataset.delete_sample_fields(own)
        _delete_run_doc(run_id)


def _rename_audit(dataset, key, new_key, config):
    """Renames the audit's fields to ``new_key``'s (FiftyOne then renames the run)."""
    import fiftyone.core.odm as foo

    with dataset_lock(dataset):
        if new_key.startswith((TMP + "_", OLD + "_")):
            raise NoiseAuditError(f"keys starting with {TMP}_ or {OLD}_ are reserved")
        token = getattr(config, "token", None)
        old = _config_fields(config, key)
        new = {n: f.replace(f"{key}_", f"{new_key}_", 1) if f.startswith(f"{key}_") else f for n, f in old.items()}
        check_writable(dataset, [f for n, f in new.items() if new[n] != old[n]], key=new_key)
        moves = {old[n]: new[n] for n in old if old[n] != new[n] and _belongs(dataset, old[n], key, token)}
        if moves:
            dataset.rename_sample_fields(moves)
        config.fields = new
        foo.get_db_conn().runs.update_one({"_id": dataset._doc.runs[key].id}, {"$set": {"config.fields": new}})
        cached = dataset._run_cache.get(key)
        if cached is not None and cached.config is not config:
            cached.config.fields = new
        dataset.reload()  # a renamed Field object keeps its old path until then
        for n, f in new.items():
            field = dataset.get_field(f)
            if field is not None and is_own_field(dataset, f, key=key):
                field.info = {**field.info, "key": new_key, "role": _role(new_key)}
                field.save()
