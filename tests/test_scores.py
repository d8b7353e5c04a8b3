"""The corruption score on synthetic data where the truth is known by construction.

No FiftyOne, no images: each test builds the inputs of ``scores`` so that a
wrong combination (one input alone, a flipped sign, a dropped input, no
calibration) measurably fails.
"""

import numpy as np
import pytest
from scipy.special import softmax
from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities
from sklearn.metrics import average_precision_score

from noise_audit import metrics
from noise_audit.core import noise_model, scores


def _noisy_world(n=6000, c=4, rate=0.2, seed=0, sharpness=4.0):
    """Samples from a known noise model: clean posteriors, a noise matrix, given labels.

    Returns the clean posterior ``p*`` of each sample, the noise matrix
    ``N[i, j] = P(given = i | true = j)``, the given labels and the truth.
    """
    rng = np.random.default_rng(seed)
    p_clean = softmax(sharpness * rng.normal(size=(n, c)), axis=1)
    true = np.array([rng.choice(c, p=p) for p in p_clean])
    noise = np.full((c, c), rate / (c - 1))
    np.fill_diagonal(noise, 1 - rate)
    given = np.array([rng.choice(c, p=noise[:, t]) for t in true])
    return p_clean, noise, given, given != true


def _right_held_out_labels(p_clean, given, wrong, seed, share=0.2):
    """A random ``share`` of the rows held out, their labels right (drawn again from ``p*``
    where the noise had changed them), as the audit assumes: ``(given, wrong, is_test)``."""
    rng = np.random.default_rng(seed)
    is_test = rng.random(len(given)) < share
    given = given.copy()
    for i in np.flatnonzero(is_test & wrong):
        given[i] = rng.choice(p_clean.shape[1], p=p_clean[i])
    return given, wrong & ~is_test, is_test


def _two_kinds_of_flips(n=4000, seed=0):
    """Flips of two kinds, each visible to one view only.

    Half the flips contradict the other samples (low out-of-sample probability
    of the given label) but do not hurt the held-out set; the other half are
    systematic (the folds learnt them: the given label looks likely) but hurt
    the held-out set (negative average influence). Clean samples look clean
    to both views, with noise.
    """
    rng = np.random.default_rng(seed)
    c = 3
    labels = rng.integers(0, c, n)
    flipped = rng.random(n) < 0.15
    true = np.where(flipped, (labels + rng.integers(1, c, n)) % c, labels)
    kind = rng.random(n) < 0.5  # True: seen by out-of-sample loss; False: seen by influence
    p_true = np.clip(rng.normal(0.8, 0.12, n), 0.05, 0.95)
    learnt = flipped & ~kind  # systematic: the folds give the flipped label most of the mass
    probs = np.full((n, c), 0.0)
    probs[np.arange(n), true] = np.where(learnt, 1 - p_true, p_true)
    probs[np.arange(n), labels] += np.where(learnt, p_true, 0.0)
    probs += (1 - probs.sum(1, keepdims=True)) / c  # the rest, spread evenly
    influence = rng.normal(0.0, 1.0, n)
    influence[learnt] -= 3.0
    return labels, np.log(probs), influence, flipped


def _ap(score, truth):
    return average_precision_score(truth, score)


def test_score_beats_each_of_its_inputs_alone():
    labels, logits, influence, flipped = _two_kinds_of_flips()
    score, ranking = scores.corruption_score(labels, logits, logits, influence)
    ap_score = _ap(score, flipped)
    ap_loss = _ap(scores.given_label_loss(logits, labels), flipped)
    ap_quality = _ap(-scores.label_quality(labels, softmax(logits, axis=1)), flipped)
    ap_influence = _ap(-influence, flipped)
    assert ap_score > max(ap_loss, ap_quality, ap_influence) + 0.1
    # the calibrated score ranks exactly as the ranking does
    assert _ap(ranking, flipped) == pytest.approx(ap_score, abs=1e-12)
    assert np.array_equal(np.argsort(score, kind="stable"), np.argsort(ranking, kind="stable"))


