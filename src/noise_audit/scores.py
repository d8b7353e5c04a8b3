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

The **corruption score** mainly averages two independent estimates of the
out-of-sample probability of the given label, cleanlab's K-fold one and the
influence-function leave-one-out one, and adds a small vote from average
influence::

    p_oos = (label_quality + exp(-loo_loss)) / 2
    score = (1 - w) * (1 - p_oos) + w * sigmoid(-average_influence / std)

with ``w`` = :data:`INFLUENCE_WEIGHT`. It lies in [0, 1]; higher means more
likely mislabeled. The two probability estimates err differently (K-fold
refits on 80% of the data; the influence estimate is exact to first order
around the full-data minimum), so their mean ranks flips better than either.
Average influence on its own is a weak detector (the seed notebook's lesson,
confirmed by ``bench/``), so it only breaks near-ties: a larger weight lowers
precision.
"""

from __future__ import annotations

import numpy as np
from cleanlab.count import num_label_issues
from cleanlab.rank import get_label_quality_scores


def label_quality(labels, pred_probs):
    """cleanlab's self-confidence label quality in [0, 1] (low = suspicious)."""
    return get_label_quality_scores(np.asarray(labels), pred_probs, method="self_confidence")


def given_label_loss(logits, labels):
    """Cross-entropy of the given label for each sample."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(labels)), np.asarray(labels)]


def loo_loss(loss, self_influence, n_train):
    """First-order leave-one-out loss: ``loss + self_influence / n_train``."""
    return loss + np.maximum(self_influence, 0.0) / n_train


INFLUENCE_WEIGHT = 0.1


def corruption_score(label_quality, loo_loss, average_influence, influence_weight=INFLUENCE_WEIGHT):
    """The corruption score in [0, 1] (see module doc); higher = more suspicious."""
    p_oos = 0.5 * (np.asarray(label_quality) + np.exp(-np.asarray(loo_loss)))
    a = np.asarray(average_influence, dtype=float)
    scale = a.std() or 1.0
    harm = 1.0 / (1.0 + np.exp(np.clip(a / scale, -50, 50)))  # sigmoid(-a / std)
    return (1.0 - influence_weight) * (1.0 - p_oos) + influence_weight * harm


def estimate_num_issues(labels, pred_probs):
    """cleanlab's estimate of how many labels are wrong (confident learning)."""
    return int(num_label_issues(np.asarray(labels), pred_probs))


def flag_top(scores, n):
    """Boolean mask of the ``n`` highest scores (ties broken by position)."""
    flags = np.zeros(len(scores), dtype=bool)
    if n > 0:
        flags[np.argsort(-np.asarray(scores), kind="stable")[:n]] = True
    return flags
