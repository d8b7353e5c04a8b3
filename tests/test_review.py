"""Issue 24, items 1-3: the suggested label, review decisions and applying them.

Real FiftyOne datasets of the committed CIFAR-10 images, real audits (the
fast settings of ``audit_state``), real concurrent writers (other processes).
"""

import numpy as np
import pytest

import fiftyone as fo

import noise_audit as na
from noise_audit.core import noise_model, suggestions
from noise_audit.store.applied import TAGS
from noise_audit.store.review import decisions

from audit_state import FAST
from conftest import FIXTURES, SMALL_CLASSES, unique_name

KEY = "noise_audit"


def small_dataset(n_train=30, n_val=10):
    ds = fo.Dataset(unique_name("na-review"))
    samples = []
    for split, n in (("train", n_train), ("val", n_val)):
        for c in SMALL_CLASSES:
            for path in sorted((FIXTURES / split / c).iterdir())[:n]:
                samples.append(fo.Sample(filepath=str(path), tags=[split], ground_truth=fo.Classification(label=c)))
    ds.add_samples(samples, progress=False)
    return ds


@pytest.fixture(scope="module")
def audited():
    """150 images, 20% of the training labels flipped, audited on the noisy copy."""
    ds = small_dataset()
    na.inject_label_noise(ds.match_tags("train"), fraction=0.2, seed=0)
    na.audit(ds, "ground_truth_noisy", **FAST)
    yield ds
    ds.delete()


@pytest.fixture
def fresh(audited):
    """The audited dataset with no decision (each test starts from an empty review)."""
    audited._sample_collection.update_many({}, {"$set": {f"{KEY}_review": None}})
    audited.reload()
    for name in [f for f in audited.get_field_schema() if f.startswith("reviewed")]:
        audited.delete_sample_field(name)
    return audited


def raw(ds, field):
    return [(d["_id"], d.get(field)) for d in ds._sample_collection.find({}, {field: 1}, sort=[("_id", 1)])]


def top_ids(ds, n):
    return ds.sort_by(f"{KEY}_corruption_score", reverse=True).limit(n).values("id")


# --- the suggested label -------------------------------------------------------------


def test_true_class_posterior_is_the_noise_model_the_score_is_calibrated_on():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 4)) * 2
    labels = rng.integers(0, 4, 300)
    is_test = np.zeros(300, bool)
    is_test[:120] = True
    q = noise_model.true_class_posterior(labels, logits, logits, is_test)
    assert q.shape == (300, 4) and np.allclose(q.sum(1), 1)
    wrong = noise_model.wrong_label_posterior(labels, logits, logits, is_test)
    assert np.array_equal(wrong, 1.0 - q[np.arange(300), labels])


def test_the_suggestion_follows_the_noise_matrix_not_only_the_image():
    # Labels go wrong one way here: class 0 is labelled 1 (pair flips). An image the
    # classifier finds slightly likelier to be a 2 than a 0, labelled 1, was most
    # probably a 0: the noise matrix says 2s are never labelled 1.
    probs = np.array([[0.45, 0.05, 0.50]])
    noise = np.array([[0.7, 0.0, 0.0], [0.3, 1.0, 0.0], [0.0, 0.0, 1.0]])  # N[given, true]
    q = noise_model.true_class_probs([1], probs, noise)
    best, confidence, p = suggestions.suggested_labels([1], [0.9], q)
    assert best[0] == 0 and confidence[0] == pytest.approx(0.9)
    assert probs.argmax() == 2  # what the image alone would suggest


def test_suggestion_probabilities_give_the_given_label_one_minus_the_score():
    q = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0], [0.5, 0.25, 0.25]])
    labels, score = np.array([0, 2, 0, 1]), np.array([0.2, 0.7, 0.9, 0.5])
    best, confidence, p = suggestions.suggested_labels(labels, score, q)
    assert np.allclose(p.sum(1), 1)
    assert np.allclose(p[np.arange(4), labels], 1 - score)
    # row 0: the given label, 0.8; row 1: 0.7 shared 1:1 by classes 0 and 1 beats the given 0.3 (a tie: the
    # lower index); row 3: 0.5 shared 2:1 by classes 0 and 2 loses to the given 0.5
    assert best.tolist() == [0, 0, 1, 1] and confidence[0] == pytest.approx(0.8)
    assert confidence[1] == pytest.approx(0.35) and confidence[3] == pytest.approx(0.5)
    assert p[3].tolist() == pytest.approx([0.5 * 2 / 3, 0.5, 0.5 / 3])
    # row 2: q has nothing outside the given label: the score is shared equally
    assert p[2].tolist() == pytest.approx([0.1, 0.45, 0.45])