def test_score_needs_the_right_sign_of_influence():
    labels, logits, influence, flipped = _two_kinds_of_flips()
    right, _ = scores.corruption_score(labels, logits, logits, influence)
    wrong, _ = scores.corruption_score(labels, logits, logits, -influence)
    assert _ap(right, flipped) > _ap(wrong, flipped) + 0.2


def test_ranking_uses_the_refit_folds_not_the_first_ones():
    """Step 2 of the score: the out-of-sample loss comes from the cleaner folds."""
    labels, logits, influence, flipped = _two_kinds_of_flips()
    fooled = logits.copy()  # first folds that learnt every flip: the given label looks likely
    fooled[flipped] = np.log(softmax(logits[flipped], axis=1) * 0.1 + 0.9 * np.eye(3)[labels[flipped]])
    with_clean, _ = scores.corruption_score(labels, fooled, logits, influence)
    with_first, _ = scores.corruption_score(labels, logits, fooled, influence)
    assert _ap(with_clean, flipped) > _ap(with_first, flipped) + 0.1


def test_refit_suspects_are_the_first_rankings_top_as_many_as_cleanlab_estimates():
    labels, logits, influence, flipped = _two_kinds_of_flips()
    drop = scores.refit_suspects(labels, logits, influence)
    assert drop.sum() == scores.estimate_num_issues(labels, softmax(logits, axis=1))
    # the first ranking is on temperature-scaled probabilities: compare in that order
    probs = noise_model.calibrated_probs(logits, labels)
    first = scores.ranking_score(influence, scores.given_label_loss(np.log(probs), labels))
    assert first[drop].min() >= first[~drop].max() - 1e-9
    assert flipped[drop].mean() > 3 * flipped.mean()  # mostly flips


def test_noise_posterior_is_calibrated_under_its_noise_model():
    p_clean, noise, given, wrong = _noisy_world()
    posterior = noise_model.noise_posterior(given, p_clean, noise)
    cal = metrics.calibration(posterior, wrong)
    assert cal["ece"] < 0.03
    assert abs(cal["mean_score"] - cal["error_rate"]) < 0.015
    # and it is informative: far better than the base rate
    assert _ap(posterior, wrong) > 2 * wrong.mean()


def test_noise_matrix_recovers_the_noise_and_a_prior_pulls_it_toward_none():
    """EM finds the 20% noise it was drawn with; a Dirichlet prior of ``prior`` x each class's
    count on the diagonal gives the posterior mode, whose noise rate is the data's off-diagonal
    expected count divided by (1 + prior) of the total: about 0.2 / 2 at ``prior`` = 1."""
    p_clean, _, given, _ = _noisy_world(n=8000, rate=0.2, seed=4)
    start = np.full((4, 4), 0.25)
    rate = lambda noise: 1 - float(np.mean(np.diag(noise)))  # noqa: E731  (classes about equally frequent)
    mle = noise_model.fit_noise_matrix(given, p_clean, start, iterations=2000, tol=1e-10)
    assert abs(rate(mle) - 0.2) < 0.02
    assert np.array_equal(noise_model.fit_noise_matrix(given, p_clean, start, prior=0.0),
                          noise_model.fit_noise_matrix(given, p_clean, start))
    shrunk = noise_model.fit_noise_matrix(given, p_clean, start, iterations=2000, tol=1e-10, prior=1.0)
    assert 0.07 < rate(shrunk) < 0.13


def test_calibrate_keeps_order_and_mean_and_fixes_the_scale():
    rng = np.random.default_rng(0)
    target = rng.random(3000) ** 3  # true probabilities
    truth = rng.random(3000) < target
    ranking = 5 * target + 2.0  # right order, wrong scale (not even in [0, 1])
    out = noise_model.calibrate(ranking, target)
    assert np.all(np.diff(out[np.argsort(ranking)]) > 0)  # strictly increasing: the order is kept
    assert out.mean() == pytest.approx(target.mean(), abs=1e-4)
    assert metrics.calibration(out, truth)["ece"] < 0.04
    assert metrics.calibration(np.clip(ranking / ranking.max(), 0, 1), truth)["ece"] > 0.15


