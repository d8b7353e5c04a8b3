"""The influence weight chosen per audit (core/weight_probe.py): real features, real fits, no mocks.

The probe plants flips into the audited data as the estimated noise matrix
says labels go wrong, recomputes out-of-fold logits and average influence on
them, and picks 0, ½ or 1 by its AP at finding the planted flips. Two cases
from real Tiny ImageNet JPEGs in ``../shared/data`` (EfficientNet-Lite0
features at 64 px, cached; marked ``slow``: a fresh clone has no
``../shared``), run through the audit's own stages at the array level:

- uniform flips on the seed pair (dining_table / gondola), where the fixed ½
  loses to cleanlab's label quality (the issue's case) and the chosen weight
  must not;
- pair flips on three classes, where the folds learn the flip and the chosen
  weight must keep influence.

A choice that is always 0, always ½, or the worst candidate fails one of
them (each was planted and seen to fail). The CIFAR-10 pairs at 32 px of
``bench/weight_probe.py`` are too weak a head for a test (AP near chance for
every ranking).
"""

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import average_precision_score

from conftest import TINY, requires_shared
from noise_audit.core import pipeline, scores, weight_probe


# -- the probe's parts, on arrays -----------------------------------------------------------

PAIR_CLASSES = ["dining_table", "gondola", "lifeboat"]


def test_pick_weight_takes_the_best_and_breaks_ties_to_the_half():
    assert weight_probe.pick_weight({0.0: 0.61, 0.5: 0.58, 1.0: 0.40}) == 0.0
    assert weight_probe.pick_weight({0.0: 0.30, 0.5: 0.58, 1.0: 0.72}) == 1.0
    assert weight_probe.pick_weight({0.0: 0.70, 0.5: 0.70, 1.0: 0.70}) == 0.5
    assert weight_probe.pick_weight({0.0: 0.70, 0.5: 0.70, 1.0: 0.20}) == 0.5


def test_plants_follow_the_noise_matrix_and_stay_among_the_clean_rows():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 3000)
    clean = rng.random(3000) < 0.7
    # labels go wrong one way only: true 0 -> given 1, true 1 -> given 2; class 2 keeps its labels
    noise = np.array([[0.8, 0.0, 0.0], [0.2, 0.7, 0.0], [0.0, 0.3, 1.0]])
    planted = weight_probe.plant_flips(labels, clean, noise, 300, np.random.default_rng(1))
    moved = planted != labels
    assert moved.sum() == 300 and not moved[~clean].any()
    pairs = {(int(a), int(b)) for a, b in zip(labels[moved], planted[moved])}
    assert pairs <= {(0, 1), (1, 2), (2, 0), (2, 1)}  # class 2 only gets the small even share
    assert ((labels[moved] == 0) & (planted[moved] == 1)).sum() > 100
    assert ((labels[moved] == 1) & (planted[moved] == 2)).sum() > 100
    assert (labels[moved] == 2).sum() < 5


def test_probe_rows_are_a_stratified_capped_subsample():
    strata = np.r_[np.zeros(9000, int), np.ones(1000, int)]
    keep = weight_probe.probe_rows(strata, max_rows=2000, seed=0)
    assert len(keep) == 2000 and np.all(np.diff(keep) > 0)
    assert (strata[keep] == 1).sum() == 200
    assert np.array_equal(weight_probe.probe_rows(strata[:500], max_rows=2000), np.arange(500))


def test_clean_rows_leave_out_the_first_rankings_top_training_rows():
    ranking = np.arange(10.0)
    is_test = np.zeros(10, bool)
    is_test[[8, 9]] = True  # held-out rows are never planted
    clean = weight_probe.clean_rows(ranking, is_test, n_suspects=3)
    assert clean.tolist() == [True] * 5 + [False] * 5
    assert weight_probe.clean_rows(ranking, is_test, n_suspects=100).sum() == 4  # at most half left out


# -- the probe on real features -------------------------------------------------------------

def tiny_features(classes):
    """``(standardised features, labels, is_test)`` of Tiny ImageNet's train/ and val/ images of ``classes``."""
    from noise_audit.core import features as feats

    paths, labels, test = [], [], []
    for split in ("train", "val"):
        for i, c in enumerate(classes):
            files = sorted(str(p) for p in (TINY / split / c).iterdir())
            paths += files
            labels += [i] * len(files)
            test += [split == "val"] * len(files)
    y, is_test = np.array(labels), np.array(test)
    raw, _ = feats.extract_features(paths, feats.get_backbone("efficientnet_lite0", image_size=64), progress=False)
    mean, std = feats.standardization(raw, rows=~is_test)
    return np.subtract(raw, mean, dtype=np.float64) / std, y, is_test