def test_every_audited_sample_has_a_suggested_label_that_agrees_with_its_score(audited):
    ds = audited
    _, results = na.load_audit(ds, KEY)
    assert f"{KEY}_suggested_label" in results.config.fields.values()
    ids, given, score, label, conf = ds.values(["id", "ground_truth_noisy.label", f"{KEY}_corruption_score",
                                                f"{KEY}_suggested_label.label", f"{KEY}_suggested_label.confidence"])
    assert len(ids) == len(results.ids) and None not in label
    given, label, score, conf = map(np.array, (given, label, score, conf))
    same = label == given
    assert np.allclose(conf[same], 1 - score[same])
    assert np.all(conf[~same] <= score[~same] + 1e-9)
    assert np.all(conf >= 1 / 3 - 1e-9)  # the most probable of three classes
    assert set(label) <= set(SMALL_CLASSES)
    # the suspects get other labels than their given ones
    suspect = np.array(ds.values(f"{KEY}_suspect"))
    assert (~same[suspect]).mean() > 0.5


def test_delete_audit_removes_the_suggested_label_and_the_review(make_small_dataset):
    ds = make_small_dataset(n_train=15, n_val=5)
    na.audit(ds, "ground_truth", key="a", **FAST)
    na.review(ds, "a", ds.first().id, "unsure")
    assert {"a_suggested_label", "a_review"} <= set(ds.get_field_schema())
    na.delete_audit(ds, "a")
    assert not any(f.startswith("a_") for f in ds.get_field_schema())
    with pytest.raises(na.NoiseAuditError, match="No noise audit with key 'a'.*deleted"):
        na.review(ds, "a", ds.first().id, "keep")
    assert all(d.get("a_review") is None for d in ds._sample_collection.find({}, {"a_review": 1}))


# --- decisions ---------------------------------------------------------------


def test_each_decision_records_its_label_and_the_source_field_is_never_written(fresh):
    ds = fresh
    before = raw(ds, "ground_truth_noisy")
    a, b, c, d = top_ids(ds, 4)
    suggested = dict(zip(*ds.values(["id", f"{KEY}_suggested_label.label"])))
    given = dict(zip(*ds.values(["id", "ground_truth_noisy.label"])))
    other = next(x for x in SMALL_CLASSES if x not in (given[c], suggested[c]))
    na.review(ds, KEY, [a], "accept", reviewer="ann")
    na.review(ds, KEY, b, "keep", reviewer="ann")
    na.review(ds, KEY, c, "relabel", label=other, reviewer="bob")
    na.review(ds, KEY, d, "unsure", reviewer="bob")
    got = decisions(ds, KEY)
    assert set(got) == {a, b, c, d}
    assert got[a]["label"] == suggested[a] and got[a]["decision"] == "accept" and got[a]["reviewer"] == "ann"
    assert got[b]["label"] == given[b] and got[c]["label"] == other and got[d]["label"] is None
    assert all(got[i]["given"] == given[i] and got[i]["suggested"] == suggested[i] for i in got)
    assert ds[c][f"{KEY}_review"].label == other  # a Classification, read by FiftyOne
    assert raw(ds, "ground_truth_noisy") == before


def test_a_class_name_that_looks_like_a_field_path_is_stored_as_a_name(fresh):
    ds = fresh
    ds.classes = {"ground_truth_noisy": sorted(SMALL_CLASSES) + ["$cash", "{x}.y"]}
    ds.save()
    try:
        a, b = top_ids(ds, 2)
        na.review(ds, KEY, a, "relabel", label="$cash")
        na.review(ds, KEY, b, "relabel", label="{x}.y")
        got = decisions(ds, KEY)
        assert got[a]["label"] == "$cash" and got[b]["label"] == "{x}.y"
    finally:
        ds.classes = {}
        ds.save()


def test_undo_restores_the_previous_decision_and_leaves_other_reviewers_decisions(fresh):
    ds = fresh
    a, b = top_ids(ds, 2)
    na.review(ds, KEY, a, "keep", reviewer="ann")
    na.review(ds, KEY, a, "unsure", reviewer="ann")
    na.review(ds, KEY, b, "accept", reviewer="bob")
    out = na.undo_review(ds, KEY, [a, b], reviewer="ann")
    assert out["undone"] == [a] and out["skipped"] == [b]  # b's decision is bob's
    got = decisions(ds, KEY)
    assert got[a]["decision"] == "keep" and got[a]["n_decisions"] == 1 and got[b]["decision"] == "accept"
    na.undo_review(ds, KEY, a, reviewer="ann")
    assert a not in decisions(ds, KEY) and ds[a][f"{KEY}_review"] is None


