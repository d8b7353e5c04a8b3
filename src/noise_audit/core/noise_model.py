"""Step 3 of the score, calibrate without the truth: the noise model.

The corruption score ranks samples (:mod:`noise_audit.core.scores`); this
module says how likely each given label is to be wrong, so the ranking can be
mapped onto probabilities (:func:`calibrate`). The model, fit without the
truth (:func:`wrong_label_posterior`):

- *what the true class is likely to be*: the cleaner folds' class
  probabilities, recalibrated on the held-out rows' given labels, which the
  audit takes as right (:func:`recalibrated_probs`: a temperature and class
  biases, or a logistic regression on the logits, whichever predicts those
  labels better out of sample);
- *how labels go wrong*: a noise matrix ``N[given, true]``, fit by EM from
  cleanlab's confident-learning estimate (:func:`fit_noise_matrix`);
- *each label's posterior probability of being wrong*, by Bayes
  (:func:`noise_posterior`).

The temperature tools here (:func:`temperature`, :func:`calibrated_probs`)
also serve the ranking's loss view.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.isotonic import IsotonicRegression

MIN_HELD_OUT = 100  # held-out rows needed to fix a temperature (see wrong_label_posterior, scores.loss_view_temperature)
MIN_HELD_OUT_PER_CLASS = 10  # ... and of every class, to fix its bias as well (see wrong_label_posterior)


def temperature(logits: npt.ArrayLike, labels: np.ndarray, rows: np.ndarray | None = None) -> float:
    """The temperature ``T`` whose ``softmax(logits / T)`` fits ``labels`` best (log loss).

    The head is strongly regularised for stable influence, so its
    out-of-sample probabilities are too flat; one scalar fixes that without
    changing any sample's predicted class. Fit on the given labels of
    ``rows`` (default all): no truth.
    """
    logits, labels = np.asarray(logits, dtype=float), np.asarray(labels)
    if rows is not None:
        logits, labels = logits[rows], labels[rows]
    rows = np.arange(len(labels))

    def nll(log_t):
        return -log_softmax(logits / np.exp(log_t), axis=1)[rows, labels].mean()

    return float(np.exp(minimize_scalar(nll, bounds=(-5.0, 3.0), method="bounded").x))


def bounded_logits(logits: npt.ArrayLike, depth: float = 50.0) -> np.ndarray:
    """Logits no further than ``depth`` below their row's largest: the same softmax to
    within ``e^-50``, but finite, which the fits below need (a probability of 0 given
    as a logit of ``-inf`` would make their gradients NaN)."""
    logits = np.asarray(logits, dtype=float)
    return np.maximum(logits, logits.max(axis=1, keepdims=True) - depth)


def vector_scaled_logits(logits: npt.ArrayLike, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``logits / T + b``: a temperature and one bias per class, fit on the given labels of ``rows`` (log loss).

    Guo et al.'s vector scaling (with one shared scale). The temperature alone
    fixes probabilities that are too flat or too sharp; the biases fix a
    head that favours some classes over others, which a noise model would
    otherwise take for labels moved between those classes. Fit on rows whose
    labels are trusted (the held-out rows), so it needs the same care as
    :func:`temperature` with few of them (see :data:`MIN_HELD_OUT`).
    """
    logits, labels = bounded_logits(logits), np.asarray(labels)
    z, y = logits[rows], labels[rows]
    n, n_classes = z.shape
    onehot = np.eye(n_classes)[y]

    def nll_and_grad(params):
        scale, bias = np.exp(params[0]), params[1:]
        log_p = log_softmax(z * scale + bias, axis=1)
        residual = (np.exp(log_p) - onehot) / n
        return -log_p[np.arange(n), y].mean(), np.r_[(residual * z).sum() * scale, residual.sum(0)]

    # The same range of temperatures as temperature(); biases of at most e^10.
    bounds = [(-3.0, 5.0)] + [(-10.0, 10.0)] * n_classes
    params = minimize(nll_and_grad, np.zeros(n_classes + 1), jac=True, method="L-BFGS-B", bounds=bounds).x
    return logits * np.exp(params[0]) + params[1:]


