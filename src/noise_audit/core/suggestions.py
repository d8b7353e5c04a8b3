"""The suggested label of every audited sample: the class its label most probably should be.

An audit says *how likely* a label is wrong (the corruption score); a
reviewer also wants to know *what it should be*. The suggestion is the most
probable true class under

    P(true = given)     = 1 - score
    P(true = j != given) = score * q_j / sum_{k != given} q_k

where ``score`` is the corruption score and ``q = P(true | x, given)`` is the
noise model's class posterior
(:func:`~noise_audit.core.noise_model.true_class_posterior`).

Why these probabilities and not another set the audit has:

- **the cleaner folds', not the first folds'**: folds fit on every label learn
  systematic flips (class *a* labelled *b* again and again) and would suggest
  the wrong label back; the cleaner folds were fit without the first
  ranking's suspects (:func:`~noise_audit.core.scores.refit_suspects`);
- **recalibrated on the held-out labels**: the head is strongly regularised
  for stable influence, so its probabilities are too flat and partial to
  some classes; the recalibration (a temperature and class biases, or a
  logistic regression on the logits) is fit on the held-out labels the
  audit trusts, so a suggestion's confidence reads as a probability;
- **through the noise matrix**: ``q`` also knows how labels go wrong on this
  data set (under pair flips a *b* label on an *a*-looking image is the
  usual mistake), which the image alone cannot say;
- **the given label's share is the corruption score's complement**, so the
  suggestion agrees with the number the review queue is ordered by: a
  sample scored 0.9 gets another class with up to 0.9 confidence, never its
  given label with more than 0.1.

These are the probabilities the noise model trusts when it calibrates the
score (:func:`~noise_audit.core.noise_model.wrong_label_posterior` is one
minus ``q``'s given column). The suggestion equals the given label whenever
the score is below ``1 - score`` of every other class, i.e. for most clean
samples.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def suggestion_probs(labels: npt.ArrayLike, score: npt.ArrayLike, true_class: np.ndarray) -> np.ndarray:
    """``(n, C)`` probabilities of each true class (see the module doc): the given label
    ``1 - score``, the others ``score`` shared in proportion to ``true_class``.

    Where ``true_class`` puts no weight outside the given label, ``score`` is
    shared equally among the other classes.
    """
    labels = np.asarray(labels)
    score = np.clip(np.asarray(score, dtype=float), 0.0, 1.0)
    q = np.array(true_class, dtype=float, copy=True)
    rows = np.arange(len(labels))
    q[rows, labels] = 0.0
    others = q.sum(1)
    n_classes = q.shape[1]
    flat = np.full_like(q, 1.0 / max(n_classes - 1, 1))
    flat[rows, labels] = 0.0
    q = np.where(others[:, None] > 0, q / np.maximum(others, 1e-300)[:, None], flat)
    probs = score[:, None] * q
    probs[rows, labels] = 1.0 - score
    return probs


def suggested_labels(labels: npt.ArrayLike, score: npt.ArrayLike,
                     true_class: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(class index, confidence, probabilities)`` of each sample's suggested label.

    The class is the most probable under :func:`suggestion_probs` (ties: the
    given label first, then the lower index); its confidence is that
    probability.
    """
    labels = np.asarray(labels)
    probs = suggestion_probs(labels, score, true_class)
    rows = np.arange(len(labels))
    best = probs.argmax(1)
    best = np.where(probs[rows, labels] >= probs[rows, best], labels, best)  # a tie keeps the given label
    return best, probs[rows, best], probs
