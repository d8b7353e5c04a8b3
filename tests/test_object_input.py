"""Issue 26 items 2 and 6: noise on boxes, evaluation per box, and bad input of a Detections audit.

Bad boxes (empty Detections, boxes not inside the image, of zero area, under
``min_box_size``) are skipped with one warning that counts them, and the
audit covers exactly the rest; label types other than Classification and
Detections are one error naming what is supported (CLI exit 2), nothing
written. ``inject_label_noise`` flips box classes in a copy of the field with
a per-box ``label_flipped``; ``evaluate`` scores per box.
"""

import logging

import numpy as np
import pytest

import fiftyone as fo
import noise_audit as na
from noise_audit.cli import main

from audit_state import FAST, assert_same, state

KEY = "objs"


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "Skipped in" in r.getMessage()]


def test_bad_boxes_are_skipped_with_one_warning_that_counts_them(make_mosaic_dataset, caplog):
    ds = make_mosaic_dataset(n_train=15, n_val=6)
    samples = list(ds)
    good = sum(len(s.ground_truth.detections) for s in samples)
    bad = [fo.Detection(label="frog", bounding_box=[0.9, 0.9, 0.3, 0.3]),   # not inside the image
           fo.Detection(label="frog", bounding_box=[0.1, 0.1, 0.0, 0.2]),   # zero area
           fo.Detection(label="truck", bounding_box=[0.1, 0.1, 0.01, 0.01]),  # under 4 px
           fo.Detection(label="truck", bounding_box=[0.2, 0.2, 0.02, 0.5])]   # one side under 4 px
    samples[0].ground_truth.detections += bad[:2]
    samples[0].save()
    samples[1].ground_truth.detections += bad[2:]
    samples[1].save()
    n2 = len(samples[2].ground_truth.detections)
    samples[2].ground_truth = fo.Detections()
    samples[2].save()
    with caplog.at_level(logging.WARNING):
        r = na.audit(ds, "ground_truth", key=KEY, min_box_size=4, **FAST)
    lines = _warnings(caplog)
    assert len(lines) == 1, lines
    assert "1 samples with an empty Detections" in lines[0] and "1 boxes not inside the image" in lines[0]
    assert "1 boxes of zero area" in lines[0] and "2 boxes with a side under 4 px" in lines[0]
    skipped_ids = {d.id for d in bad}
    assert not skipped_ids & set(r.ids)
    assert len(r.ids) == good - n2  # exactly the good boxes of the other samples
    name = f"{KEY}_corruption_score"
    for s in ds.select([samples[0].id, samples[1].id]):
        for d in s.ground_truth.detections:
            assert (d.id in skipped_ids) == (not d.has_field(name) or d[name] is None)
    assert ds[samples[2].id][f"{KEY}_max_score"] is None
    assert r.skipped_boxes == {"empty": 1, "unlabeled": 0, "outside": 1, "zero_area": 1, "small": 2}


@pytest.mark.parametrize("kind", ["keypoints", "polylines", "segmentation"])
def test_other_label_types_are_one_error_naming_what_is_supported(make_mosaic_dataset, kind, capsys):
    ds = make_mosaic_dataset(n_train=8, n_val=4)
    value = {"keypoints": fo.Keypoints(keypoints=[fo.Keypoint(label="a", points=[(0.1, 0.1)])]),
             "polylines": fo.Polylines(polylines=[fo.Polyline(label="a", points=[[(0.1, 0.1), (0.2, 0.2)]])]),
             "segmentation": fo.Segmentation(mask=np.zeros((4, 4), dtype=np.uint8))}[kind]
    for s in ds:
        s["other"] = value
        s.save()
    before = state(ds)
    with pytest.raises(na.NoiseAuditError, match="fo.Classification field .* or a fo.Detections field") as e:
        na.audit(ds, "other", key=KEY, **FAST)
    assert {"Keypoints": "keypoints", "Polylines": "polylines", "Segmentation": "segmentation"}[str(e.value).split(
        " is ")[1].split(",")[0]] == kind
    assert_same(state(ds), before)
    code = main(["audit", "--dataset", ds.name, "--label-field", "other", "--key", KEY, "--backbone", "resnet18",
                 "--weights", "random", "--image-size", "32", "--folds", "2", "--json"])
    assert code == 2
    assert "fo.Detections" in capsys.readouterr().err
    assert_same(state(ds), before)