def test_temperature_undoes_a_scaled_model():
    rng = np.random.default_rng(1)
    true_logits = 3 * rng.normal(size=(8000, 5))
    labels = np.array([rng.choice(5, p=p) for p in softmax(true_logits, axis=1)])
    assert noise_model.temperature(true_logits / 4, labels) == pytest.approx(0.25, rel=0.1)
    assert noise_model.temperature(true_logits, labels) == pytest.approx(1.0, rel=0.1)


def test_score_is_a_calibrated_probability_on_a_known_noise_model():
    p_clean, noise, given, wrong = _noisy_world(rate=0.15, seed=2)
    noisy = p_clean @ noise.T  # P(given | x): what out-of-sample folds estimate
    influence = np.zeros(len(given))  # no held-out view: the score rests on the folds
    score, _ = scores.corruption_score(given, np.log(noisy), np.log(p_clean), influence)
    cal = metrics.calibration(score, wrong)
    assert cal["ece"] < 0.05
    assert abs(cal["mean_score"] - cal["error_rate"]) < 0.03
    # uncalibrated (ranking on a [0, 1] scale) is far off: the test can fail
    _, ranking = scores.corruption_score(given, np.log(noisy), np.log(p_clean), influence)
    squashed = (ranking - ranking.min()) / (ranking.max() - ranking.min())
    assert metrics.calibration(squashed, wrong)["ece"] > 2 * cal["ece"]


def test_audit_signals_orients_and_names_every_signal():
    labels, logits, influence, flipped = _two_kinds_of_flips(n=1500)
    is_test = np.zeros(len(labels), bool)
    is_test[:100] = True
    self_infl = np.abs(np.random.default_rng(0).normal(size=len(labels)))
    loss = scores.given_label_loss(logits, labels)
    signals, n_issues, suspect = scores.audit_signals(labels, is_test, logits, logits, influence, self_infl, loss)
    assert set(signals) == {"average_influence", "self_influence", "label_quality", "loss", "loo_loss",
                            "corruption_score", "ranking"}
    assert suspect.sum() == n_issues
    assert signals["corruption_score"][suspect].min() >= signals["corruption_score"][~suspect].max()
    # held-out losses are out-of-sample already; training ones get the leave-one-out term
    assert np.array_equal(signals["loo_loss"][is_test], loss[is_test])
    assert np.all(signals["loo_loss"][~is_test] > loss[~is_test])


def test_calibration_metrics_by_hand():
    p = np.array([0.05, 0.05, 0.15, 0.95, 0.95, 0.95, 0.95])
    t = np.array([0, 0, 1, 1, 1, 1, 0], bool)
    cal = metrics.calibration(p, t)
    # bins 0 (2 samples, 0 flipped), 1 (1 sample, flipped), 9 (4 samples, 3 flipped)
    expected = (2 * 0.05 + 1 * 0.85 + 4 * abs(0.95 - 0.75)) / 7
    assert cal["ece"] == pytest.approx(expected)
    assert cal["bins"][9]["n"] == 4 and cal["bins"][9]["share_flipped"] == 0.75
    flags = metrics.flag_metrics(p >= 0.5, t)
    assert flags["precision"] == 0.75 and flags["recall"] == 0.75


def test_held_out_labels_fix_the_temperature_of_a_weak_head():
    """Step 3 with held-out rows: their given labels (right by assumption) set the
    temperature, so a weak, over-sharp head is still calibrated, where the joint fit
    of temperature and noise matrix on the noisy labels alone is not."""
    p_clean, noise, given, wrong = _noisy_world(n=8000, rate=0.2, seed=3, sharpness=1.0)  # a weak head
    given, wrong, is_test = _right_held_out_labels(p_clean, given, wrong, seed=3)
    logits = 3.0 * np.log(p_clean)  # over-sharp folds: the right temperature is 3
    noisy = np.log(p_clean @ noise.T)
    audited = ~is_test
    held = noise_model.wrong_label_posterior(given, noisy, logits, is_test)
    joint = noise_model.wrong_label_posterior(given, noisy, logits)
    cal_held = metrics.calibration(held[audited], wrong[audited])
    cal_joint = metrics.calibration(joint[audited], wrong[audited])
    assert cal_held["ece"] < 0.04
    assert abs(cal_held["mean_score"] - cal_held["error_rate"]) < 0.03
    assert cal_joint["ece"] > cal_held["ece"] + 0.02  # without the held-out labels: worse
    score, _ = scores.corruption_score(given, noisy, logits, np.zeros(len(given)), is_test)
    assert metrics.calibration(score[audited], wrong[audited])["ece"] < 0.05
    # too few held-out rows to trust their temperature: the joint fit, as without any
    few = is_test & (np.cumsum(is_test) <= noise_model.MIN_HELD_OUT - 1)
    assert np.array_equal(noise_model.wrong_label_posterior(given, noisy, logits, few), joint)


