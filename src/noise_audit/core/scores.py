"""Stage 5, scores: per-sample signals and the corruption score.

Signals (one value per sample):

- ``label_quality``: cleanlab's self-confidence, the K-fold out-of-sample
  probability of the given label (low = suspicious).
- ``loss``: in-sample cross-entropy of the given label under the head.
- ``self_influence``: ``<H^{-1} g, g>``; large when the model bends to fit
  the sample.
- ``loo_loss``: ``loss + self_influence / n``, the influence-function estimate
  of the sample's loss had it been left out of training (Koh & Liang's
  first-order leave-one-out).
- ``average_influence``: mean influence on the held-out test set (low or
  negative = the sample hurts test loss).

**The corruption score** is the estimated probability that the given label is
wrong. It is built in three steps:

1. *Rank by two views that fail differently.* Out-of-sample loss (K-fold)
   catches labels the other samples contradict; average influence catches
   labels that hurt the held-out set. Out-of-sample methods go blind to
   **systematic** flips (class a labelled b again and again): the folds learn
   the flip. Influence on held-out samples still sees the harm. Each is
   divided by its spread and the two are mixed (:func:`ranking_score`):
   influence's share is chosen per audit from 0, ½ and 1 by flips planted
   into the audit's own data (:mod:`noise_audit.core.weight_probe`), unless
   the caller fixes it (½, the fixed weight of earlier versions).
   The loss is taken at the first folds' temperature or at the raw logits,
   whichever ranks wrong labels planted on the held-out rows better
   (:func:`loss_view_temperature`).
2. *Clean and refit.* The folds are fit again without the first ranking's top
   suspects (as many as cleanlab's confident learning estimates), so they no
   longer learn the flips, and the out-of-sample loss is taken from these
   cleaner folds (:func:`refit_suspects`). This is what lets the score beat
   average influence under systematic noise and cleanlab under every kind.
3. *Calibrate without the truth.* A noise model turns the cleaner folds'
   class probabilities into each label's posterior probability of being
   wrong (:func:`~noise_audit.core.noise_model.wrong_label_posterior`): the probabilities recalibrated
   on the held-out labels, through a noise matrix fit by EM from
   cleanlab's estimate. A monotone (isotonic) map of the ranking onto
   these posteriors gives the score (:func:`~noise_audit.core.noise_model.calibrate`). The ranking is kept
   exactly, and the scores average to the estimated share of wrong labels.
   The noise model is :mod:`noise_audit.core.noise_model`.

Names, fields and directions of the signals are in one table,
:data:`noise_audit.signals.SIGNALS` (one rule, as in cleanlab: average
influence and label quality are low when suspicious, the rest high).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from cleanlab.count import num_label_issues
from cleanlab.rank import get_label_quality_scores
from scipy.special import log_softmax, softmax
from sklearn.metrics import roc_auc_score

from noise_audit.core.noise_model import (MIN_HELD_OUT, bounded_logits, calibrate, calibrated_probs, temperature,
                                          wrong_label_posterior)

# Share of average influence in the ranking when the caller fixes it, and the probe's tie-break
# (tuned on ten64 seeds 0-1); an audit chooses it from the data (noise_audit.core.weight_probe).
INFLUENCE_WEIGHT = 0.5


def label_quality(labels: npt.ArrayLike, pred_probs: np.ndarray) -> np.ndarray:
    """cleanlab's self-confidence label quality in [0, 1] (low = suspicious)."""
    return get_label_quality_scores(np.asarray(labels), pred_probs, method="self_confidence")


