"""Issue 26: auditing the class of every box of a ``Detections`` field.

Real images (mosaics of the committed CIFAR-10 photographs, every tile a box
with its class: ``bench/make_mosaics.py``), the real database, backbone,
influence and cleanlab. Checked: every audited ``Detection`` gets the signals
as attributes and every sample its maximum score and number of suspects,
the boxes of one image are never on both sides of the split or of a fold,
the user's labels are untouched, ``delete_audit`` removes everything, a
fault after the commit or a killed process leaves the whole audit (once
recovered), a fault before it leaves nothing, and attributes we did not
write are never written over.
"""

import signal

import numpy as np
import pytest

import fiftyone as fo
import noise_audit as na
from noise_audit.signals import FIELD_SIGNALS
from noise_audit.store.objects import OBJECT_ATTRS
from noise_audit.store.recovery import recover
from noise_audit.store.writes import FAULT_ENV, InjectedFault

from audit_state import FAST, assert_same, python, state

KEY = "objs"


def _boxes(ds, field="ground_truth"):
    """{detection id: (sample id, Detection)} of every box."""
    out = {}
    for s in ds.select_fields(field):
        for d in (s[field].detections if s[field] else []):
            out[d.id] = (s.id, d)
    return out


def _user_view(doc, key=KEY):
    """A sample document without the audit's attributes and fields (what the user wrote)."""
    dets = [{k: v for k, v in d.items() if not k.startswith(f"{key}_")} for d in doc["ground_truth"]["detections"]]
    return {**{k: v for k, v in doc.items() if not k.startswith(f"{key}_") and k != "last_modified_at"},
            "ground_truth": {**doc["ground_truth"], "detections": dets}}


def test_every_box_gets_its_signals_and_every_image_its_summary(make_mosaic_dataset):
    ds = make_mosaic_dataset()
    user_before = [_user_view(d) for d in ds._sample_collection.find({}, sort=[("_id", 1)])]
    results = na.audit(ds, "ground_truth", key=KEY, **FAST)
    boxes = _boxes(ds)
    assert len(results.ids) == len(boxes) == sum(len(v) for v in ds.values("ground_truth.detections"))
    signals = results.signals
    values = results.object_values
    for row, did in enumerate(results.ids):
        sid, det = boxes[did]
        assert sid == results.sample_ids[row]
        for suffix, ftype in OBJECT_ATTRS.items():
            v = det[f"{KEY}_{suffix}"]
            assert v == values[suffix][row]
            assert isinstance(v, {fo.FloatField: float, fo.BooleanField: bool, fo.StringField: str}[ftype])
        for s in FIELD_SIGNALS:  # each attribute holds its own signal
            assert det[f"{KEY}_{s.field}"] == pytest.approx(signals[s.name][row]), s.name
        assert det[f"{KEY}_suggested_label"] in results.classes
        assert results.classes[results.labels[row]] == det.label
    # the sample fields summarise their boxes
    for s in ds:
        scores = [d[f"{KEY}_corruption_score"] for d in s.ground_truth.detections]
        assert s[f"{KEY}_max_score"] == pytest.approx(max(scores))
        assert s[f"{KEY}_num_suspects"] == sum(d[f"{KEY}_suspect"] for d in s.ground_truth.detections)
    assert sum(ds.values(f"{KEY}_num_suspects")) == results.num_label_issues
    # declared on the boxes, with our mark: filterable in the App
    field = ds.get_field(f"ground_truth.detections.{KEY}_corruption_score")
    assert field is not None and field.info["role"] == f"audit:{KEY}"
    # whole images on one side: held out by the sample's tag, folds grouped by sample
    tags = dict(zip(*ds.values(["id", "tags"])))
    folds = np.array(results.object_folds)
    for row, sid in enumerate(results.sample_ids):
        assert results.is_test[row] == ("val" in tags[sid])
    for sid in set(results.sample_ids):
        rows = [r for r, s in enumerate(results.sample_ids) if s == sid]
        assert len(set(folds[rows])) == 1, "the boxes of one image fell into two folds"
    assert len(set(folds)) == FAST["folds"]
    # the user's labels are untouched
    user_after = [_user_view(d) for d in ds._sample_collection.find({}, sort=[("_id", 1)])]
    assert user_after == user_before
    # loaded again: the same results
    config, loaded = na.load_audit(ds, KEY)
    assert config.object_field == "ground_truth"
    assert np.allclose(loaded.signals["corruption_score"], signals["corruption_score"])
    assert loaded.predictions.shape == (len(boxes), len(results.classes))


def test_delete_removes_every_attribute_and_field(make_mosaic_dataset):
    ds = make_mosaic_dataset(n_train=15, n_val=6)
    before = state(ds)
    na.audit(ds, "ground_truth", key=KEY, **FAST)
    assert state(ds) != before
    na.delete_audit(ds, KEY)
    assert_same(state(ds), before)
    na.audit(ds, "ground_truth", key=KEY, **FAST)
    ds.delete_run(KEY)  # FiftyOne's own run deletion (the App's runs panel) too
    assert_same(state(ds), before)