def test_vector_scaling_undoes_a_scaled_and_biased_head():
    rng = np.random.default_rng(4)
    true_logits = 2 * rng.normal(size=(20000, 4))
    p_true = softmax(true_logits, axis=1)
    labels = np.array([rng.choice(4, p=p) for p in p_true])
    head = 3 * true_logits + np.array([2.0, 0.0, 0.0, -1.0])  # over-sharp and partial to class 0
    every = np.ones(len(labels), bool)
    fixed = softmax(noise_model.vector_scaled_logits(head, labels, every), axis=1)
    assert np.abs(fixed - p_true).max() < 0.03
    # a temperature alone cannot undo the biases
    scaled = softmax(head / noise_model.temperature(head, labels), axis=1)
    assert np.abs(scaled - p_true).max() > 0.15


def test_held_out_labels_fix_the_class_biases_of_the_noise_model():
    """A head partial to some classes looks, to a noise model with a temperature
    alone, like labels moved away from those classes; the held-out labels'
    class biases (step 3) remove that phantom noise."""
    p_clean, noise, given, wrong = _noisy_world(n=8000, rate=0.1, seed=5, sharpness=1.5)
    given, wrong, is_test = _right_held_out_labels(p_clean, given, wrong, seed=5)
    biased = np.log(p_clean) + np.array([1.5, 0.0, -0.5, 0.0])  # folds partial to class 0
    noisy = np.log(p_clean @ noise.T)
    audited = ~is_test
    posterior = noise_model.wrong_label_posterior(given, noisy, biased, is_test)
    cal = metrics.calibration(posterior[audited], wrong[audited])
    assert cal["ece"] < 0.03
    assert abs(cal["mean_score"] - cal["error_rate"]) < 0.02
    # the same noise model with the held-out temperature only (round 2's E) is worse
    probs = noise_model.calibrated_probs(biased, given, is_test)
    _, start, _, _ = estimate_py_and_noise_matrices_from_probabilities(given, softmax(noisy, axis=1))
    temperature_only = noise_model.noise_posterior(given, probs, noise_model.fit_noise_matrix(given[audited], probs[audited],
                                                                                     start))
    assert metrics.calibration(temperature_only[audited], wrong[audited])["ece"] > cal["ece"] + 0.02


def test_suspects_are_as_many_as_the_scores_expect_to_be_wrong():
    """The flag's count is the scores' sum over the audited rows: near the true number of
    wrong labels under a weak head, where cleanlab's confident-learning count is far off."""
    p_clean, noise, given, wrong = _noisy_world(n=8000, rate=0.05, seed=6, sharpness=1.0)  # a weak head
    given, wrong, is_test = _right_held_out_labels(p_clean, given, wrong, seed=6)
    noisy = np.log(p_clean @ noise.T)
    influence = np.zeros(len(given))
    loss = scores.given_label_loss(noisy, given)
    signals, n, suspect = scores.audit_signals(given, is_test, noisy, np.log(p_clean), influence,
                                               np.zeros(len(given)), loss)
    score = signals["corruption_score"]
    assert n == round(score[~is_test].sum()) == suspect.sum()
    assert score[suspect].min() >= score[~suspect].max()
    cleanlab = scores.estimate_num_issues(given, softmax(noisy, axis=1))
    assert abs(n - wrong.sum()) < 0.8 * wrong.sum()  # 567 for 330 (this weak head overrates its noise)
    assert abs(cleanlab - wrong.sum()) > 5 * abs(n - wrong.sum())  # cleanlab: 3,157


