"""Issue 24 items 2, 5 and 7 without the App: the review queue the panel walks, its header,
the re-audit, and the report's Review section."""

import json

import numpy as np
import pytest

import noise_audit as na
from noise_audit.app import review_views as rv
from noise_audit.core import head as heads
from noise_audit.core.blocks import Blocks
from noise_audit.core.cleaning import audit_features
from noise_audit.reports.markdown import md
from noise_audit.core.review_gain import correction_gain, corrected_labels
from noise_audit.store.review import decisions

from audit_state import FAST
from conftest import SMALL_CLASSES

KEY = "noise_audit"


@pytest.fixture(scope="module")
def audited():
    from test_review import small_dataset

    ds = small_dataset(n_train=25, n_val=10)
    na.inject_label_noise(ds.match_tags("train"), fraction=0.2, seed=2)
    na.audit(ds, "ground_truth_noisy", **FAST)
    yield ds
    ds.delete()


@pytest.fixture
def fresh(audited):
    audited._sample_collection.update_many({}, {"$set": {f"{KEY}_review": None}})
    return audited


def test_the_queue_is_the_undecided_suspects_by_score_and_moves_on(fresh):
    ds = fresh
    by_score = ds.sort_by(f"{KEY}_corruption_score", reverse=True).values("id")
    rows = rv.queue(ds, KEY, 5)
    assert [r["id"] for r in rows] == by_score[:5]
    assert rows[0]["score"] >= rows[1]["score"] and rows[0]["decision"] is None
    assert rv.next_suspect(ds, KEY) == by_score[0]
    na.review(ds, KEY, by_score[0], "keep")
    assert rv.next_suspect(ds, KEY) == by_score[1]  # decided: out of the queue
    assert rv.next_suspect(ds, KEY, skip=[by_score[1]]) == by_score[2]
    row = rv.suspect(ds, KEY, by_score[0])
    assert row["rank"] == 1 and row["decision"] == "keep" and row["decided_label"] == row["given"]
    assert rv.suspect(ds, KEY, by_score[3])["rank"] == 4
    assert rv.classes(ds, KEY) == sorted(SMALL_CLASSES)
    # a view narrows the queue
    val = ds.match_tags("val")
    assert all(i in set(val.values("id")) for i in [r["id"] for r in rv.queue(val, KEY, 3)])


def test_the_explanation_names_supporting_and_opposing_training_images(fresh):
    ds = fresh
    sample_id = rv.next_suspect(ds, KEY)
    ex = rv.explanation(ds, KEY, sample_id, k=2)
    assert len(ex["support"]) == len(ex["oppose"]) == 2
    assert ex["support"][0]["influence"] >= ex["support"][1]["influence"] >= ex["oppose"][1]["influence"]
    assert ex["oppose"][0]["influence"] <= ex["oppose"][1]["influence"]


def test_the_header_shows_the_estimates_and_escapes_class_names(fresh):
    ds = fresh
    e = na.review_estimates(ds, KEY)
    text = rv.header_md(e)
    assert f"**{e['errors']['expected']:.0f}** wrong labels estimated among {e['n_samples']}" in text
    assert "no decision yet" in text
    hostile = json.loads(json.dumps(e))
    hostile["per_class"][0]["class"] = "**x**|<img src=y>`"
    text = rv.header_md(hostile)
    assert md("**x**|<img src=y>`") in text and "<img" not in text.replace("\\<img", "")  # reports.markdown.md


