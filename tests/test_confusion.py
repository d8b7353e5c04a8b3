"""The ``confusion`` noise strategy: flips that look like human mistakes."""

import numpy as np
import pytest
from scipy.special import softmax

import noise_audit as na
from noise_audit.errors import NoiseAuditError
from noise_audit.core.flips import choose_flips


def test_confusion_flips_go_to_the_likeliest_wrong_class_and_prefer_ambiguous_samples():
    rng = np.random.default_rng(0)
    n, c = 4000, 4
    labels = rng.integers(0, c, n)
    probs = softmax(3 * rng.normal(size=(n, c)), axis=1)
    idx, new = choose_flips(labels, c, 0.1, "confusion", seed=3, reference_probs=probs)
    assert len(idx) == 400 and len(set(idx.tolist())) == 400
    wrong = probs.copy()
    wrong[np.arange(n), labels] = -1
    assert np.array_equal(new, wrong[idx].argmax(1))  # the likeliest wrong class, always
    assert np.all(new != labels[idx])
    top_wrong = wrong.max(1)
    assert top_wrong[idx].mean() > top_wrong.mean() + 0.1  # ambiguous samples are chosen more often
    again = choose_flips(labels, c, 0.1, "confusion", seed=3, reference_probs=probs)
    assert np.array_equal(idx, again[0]) and np.array_equal(new, again[1])  # deterministic for a seed
    other = choose_flips(labels, c, 0.1, "confusion", seed=4, reference_probs=probs)
    assert not np.array_equal(idx, other[0])


def test_inject_confusion_uses_a_clean_audits_predictions(make_small_dataset):
    ds = make_small_dataset()
    with pytest.raises(NoiseAuditError, match="prediction_field"):
        na.inject_label_noise(ds.match_tags("train"), fraction=0.2, strategy="confusion")
    na.audit(ds, "ground_truth", key="clean", image_size=64, progress=False)
    out = na.inject_label_noise(ds.match_tags("train"), fraction=0.2, seed=1, strategy="confusion")
    assert out["num_flipped"] == round(0.2 * len(ds.match_tags("train")))
    classes = sorted(ds.distinct("ground_truth.label"))
    for s in ds.select(out["flipped_ids"]):
        logits = np.array(s["clean_prediction"].logits)
        logits[classes.index(s.ground_truth.label)] = -np.inf
        assert s.ground_truth_noisy.label == classes[int(logits.argmax())]
    assert sum(ds.values("label_flipped")) == out["num_flipped"]
