"""Issue 13.2: an audit is a FiftyOne run of its own type.

FiftyOne's own run operations (``delete_run``, ``rename_run``, what the App's
runs panel calls) keep the run and the audit's fields in step, and loading an
audit gives back the results object that ``na.audit`` returned. Audits stored
by the format before the run classes still list, load and delete.
"""

import fiftyone as fo
import numpy as np
import pytest

import noise_audit as na
from noise_audit.store.ownership import SIGNAL_FIELDS, audit_fields
from noise_audit.store.runs import AuditResults, AuditRunConfig

from audit_state import FAST, state

CONTENT = ("key", "dataset", "classes", "num_label_issues", "timings", "history", "features_computed", "head",
           "feature_mean", "feature_std", "l2_scores", "label_issues_per_class", "test_accuracy", "test_f1_macro",
           "test_confusion")


def assert_equal_results(a, b):
    assert type(a) is type(b) is AuditResults
    for name in CONTENT:
        assert getattr(a, name) == getattr(b, name), name
    for name in ("ids", "labels", "is_test", "predictions"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.signals.keys() == b.signals.keys()
    for name in a.signals:
        np.testing.assert_array_equal(a.signals[name], b.signals[name], err_msg=name)
    assert a.config.serialize() == b.config.serialize()


def test_loaded_audit_equals_what_audit_returned(make_small_dataset):
    ds = make_small_dataset(n_train=15, n_val=5)
    r = na.audit(ds, "ground_truth", key="eq", **FAST)
    assert isinstance(r.config, AuditRunConfig) and r.config["label_field"] == r.config.label_field == "ground_truth"
    assert set(r.signals) >= {"average_influence", "self_influence", "label_quality", "loss", "loo_loss",
                              "corruption_score"}
    ds.clear_cache()  # read back from the database, not this process's cache
    config, loaded = na.load_audit(ds, "eq")
    assert loaded is not r and config is loaded.config
    assert_equal_results(r, loaded)
    ds.clear_cache()
    assert_equal_results(r, ds.load_run_results("eq"))  # FiftyOne's own loader: the same type
    assert type(ds.get_run_info("eq").config) is AuditRunConfig


def test_delete_run_removes_exactly_the_audits_fields(make_small_dataset):
    ds = make_small_dataset(n_train=15, n_val=5)
    base = state(ds)
    na.audit(ds, "ground_truth", key="a", **FAST)
    only_a = state(ds)
    na.audit(ds, "ground_truth", key="b", **FAST)
    # FiftyOne knows which fields each run owns: a view of one run leaves out the other's
    view = ds.load_run_view("a", select_fields=True)
    assert set(audit_fields("a").values()) <= set(view.get_field_schema())
    assert not set(audit_fields("b").values()) & set(view.get_field_schema())
    ds.delete_run("b")  # what the App's runs panel calls
    assert state(ds) == only_a
    ds.delete_run("a")
    assert state(ds) == base


def test_rename_run_renames_the_fields_too(make_small_dataset):
    ds = make_small_dataset(n_train=15, n_val=5)
    na.audit(ds, "ground_truth", key="a", **FAST)
    values = {n: ds.values(f) for n, f in audit_fields("a").items() if n != "prediction"}
    ds.rename_run("a", "z")
    ds.reload()
    schema = ds.get_field_schema()
    assert not set(audit_fields("a").values()) & set(schema)
    assert set(audit_fields("z").values()) <= set(schema)
    assert {n: ds.values(f) for n, f in audit_fields("z").items() if n != "prediction"} == values
    assert all(ds.get_field(f).info["key"] == "z" and ds.get_field(f).info["role"] == "audit:z"
               for f in audit_fields("z").values())
    assert na.list_audits(ds) == ["z"] and ds.get_run_info("z").config.fields == audit_fields("z")
    config, results = na.load_audit(ds, "z")
    assert results.key == "z" and len(results.signals["corruption_score"]) == len(ds)
    na.delete_audit(ds, "z")
    ds.reload()
    assert not [f for f in ds.get_field_schema() if f.startswith(("a_", "z_"))] and ds.list_runs() == []


def _write_old_format(ds, key, source):
    """The audit ``source``, stored again under ``key`` as versions before the run classes did."""
    config, results = na.load_audit(ds, source)
    for name, field in audit_fields(key).items():
        src = audit_fields(source)[name]
        ftype = SIGNAL_FIELDS[name]
        kwargs = {"embedded_doc_type": fo.Classification} if ftype is fo.EmbeddedDocumentField else {}
        ds.add_sample_field(field, ftype, info={"created_by": "noise_audit", "key": key, "signal": name}, **kwargs)
        ds.set_values(field, ds.values(src))
    old = config.to_dict()
    old.pop("method")
    old.pop("token")
    old["fields"] = audit_fields(key)
    ds.register_run(key, ds.init_run(method="noise_audit", **old))
    doc = {k: v for k, v in results.serialize().items() if k not in ("cls", "stored_signals", "format")}
    ds.save_run_results(key, ds.init_run_results(key, **doc))
    return results


def test_audits_of_the_old_format_still_list_load_and_delete(make_small_dataset):
    ds = make_small_dataset(n_train=15, n_val=5)
    na.audit(ds, "ground_truth", key="new", **FAST)
    base = state(ds)
    src = _write_old_format(ds, "old", "new")
    assert type(ds.get_run_info("old").config) is fo.core.runs.RunConfig
    assert na.list_audits(ds) == ["new", "old"]
    ds.clear_cache()
    config, results = na.load_audit(ds, "old")
    assert isinstance(results, AuditResults) and config.format == 1 and config["label_field"] == "ground_truth"
    np.testing.assert_array_equal(results.ids, src.ids)
    for name in ("average_influence", "self_influence", "label_quality", "corruption_score"):
        np.testing.assert_array_equal(results.signals[name], src.signals[name])
    assert "loss" not in results.signals  # never stored by the old format
    np.testing.assert_array_equal(results.predictions, src.predictions)
    assert na.label_error_rate(ds, "old") == na.label_error_rate(ds, "new")
    na.delete_audit(ds, "old")
    assert state(ds) == base


def test_a_run_left_without_results_gives_a_clear_message(make_small_dataset):
    ds = make_small_dataset(n_train=5, n_val=2)
    ds.register_run("broken", ds.init_run(method="noise_audit", label_field="ground_truth"))  # killed before results
    with pytest.raises(na.NoiseAuditError, match="has no results.*delete_audit"):
        na.load_audit(ds, "broken")
    na.delete_audit(ds, "broken")
    assert ds.list_runs() == []


def test_fields_an_older_version_left_without_a_run_are_deleted_by_delete_audit(make_small_dataset):
    ds = make_small_dataset(n_train=15, n_val=5)
    base = state(ds)
    for name, field in audit_fields("old").items():  # the old write order, killed before the run
        if SIGNAL_FIELDS[name] is fo.FloatField:
            ds.add_sample_field(field, fo.FloatField, info={"created_by": "noise_audit", "key": "old", "signal": name})
            ds.set_values(field, [0.5] * len(ds))
    assert na.list_audits(ds) == []
    na.audit(ds, "ground_truth", key="other", **FAST)  # another key leaves them alone
    ds.reload()
    assert "old_corruption_score" in ds.get_field_schema()
    na.delete_audit(ds, "other")
    na.delete_audit(ds, "old")  # refused before ("No noise audit"): now it removes what is left
    assert state(ds) == base
    with pytest.raises(na.NoiseAuditError, match="No noise audit"):
        na.delete_audit(ds, "old")
