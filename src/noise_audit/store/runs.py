"""The audit as a FiftyOne run: its config, its results, listing, loading, deleting.

An audit under ``key`` owns exactly the fields
:func:`~noise_audit.store.ownership.audit_fields` names and a FiftyOne run
registered under ``key`` of its own type (:class:`AuditRunConfig`,
:class:`AuditRun`, :class:`AuditResults`), so FiftyOne's own run operations
keep the two in step: ``dataset.delete_run(key)`` (and the App's runs panel)
also deletes the audit's fields, ``dataset.rename_run(key, new)`` renames
them, and ``dataset.load_run_results(key)`` returns the same
:class:`AuditResults` that :func:`noise_audit.core.auditing.audit` returned.

Writing a run, all or nothing, is :mod:`noise_audit.store.writes`; cleaning
what an interrupted write left is :mod:`noise_audit.store.recovery`.

Audits written before this format (a plain ``fiftyone.core.runs.RunConfig``
with ``method="noise_audit"``) still list, load, report and delete; FiftyOne's
``delete_run`` of such an old run removes only the run (its fields stay until
``na.delete_audit``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from copy import deepcopy
from typing import TYPE_CHECKING, Any

import numpy as np

import fiftyone.core.runs as fors

from noise_audit.errors import NoiseAuditError
from noise_audit.signals import BY_NAME, SHOWN, SIGNALS, suspicion
from noise_audit.store import objects as object_attrs
from noise_audit.store.fields import check_writable, dataset_lock, is_own_field
from noise_audit.store.ownership import (OLD, RUN_METHOD, SIGNAL_OF_FIELD, TMP, audit_fields, belongs,
                                         config_fields, is_reserved, role)
from noise_audit.store.recovery import delete_run_doc, linked_audits, recover, unlink_run

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection
    from fiftyone.core.dataset import Dataset

FORMAT = 2  # 1: plain RunConfig/RunResults (before the run classes)


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
        return list(config_fields(self.config, key).values())

    def cleanup(self, samples: SampleCollection, key: str) -> None:
        dataset = samples._dataset
        with dataset_lock(dataset):
            token = getattr(self.config, "token", None)
            names = list(config_fields(self.config, key).values())
            if getattr(self.config, "object_field", None):
                object_attrs.remove(dataset, key)
            own = [n for n in names if belongs(dataset, n, key, token)]
            if own:
                dataset.delete_sample_fields(own)

    def rename(self, samples: SampleCollection, key: str, new_key: str) -> None:
        rename_audit(samples._dataset, key, new_key, self.config)


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
        if signals is not None:  # an audit of objects keeps them all: its fields are per sample, not per row
            objects = bool(getattr(config, "object_field", None))
            self.stored_signals = {n: _encode(v) for n, v in signals.items() if objects or n not in SIGNAL_OF_FIELD}
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
        return config_fields(self.config, self.key)

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
            for name, field in ({} if getattr(self.config, "object_field", None) else SIGNAL_OF_FIELD).items():
                out[name] = np.array(self._column(self.fields[field]), dtype=float)
            order = [s.name for s in SIGNALS]
            self._signals = {n: out[n] for n in order if n in out} | {n: v for n, v in out.items() if n not in order}
        return self._signals

    @property
    def predictions(self) -> np.ndarray:
        if self._predictions is None and getattr(self.config, "object_field", None):
            self._predictions = np.asarray(getattr(self, "object_predictions"), dtype=float)
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


def check_key_name(key: object) -> None:
    """Raises unless ``key`` can name an audit's run and prefix its fields (``{key}_corruption_score``).

    Letters, digits and single underscores, starting with a letter: FiftyOne
    refuses field names that start with ``_``, and mongoengine reads ``__`` in
    a field name as a query operator (renaming such a field fails), so a key
    may neither contain ``__`` nor end with ``_``.
    """
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(_[A-Za-z0-9]+)*", key):
        raise NoiseAuditError(f"key must be letters, digits and single underscores, starting with a letter and not "
                              f"ending with _ (it prefixes the audit's field names), not {key!r}")
    if is_reserved(key):
        raise NoiseAuditError(f"keys starting with {TMP}_ or {OLD}_ are reserved for audits being written")


def check_key(dataset: Dataset, key: str, overwrite: bool = False) -> None:
    """Raises unless ``key`` names a new audit (or ours, with ``overwrite``)."""
    check_key_name(key)
    if dataset.has_run(key):
        if not is_audit(dataset, key):
            raise NoiseAuditError(f"Run key {key!r} is taken by a run that is not a noise audit")
        if not overwrite:
            raise NoiseAuditError(f"An audit with key {key!r} exists; pass overwrite=True or another key")
    check_writable(dataset, list(audit_fields(key).values()), role=role(key),
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
    linked = linked_audits(dataset)[0].get(key)
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
        names = list(config_fields(config, key).values())
        if getattr(config, "object_field", None):  # interrupted before the unlink: the attributes come back
            object_attrs.remove(dataset, key)
        unlink_run(dataset, key)  # from here the audit is gone; a crash leaves fields recover() drops
        own = [n for n in names if belongs(dataset, n, key, token)]
        if own:
            dataset.delete_sample_fields(own)
        delete_run_doc(run_id)


def rename_audit(dataset, key, new_key, config):
    """Renames the audit's fields to ``new_key``'s (FiftyOne then renames the run)."""
    import fiftyone.core.odm as foo

    if getattr(config, "object_field", None):
        raise NoiseAuditError(f"{key!r} is an audit of objects, which cannot be renamed: audit again under {new_key!r}")
    with dataset_lock(dataset):
        check_key_name(new_key)
        token = getattr(config, "token", None)
        old = config_fields(config, key)
        new = {n: f.replace(f"{key}_", f"{new_key}_", 1) if f.startswith(f"{key}_") else f for n, f in old.items()}
        check_writable(dataset, [f for n, f in new.items() if new[n] != old[n]], key=new_key)
        moves = {old[n]: new[n] for n in old if old[n] != new[n] and belongs(dataset, old[n], key, token)}
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
                field.info = {**field.info, "key": new_key, "role": role(new_key)}
                field.save()
