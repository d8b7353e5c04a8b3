"""Issue 24 item 3: the apply_noise_review operator, run through FiftyOne's operator machinery."""

import re

import pytest
from fiftyone.operators.executor import ExecutionError

import noise_audit as na

from audit_state import FAST
from test_plugin import form, run_op


@pytest.fixture
def reviewed(make_small_dataset, plugins_dir):
    ds = make_small_dataset(n_train=20, n_val=8)
    na.inject_label_noise(ds.match_tags("train"), fraction=0.2, seed=0)
    na.audit(ds, "ground_truth_noisy", **FAST)
    top = ds.sort_by("noise_audit_corruption_score", reverse=True).limit(2).values("id")
    na.review(ds, "noise_audit", top[0], "accept")
    na.review(ds, "noise_audit", top[1], "unsure")
    return ds, top


def test_apply_operator_writes_the_field_and_reaudits_it(reviewed):
    ds, top = reviewed
    source = ds.values("ground_truth_noisy.label")
    out = run_op("apply_noise_review", ds, key="noise_audit", out_field="gt_fixed", reaudit=True,
                 reaudit_key="fixed").result
    assert out["out_field"] == "gt_fixed" and out["unsure"] == 1 and out["reaudit_key"] == "fixed"
    ds.reload()
    assert ds.values("ground_truth_noisy.label") == source
    assert ds[top[1]].gt_fixed.tags == ["review:unsure"]
    config, results = na.load_audit(ds, "fixed")
    assert config.label_field == "gt_fixed" and config.warm_start == "noise_audit"
    assert results.num_label_issues == out["num_label_issues"] and results.features_computed == 0


def test_apply_operator_refuses_the_source_field_with_the_librarys_message(reviewed):
    ds, _ = reviewed
    with pytest.raises(na.NoiseAuditError) as direct:
        na.apply_review(ds, "noise_audit", out_field="ground_truth_noisy")
    error = form("apply_noise_review", ds, key="noise_audit", out_field="ground_truth_noisy")["out_field_error"]
    assert error.invalid and error.error_message == str(direct.value)
    with pytest.raises(ExecutionError, match=re.escape(str(direct.value))):
        run_op("apply_noise_review", ds, key="noise_audit", out_field="ground_truth_noisy", reaudit=False)
    assert not ds.has_run("noise_audit_reviewed")
