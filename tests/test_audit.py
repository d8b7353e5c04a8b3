import fiftyone as fo
import numpy as np
import pytest

import noise_audit as na

FAST = dict(image_size=64, progress=False)


def schema_and_runs(ds):
    ds.reload()
    return sorted(ds.get_field_schema()), sorted(ds.list_runs())


def test_audit_writes_every_field_and_a_run(make_small_dataset):
    ds = make_small_dataset()
    na.inject_label_noise(ds.match_tags("train"), fraction=0.1, seed=0)
    r = na.audit(ds, "ground_truth_noisy", **FAST)
    fields = na.audit_fields("noise_audit")
    assert set(fields.values()) <= set(ds.get_field_schema())
    assert ds.count(fields["corruption_score"]) == len(ds) == 150  # val samples are scored too
    scores = np.array(ds.values(fields["corruption_score"]))
    assert scores.min() >= 0 and scores.max() <= 1
    assert ds.count_values(fields["suspect"])[True] == r.num_label_issues
    pred = ds.first()[fields["prediction"]]
    assert isinstance(pred, fo.Classification) and len(pred.logits) == 3 and 0 < pred.confidence <= 1
    info = ds.get_run_info("noise_audit")
    assert info.config.label_field == "ground_truth_noisy"
    assert info.config.influence_method == "linear" and info.config.n_test == 30
    assert info.config.split == {"kind": "tags", "tags": ["val", "test"]}
    assert set(info.config.timings) >= {"features", "influence", "total"}
    # flipped samples rank high: the real pipeline, not a constant
    flipped = np.array(ds.values("label_flipped"))
    assert scores[flipped].mean() > scores[~flipped].mean() + 0.2
    assert scores[flipped].mean() > 5 * scores[~flipped].mean()  # a probability: clean labels near 0
    assert na.evaluate(ds, fields["corruption_score"])["auroc"] > 0.9


def test_two_audits_coexist_and_delete_removes_exactly_its_fields(make_small_dataset):
    ds = make_small_dataset()
    base_fields, _ = schema_and_runs(ds)
    na.audit(ds, "ground_truth", key="first", **FAST)
    after_first, _ = schema_and_runs(ds)
    na.audit(ds, "ground_truth", key="second", method="ekfac", **FAST)
    assert na.list_audits(ds) == ["first", "second"]
    na.delete_audit(ds, "second")
    assert schema_and_runs(ds) == (after_first, ["first"])
    na.delete_audit(ds, "first")
    assert schema_and_runs(ds) == (base_fields, [])
    with pytest.raises(na.NoiseAuditError, match="No noise audit"):
        na.delete_audit(ds, "first")


def test_rerun_needs_overwrite_and_users_fields_are_never_overwritten(make_small_dataset):
    ds = make_small_dataset(n_train=10, n_val=5)
    na.audit(ds, "ground_truth", key="a", **FAST)
    with pytest.raises(na.NoiseAuditError, match="exists"):
        na.audit(ds, "ground_truth", key="a", **FAST)
    na.audit(ds, "ground_truth", key="a", overwrite=True, **FAST)
    ds.add_sample_field("b_corruption_score", fo.FloatField)
    ds.set_values("b_corruption_score", [0.5] * len(ds))
    before = schema_and_runs(ds)
    with pytest.raises(na.NoiseAuditError, match="not created by noise-audit"):
        na.audit(ds, "ground_truth", key="b", **FAST)
    assert schema_and_runs(ds) == before
    assert set(ds.values("b_corruption_score")) == {0.5}


@pytest.mark.parametrize(
    "label_field, setup, message",
    [
        ("nope", None, "not found"),
        ("number", "float_field", "not a fo.Classification"),
        ("ground_truth", "one_class", "two classes"),
        ("ground_truth", "tiny_class", "too few"),
        ("ground_truth", "broken_image", "broken.jpg"),
        ("ground_truth", "empty", "empty"),
        ("ground_truth", "bad_method", "method must be"),
        ("ground_truth", "bad_regularization", "regularization must be"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(make_small_dataset, tmp_path, label_field, setup, message):
    ds = make_small_dataset(n_train=8, n_val=2)
    view = ds
    if setup == "float_field":
        ds.add_sample_field("number", fo.FloatField)
    elif setup == "one_class":
        view = ds.match(fo.ViewField("ground_truth.label") == "truck")
    elif setup == "tiny_class":
        view = ds.exclude(ds.match(fo.ViewField("ground_truth.label") == "truck").skip(3).values("id"))
    elif setup == "broken_image":
        bad = tmp_path / "broken.jpg"
        bad.write_bytes(b"\x00" * 100)
        ds.add_sample(fo.Sample(filepath=str(bad), tags=["train"], ground_truth=fo.Classification(label="truck")))
    elif setup == "empty":
        view = ds.limit(0)
    kwargs = dict(FAST)
    if setup == "bad_method":
        kwargs["method"] = "newton"
    elif setup == "bad_regularization":
        kwargs["regularization"] = 0
    before = schema_and_runs(ds)
    with pytest.raises(na.NoiseAuditError, match=message):
        na.audit(view, label_field, **kwargs)
    assert schema_and_runs(ds) == before


def test_explicit_test_view_and_stratified_split(make_small_dataset):
    ds = make_small_dataset(n_train=20, n_val=0)
    r = na.audit(ds, "ground_truth", key="split", **FAST)
    assert r.config["split"]["kind"] == "stratified_split" and r.config["n_test"] == 6
    assert np.bincount(r.labels[r.is_test]).tolist() == [2, 2, 2]
    test_view = ds.take(9, seed=1)
    r2 = na.audit(ds, "ground_truth", key="view", test=test_view, **FAST)
    assert r2.config["n_test"] == 9
    assert set(r2.ids[r2.is_test]) == set(test_view.values("id"))


def test_most_influential_explains_one_sample(make_small_dataset):
    ds = make_small_dataset()
    na.audit(ds, "ground_truth", **FAST)
    target = ds.match_tags("val").first()
    out = na.most_influential(ds, target.id, "noise_audit", k=3)
    assert out["label"] == target.ground_truth.label
    most = [e["influence"] for e in out["most"]]
    least = [e["influence"] for e in out["least"]]
    assert len(most) == len(least) == 3
    assert most == sorted(most, reverse=True) and least == sorted(least) and most[0] > 0 > least[0]
    train_ids = set(ds.match_tags("train").values("id"))
    assert all(e["id"] in train_ids for e in out["most"] + out["least"])
    # the most helpful training images of a clean sample mostly share its label
    assert sum(e["label"] == out["label"] for e in out["most"]) >= 2