REVIEWER = """
import sys, fiftyone as fo, noise_audit as na
ds = fo.load_dataset(sys.argv[1])
for i in sys.argv[3].split(","):
    na.review(ds, "noise_audit", i, sys.argv[4], reviewer=sys.argv[2])
print("done")
"""


def test_two_reviewers_at_once_never_lose_a_decision(fresh):
    """Two processes, each deciding one sample at a time, interleaved on the same field
    (and on 10 shared samples); every decision lands."""
    import subprocess
    import sys

    from audit_state import child_env

    ds = fresh
    ids = ds.values("id")
    mine, yours, shared = ids[:40], ids[40:80], ids[80:90]
    procs = [subprocess.Popen([sys.executable, "-c", REVIEWER, ds.name, who, ",".join(part + shared), decision],
                              env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for who, part, decision in (("ann", mine, "keep"), ("bob", yours, "unsure"))]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    got = decisions(ds, KEY)
    assert {i for i in got if got[i]["reviewer"] == "ann"} >= set(mine)
    assert {i for i in got if got[i]["reviewer"] == "bob"} >= set(yours)
    assert set(got) == set(mine + yours + shared)
    history = {str(d["_id"]): d[f"{KEY}_review"]["history"]
               for d in ds._sample_collection.find({"_id": {"$in": [ds[i]._id for i in shared]}}, {f"{KEY}_review": 1})}
    assert all(sorted(h["reviewer"] for h in history[i]) == ["ann", "bob"] for i in shared)


def test_an_overwriting_audit_keeps_the_decisions_still_about_the_same_labels(make_small_dataset):
    ds = make_small_dataset(n_train=15, n_val=5)
    na.audit(ds, "ground_truth", key="a", **FAST)
    first, second = ds.values("id")[:2]
    na.review(ds, "a", first, "keep", reviewer="ann")
    na.review(ds, "a", second, "unsure", reviewer="ann")
    sample = ds[second]
    sample.ground_truth = fo.Classification(label="frog" if sample.ground_truth.label != "frog" else "truck")
    sample.save()
    na.audit(ds, "ground_truth", key="a", overwrite=True, **dict(FAST, seed=1))
    got = decisions(ds, "a")
    assert set(got) == {first} and got[first]["reviewer"] == "ann"  # the other's label changed since


# --- applying -----------------------------------------------------------------


def test_apply_review_writes_the_corrections_into_a_new_field_and_only_there(fresh):
    ds = fresh
    before = raw(ds, "ground_truth_noisy")
    a, b, c, d = top_ids(ds, 4)
    given = dict(zip(*ds.values(["id", "ground_truth_noisy.label"])))
    other = next(x for x in SMALL_CLASSES if x != given[c])
    na.review(ds, KEY, a, "accept")
    na.review(ds, KEY, b, "keep")
    na.review(ds, KEY, c, "relabel", label=other)
    na.review(ds, KEY, d, "unsure")
    suggested_a = decisions(ds, KEY)[a]["label"]
    out = na.apply_review(ds, KEY, out_field="reviewed")
    assert out["corrected"] == 1 + (suggested_a != given[a]) and out["unsure"] == 1 and out["n_samples"] == len(ds)
    assert raw(ds, "ground_truth_noisy") == before
    labels = dict(zip(*ds.values(["id", "reviewed.label"])))
    expected = dict(given, **{a: suggested_a, c: other})
    assert labels == expected
    tags = dict(zip(*ds.values(["id", "reviewed.tags"])))
    assert tags[c] == [TAGS["corrected"]] and tags[b] == [TAGS["kept"]] and tags[d] == [TAGS["unsure"]]
    assert sum(1 for t in tags.values() if t) == 4
    first = raw(ds, "reviewed")
    na.apply_review(ds, KEY, out_field="reviewed")  # twice: the same field
    assert raw(ds, "reviewed") == first
    # a changed decision changes the applied field on the next apply, and only there
    na.review(ds, KEY, d, "keep")
    na.apply_review(ds, KEY, out_field="reviewed")
    assert ds[d].reviewed.tags == [TAGS["kept"]] and raw(ds, "ground_truth_noisy") == before
    # the applied field can be audited: its classes, its samples
    info = ds.get_field("reviewed").info
    assert info["role"] == "review:applied" and info["source"] == "ground_truth_noisy"


def test_a_decision_about_a_label_changed_since_is_stale(fresh):
    ds = fresh
    a = top_ids(ds, 1)[0]
    na.review(ds, KEY, a, "unsure")
    sample = ds[a]
    old = sample.ground_truth_noisy.label
    sample.ground_truth_noisy.label = next(c for c in SMALL_CLASSES if c != old)
    sample.save()
    try:
        out = na.apply_review(ds, KEY, out_field="reviewed")
        assert out["stale"] == 1 and out["unsure"] == 0 and ds[a].reviewed.tags == []
    finally:
        sample.ground_truth_noisy.label = old
        sample.save()


@pytest.mark.parametrize("target, message", [
    ("ground_truth_noisy", "never writes the audited labels"),
    ("ground_truth", "not created by noise-audit"),
    ("label_flipped", "for another purpose"),
    (f"{KEY}_prediction", "for another purpose"),
    ("not a name", "out_field must be a field name"),
])
def test_apply_review_refuses_fields_it_did_not_create(fresh, target, message):
    ds = fresh
    na.review(ds, KEY, top_ids(ds, 1), "accept")
    before = {f: raw(ds, f) for f in ("ground_truth", "ground_truth_noisy", "label_flipped", f"{KEY}_prediction")}
    schema = sorted(ds.get_field_schema())
    with pytest.raises(na.NoiseAuditError, match=message):
        na.apply_review(ds, KEY, out_field=target)
    ds.reload()
    assert sorted(ds.get_field_schema()) == schema
    assert {f: raw(ds, f) for f in before} == before


def test_apply_review_refuses_the_field_of_another_audits_review(fresh):
    ds = fresh
    na.apply_review(ds, KEY, out_field="reviewed_other")
    ds.get_field("reviewed_other").info = dict(ds.get_field("reviewed_other").info, key="another")
    ds.get_field("reviewed_other").save()
    with pytest.raises(na.NoiseAuditError, match="applied review of audit 'another'"):
        na.apply_review(ds, KEY, out_field="reviewed_other")


def test_an_interrupted_apply_leaves_the_old_field_or_is_finished(fresh, monkeypatch):
    from noise_audit.store import applied

    ds = fresh
    na.review(ds, KEY, top_ids(ds, 1), "accept")
    na.apply_review(ds, KEY, out_field="reviewed")
    old = raw(ds, "reviewed")
    na.review(ds, KEY, top_ids(ds, 2)[1], "relabel", label=SMALL_CLASSES[0])

    def crash(*args, **kwargs):
        raise RuntimeError("killed before the commit")

    monkeypatch.setattr(applied, "_finish", crash)
    with pytest.raises(RuntimeError):
        na.apply_review(ds, KEY, out_field="reviewed")
    monkeypatch.undo()
    assert raw(ds, "reviewed") == old  # not committed: the old field as it was
    ds.reload()
    leftovers = [f for f in ds.get_field_schema() if applied.APPLY_NAME.match(f)]
    assert len(leftovers) == 1  # complete, kept for the next apply to finish
    assert applied.recover_applies(ds) == ["reviewed"]
    assert raw(ds, "reviewed") != old and not [f for f in ds.get_field_schema() if applied.APPLY_NAME.match(f)]


# --- bad input: one message, nothing written ---------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda ds, i: na.review(ds, KEY, ["0123456789abcdef01234567"], "accept"), "not scored by audit"),
    (lambda ds, i: na.review(ds, KEY, [i], "relabel", label="cat"), "not in the label schema"),
    (lambda ds, i: na.review(ds, KEY, [i], "relabel", label="$where"), "not in the label schema"),
    (lambda ds, i: na.review(ds, KEY, [i], "approve"), "decision must be one of"),
    (lambda ds, i: na.review(ds, KEY, [i], "relabel"), "needs label="),
    (lambda ds, i: na.review(ds, KEY, [i], "keep", label="frog"), "goes with decision 'relabel' only"),
    (lambda ds, i: na.review(ds, KEY, [], "keep"), "sample_ids is empty"),
    (lambda ds, i: na.review(ds, KEY, [i], "keep", reviewer=""), "reviewer must be"),
    (lambda ds, i: na.review(ds, "gone", [i], "keep"), "No noise audit with key 'gone'"),
    (lambda ds, i: na.undo_review(ds, KEY, ["nope"]), "not scored by audit"),
])
def test_bad_review_input_is_one_error_and_writes_nothing(fresh, call, message):
    ds = fresh
    i = top_ids(ds, 1)[0]
    before = raw(ds, f"{KEY}_review")
    with pytest.raises(na.NoiseAuditError, match=message):
        call(ds, i)
    assert raw(ds, f"{KEY}_review") == before


