import fiftyone as fo
import pytest

import noise_audit as na
from noise_audit.core.data import read_labels

from conftest import FIXTURES, unique_name


def test_load_image_folder_tags_splits_and_reads_labels():
    name = unique_name()
    ds = na.load_image_folder(FIXTURES, name=name, classes=["airplane", "truck"])
    try:
        assert ds.count_sample_tags() == {"train": 100, "val": 40}
        assert sorted(ds.distinct("ground_truth.label")) == ["airplane", "truck"]
        assert ds.match_tags("val").count_values("ground_truth.label") == {"airplane": 20, "truck": 20}
        with pytest.raises(na.NoiseAuditError, match="exists"):
            na.load_image_folder(FIXTURES, name=name, classes=["airplane"])
    finally:
        ds.delete()


def test_load_image_folder_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(na.NoiseAuditError, match="not found"):
        na.load_image_folder(tmp_path / "nope")


def test_read_labels_checks_its_input(make_small_dataset):
    ds = make_small_dataset(n_train=6, n_val=0)
    data = read_labels(ds, "ground_truth")
    assert data.classes == ["airplane", "frog", "truck"]
    assert len(data) == 18 and set(data.labels.tolist()) == {0, 1, 2}

    with pytest.raises(na.NoiseAuditError, match="empty"):
        read_labels(ds.limit(0), "ground_truth")
    with pytest.raises(na.NoiseAuditError, match="not found"):
        read_labels(ds, "nope")
    ds.add_sample_field("score", fo.FloatField)
    with pytest.raises(na.NoiseAuditError, match="not a fo.Classification"):
        read_labels(ds, "score")
    with pytest.raises(na.NoiseAuditError, match="two classes"):
        read_labels(ds.match(fo.ViewField("ground_truth.label") == "truck"), "ground_truth")
    with pytest.raises(na.NoiseAuditError, match="too few"):
        read_labels(ds, "ground_truth", min_per_class=7)