def test_noise_on_boxes_and_evaluation_per_box(make_mosaic_dataset, capsys, tmp_path):
    ds = make_mosaic_dataset()
    labels_before = ds.values("ground_truth.detections.label")
    out = na.inject_label_noise(ds, "ground_truth", fraction=0.2, seed=0, strategy="pair")
    n_boxes = sum(len(v) for v in labels_before)
    assert out["num_samples"] == n_boxes and out["num_flipped"] == round(0.2 * n_boxes) or out["num_flipped"] > 0
    assert ds.values("ground_truth.detections.label") == labels_before  # never modified
    noisy = ds.values("ground_truth_noisy.detections.label")
    flags = ds.values("ground_truth_noisy.detections.label_flipped")
    ids = ds.values("ground_truth.detections.id")
    assert ds.values("ground_truth_noisy.detections.id") == ids
    for clean_s, noisy_s, flag_s in zip(labels_before, noisy, flags):
        for c, n, f in zip(clean_s, noisy_s, flag_s):
            assert f == (c != n)
    assert sum(f for fs in flags for f in fs) == out["num_flipped"]
    # pair: every flipped class goes to its one partner
    pairs = {(c, n) for cs, ns in zip(labels_before, noisy) for c, n in zip(cs, ns) if c != n}
    assert len({c for c, _ in pairs}) == len(pairs)

    r = na.audit(ds, "ground_truth_noisy", key=KEY, **FAST)
    m = na.evaluate(ds, f"{KEY}_corruption_score", "label_flipped", label_field="ground_truth_noisy")
    assert m["objects"] and m["n"] == len(r.ids) and m["k"] == out["num_flipped"]
    flipped = np.array([f for fs in ds.values("ground_truth_noisy.detections.label_flipped") for f in fs])
    from noise_audit.metrics import detection_metrics
    by_row = dict(zip(r.ids, r.signals["corruption_score"]))
    order = [by_row[i] for s in ds.values("ground_truth_noisy.detections.id") for i in s]
    assert m["average_precision"] == pytest.approx(detection_metrics(order, flipped)["average_precision"])
    assert m["average_precision"] > flipped.mean()  # better than chance
    assert {row["label"] for row in m["per_label"]} == set(r.classes)
    with pytest.raises(na.NoiseAuditError, match="audits the boxes of 'ground_truth_noisy'"):
        na.report(ds, KEY, tmp_path / "report")  # not yet for boxes: one clear error
    # the CLI's evaluate reads the audit's attributes
    assert main(["evaluate", "--dataset", ds.name, "--key", KEY, "--json"]) == 0
    import json
    cli = json.loads(capsys.readouterr().out)
    assert cli["corruption_score"]["average_precision"] == pytest.approx(m["average_precision"])
    # confusion: flips towards what an audit of the clean boxes predicts
    na.audit(ds, "ground_truth", key="clean", **FAST)
    out2 = na.inject_label_noise(ds, "ground_truth", fraction=0.1, seed=1, strategy="confusion",
                                 noisy_field="gt_confused", prediction_field="clean")
    assert out2["num_flipped"] > 0
    na.remove_label_noise(ds, "ground_truth", "gt_confused")
    assert "gt_confused" not in ds.get_field_schema()


@pytest.mark.skipif(not __import__("conftest").TINY.is_dir(), reason="../shared/data not found")
def test_flipped_box_classes_of_real_mosaics_rank_high(tmp_path):
    """Mosaics built at run time from ../shared/data (Tiny ImageNet, 4 classes): 20% of the
    box classes flipped; the audit's score ranks them far above chance."""
    import sys

    from conftest import BENCH, TINY, unique_name

    sys.path.insert(0, str(BENCH))
    from make_mosaics import build_mosaics, load_mosaics, tiles_of, write_labels

    classes = ["dining_table", "gondola", "goldfish", "orange"]
    records = []
    for split, n in (("train", 25), ("val", 8)):
        records += build_mosaics(tiles_of(TINY, split, classes, n), tmp_path, split, seed=0)
    write_labels(records, tmp_path)
    ds = load_mosaics(tmp_path, unique_name("na-obj-tiny"))
    try:
        na.inject_label_noise(ds.match_tags("train"), "ground_truth", fraction=0.2, seed=0)
        r = na.audit(ds, "ground_truth_noisy", key=KEY, **FAST)
        m = na.evaluate(ds, f"{KEY}_corruption_score", "label_flipped")
        n_boxes = sum(len(v) for v in ds.values("ground_truth.detections"))
        assert m["n"] == len(r.ids) == n_boxes and m["k"] == sum(ds.values("ground_truth_noisy.detections.label_flipped", unwind=True))
        assert m["average_precision"] > 2 * m["k"] / m["n"], m
    finally:
        ds.delete()