def test_a_fault_after_the_commit_leaves_the_whole_audit_and_before_it_nothing(make_mosaic_dataset, monkeypatch):
    ds = make_mosaic_dataset(n_train=15, n_val=6)
    na.audit(ds, "ground_truth", key="other", **dict(FAST, seed=3))  # left alone throughout
    before = state(ds)
    na.audit(ds, "ground_truth", key=KEY, **FAST)
    after = state(ds)
    na.delete_audit(ds, KEY)
    assert_same(state(ds), before)
    for step, expected in (("new_moved", before), ("linked", after), ("objects", after)):
        monkeypatch.setenv(FAULT_ENV, step)
        with pytest.raises(InjectedFault):
            na.audit(ds, "ground_truth", key=KEY, **FAST)
        monkeypatch.delenv(FAULT_ENV)
        assert_same(state(ds), expected)
        if expected is after:
            na.delete_audit(ds, KEY)
    # an overwrite interrupted half-way through the boxes: the new audit, whole
    na.audit(ds, "ground_truth", key=KEY, **dict(FAST, seed=1))
    monkeypatch.setenv(FAULT_ENV, "objects")
    with pytest.raises(InjectedFault):
        na.audit(ds, "ground_truth", key=KEY, overwrite=True, **FAST)
    monkeypatch.delenv(FAULT_ENV)
    assert_same(state(ds), after)


def test_a_process_killed_half_way_through_the_boxes_is_finished_by_recovery(make_mosaic_dataset):
    ds = make_mosaic_dataset(n_train=15, n_val=6)
    na.audit(ds, "ground_truth", key=KEY, **FAST)
    after = state(ds)
    na.delete_audit(ds, KEY)
    code = ("import sys, fiftyone as fo, noise_audit as na; from audit_state import FAST; "
            "na.audit(fo.load_dataset(sys.argv[1]), 'ground_truth', key=sys.argv[2], **FAST)")
    import os
    import audit_state

    env = audit_state.child_env(**{FAULT_ENV: "objects:kill"})
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(audit_state.__file__), env["PYTHONPATH"]])
    proc = python(code, ds.name, KEY, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    half = state(ds)
    with_attr = sum(f"{KEY}_corruption_score" in d for s in half["samples"]
                    for d in s["ground_truth"]["detections"])
    assert 0 < with_attr < len(_boxes(ds)), "the kill was meant to land half-way through the boxes"
    recover(ds)
    assert_same(state(ds), after)


def test_attributes_we_did_not_write_are_never_written_over(make_mosaic_dataset):
    ds = make_mosaic_dataset(n_train=15, n_val=6)
    sample = ds.first()
    sample.ground_truth.detections[0][f"{KEY}_corruption_score"] = 0.5
    sample.save()
    before = state(ds)
    with pytest.raises(na.NoiseAuditError, match="did not write"):
        na.audit(ds, "ground_truth", key=KEY, **FAST)
    assert_same(state(ds), before)


def test_the_committed_mosaics_hold_their_tiles_exactly_where_the_boxes_say():
    import json
    import sys

    from PIL import Image

    from conftest import BENCH, MOSAICS, TINY, unique_name

    sys.path.insert(0, str(BENCH))
    from make_mosaics import GREY, load_mosaics

    records = json.loads((MOSAICS / "labels.json").read_text())["images"]
    assert 8 <= len(records) <= 15
    ds = load_mosaics(MOSAICS, unique_name("na-mosaics"))
    try:
        assert len(ds) == len(records) and set(ds.distinct("tags")) == {"train", "val"}
        for r, s in zip(records, ds):
            img = np.asarray(Image.open(s.filepath).convert("RGB"), dtype=float)
            assert img.shape[:2] == (r["height"], r["width"])
            assert 4 <= len(s.ground_truth.detections) <= 9
            covered = np.zeros(img.shape[:2], dtype=bool)
            for o, d in zip(r["objects"], s.ground_truth.detections):
                assert d.label == o["label"] and d.bounding_box == o["box"]
                x, y, w, h = (round(v * n) for v, n in zip(o["box"], (r["width"], r["height"]) * 2))
                covered[y:y + h, x:x + w] = True
                if TINY.is_dir():  # the tile is the photograph, up to the mosaic's JPEG encoding
                    split = r["file"].split("_")[0]
                    src = np.asarray(Image.open(TINY / split / o["source"]).convert("RGB"), dtype=float)
                    tile = img[y:y + h, x:x + w]
                    assert np.abs(tile - src).mean() < 12, o["source"]
                    assert np.corrcoef(tile.ravel(), src.ravel())[0, 1] > 0.98, o["source"]
            assert np.median(np.abs(img[~covered] - GREY[0])) < 10  # grey everywhere else (JPEG rings near the tiles)
    finally:
        ds.delete()
