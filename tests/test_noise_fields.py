"""Issue 13.4: fields nobody else may overwrite, and undoing an injection.

Every writer refuses, before writing anything, a field it did not create for
that purpose: an injection never writes into an audit's field or into the
other field of an injection (nor one field twice), an audit never into an
injection's. ``na.remove_label_noise`` (also ``noise-audit remove-noise`` and
the plugin's ``remove_label_noise`` operator) undoes an injection exactly.
"""

import json
import subprocess
import sys

import fiftyone as fo
import fiftyone.operators as foo
import pytest

import noise_audit as na

from audit_state import FAST, child_env, state


def cli(*args):
    return subprocess.run([sys.executable, "-m", "noise_audit.cli", *args], capture_output=True, text=True,
                          env=child_env(), timeout=600)


@pytest.fixture
def audited(make_small_dataset):
    ds = make_small_dataset(n_train=15, n_val=5)
    na.audit(ds, "ground_truth", key="noise_audit", **FAST)
    return ds


@pytest.mark.parametrize("kwargs", [
    dict(flag_field="noise_audit_suspect"),  # an audit's field
    dict(noisy_field="noise_audit_prediction"),
    dict(noisy_field="both", flag_field="both"),  # one field for two purposes
])
def test_inject_refuses_fields_it_did_not_create_for_that_purpose(audited, kwargs):
    ds = audited
    before = state(ds)
    with pytest.raises(na.NoiseAuditError, match="another purpose|two different fields"):
        na.inject_label_noise(ds.match_tags("train"), fraction=0.2, **kwargs)
    assert state(ds) == before


def test_an_injections_two_fields_are_not_interchangeable(make_small_dataset):
    ds = make_small_dataset(n_train=10, n_val=0)
    na.inject_label_noise(ds, fraction=0.2)
    before = state(ds)
    with pytest.raises(na.NoiseAuditError, match="another purpose"):  # the flag into the noisy copy
        na.inject_label_noise(ds, fraction=0.2, seed=1, flag_field="ground_truth_noisy", noisy_field="other")
    with pytest.raises(na.NoiseAuditError, match="another purpose"):  # the noisy copy into the flag
        na.inject_label_noise(ds, fraction=0.2, seed=1, noisy_field="label_flipped", flag_field="other")
    assert state(ds) == before
    na.inject_label_noise(ds, fraction=0.2, seed=1)  # the same purposes: an injection may redo its own
    assert state(ds) != before


def test_audit_refuses_an_injections_field(make_small_dataset):
    ds = make_small_dataset(n_train=10, n_val=3)
    na.inject_label_noise(ds.match_tags("train"), fraction=0.2, flag_field="x_suspect")
    before = state(ds)
    with pytest.raises(na.NoiseAuditError, match="another purpose"):
        na.audit(ds, "ground_truth", key="x", **FAST)
    assert state(ds) == before


def test_cli_inject_into_an_audits_field_exits_2_and_writes_nothing(audited):
    ds = audited
    before = state(ds)
    proc = cli("inject", "--dataset", ds.name, "--flag-field", "noise_audit_suspect")
    assert proc.returncode == 2 and "another purpose" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("inject", "--dataset", ds.name, "--noisy-field", "same", "--flag-field", "same")
    assert proc.returncode == 2 and "two different fields" in proc.stderr
    assert state(ds) == before


def test_remove_label_noise_undoes_an_injection_exactly(audited):
    ds = audited
    before = state(ds)
    out = na.inject_label_noise(ds.match_tags("train"), fraction=0.2, seed=3, noisy_field="gt_noisy",
                                flag_field="flipped")
    assert out["num_flipped"] == 9
    na.inject_label_noise(ds, fraction=0.1, noisy_field="gt_noisy2", flag_field="flipped2")
    with pytest.raises(na.NoiseAuditError, match="two different injections"):
        na.remove_label_noise(ds, noisy_field="gt_noisy", flag_field="flipped2")
    na.remove_label_noise(ds, noisy_field="gt_noisy2", flag_field="flipped2")
    for bad in (dict(noisy_field="noise_audit_prediction", flag_field="flipped"),  # an audit's field
                dict(noisy_field="flipped", flag_field="gt_noisy"),  # the right fields, swapped
                dict(noisy_field="ground_truth", flag_field="flipped")):  # the user's labels
        with pytest.raises(na.NoiseAuditError):
            na.remove_label_noise(ds, **bad)
    assert set(ds.get_field_schema()) >= {"gt_noisy", "flipped", "noise_audit_prediction", "ground_truth"}
    assert na.remove_label_noise(ds, noisy_field="gt_noisy", flag_field="flipped") == {"removed": ["gt_noisy", "flipped"]}
    assert state(ds) == before
    with pytest.raises(na.NoiseAuditError, match="do not exist"):
        na.remove_label_noise(ds, noisy_field="gt_noisy", flag_field="flipped")


def test_remove_noise_command_and_operator(make_small_dataset, plugins_dir):
    ds = make_small_dataset(n_train=10, n_val=2)
    before = state(ds)
    na.inject_label_noise(ds, fraction=0.2)
    proc = cli("remove-noise", "--dataset", ds.name, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"removed": ["ground_truth_noisy", "label_flipped"]}
    assert state(ds) == before
    na.inject_label_noise(ds, fraction=0.2, noisy_field="copy", flag_field="truth")
    result = foo.execute_operator("@noise-audit/noise-audit/remove_label_noise",
                                  ctx={"dataset": ds, "params": {"noisy_field": "copy", "flag_field": "truth"}})
    assert result.error is None and result.result == {"removed": ["copy", "truth"]}
    assert state(ds) == before
    assert isinstance(ds.get_field("ground_truth"), fo.EmbeddedDocumentField)