def test_a_class_missing_from_the_held_out_rows_keeps_its_labels_plausible():
    """Class biases need every class among the held-out rows; without one, its bias
    would run to the bound and every label of it would look wrong (mean posterior 1.0)."""
    p_clean, noise, given, wrong = _noisy_world(n=6000, rate=0.1, seed=7, sharpness=2.0)
    given, wrong, is_test = _right_held_out_labels(p_clean, given, wrong, seed=7)
    is_test &= given != 3  # no held-out row of class 3
    noisy = np.log(p_clean @ noise.T)
    posterior = noise_model.wrong_label_posterior(given, noisy, np.log(p_clean), is_test)
    three = ~is_test & (given == 3)
    assert abs(posterior[three].mean() - wrong[three].mean()) < 0.03


def test_held_out_labels_choose_a_matrix_for_a_head_that_blurs_two_classes():
    """A head that confuses a particular pair of classes looks, to a noise model on
    vector-scaled probabilities, like labels moved within the pair; the held-out
    rows' out-of-sample log loss picks matrix scaling there, and vector scaling for
    a head that is only too sharp and partial."""
    p_clean, _, given, _ = _noisy_world(n=8000, rate=0.0, seed=8, sharpness=2.0)  # no wrong label at all
    is_test = np.random.default_rng(8).random(len(given)) < 0.2
    audited = ~is_test
    mix = np.eye(4)
    mix[0, 1] = mix[1, 0] = 0.8  # classes 0 and 1 blurred together
    blurred = np.log(p_clean) @ mix
    _, start, _, _ = estimate_py_and_noise_matrices_from_probabilities(given, softmax(blurred, axis=1))

    def floor(probs):  # mean posterior of being wrong where nothing is
        noise = noise_model.fit_noise_matrix(given[audited], probs[audited], start)
        return noise_model.noise_posterior(given, probs, noise)[audited].mean()

    chosen = floor(noise_model.recalibrated_probs(blurred, given, is_test))
    vector = floor(softmax(noise_model.vector_scaled_logits(blurred, given, is_test), axis=1))
    assert chosen < 0.012 and vector > 2 * chosen
    assert noise_model.wrong_label_posterior(given, blurred, blurred, is_test)[audited].mean() < 0.012
    sharp = 3 * np.log(p_clean) + np.array([1.0, 0.0, 0.0, -1.0])
    assert np.allclose(noise_model.recalibrated_probs(sharp, given, is_test),
                       softmax(noise_model.vector_scaled_logits(sharp, given, is_test), axis=1))
    # a class with fewer than MIN_HELD_OUT_PER_CLASS held-out rows: a temperature alone
    few = is_test & (np.cumsum(is_test) <= 15)
    assert np.allclose(noise_model.recalibrated_probs(blurred, given, few), noise_model.calibrated_probs(blurred, given, few))


def test_matrix_scaling_needs_as_many_held_out_rows_as_it_has_entries():
    """12 classes, 11 held-out rows of each: enough for class biases, fewer than the
    matrix's 144 entries, so the result is vector scaling. (The bound saves the fits: a
    matrix on so few rows loses the out-of-sample choice anyway, so this outcome cannot
    tell the bound is there; its point is a thousand classes, where each fit takes minutes.)"""
    p_clean, _, given, _ = _noisy_world(n=6000, c=12, rate=0.0, seed=9, sharpness=2.0)
    mix = np.eye(12)
    mix[0, 1] = mix[1, 0] = 0.8  # classes 0 and 1 blurred together
    blurred = np.log(p_clean) @ mix
    rows = np.zeros(len(given), bool)
    for k in range(12):
        rows[np.flatnonzero(given == k)[:11]] = True
    vector = softmax(noise_model.vector_scaled_logits(blurred, given, rows), axis=1)
    assert np.allclose(noise_model.recalibrated_probs(blurred, given, rows), vector)
    # with enough rows the choice is made, and here it is the matrix
    many = np.zeros(len(given), bool)
    for k in range(12):
        many[np.flatnonzero(given == k)[:150]] = True
    assert not np.allclose(noise_model.recalibrated_probs(blurred, given, many),
                           softmax(noise_model.vector_scaled_logits(blurred, given, many), axis=1))