def test_corrections_change_the_refit_labels_and_only_those(fresh):
    ds = fresh
    config, results = na.load_audit(ds, KEY)
    truth = dict(zip(*ds.values(["id", "ground_truth.label"])))
    flipped = [i for i, f in zip(*ds.values(["id", "label_flipped"])) if f]
    for i in flipped:
        na.review(ds, KEY, i, "relabel", label=truth[i])
    decided = decisions(ds, KEY)
    y, n = corrected_labels(results, decided)
    assert n == len(flipped)
    pos = {i: k for k, i in enumerate(results.ids)}
    assert all(results.classes[y[pos[i]]] == truth[i] for i in flipped)
    assert (y != results.labels).sum() == len(flipped)
    gain = correction_gain(ds, config, results, decided)
    # the same refit, by hand: the audit's head on the corrected training labels
    x = audit_features(ds, config, results, "test")
    te = np.asarray(results.is_test)
    blocks = Blocks.from_arrays({"x": x, "y": y, "train": ~te})
    refit, _ = heads.fit_linear_head(blocks, x.shape[1], len(results.classes), float(config.regularization),
                                     rows="train", init=heads.LinearHead.from_state(results.head))
    assert gain["after"] == pytest.approx(float((heads.predict_logits(refit, x[te]).argmax(1) == y[te]).mean()))
    assert gain["before"] == pytest.approx(results.test_accuracy)  # no held-out label was corrected
    assert gain["n_corrected_train"] == len(flipped)


def test_the_report_has_a_review_section_with_the_same_numbers(fresh, tmp_path):
    ds = fresh
    ids = rv.queue(ds, KEY, 3)
    na.review(ds, KEY, ids[0]["id"], "accept", reviewer="<b>ann</b>")
    na.review(ds, KEY, ids[1]["id"], "keep", reviewer="ann")
    na.review(ds, KEY, ids[2]["id"], "unsure", reviewer="bob")
    out = na.report(ds, KEY, tmp_path, n_explained=0, progress=False)
    section = out["review"]
    assert section["estimates"] == json.loads(json.dumps(na.review_estimates(ds, KEY), default=str))
    assert section["by_decision"] == {"accept": 1, "keep": 1, "unsure": 1}
    assert [e["id"] for e in section["reviewed"]] == [r["id"] for r in ids]
    assert "before" in section["gain"] and "after" in section["gain"]
    page = (tmp_path / "report.html").read_text()
    assert 'id="review"' in page and "&lt;b&gt;ann&lt;/b&gt;" in page and "<b>ann</b>" not in page
    summary = (tmp_path / "summary.md").read_text()
    assert "## Review" in summary and "Precision of the review so far" in summary and md("<b>ann</b>") in summary
    stored = json.loads((tmp_path / "summary.json").read_text())["review"]
    assert stored["estimates"]["review"]["reviewed"] == 3


def test_a_reaudit_of_the_applied_review_reads_the_cache_and_starts_warm(fresh):
    ds = fresh
    truth = dict(zip(*ds.values(["id", "ground_truth.label"])))
    flipped = [i for i, f in zip(*ds.values(["id", "label_flipped"])) if f]
    for i in flipped:
        na.review(ds, KEY, i, "relabel", label=truth[i])
    na.apply_review(ds, KEY, "reviewed_labels")
    _, first = na.load_audit(ds, KEY)
    again = na.reaudit(ds, KEY, "reviewed_labels", new_key="after_review", overwrite=True, progress=False)
    assert again.config["warm_start"] == KEY and again.features_computed == 0
    assert again.config["influence_weight_requested"] == "auto"  # the first audit's request, chosen again
    assert list(again.ids) == list(first.ids) and np.array_equal(again.is_test, first.is_test)
    # the corrected labels are what the re-audit reads
    assert [again.classes[k] for k in again.labels] == [truth[i] if i in flipped else lab for i, lab in
                                                        zip(first.ids, [first.classes[k] for k in first.labels])]
    cold = na.audit(ds.select(list(first.ids), ordered=True), "reviewed_labels", key="cold_review", overwrite=True,
                    test=ds.select([i for i, t in zip(first.ids, first.is_test) if t]), **FAST)
    # warm or cold, the same minimum: the same scores up to the optimiser's tolerance
    assert np.allclose(again.corruption_score, cold.corruption_score, atol=2e-3)
    assert again.num_label_issues == cold.num_label_issues