def matrix_scaled_probs(logits: npt.ArrayLike, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Class probabilities from a multinomial logistic regression on the logits, fit on ``rows``.

    Guo et al.'s matrix scaling (scikit-learn, L2 ``C=1``): unlike
    :func:`vector_scaled_logits` it can also fix how a weak head confuses
    particular pairs of classes, at the price of ``C^2`` parameters.
    """
    from sklearn.linear_model import LogisticRegression

    logits, labels = bounded_logits(logits), np.asarray(labels)
    model = LogisticRegression(C=1.0, max_iter=2000).fit(logits[rows], labels[rows])
    return model.predict_proba(logits)


def recalibrated_probs(logits: npt.ArrayLike, labels: np.ndarray, rows: np.ndarray, folds: int = 5) -> np.ndarray:
    """:func:`vector_scaled_logits` or :func:`matrix_scaled_probs`, whichever predicts the
    given labels of ``rows`` better out of sample (``folds``-fold log loss on ``rows``).

    A strong head needs only a temperature and class biases and the matrix
    over-fits; a weak one confuses pairs of classes in ways only the matrix
    undoes. The held-out rows, whose labels are trusted, decide which. With
    fewer rows than the matrix has entries (``C^2``: a thousand classes
    would need a million) the matrix is not tried; with fewer than
    :data:`MIN_HELD_OUT_PER_CLASS` rows of some class, neither is (a
    temperature alone): the rows cannot say how likely that class is, and its
    fitted bias would rule it out.
    """
    from sklearn.model_selection import StratifiedKFold

    logits, labels = np.asarray(logits, dtype=float), np.asarray(labels)
    idx = np.flatnonzero(rows)
    if np.bincount(labels[idx], minlength=logits.shape[1]).min() < MIN_HELD_OUT_PER_CLASS:
        return calibrated_probs(logits, labels, rows)
    if len(idx) < logits.shape[1] ** 2:
        return softmax(vector_scaled_logits(logits, labels, rows), axis=1)
    loss = np.zeros(2)
    split = StratifiedKFold(folds, shuffle=True, random_state=0).split(idx, labels[idx])
    for fit, check in split:
        part = np.zeros(len(labels), bool)
        part[idx[fit]] = True
        shown = idx[check]
        vector = softmax(vector_scaled_logits(logits, labels, part)[shown], axis=1)
        matrix = matrix_scaled_probs(logits, labels, part)[shown]
        for k, probs in enumerate((vector, matrix)):
            loss[k] -= np.log(np.maximum(probs[np.arange(len(shown)), labels[shown]], 1e-300)).sum()
    if loss[0] <= loss[1]:
        return softmax(vector_scaled_logits(logits, labels, rows), axis=1)
    return matrix_scaled_probs(logits, labels, rows)


def calibrated_probs(logits: npt.ArrayLike, labels: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """``softmax(logits / T)`` with the :func:`temperature` fit on ``labels`` of ``rows``."""
    return softmax(np.asarray(logits, dtype=float) / temperature(logits, labels, rows), axis=1)


def true_class_probs(labels: npt.ArrayLike, pred_probs: np.ndarray, noise_matrix: npt.ArrayLike) -> np.ndarray:
    """``P(true = j | x, given label)`` for every class ``j``, under a noise matrix: ``(samples, classes)``.

    ``noise_matrix[i, j] = P(given = i | true = j)`` (cleanlab's convention)
    and ``pred_probs`` estimates ``P(true | x)``. By Bayes,
    ``P(true = j | x, given) = p(j|x) N[given, j] / sum_k p(k|x) N[given, k]``.
    """
    labels = np.asarray(labels)
    joint = pred_probs * np.asarray(noise_matrix, dtype=float)[labels]  # (samples, true classes)
    return joint / np.maximum(joint.sum(1), 1e-300)[:, None]


def noise_posterior(labels: npt.ArrayLike, pred_probs: np.ndarray, noise_matrix: npt.ArrayLike) -> np.ndarray:
    """``P(given label is wrong | x, given label)`` under a noise matrix:
    one minus the given class's :func:`true_class_probs`."""
    labels = np.asarray(labels)
    return 1.0 - true_class_probs(labels, pred_probs, noise_matrix)[np.arange(len(labels)), labels]


def fit_noise_matrix(labels: npt.ArrayLike, pred_probs: np.ndarray, start: npt.ArrayLike, iterations: int = 200,
                     tol: float = 1e-7, prior: float = 0.0) -> np.ndarray:
    """Maximum-likelihood noise matrix for the given labels, the true classes' probabilities fixed.

    Each given label is modelled as ``P(given = i | x) = sum_j p(j|x) N[i, j]``
    with ``pred_probs`` as ``p(j|x)`` (the cleaner folds'); EM (Dawid & Skene's,
    with one annotator) refines ``start`` (cleanlab's confident-learning
    estimate, which counts noise only where the model is confident and so
    misjudges its amount). ``prior`` > 0 makes it a posterior mode instead: a
    Dirichlet prior toward no noise, ``prior`` times each true class's expected
    count added to its diagonal (the audit uses 0: on the tuning cells any
    prior made the calibration worse, ``bench/studies/limits.py``).
    """
    labels = np.asarray(labels)
    n_classes = pred_probs.shape[1]
    onehot = np.eye(n_classes)[labels]  # (n, given classes)
    noise = np.asarray(start, dtype=float).copy()
    for _ in range(iterations):
        joint = pred_probs * noise[labels]  # (n, true classes): p(j|x) N[given, j]
        post = joint / np.maximum(joint.sum(1, keepdims=True), 1e-300)
        new = onehot.T @ post  # expected counts [given, true]
        if prior:
            new += prior * np.diag(new.sum(0))
        new /= np.maximum(new.sum(0, keepdims=True), 1e-300)
        done = np.abs(new - noise).max() < tol
        noise = new
        if done:
            break
    return noise


def fit_noise_model(labels: npt.ArrayLike, clean_logits: npt.ArrayLike,
                    start: npt.ArrayLike) -> tuple[float, np.ndarray]:
    """Temperature and noise matrix that make the given labels most likely.

    The given label is modelled as drawn from ``softmax(clean_logits / T)``
    (the cleaner folds' true-class probabilities) and then passed through a
    noise matrix ``N``. For each ``T`` the best ``N`` is found by EM
    (:func:`fit_noise_matrix`); ``T`` maximises that profile likelihood.
    Fitting the two together matters: a temperature fit to the given labels
    alone absorbs the noise into flatter probabilities and hides it.

    Returns:
        ``(T, N)``.
    """
    labels = np.asarray(labels)
    logits = np.asarray(clean_logits, dtype=float)
    state = {"noise": np.asarray(start, dtype=float)}

    def negative_log_likelihood(log_t):
        probs = softmax(logits / np.exp(log_t), axis=1)
        state["noise"] = fit_noise_matrix(labels, probs, state["noise"], iterations=100, tol=1e-6)
        given = (probs * state["noise"][labels]).sum(1)
        return -np.log(np.maximum(given, 1e-300)).mean()

    log_t = minimize_scalar(negative_log_likelihood, bounds=(-4.0, 2.0), method="bounded",
                            options={"xatol": 1e-3}).x
    t = float(np.exp(log_t))
    noise = fit_noise_matrix(labels, softmax(logits / t, axis=1), state["noise"])
    return t, noise


def calibrate(ranking: npt.ArrayLike, target: npt.ArrayLike) -> np.ndarray:
    """Monotone map of ``ranking`` onto the scale of ``target`` probabilities.

    Isotonic regression of ``target`` on ``ranking`` keeps the order and the
    mean; a tie-break in the sixth decimal keeps distinct rankings distinct,
    so the calibrated score ranks exactly as ``ranking`` does.
    """
    ranking = np.asarray(ranking, dtype=float)
    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True).fit_transform(ranking, target)
    return np.clip((1.0 - 1e-6) * fitted + 1e-6 * _dense_rank(ranking), 0.0, 1.0)


def _dense_rank(v: np.ndarray) -> np.ndarray:
    """Ranks in [0, 1] with equal values sharing a rank."""
    _, inverse = np.unique(v, return_inverse=True)
    return inverse / max(inverse.max(), 1)


def wrong_label_posterior(labels: npt.ArrayLike, oos_logits: npt.ArrayLike, clean_oos_logits: npt.ArrayLike,
                          is_test: npt.ArrayLike | None = None) -> np.ndarray:
    """Each given label's probability of being wrong under a noise model fit without the truth.

    The cleaner folds' class probabilities, passed through a noise matrix
    ``N`` fit by EM (:func:`fit_noise_matrix`, from cleanlab's estimate) on
    the audited rows (:func:`noise_posterior`). The probabilities are the
    cleaner folds' logits recalibrated on the **held-out rows' given
    labels**, which the audit already takes as right (average influence is
    measured on them): a temperature and one bias per class, or a
    multinomial logistic regression on the logits, whichever predicts those
    labels better out of sample (:func:`recalibrated_probs`). Whatever the
    head gets wrong on correctly labelled images is then not taken for label
    noise: a head partial to some classes, or a weak one that confuses
    particular pairs (docs/benchmarks.md, "Quality grid", rounds 3 and 4:
    pooled ECE on CIFAR-10 at 32 px 0.077 with a temperature alone, 0.065
    now; on the clean audit, with no flips, the mean posterior falls from
    0.107 to 0.030). A class with fewer than
    :data:`MIN_HELD_OUT_PER_CLASS` held-out rows leaves both out (a
    temperature alone): the held-out rows cannot say how likely that class
    is, and its fitted bias would make every label of it look wrong.
    With fewer than :data:`MIN_HELD_OUT` held-out rows (a temperature from a
    few dozen labels is too uncertain: 30 held-out images put it far too
    sharp in ``tests/test_audit.py``), a temperature ``T`` and ``N`` are fit together
    (:func:`fit_noise_model`); under a weak head that joint fit cannot tell
    label noise from the model's own confusion and overestimates the noise
    (docs/benchmarks.md, "Quality grid": pooled ECE 0.249 against 0.077 with
    the held-out temperature on CIFAR-10 at 32 px).
    """
    labels = np.asarray(labels)
    true_class = true_class_posterior(labels, oos_logits, clean_oos_logits, is_test)
    return 1.0 - true_class[np.arange(len(labels)), labels]


def true_class_posterior(labels: npt.ArrayLike, oos_logits: npt.ArrayLike, clean_oos_logits: npt.ArrayLike,
                         is_test: npt.ArrayLike | None = None) -> np.ndarray:
    """The noise model of :func:`wrong_label_posterior`, for every class: ``P(true = j | x, given)``, ``(n, C)``.

    One minus its given-label column is :func:`wrong_label_posterior`; the
    other columns say which class a wrong label should have been (the
    suggested label, :mod:`noise_audit.core.suggestions`).
    """
    return true_class_probs(labels, *noise_model_parts(labels, oos_logits, clean_oos_logits, is_test))


def noise_model_parts(labels: npt.ArrayLike, oos_logits: npt.ArrayLike, clean_oos_logits: npt.ArrayLike,
                      is_test: npt.ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The two parts of :func:`true_class_posterior`'s noise model: ``(P(true | x) (n, C), N[given, true])``.

    The noise matrix also says how labels go wrong in this data, which the
    influence weight's probe plants (:mod:`noise_audit.core.weight_probe`)."""
    labels = np.asarray(labels)
    clean = np.asarray(clean_oos_logits, dtype=float)
    _, start, _, _ = estimate_py_and_noise_matrices_from_probabilities(
        labels, softmax(np.asarray(oos_logits, dtype=float), axis=1))
    held_out = np.zeros(len(labels), bool) if is_test is None else np.asarray(is_test, dtype=bool)
    if held_out.sum() < MIN_HELD_OUT or held_out.all():
        t, noise = fit_noise_model(labels, clean, start)
        return softmax(clean / t, axis=1), noise
    probs = recalibrated_probs(clean, labels, held_out)
    return probs, fit_noise_matrix(labels[~held_out], probs[~held_out], start)