# --- the command line -------------------------------------------------------------


def test_cli_review_and_apply_review(fresh):
    import json

    from test_cli import cli

    ds = fresh
    a, b = top_ids(ds, 2)
    out = json.loads(cli("review", "--dataset", ds.name, "--ids", a, b, "--decision", "keep", "--reviewer", "cli",
                         "--json").stdout)
    assert out["n"] == 2 and out["estimates"]["review"]["reviewed"] == 2
    text = cli("review", "--dataset", ds.name).stdout
    assert "estimated wrong labels" in text and "errors still left" in text
    bad = cli("review", "--dataset", ds.name, "--ids", a, "--decision", "relabel", "--label", "cat", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: Class 'cat'") and bad.stdout == ""
    assert decisions(ds, KEY)[a]["decision"] == "keep"
    onto_source = cli("apply-review", "--dataset", ds.name, "--out-field", "ground_truth_noisy", check=False)
    assert onto_source.returncode == 2 and "never writes the audited labels" in onto_source.stderr
    applied = json.loads(cli("apply-review", "--dataset", ds.name, "--out-field", "reviewed", "--json").stdout)
    assert applied["kept"] == 2 and applied["out_field"] == "reviewed"
    ds.reload()
    assert ds[a].reviewed.tags == [TAGS["kept"]]
    undo = json.loads(cli("review", "--dataset", ds.name, "--ids", a, "--undo", "--reviewer", "cli", "--json").stdout)
    assert undo["undone"] == [a]


# --- warm start ---------------------------------------------------------------------


def test_a_carried_head_is_the_same_function_of_the_raw_features(make_small_dataset):
    import torch

    from noise_audit.core.head import LinearHead
    from noise_audit.core.warm_start import carried_head

    ds = make_small_dataset(n_train=15, n_val=5)
    na.audit(ds, "ground_truth", key="a", **FAST)
    _, results = na.load_audit(ds, "a")
    old = LinearHead.from_state(results.head)
    d = len(results.feature_mean)
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(7, d)) * 3 + 1
    m_old = np.asarray(results.feature_mean)
    s_old = np.array([np.inf if v is None else v for v in results.feature_std])
    m_new, s_new = m_old + rng.normal(size=d), np.where(np.isfinite(s_old), s_old * rng.uniform(0.5, 2, d), np.inf)
    classes = list(reversed(results.classes)) + ["new_class"]  # another order, and a class the old head never saw
    new = carried_head(ds, "a", classes, m_new, s_new)
    with torch.no_grad():
        before = old(torch.as_tensor((raw - m_old) / s_old)).numpy()
        after = new(torch.as_tensor((raw - m_new) / s_new)).numpy()
    order = [results.classes.index(c) for c in classes[:-1]]
    assert np.allclose(after[:, :-1], before[:, order], atol=1e-9)
    assert np.allclose(after[:, -1], 0)


def test_warm_start_needs_an_audit_of_the_same_features(make_small_dataset):
    ds = make_small_dataset(n_train=15, n_val=5)
    na.audit(ds, "ground_truth", key="a", **FAST)
    with pytest.raises(na.NoiseAuditError, match="warm_start must be True, False or the key of an audit"):
        na.audit(ds, "ground_truth", key="b", warm_start="nope", **FAST)
    with pytest.raises(na.NoiseAuditError, match="cannot warm-start this one: its image size differs"):
        na.audit(ds, "ground_truth", key="b", warm_start="a", **dict(FAST, image_size=40))
    assert na.list_audits(ds) == ["a"] and not any(f.startswith("b_") for f in ds.get_field_schema())
    b = na.audit(ds, "ground_truth", key="b", warm_start=True, **FAST)
    assert b.config["warm_start"] == "a"
    cold = na.audit(ds, "ground_truth", key="c", **FAST)
    assert cold.config["warm_start"] is None
    assert np.allclose(b.corruption_score, cold.corruption_score, atol=2e-3)