def given_label_loss(logits: npt.ArrayLike, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of the given label for each sample."""
    return -log_softmax(np.asarray(logits, dtype=float), axis=1)[np.arange(len(labels)), np.asarray(labels)]


def loo_loss(loss: np.ndarray, self_influence: np.ndarray, n_train: int) -> np.ndarray:
    """First-order leave-one-out loss: ``loss + self_influence / n_train``."""
    return loss + np.maximum(self_influence, 0.0) / n_train


def _spread(v: np.ndarray) -> float:
    s = float(np.std(v))
    return s if s > 0 else 1.0


def ranking_score(average_influence: npt.ArrayLike, oos_loss: npt.ArrayLike,
                  influence_weight: float = INFLUENCE_WEIGHT) -> np.ndarray:
    """Higher = more suspicious: harm to the held-out set and out-of-sample loss,
    each in units of its own spread, mixed with ``influence_weight``."""
    harm = -np.asarray(average_influence, dtype=float)
    loss = np.asarray(oos_loss, dtype=float)
    return influence_weight * harm / _spread(harm) + (1.0 - influence_weight) * loss / _spread(loss)


def planted_label_auroc(logits: npt.ArrayLike, labels: npt.ArrayLike, rows: np.ndarray, seed: int = 0) -> float:
    """How well the given-label loss ranks wrong labels above right ones, on ``rows`` whose labels are right.

    Each row gets one planted wrong label as well (uniform over the other
    classes, seeded); the AUROC of the loss at separating the planted labels
    from the given ones. A row's out-of-fold logits come from a head that
    never saw it, so planting needs no refit (its label reaches them only
    through the folds' stratification and the warm start they share, a
    convex fit's starting point). Logits of ``-inf`` (probabilities given
    as 0) are bounded first, as for the recalibration."""
    z, y = bounded_logits(logits)[rows], np.asarray(labels)[rows]
    planted = (y + np.random.default_rng(seed).integers(1, z.shape[1], size=len(y))) % z.shape[1]
    right, wrong = given_label_loss(z, y), given_label_loss(z, planted)
    return float(roc_auc_score(np.r_[np.zeros(len(y)), np.ones(len(y))], np.r_[right, wrong]))


def loss_view_temperature(labels: npt.ArrayLike, clean_oos_logits: npt.ArrayLike, t: float,
                          is_test: npt.ArrayLike | None) -> float:
    """The temperature of the ranking's loss view: ``t`` (the first folds') or 1 (the raw logits).

    Which one ranks wrong labels better depends on the head, and pulls data
    sets opposite ways (docs/benchmarks.md, "Quality grid", round 7): at
    ``t`` the loss of a strong head is sharper (ten Tiny ImageNet classes at
    64 px), while a weak head's (CIFAR-10 at 32 px, 43% accuracy) is better
    read from the raw logits, where the loss depends on every class's logit
    and not mainly on the largest. The held-out rows, whose labels the audit
    takes as right, decide by :func:`planted_label_auroc` (ties keep ``t``);
    with fewer than :data:`~noise_audit.core.noise_model.MIN_HELD_OUT` of them, ``t``. The two AUROCs are
    close (0.002-0.003 apart on ten64's cells, 0.001-0.02 on cifar32's),
    yet on the grid the choice was the same in every cell of a data set.
    """
    held_out = np.zeros(len(np.asarray(labels)), bool) if is_test is None else np.asarray(is_test, dtype=bool)
    if held_out.sum() < MIN_HELD_OUT:
        return t
    logits = np.asarray(clean_oos_logits, dtype=float)
    raw_is_better = planted_label_auroc(logits, labels, held_out) > planted_label_auroc(logits / t, labels, held_out)
    return 1.0 if raw_is_better else t


def estimate_num_issues(labels: npt.ArrayLike, pred_probs: np.ndarray) -> int:
    """cleanlab's estimate of how many labels are wrong (confident learning)."""
    return int(num_label_issues(np.asarray(labels), pred_probs))


def refit_suspects(labels: np.ndarray, oos_logits: np.ndarray, average_influence: npt.ArrayLike) -> np.ndarray:
    """Samples to leave out when the folds are fit again (step 2 of the module doc):
    the top of the first ranking, as many as cleanlab estimates are wrong."""
    probs = calibrated_probs(oos_logits, labels)
    first = ranking_score(average_influence, given_label_loss(np.log(probs), labels))
    return flag_top(first, estimate_num_issues(labels, softmax(oos_logits, axis=1)))


