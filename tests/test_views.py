"""The App's views: the histogram counts every audited sample once, and each
bar's click view holds exactly the samples the bar counts."""

import numpy as np
import pytest

import noise_audit as na
from noise_audit.app import views as nav


@pytest.fixture
def audited(make_small_dataset):
    ds = make_small_dataset()
    injected = na.inject_label_noise(ds.match_tags("train"), "ground_truth", fraction=0.2, seed=0)
    na.audit(ds, injected["noisy_field"], key="v", image_size=32, progress=False)
    return ds, injected["flag_field"]


@pytest.mark.parametrize("signal", ["corruption_score", "influence"])
def test_histogram_bars_match_values_and_click_views(audited, signal):
    ds, flag = audited
    for truth in (None, flag):
        hist = nav.histogram(ds, "v", signal, truth, bins=7)
        edges = np.asarray(hist["edges"])
        field = na.audit_fields("v")[signal]
        values, labels, flipped = ds.exists(field).values([field, "ground_truth_noisy.label", flag])
        values, labels = np.asarray(values, float), np.asarray(labels)
        flipped = np.asarray([bool(f) for f in flipped])
        assert len(edges) == 8 and edges[0] == values.min() and edges[-1] > values.max()
        assert sum(s["n"] for s in hist["series"]) == len(values)  # every audited sample once
        for s in hist["series"]:
            mask = labels == s["label"]
            if s["group"] is not None:
                mask &= flipped == (s["group"] == nav.FLIPPED)
            assert s["counts"] == np.histogram(values[mask], edges)[0].tolist()
            for i, count in enumerate(s["counts"]):
                if count:
                    bar = nav.score_bin(ds, "v", signal, edges[i], edges[i + 1], s["label"], s["group"], truth)
                    assert len(bar) == count