def _weak_head_world(n=4000, c=10, seed=0, rate=0.2):
    """Out-of-fold logits of a weak head: the true class ahead by 1.5 in unit noise, and in a
    third of the rows one wrong class far ahead (4.0). Training rows flipped uniformly; a
    quarter of the rows held out, their labels right. ``(logits, given, flipped, is_test)``."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), true] += 1.5
    spike = rng.random(n) < 0.35
    logits[spike, (true[spike] + rng.integers(1, c, spike.sum())) % c] += 4.0
    is_test = rng.random(n) < 0.25
    flipped = (rng.random(n) < rate) & ~is_test
    given = np.where(flipped, (true + rng.integers(1, c, n)) % c, true)
    return logits, given, flipped, is_test


def test_loss_view_takes_the_temperature_that_ranks_the_flips_better():
    """The held-out rows' planted labels choose between the first folds' temperature and
    the raw logits, and their choice is the one the (unseen) flips would make: a flatter
    loss is better on this weak head (t = 3), a sharper one worse (t = 0.3)."""
    logits, given, flipped, is_test = _weak_head_world()
    audited = ~is_test
    for t, expected in ((0.3, 1.0), (3.0, 3.0)):
        chosen = scores.loss_view_temperature(given, logits, t, is_test)
        assert chosen == expected
        other = 1.0 if chosen == t else t
        ap_chosen = _ap(scores.given_label_loss(logits / chosen, given)[audited], flipped[audited])
        ap_other = _ap(scores.given_label_loss(logits / other, given)[audited], flipped[audited])
        assert ap_chosen > ap_other + 0.05, (t, chosen)
    # MIN_HELD_OUT held-out rows decide; one fewer keeps the first folds' temperature
    enough = is_test & (np.cumsum(is_test) <= noise_model.MIN_HELD_OUT)
    assert scores.loss_view_temperature(given, logits, 0.3, enough) == 1.0
    few = is_test & (np.cumsum(is_test) <= noise_model.MIN_HELD_OUT - 1)
    assert scores.loss_view_temperature(given, logits, 0.3, few) == 0.3


def test_planted_label_auroc_from_a_perfect_a_blind_and_a_certain_head():
    labels = np.arange(400) % 5
    rows = np.ones(len(labels), bool)
    perfect = 5.0 * np.eye(5)[labels]
    assert scores.planted_label_auroc(perfect, labels, rows) == 1.0
    assert scores.planted_label_auroc(np.zeros((len(labels), 5)), labels, rows) == 0.5  # every loss equal
    certain = np.where(np.eye(5)[labels] > 0, 0.0, -np.inf)  # probabilities given as 1 and 0
    assert scores.planted_label_auroc(certain, labels, rows) == 1.0


def test_score_ranks_by_the_loss_at_the_chosen_temperature():
    """First folds much sharper than the cleaner ones' best reading (t about 0.3): the
    score's ranking follows the raw logits, which find the flips better here."""
    logits, given, flipped, is_test = _weak_head_world(seed=1)
    sharp = logits * (0.3 / noise_model.temperature(logits, given))  # the first folds' t is then about 0.3
    no_influence = np.zeros(len(given))
    score, _ = scores.corruption_score(given, sharp, logits, no_influence, is_test)
    audited = ~is_test
    t = noise_model.temperature(sharp, given)
    ap_raw = _ap(scores.given_label_loss(logits, given)[audited], flipped[audited])
    ap_at_t = _ap(scores.given_label_loss(logits / t, given)[audited], flipped[audited])
    assert ap_raw > ap_at_t + 0.03
    assert _ap(score[audited], flipped[audited]) == pytest.approx(ap_raw, abs=1e-3)