def corruption_score(labels: npt.ArrayLike, oos_logits: npt.ArrayLike, clean_oos_logits: npt.ArrayLike,
                     average_influence: npt.ArrayLike, is_test: npt.ArrayLike | None = None,
                     influence_weight: float = INFLUENCE_WEIGHT,
                     true_class: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The corruption score in [0, 1] (see module doc): the estimated probability
    that each given label is wrong.

    Args:
        labels: given labels ``(n,)``.
        oos_logits: K-fold out-of-sample logits ``(n, C)`` of the first fit
            (they estimate the noise matrix).
        clean_oos_logits: the same after :func:`refit_suspects` left the
            first ranking's suspects out of the folds.
        average_influence: mean influence on the held-out set ``(n,)``.
        is_test: the held-out rows ``(n,)``, whose given labels choose the
            loss view's temperature (:func:`loss_view_temperature`) and fix
            the noise model's (:func:`~noise_audit.core.noise_model.wrong_label_posterior`); ``None``: no
            held-out rows.
        influence_weight: share of average influence in the ranking.
        true_class: the noise model's :func:`~noise_audit.core.noise_model.true_class_posterior`
            of these arguments, when the caller has it already (it is the
            costly part of step 3); ``None``: computed here.

    Returns:
        ``(score, ranking)``: the calibrated score and the uncalibrated
        ranking it preserves.
    """
    labels = np.asarray(labels)
    ranking = audit_ranking(labels, oos_logits, clean_oos_logits, average_influence, is_test, influence_weight)
    if true_class is None:
        target = wrong_label_posterior(labels, oos_logits, clean_oos_logits, is_test)
    else:
        target = 1.0 - np.asarray(true_class)[np.arange(len(labels)), labels]
    return calibrate(ranking, target), ranking


def audit_ranking(labels: npt.ArrayLike, oos_logits: npt.ArrayLike, clean_oos_logits: npt.ArrayLike,
                  average_influence: npt.ArrayLike, is_test: npt.ArrayLike | None = None,
                  influence_weight: float = INFLUENCE_WEIGHT) -> np.ndarray:
    """The uncalibrated ranking of :func:`corruption_score` (its arguments): the cleaner folds'
    loss at the temperature the first folds show on the given labels (the same heads on fewer
    rows), or at the raw logits (:func:`loss_view_temperature`), mixed with average influence."""
    labels = np.asarray(labels)
    t = loss_view_temperature(labels, clean_oos_logits, temperature(oos_logits, labels), is_test)
    clean_loss = given_label_loss(np.asarray(clean_oos_logits, dtype=float) / t, labels)
    return ranking_score(average_influence, clean_loss, influence_weight)


def flag_top(scores: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of the ``n`` highest scores (ties broken by position)."""
    flags = np.zeros(len(scores), dtype=bool)
    if n > 0:
        flags[np.argsort(-np.asarray(scores), kind="stable")[:n]] = True
    return flags


def expected_errors(score: npt.ArrayLike, is_test: npt.ArrayLike) -> int:
    """The expected number of wrong labels: the sum of the audited rows' scores, rounded.

    The score is each label's probability of being wrong, so its sum is the
    audit's estimate of how many are; held-out rows are taken as right."""
    audited = ~np.asarray(is_test, dtype=bool)
    return int(round(float(np.asarray(score, dtype=float)[audited].sum())))


def suspects(score: np.ndarray, n: int) -> np.ndarray:
    """The suspect flag: the ``n`` highest scores, ``n`` being :func:`expected_errors`.

    Not cleanlab's count, nor ``score >= 0.5``: on the quality grid's 48
    reported rows the expected number finds flips with a mean F1 of 0.612
    against 0.580 and 0.561 (chosen on the tuning cells, 0.721 against 0.712
    and 0.664 under the calibration of the time: the flag study, docs/benchmarks.md).
    Under a weak head cleanlab's count can be several times the true one (a
    third of CIFAR-10 at 32 px with 5% flips)."""
    return flag_top(score, n)


def audit_signals(labels: npt.ArrayLike, is_test: npt.ArrayLike, oos_logits: npt.ArrayLike,
                  clean_oos_logits: npt.ArrayLike, average_influence: npt.ArrayLike,
                  self_influence: np.ndarray, loss: np.ndarray, true_class: np.ndarray | None = None,
                  influence_weight: float = INFLUENCE_WEIGHT) -> tuple[dict[str, np.ndarray], int, np.ndarray]:
    """Every per-sample signal of an audit, from the head and influence stages.

    ``true_class``: the noise model's class posterior, if the caller has it
    (see :func:`corruption_score`). ``influence_weight``: the ranking's share
    of average influence (an audit's choice: :mod:`noise_audit.core.weight_probe`).

    Returns:
        ``(signals, num_issues, suspect)``: a dict of arrays (the names of the
        module doc, ``corruption_score`` and its uncalibrated ``ranking``),
        the estimated number of wrong labels (:func:`expected_errors`), and
        the suspect flags (that many of the highest scores).
    """
    labels, is_test = np.asarray(labels), np.asarray(is_test, dtype=bool)
    probs = softmax(np.asarray(oos_logits, dtype=float), axis=1)
    # Held-out losses are out-of-sample already: no leave-one-out correction.
    loo = np.where(~is_test, loo_loss(loss, self_influence, int((~is_test).sum())), loss)
    score, ranking = corruption_score(labels, oos_logits, clean_oos_logits, average_influence, is_test,
                                      influence_weight=influence_weight, true_class=true_class)
    num_issues = expected_errors(score, is_test)
    signals = {
        "average_influence": np.asarray(average_influence), "self_influence": np.asarray(self_influence),
        "label_quality": label_quality(labels, probs), "loss": np.asarray(loss), "loo_loss": loo,
        "corruption_score": score, "ranking": ranking,
    }
    return signals, num_issues, suspects(score, num_issues)