def audited(x, y, is_test, strategy, rate, seed, folds=5):
    """Flips of the library's rule in the training part, then the audit's stages on the noisy labels:
    ``(noisy labels, flipped, fold, signals, AP of a weight's ranking, cleanlab's AP)``."""
    from noise_audit.core.auditing import DEFAULT_L2, _Clock
    from noise_audit.core.blocks import Blocks
    from noise_audit.core.flips import choose_flips

    train = np.flatnonzero(~is_test)
    idx, new = choose_flips(y[train], int(y.max()) + 1, rate, strategy, seed)
    noisy = y.copy()
    noisy[train[idx]] = new
    flipped = noisy != y
    fold = pipeline.fold_ids(noisy, folds, seed)
    blocks = Blocks.from_arrays({"x": x, "y": noisy, "train": ~is_test, "fold": fold})
    s = pipeline.linear_signals(blocks, x.shape[1], int(y.max()) + 1, DEFAULT_L2, folds, _Clock(None))

    def ap(weight):
        ranking = scores.audit_ranking(noisy, s.oos_logits, s.clean_oos_logits, s.average_influence, is_test, weight)
        return average_precision_score(flipped, ranking)

    cleanlab = average_precision_score(flipped, -scores.label_quality(noisy, softmax(s.oos_logits, axis=1)))
    return noisy, flipped, fold, s, ap, cleanlab


@pytest.mark.slow
@requires_shared
def test_under_uniform_flips_the_chosen_weight_does_not_lose_to_cleanlab():
    x, y, is_test = tiny_features(["dining_table", "gondola"])
    noisy, _, fold, s, ap, cleanlab = audited(x, y, is_test, "uniform", 0.2, seed=1)
    assert ap(0.5) < cleanlab - 0.01  # the issue: a half share of influence costs AP against cleanlab
    choice = weight_probe.audit_weight("auto", x, noisy, is_test, fold, s, folds=5, seed=1)
    assert choice.average_precision is not None and len(choice.per_planting or []) == weight_probe.PLANTINGS
    assert ap(choice.weight) >= cleanlab, (choice.weight, choice.average_precision)


@pytest.mark.slow
@requires_shared
def test_under_pair_flips_the_chosen_weight_keeps_influence():
    x, y, is_test = tiny_features(PAIR_CLASSES)
    noisy, _, fold, s, ap, cleanlab = audited(x, y, is_test, "pair", 0.3, seed=0)
    choice = weight_probe.audit_weight("auto", x, noisy, is_test, fold, s, folds=5, seed=0)
    assert choice.weight > 0, choice.average_precision
    assert ap(choice.weight) > cleanlab  # the folds learn the flips; influence still sees them


# -- the audit records its choice -------------------------------------------------------------

def test_audit_chooses_the_weight_records_it_and_ranks_with_it(make_small_dataset):
    import noise_audit as na

    ds = make_small_dataset()
    na.inject_label_noise(ds.match_tags("train"), fraction=0.2, strategy="pair", seed=0)
    kw = dict(image_size=32, folds=2, progress=False)
    auto = na.audit(ds, "ground_truth_noisy", key="auto", **kw)
    c = auto.config
    probe = c["influence_weight_probe"]
    assert c["influence_weight_requested"] == "auto" and c["influence_weight"] in weight_probe.CANDIDATES
    assert set(probe["average_precision"]) == {"0.0", "0.5", "1.0"} and probe["plantings"] == 3
    assert len(probe["per_planting"]) == 3 and probe["planted"] >= weight_probe.MIN_PLANTED
    aps = {float(w): ap for w, ap in probe["average_precision"].items()}
    assert all(0 < ap <= 1 for ap in aps.values())
    assert c["influence_weight"] == weight_probe.pick_weight(aps)
    # the chosen weight is the one the scores were ranked with: a fixed audit at it gives the same scores
    fixed = na.audit(ds, "ground_truth_noisy", key="fixed", influence_weight=c["influence_weight"], **kw)
    assert fixed.config["influence_weight_probe"] is None
    assert fixed.config["influence_weight_requested"] == c["influence_weight"]
    assert np.allclose(ds.values("auto_corruption_score"), ds.values("fixed_corruption_score"))
